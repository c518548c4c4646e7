"""Helpers of the store's tests: a byte snapshot of a folder (to prove nothing of the user's was
deleted or changed), hand-made shard specs (plans the writer must refuse), a store re-signed after a
deliberate edit (so that only the recomputed invariants can catch it), and a torchrun launcher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from store.files import sha256_file
from store.schema import DIGEST, manifest_digest
from store.writer import ShardSpec

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file (and link target) under ``folder``, with its bytes."""
    return {p.relative_to(folder).as_posix(): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def spec(teacher: str, corpus: str, split: str, chunk: int, sha: str, size: int = 8) -> ShardSpec:
    """The ShardSpec of chunk ``chunk`` (``size`` sentences) of a corpus split, input hash ``sha``."""
    return ShardSpec(f"{teacher}.{corpus}.{split}.{chunk:05d}", teacher, corpus, split, "en", chunk * size,
                     size, sha)


def resign(store: Path) -> None:
    """Rewrite the sha256 of every shard and teacher file in the manifest and the completion markers,
    and the manifest's digest: a store edited on purpose whose checksums all match again."""
    for marker_file in (store / "shards").glob("*.json"):
        marker = json.loads(marker_file.read_text())
        marker["files"] = {rel: sha256_file(store / rel) for rel in marker["files"]}
        marker_file.write_text(json.dumps(marker))
    manifest = json.loads((store / "manifest.json").read_text())
    for entry in list(manifest["shards"].values()) + list(manifest["teachers"].values()):
        entry["files"] = {rel: sha256_file(store / rel) for rel in entry["files"]}
    manifest[DIGEST] = manifest_digest(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -c script args`` under torchrun with ``nproc`` CPU processes (gloo), one thread each."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--no-python",
           sys.executable, "-c", script, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
