"""Both stages on 1 vs 2 processes of this machine, side by side in one run (issue 16, CPU figures).

    python bench/bench_scale.py --teacher ../shared/models/conll03-minilm-crf --sentences 1000

(1) annotate: ``torchrun --nproc_per_node N structkd annotate`` for N = 1, 2 (one intra-op thread
    per process), sentences/s of the command less its fixed cost (the same command again, resuming
    a complete store: start-up, corpus reading, planning), alternated ``--repeats`` times; the byte
    identity of the 2-process store with the 1-process one (every shard file's sha256).
(2) distill: ``torchrun --nproc_per_node N structkd distill`` (DDP over gloo) of a BiLSTM-CRF student
    with structural KD from that store, N = 1, 2: training sentences/s of the fastest epoch.
(3) the machine's ceiling: two independent 1-process distills at once (their summed sentences/s).
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
FROZEN = {"hidden": 256, "init_from": "minilm", "freeze_embeddings": True}


def torchrun(nproc: int, args: list[str], cwd: Path, copies: int = 1) -> float:
    """Run ``structkd ARGS`` under torchrun on ``nproc`` processes (``copies`` independent jobs at
    once, ``{copy}`` in ARGS replaced by the job's number); the wall seconds until all end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmds = [[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--rdzv-backend",
             "c10d", "--rdzv-endpoint", "localhost:0", "--no-python", "structkd", "--threads", "1",
             *(a.replace("{copy}", str(c)) for a in args)] for c in range(copies)]
    logs = [tempfile.TemporaryFile("w+") for _ in cmds]  # not pipes: a full one would stall its job
    started = time.perf_counter()
    jobs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
            for cmd, log in zip(cmds, logs)]
    codes = [job.wait() for job in jobs]
    seconds = time.perf_counter() - started
    for cmd, code, log in zip(cmds, codes, logs):
        if code:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{log.read()[-2000:]}")
    return seconds


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
    parser.add_argument("--frozen", action="store_true", help="the student of configs/conll03_converged.yaml: "
                        "hidden 256, word vectors from MiniLM's input embeddings, frozen")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    corpus = {"name": "conll03", "lang": "en", "format": "conll", "scheme": "IOB1", "convert_to": "IOB2",
              "limit": args.sentences, "files": {"train": str(Path(args.data).resolve() / "train.txt"),
                                                 "dev": str(Path(args.data).resolve() / "valid.txt")}}
    params = {"annotate": {"teachers": {"en": str(Path(args.teacher).resolve())}, "corpora": [corpus],
                           "splits": ["train", "dev"], "k": 5, "shard_size": args.shard_size,
                           "batch_tokens": 4096, "device": "cpu"},
              "distill": {"kd": {"method": "structural"}, "device": "cpu", "use_unlabeled": False,
                          "model": {"encoder": {"kind": "bilstm", **FROZEN} if args.frozen else {"kind": "bilstm"},
                                    "decoder": {"kind": "crf"}},
                          "optim": {"epochs": args.epochs, "lr": 1e-3, "patience": 99}, "batch_tokens": 1024}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    out: dict = {"annotate_s": {1: [], 2: []}}
    store = Path(args.store).resolve() if args.store else work / "store-1-0"
    for r in range(0 if args.store else args.repeats):
        for n in (1, 2):
            command = ["annotate", "--params", "params.yaml", "--out", str(work / f"store-{n}-{r}"), "--no-progress"]
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
    # the machine's ceiling: two independent 1-process runs at once (no communication, no waiting)
    torchrun(1, ["distill", "--params", "params.yaml", "--store", str(store), "--out", str(work / "alone-{copy}"),
                 "--no-progress"], work, copies=2)
    each = [json.loads((work / f"alone-{c}" / "metrics.json").read_text()) for c in range(2)]
    out["distill_sent_s"]["2 independent"] = sum(m["train_sentences"] / min(m["epoch_seconds"]) for m in each)
    print(json.dumps({"stage": "distill", "procs": "2 independent",
                      "fastest_epoch_s": [min(m["epoch_seconds"]) for m in each]}), flush=True)
    one = out["distill_sent_s"][1]
    summary = {"distill_speedup": round(out["distill_sent_s"][2] / one, 2),
               "independent_speedup": round(out["distill_sent_s"]["2 independent"] / one, 2),
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
