"""Corruption campaign: random damage to a store, then `store verify` and `distill` on it.

    nice -n 10 python bench/corruption_campaign.py --trials 240 --seed 0

A store (FakeTeacher, 40 train + 10 dev + 10 test + 8 raw sentences, 8 per shard) is damaged once
per trial, on a fresh copy: a random bit of a random byte flipped, the file truncated at a random
length, or the file deleted. Trial i picks its file category round-robin (manifest, completion
marker, Parquet table, Zarr metadata, tensor chunk, teacher array) and the damage by i // 6 mod 3.
Each damaged store is then verified (`verify_store`) and a student is distilled from it (BiLSTM-CRF,
posterior KD, one epoch, seeded, one thread). Outcomes of distill: ``refused`` (StoreError),
``error`` (another exception, named in the record), ``identical`` (trained a model byte-identical to
the one from the clean store: the damage hit bytes distill never uses), or ``DIFFERENT`` (trained on
damaged data without noticing: silent corruption, the failure this campaign looks for).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.store_fakes: the deterministic FakeTeacher and corpus writer

import torch

from pipeline.config import DecoderConfig, DistillConfig, EncoderConfig, KDConfig, ModelConfig, OptimConfig
from store.feed import distill
from store.build import build_store
from store import StoreError, verify_store
from tests.store_fakes import FakeTeacher, config

CATEGORIES = ("manifest", "marker", "table", "zarr-metadata", "tensor-chunk", "teacher")
DAMAGE = ("flip", "truncate", "delete")


def category(rel: str) -> str:
    if rel == "manifest.json":
        return "manifest"
    if rel.startswith("shards/"):
        return "marker"
    if rel.startswith("table/"):
        return "table"
    if rel.startswith("teachers/"):
        return "teacher"
    return "zarr-metadata" if rel.endswith("zarr.json") else "tensor-chunk"


def build(work: Path) -> Path:
    cfg = config(work / "data", out=work / "clean", sizes={"train": 40, "dev": 10, "test": 10}, unlabeled=8)
    build_store(cfg, teachers={"en": FakeTeacher()})
    return work / "clean"


def train(store: Path, out: Path) -> str:
    """sha256 over the trained model folder's files but metrics.json (which holds timings)."""
    cfg = DistillConfig(store=str(store), kd=KDConfig(method="posterior"),
                        model=ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none",
                                                        dropout=0.0), DecoderConfig(kind="crf")),
                        optim=OptimConfig(epochs=1, lr=1e-2, warmup=0.0, seed=1), batch_tokens=60,
                        out=str(out), device="cpu")
    distill(cfg, progress=False)
    digest = hashlib.sha256()
    for path in sorted((out / "model").rglob("*")):
        if path.is_file() and path.name != "metrics.json":
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def damage(path: Path, kind: str, rng: random.Random) -> str:
    data = path.read_bytes()
    if kind == "delete" or not data:
        path.unlink()
        return "deleted"
    if kind == "truncate":
        size = rng.randrange(len(data))
        path.write_bytes(data[:size])
        return f"truncated to {size}/{len(data)} bytes"
    at, bit = rng.randrange(len(data)), rng.randrange(8)
    raw = bytearray(data)
    raw[at] ^= 1 << bit
    path.write_bytes(bytes(raw))
    return f"bit {bit} of byte {at}/{len(data)} flipped"


def trial(i: int, rng: random.Random, clean: Path, files: dict[str, list[str]], reference: str,
          work: Path) -> dict:
    cat, kind = CATEGORIES[i % len(CATEGORIES)], DAMAGE[(i // len(CATEGORIES)) % len(DAMAGE)]
    rel = rng.choice(files[cat])
    store = work / f"trial-{i:03d}"
    shutil.copytree(clean, store)
    what = damage(store / rel, kind, rng)
    try:
        problems = verify_store(store)
    except Exception as err:  # noqa: BLE001 - verify must report, never raise: recorded as a failure
        problems = [f"VERIFY RAISED {type(err).__name__}: {err}"]
    shard = rel.split("/")[1].rsplit(".", 1)[0] if "/" in rel else "manifest"
    precise = any(rel in p or shard in p or "manifest" in p for p in problems)
    try:
        outcome = "identical" if train(store, work / f"run-{i:03d}") == reference else "DIFFERENT"
    except StoreError:
        outcome = "refused"
    except Exception as err:  # noqa: BLE001 - every other failure is recorded with its type
        outcome = f"error {type(err).__name__}"
    shutil.rmtree(store)
    shutil.rmtree(work / f"run-{i:03d}", ignore_errors=True)
    return {"trial": i, "category": cat, "damage": kind, "file": rel, "what": what,
            "verify_problems": len(problems), "verify_names_it": precise,
            "first_problem": problems[0][:160] if problems else "", "distill": outcome}


def run(trials: int, seed: int, work: Path) -> dict:
    torch.set_num_threads(1)
    rng = random.Random(seed)
    clean = build(work)
    reference = train(clean, work / "reference-run")
    if train(clean, work / "reference-run-2") != reference:
        raise RuntimeError("distill is not deterministic on this machine: model comparison impossible")
    files: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for path in sorted(clean.rglob("*")):
        if path.is_file() and path.name != ".lock":
            files[category(path.relative_to(clean).as_posix())].append(path.relative_to(clean).as_posix())
    records = [trial(i, rng, clean, files, reference, work) for i in range(trials)]
    table = Counter((r["category"], r["distill"], r["verify_problems"] > 0) for r in records)
    summary = {
        "trials": len(records), "files_by_category": {c: len(v) for c, v in files.items()},
        "verify_flagged": sum(r["verify_problems"] > 0 for r in records),
        "verify_raised": sum(r["first_problem"].startswith("VERIFY RAISED") for r in records),
        "verify_names_file_or_shard": sum(r["verify_names_it"] for r in records),
        "distill": dict(Counter(r["distill"] for r in records)),
        "silent_corruption": sum(r["distill"] == "DIFFERENT" for r in records),
        "by_category": {f"{c} | distill {d} | verify {'flags' if v else 'silent'}": n
                        for (c, d, v), n in sorted(table.items())},
    }
    return {"summary": summary, "trials": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Also write every trial's record here.")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="corruption-campaign-") as work:
        result = run(args.trials, args.seed, Path(work))
    result["summary"]["wall_s"] = round(time.perf_counter() - started, 1)
    for r in result["trials"]:
        if r["distill"] not in ("refused", "identical") or not r["verify_problems"]:
            print(f"trial {r['trial']:3d} {r['category']:13s} {r['file']} ({r['what']}): distill "
                  f"{r['distill']}, verify {r['verify_problems']} problem(s) {r['first_problem']}")
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
