"""Local-file plumbing of the writer: checksums, fsync'd atomic writes, and the store's write lock."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

from store.schema import LOCK_FILE, StoreError, StoreLockedError

BLOCK = 1 << 20
UNREADABLE_LOCK_GRACE_S = 30.0  # a lock file still empty after this long was left by a crash


def local_root(path: str | os.PathLike) -> Path:
    """The local directory of a store path or ``file://`` URL (writing needs a local file system)."""
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise StoreError(f"{text}: the store writer needs a local path or file:// URL "
                         "(write locally, then copy the finished store to its remote location)")
    return Path(text)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def files_under(root: Path, rel: str) -> list[str]:
    """Store-relative '/' paths of every file under ``root / rel`` (a file or a folder), sorted."""
    target = root / rel
    if target.is_file():
        return [rel]
    return sorted(p.relative_to(root).as_posix() for p in target.rglob("*") if p.is_file())


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (and ``path`` itself)."""
    items = [path] if path.is_file() else sorted(path.rglob("*"), reverse=True) + [path]
    for item in items:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_json(path: Path, payload: dict) -> None:
    """Write JSON to a hidden temporary sibling, fsync, rename over ``path``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, sort_keys=True, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class StoreLock:
    """Exclusive write lock: ``<store>/.lock`` created with O_EXCL, holding pid, host and start time.

    A lock whose process is gone (same host, pid not alive) is stale and is taken over; a lock held
    by a live process, or by another host, raises ``StoreLockedError`` naming the holder.
    """

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE
        self.held = False

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:
            try:
                return time.time() - self.path.stat().st_mtime > UNREADABLE_LOCK_GRACE_S
            except FileNotFoundError:
                return True
        return holder.get("host") == socket.gethostname() and not _alive(holder["pid"])

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    who = (f"pid {holder['pid']} on {holder.get('host')} since {holder.get('since')}"
                           if holder else "a process that is still starting")
                    raise StoreLockedError(
                        f"{self.path.parent}: store is locked by {who}; another annotate is writing "
                        f"it. Wait for it, or delete {self.path} if that process is gone.") from None
                grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.rename(self.path, grave)
                    grave.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return
        raise StoreLockedError(f"{self.path}: could not take the store lock (contended)")

    def release(self) -> None:
        if self.held and (self._holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False
