"""Test doubles for the store and annotate tests: fake teachers with the Tagger interface (a chain
tagger, a dependency parser) and a tiny corpus writer. The fakes' potentials depend only on (token,
position, seed), never on the batch, so runs with different batching or interrupted runs produce
identical outputs."""
from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.config import AnnotateConfig, CorpusConfig
from pipeline.schemes import allowed_transitions
from pipeline.structs import ArcLabels, ChainCRF, DependencyCRF, Factorized, HeadSelection, LabeledArcs

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
WORDS = ["john", "lives", "in", "new", "york", "mary", "paris", "the", "of", "visited", "."]


class FakeTeacher:
    """Deterministic pseudo-random potentials; ``delay`` seconds of sleep per batch (kill tests)."""

    def __init__(self, labels=LABELS, scheme: str = "IOB2", is_crf: bool = True, seed: int = 0,
                 constraints: bool = True, delay: float = 0.0, scale: float = 2.0):
        self.labels, self.scheme, self.is_crf, self.seed = list(labels), scheme, is_crf, seed
        self.delay, self.scale = delay, scale
        num = len(self.labels)
        gen = torch.Generator().manual_seed(seed)
        self.transitions = torch.randn(num, num, generator=gen)
        self.start, self.end = torch.randn(num, generator=gen), torch.randn(num, generator=gen)
        self.constraints = allowed_transitions(self.labels, scheme) if constraints else None

    def fingerprint(self) -> str:
        return hashlib.sha256(f"fake|{self.seed}|{self.labels}|{self.is_crf}".encode()).hexdigest()

    def _row(self, token: str, position: int) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}|{position}|{token}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.randn(len(self.labels), generator=gen) * self.scale

    def structure(self, batch_tokens: list[list[str]]):
        if self.delay:
            time.sleep(self.delay)
        longest = max(len(t) for t in batch_tokens)
        em = torch.zeros(len(batch_tokens), longest, len(self.labels))
        mask = torch.zeros(len(batch_tokens), longest, dtype=torch.bool)
        for b, tokens in enumerate(batch_tokens):
            for i, token in enumerate(tokens):
                em[b, i] = self._row(token, i)
            mask[b, :len(tokens)] = True
        if not self.is_crf:
            return Factorized(em, mask, self.constraints)
        return ChainCRF(em, self.transitions, mask, self.start, self.end, self.constraints)


RELS = ["root", "nsubj", "obj", "det", "punct"]
UPOS = {"john": "PROPN", "mary": "PROPN", "paris": "PROPN", "york": "PROPN", "new": "ADJ", "lives": "VERB",
        "visited": "VERB", "in": "ADP", "of": "ADP", "the": "DET", ".": "PUNCT"}


def _vector(seed: int, key: str, size: int) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return torch.randn(size, generator=torch.Generator().manual_seed(int.from_bytes(digest[:8], "little")))


class FakeParser:
    """A deterministic biaffine-like dependency teacher: arc h -> d scores ``u_h . v_d`` and relation
    scores ``(u_h * v_d) W`` from per-(token, position) vectors; ``decoder`` heads | tree |
    tree_projective (LabeledArcs over HeadSelection / DependencyCRF); ``fail_after`` batches it raises
    (an annotate interrupted mid-run)."""

    scheme = "none"

    def __init__(self, decoder: str = "tree", labels=RELS, seed: int = 0, scale: float = 1.5,
                 dim: int = 6, delay: float = 0.0, fail_after: int | None = None):
        self.decoder, self.labels, self.seed, self.scale, self.dim = decoder, list(labels), seed, scale, dim
        self.delay, self.fail_after, self.calls = delay, fail_after, 0
        self.relations = _vector(seed, "W", dim * len(self.labels)).view(dim, len(self.labels))

    def fingerprint(self) -> str:
        return hashlib.sha256(f"fake-parser|{self.seed}|{self.labels}|{self.decoder}".encode()).hexdigest()

    def structure(self, batch_tokens: list[list[str]]) -> LabeledArcs:
        if self.delay:
            time.sleep(self.delay)
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError(f"fake parser crashed at batch {self.calls}")
        longest = max(len(t) for t in batch_tokens)
        u = torch.zeros(len(batch_tokens), longest + 1, self.dim)
        v = torch.zeros(len(batch_tokens), longest + 1, self.dim)
        for b, tokens in enumerate(batch_tokens):
            for i, token in enumerate(["<root>"] + list(tokens)):
                u[b, i] = _vector(self.seed, f"head|{i}|{token}", self.dim)
                v[b, i] = _vector(self.seed, f"dep|{i}|{token}", self.dim)
        scores = torch.einsum("bhk,bdk->bhd", u, v) * self.scale
        rel = torch.einsum("bhk,bdk,kr->bhdr", u, v, self.relations) * self.scale
        lengths = torch.tensor([len(t) for t in batch_tokens])
        if self.decoder == "heads":
            arcs = HeadSelection(scores, lengths)
        else:
            arcs = DependencyCRF(scores, lengths, projective=self.decoder == "tree_projective")
        return LabeledArcs(arcs, ArcLabels(rel, lengths))


