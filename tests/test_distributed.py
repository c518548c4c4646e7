"""Both stages under torchrun (2 CPU processes, gloo): annotate writes the store a single process
writes; distill with DDP reaches the single-process result and never hangs on uneven shards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from store import open_store, verify_store
from store.build import build_store
from tests.store_fakes import FakeTeacher, config

ROOT = Path(__file__).resolve().parents[1]
ANNOTATE = """
import sys
from pathlib import Path
from tests.store_fakes import FakeTeacher, config
from store.build import build_store
cfg = config(Path(sys.argv[1]), out=Path(sys.argv[2]), sizes={"train": 45, "dev": 14}, unlabeled=11)
build_store(cfg, teachers={"en": FakeTeacher()})
"""


def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--no-python",
           sys.executable, "-c", script, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def shard_files(store: Path) -> dict[str, dict]:
    manifest = json.loads((store / "manifest.json").read_text())
    return {sid: entry["files"] for sid, entry in manifest["shards"].items()}


def test_two_process_annotate_writes_the_single_process_store(tmp_path):
    data = tmp_path / "data"
    single = tmp_path / "single"
    build_store(config(data, out=single, sizes={"train": 45, "dev": 14}, unlabeled=11),
                teachers={"en": FakeTeacher()})
    double = tmp_path / "double"
    run = torchrun(ANNOTATE, str(data), str(double))
    assert run.returncode == 0, run.stderr[-3000:]
    assert shard_files(double) == shard_files(single)  # every table and array file, byte for byte
    assert verify_store(double) == []
    a, b = open_store(single).frame(), open_store(double).frame()
    assert a.drop(columns=["shard"], errors="ignore").equals(b.drop(columns=["shard"], errors="ignore"))
    again = torchrun(ANNOTATE, str(data), str(double))  # a rerun resumes: nothing left to do
    assert again.returncode == 0 and shard_files(double) == shard_files(single)


DISTILL = """
import json, sys
from pipeline.config import DistillConfig, from_dict
from store.feed import distill
cfg = from_dict(DistillConfig, json.loads(sys.argv[1]))
distill(cfg, progress=False)
"""


def distill_params(store: str, out: Path, **over) -> dict:
    model = {"encoder": {"kind": "bilstm", "word_dim": 8, "hidden": 16, "char": "none", "dropout": 0.0},
             "decoder": {"kind": "crf"}}
    params = {"store": store, "out": str(out), "device": "cpu", "model": model, "batch_tokens": 80,
              "kd": {"method": "posterior", "lam": 0.5},
              "optim": {"epochs": 15, "lr": 0.05, "head_lr": 0.05, "warmup": 0.0, "patience": 9, "seed": 3}}
    params.update(over)
    return params


@pytest.fixture(scope="module")
def uneven_store(tmp_path_factory):
    from tests.stores import make_store

    path, _ = make_store(tmp_path_factory.mktemp("ddp"), shard_size=20)  # train: 48 rows -> 3 shards
    assert len(open_store(path).shards("train")) == 3
    return path


def test_ddp_distill_on_two_ranks_reaches_the_one_rank_result_and_never_hangs(uneven_store, tmp_path):
    """Three train shards over two ranks: uneven parts (Join), no hang; rank 0 writes the run;
    the 2-rank student's dev F1 and final loss are close to the 1-rank student's."""
    from pipeline.config import DistillConfig, from_dict
    from store.feed import distill

    one = distill(from_dict(DistillConfig, distill_params(uneven_store, tmp_path / "one")), progress=False)
    run = torchrun(DISTILL, json.dumps(distill_params(uneven_store, tmp_path / "two")))
    assert run.returncode == 0, run.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["steps"] < one["steps"]  # each rank took about half the steps
    assert abs(two["dev"]["all"]["f1"] - one["dev"]["all"]["f1"]) < 0.15
    import csv

    losses = {name: float(list(csv.DictReader(open(tmp_path / name / "epochs.csv")))[-1]["loss"])
              for name in ("one", "two")}
    assert abs(losses["two"] - losses["one"]) < 0.35 * losses["one"], losses
    again = torchrun(DISTILL, json.dumps(distill_params(uneven_store, tmp_path / "again")))
    assert again.returncode == 0
    twice = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert twice["dev"] == two["dev"] and twice["steps"] == two["steps"]  # same seed, same world: same model
