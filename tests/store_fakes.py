"""Test doubles for the store and annotate tests: a fake teacher with the Tagger interface and a tiny
corpus writer. The fake's emissions depend only on (token, position, seed), never on the batch, so
runs with different batching or interrupted runs produce identical outputs."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from pipeline.config import AnnotateConfig, CorpusConfig
from pipeline.schemes import allowed_transitions
from pipeline.structs import ChainCRF, Factorized

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