def gold_tree(sid: str, n: int) -> tuple[list[int], list[str]]:
    """A deterministic single-root tree of n words (word 1 under the root, word d under one of 1..d-1)."""
    gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(sid.encode()).digest()[:8], "little"))
    heads = [0] + [int(torch.randint(1, d, (1,), generator=gen)) for d in range(2, n + 1)]
    return heads, ["root"] + [RELS[1 + int(torch.randint(len(RELS) - 1, (1,), generator=gen))]
                              for _ in range(n - 1)]


def with_trees(read_corpus):
    """``read_corpus`` whose labeled sentences carry a gold tree and UPOS (patch it into store.build
    until the corpus readers give heads)."""
    def read(corpus, split):
        out = []
        for s in read_corpus(corpus, split):
            tree = gold_tree(s.sid, len(s.tokens)) if s.labels is not None else (None, None)
            upos = [UPOS.get(t, "X") for t in s.tokens] if s.labels is not None else None
            out.append(replace(s, heads=tree[0], rels=tree[1], upos=upos))
        return out
    return read


def sentences(n: int, seed: int, max_len: int = 6) -> list[tuple[list[str], list[str]]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, max_len + 1, (1,), generator=gen))
        words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=gen)]
        tags = ["B-PER" if w in ("john", "mary") else "B-LOC" if w in ("paris", "york") else "O"
                for w in words]
        out.append((words, tags))
    return out


def write_corpus(folder: Path, sizes: dict[str, int], *, labeled: bool = True, seed: int = 0,
                 max_len: int = 6) -> dict[str, str]:
    """CoNLL files (``word tag``) or raw files (one tokenized sentence a line) per split."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, (split, n) in enumerate(sizes.items()):
        sents = sentences(n, seed + i, max_len)
        path = folder / f"{split}.txt"
        if labeled:
            path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(*s)) for s in sents) + "\n")
        else:
            path.write_text("\n".join(" ".join(words) for words, _ in sents) + "\n")
        files[split] = str(path)
    return files


def config(tmp: Path, *, out: Path | None = None, sizes=None, unlabeled: int = 0, max_len: int = 6,
           **kw) -> AnnotateConfig:
    """An AnnotateConfig over a tiny labeled corpus (+ optional unlabeled one) for teacher ``en``."""
    corpora = [CorpusConfig(name="tiny", lang="en", format="conll", scheme="IOB2",
                            files=write_corpus(tmp / "tiny", sizes or {"train": 23, "dev": 7},
                                               max_len=max_len))]
    if unlabeled:
        corpora.append(CorpusConfig(name="raw", lang="en", format="raw", scheme="none",
                                    files=write_corpus(tmp / "raw", {"unlabeled": unlabeled},
                                                       labeled=False, seed=9, max_len=max_len)))
    defaults = {"teachers": {"en": "fake-teacher"}, "corpora": corpora, "out": str(out or tmp / "store"),
                "k": 4, "shard_size": 8, "batch_tokens": 24, "dtype": "float32", "device": "cpu"}
    defaults.update(kw)
    return AnnotateConfig(**defaults)
