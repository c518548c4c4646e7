"""Both stages on 1 vs 2 processes of this machine, side by side in one run (issue 16, CPU figures).

    python bench/bench_scale.py --teacher ../shared/models/conll03-minilm-crf --sentences 1000

(1) annotate: ``torchrun --nproc_per_node N structkd annotate`` for N = 1, 2 (one intra-op thread
    per process), sentences/s of the command less its fixed cost (the same command again, resuming
    a complete store: start-up, corpus reading, planning), alternated ``--repeats`` times; the byte
    identity of the 2-process store with the 1-process one (every shard file's sha256).
(2) distill: ``torchrun --nproc_per_node N structkd distill`` (DDP over gloo) of a BiLSTM-CRF student
    with structural KD from that store, N = 1, 2: training sentences/s of the fastest epoch.
With ``--store PATH`` (1) is skipped and (2) runs on that existing store (its train split).
Writes one JSON line per measurement to stdout and a summary at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, args: list[str], cwd: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--rdzv-backend",
           "c10d", "--rdzv-endpoint", "localhost:0", "--no-python", "structkd", "--threads", "1", *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def shard_hashes(store: Path) -> dict:
    manifest = json.loads((store / "manifest.json").read_text())
    return {sid: entry["files"] for sid, entry in manifest["shards"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="../shared/models/conll03-minilm-crf")
    parser.add_argument("--data", default="../shared/data/conll2003_en")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--store", help="distill only, on this existing store")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    corpus = {"name": "conll03", "lang": "en", "format": "conll", "scheme": "IOB1", "convert_to": "IOB2",
              "limit": args.sentences, "files": {"train": str(Path(args.data).resolve() / "train.txt"),
                                                 "dev": str(Path(args.data).resolve() / "valid.txt")}}
    params = {"annotate": {"teachers": {"en": str(Path(args.teacher).resolve())}, "corpora": [corpus],
                           "splits": ["train", "dev"], "k": 5, "shard_size": args.shard_size,
                           "batch_tokens": 4096, "device": "cpu"},
              "distill": {"kd": {"method": "structural"}, "device": "cpu", "use_unlabeled": False,
                          "model": {"encoder": {"kind": "bilstm"}, "decoder": {"kind": "crf"}},
                          "optim": {"epochs": args.epochs, "lr": 1e-3, "patience": 99}, "batch_tokens": 1024}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    out: dict = {"annotate_s": {1: [], 2: []}}
    store = Path(args.store).resolve() if args.store else work / "store-1-0"
    for r in range(0 if args.store else args.repeats):
        for n in (1, 2):
            store = work / f"store-{n}-{r}"
            command = ["annotate", "--params", "params.yaml", "--out", str(store), "--no-progress"]
            seconds = torchrun(n, command, work)
            overhead = torchrun(n, command, work)  # a resume with nothing left: start-up, read, plan
            out["annotate_s"][n].append(seconds - overhead)
            print(json.dumps({"stage": "annotate", "procs": n, "seconds": round(seconds, 2),
                              "startup_s": round(overhead, 2)}), flush=True)
    if not args.store:
        out["identical"] = shard_hashes(work / "store-1-0") == shard_hashes(work / "store-2-0")
    out["distill_sent_s"] = {}
    for n in (1, 2):
        run = work / f"run-{n}"
        torchrun(n, ["distill", "--params", "params.yaml", "--store", str(store), "--out", str(run),
                     "--no-progress"], work)
        metrics = json.loads((run / "metrics.json").read_text())
        fastest = min(metrics["epoch_seconds"])
        out["distill_sent_s"][n] = metrics["train_sentences"] / fastest
        print(json.dumps({"stage": "distill", "procs": n, "fastest_epoch_s": fastest}), flush=True)
    summary = {"distill_speedup": round(out["distill_sent_s"][2] / out["distill_sent_s"][1], 2),
               "distill_sent_s": {n: round(v, 1) for n, v in out["distill_sent_s"].items()}, "work": str(work)}
    if not args.store:
        rows = json.loads((store / "manifest.json").read_text())["totals"]["rows"]
        best = {n: min(v) for n, v in out["annotate_s"].items()}
        summary.update(sentences=rows, annotate_speedup=round(best[1] / best[2], 2),
                       annotate_sent_s={n: round(rows / s, 1) for n, s in best.items()},
                       two_process_store_identical=out["identical"])
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
