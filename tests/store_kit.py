"""Helpers of the store's hostile tests and campaign: a byte snapshot of a folder (to prove nothing of
the user's was deleted or changed) and hand-made shard specs (plans the writer must refuse)."""
from __future__ import annotations

import os
from pathlib import Path

from store.writer import ShardSpec


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file (and link target) under ``folder``, with its bytes."""
    return {p.relative_to(folder).as_posix(): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def spec(teacher: str, corpus: str, split: str, chunk: int, sha: str, size: int = 8) -> ShardSpec:
    """The ShardSpec of chunk ``chunk`` (``size`` sentences) of a corpus split, input hash ``sha``."""
    return ShardSpec(f"{teacher}.{corpus}.{split}.{chunk:05d}", teacher, corpus, split, "en", chunk * size,
                     size, sha)
