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
