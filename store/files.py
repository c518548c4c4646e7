"""Local-file plumbing of the writer: checksums, fsync'd atomic writes, Zarr groups, removal of named
files only, the store's write lock, and which folders may become a store."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from store.schema import (FORMAT, LOCK_FILE, MANIFEST, OWN_TEMP, SCHEMA_VERSION, StoreError,
                          StoreLockedError)

CHUNK_BYTES = 4 << 20  # target uncompressed bytes of one Zarr chunk

BLOCK = 1 << 20
UNREADABLE_LOCK_GRACE_S = 30.0  # a lock file still empty after this long was left by a crash


def local_root(path: str | os.PathLike) -> Path:
    """The local directory of a store path or ``file://`` URL (writing needs a local file system)."""
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise StoreError(f"{text}: StoreWriter needs a local path or file:// URL (another URL: "
                         "store.remote.RemoteStoreWriter, which build_store picks for it)")
    return Path(text)


def sha256_file(path: str | Path, fs=None) -> str:
    """sha256 (hex) of a local file, or of one read through the fsspec file system ``fs``, in
    blocks; FileNotFoundError when it is missing."""
    h = hashlib.sha256()
    with (open(path, "rb") if fs is None else fs.open(path, "rb")) as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def files_under(root: Path, rel: str) -> list[str]:
    """Store-relative '/' paths of every file under ``root / rel`` (a file or a folder), sorted."""
    target = root / rel
    if target.is_file():
        return [rel]
    return sorted(p.relative_to(root).as_posix() for p in target.rglob("*") if p.is_file())


def entries_under(root: Path, rel: str) -> list[str]:
    """Everything under ``root / rel`` that is not a real folder (files, symbolic links of any kind),
    store-relative; links are never followed. The writer checks with it that a path it is about to
    fill holds nothing it did not write."""
    target = root / rel
    if target.is_symlink() or (os.path.lexists(target) and not target.is_dir()):
        return [rel]
    out = []
    for folder, dirs, names in os.walk(target):
        base = Path(folder).relative_to(root).as_posix()
        out += [f"{base}/{n}" for n in names + [d for d in dirs if (Path(folder) / d).is_symlink()]]
    return sorted(out)


def real_folders(root: Path, rel: str) -> bool:
    """Whether every folder between ``root`` and ``root / rel`` is a real folder (no symbolic link),
    so that removing ``rel`` cannot reach outside the store; False when one is missing."""
    folder = root
    for part in rel.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise StoreError(f"{root}: {folder.relative_to(root).as_posix()} is a symbolic link; a "
                             "store's folders must be real folders inside it")
        if not folder.is_dir():
            return False
    return True


def remove_named(root: Path, rels: set[str] | list[str]) -> None:
    """Unlink exactly the store-relative files ``rels`` (a symbolic link is removed as a link, never
    followed), then the folders this left empty up to the top folder of each path. Nothing else is
    touched: the writer deletes only files its own records name."""
    emptied = set()
    for rel in sorted(rels):
        path = root / rel
        if real_folders(root, rel) and (path.is_symlink() or path.is_file()):
            path.unlink()
            emptied.add(path.parent)
    for folder in sorted(emptied, key=lambda p: -len(p.parts)):
        while folder != root and folder.parent != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def remove_scratch(path: Path) -> None:
    """Remove one of the writer's own scratch entries (``.tmp/<shard>``, ``.tmp/<teacher>.zarr``): a
    symbolic link put there is removed as a link, never followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


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


def parse_lock(raw: bytes) -> dict | None:
    """The holder record of a lock file's bytes: a dict with an int ``pid``, or None while the
    writer has created the file but not yet written it (empty, or torn mid-write)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def is_lock_bytes(raw: bytes) -> bool:
    """Whether a ``.lock`` file's bytes can be a structkd lock: empty, or starting as the record
    ``StoreLock.acquire`` writes. Anything else is someone else's file and is never taken over."""
    return not raw.strip() or raw.lstrip().startswith(b'{"pid"')


def holder_alive(holder: dict) -> bool:
    """Whether a lock holder may still be writing: a live pid on this host, or any other host (whose
    processes this host cannot see)."""
    return holder.get("host") != socket.gethostname() or _alive(holder["pid"])


def foreign_lock(lock: str, raw: bytes) -> StoreError:
    """The refusal of a lock path holding something that is not a structkd lock record."""
    return StoreError(f"{lock}: is not a structkd lock file ({len(raw)} bytes of something else); "
                      "annotate does not remove it: move it away")


def locked_by(store: str, holder: dict | None, lock: str) -> StoreLockedError:
    """The refusal of a store whose lock ``holder`` (None: a record still being written) is alive."""
    who = (f"pid {holder['pid']} on {holder.get('host')} since {holder.get('since')}"
           if holder else "a process that is still starting")
    return StoreLockedError(f"{store}: store is locked by {who}; another annotate is writing it. Wait for "
                            f"it, or delete {lock} if that process is gone.")


class StoreLock:
    """Exclusive write lock: ``<store>/.lock`` created with O_EXCL, holding pid, host and start time.

    A lock whose process is gone (same host, pid not alive) is stale and is taken over; a lock held
    by a live process, or by another host, raises ``StoreLockedError`` naming the holder. A ``.lock``
    that is not a structkd lock record is refused, never removed.
    """

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE
        self.held = False

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _holder(self) -> dict | None:
        raw = self._read()
        return None if raw is None else parse_lock(raw)

    def _stale(self, raw: bytes) -> bool:
        holder = parse_lock(raw)
        if holder is None:
            try:
                return time.time() - self.path.stat().st_mtime > UNREADABLE_LOCK_GRACE_S
            except FileNotFoundError:
                return True
        return not holder_alive(holder)

    def _break(self, raw: bytes) -> None:
        """Take a stale lock away. Renamed first, then checked: if another process broke it and took
        the lock meanwhile, the grave holds that live lock, which is put back (link: never over a
        newer one) instead of deleted."""
        grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if grave.read_bytes() != raw:
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        grave.unlink()

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raw = self._read()
                if raw is None:
                    continue
                if not is_lock_bytes(raw):
                    raise foreign_lock(str(self.path), raw) from None
                if not self._stale(raw):
                    raise locked_by(str(self.path.parent), parse_lock(raw), str(self.path)) from None
                self._break(raw)
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


def _compressor(dtype: np.dtype):
    if dtype == np.float32:  # byte-shuffling float32 before zstd saves ~8% on emissions
        return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4)
    return ZstdCodec(level=3)


def write_arrays(folder: Path, arrays: dict[str, np.ndarray], attributes: dict) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(folder), mode="w", zarr_format=3,
                            attributes=attributes)
    for name, data in arrays.items():
        row = max(1, data[:1].nbytes or data.dtype.itemsize)
        chunks = (max(1, min(len(data), CHUNK_BYTES // row)),) + data.shape[1:]
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                 compressors=_compressor(data.dtype))
        if data.size:
            arr[...] = data


def read_manifest(root: Path) -> dict | None:
    """The store's manifest, None when there is none; StoreError when ``manifest.json`` is unreadable,
    not a structkd manifest or of another schema version (annotate never writes over it)."""
    path = root / MANIFEST
    if not os.path.lexists(path):
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StoreError(f"{root}: unreadable {MANIFEST} ({type(err).__name__}: {err}); if this is a "
                         "structkd store it is damaged: write a new store") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{root}: {MANIFEST} is not a structkd store manifest; annotate does not write "
                         "into this folder: choose another --out")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{root}: not a structkd store of schema version {SCHEMA_VERSION}")
    if not all(isinstance(manifest.get(key), dict) for key in ("options", "teachers", "shards")):
        raise StoreError(f"{root}: {MANIFEST} lacks its options / teachers / shards; the store is "
                         "damaged: write a new store")
    return manifest


def _own_leftover(entry: Path) -> bool:
    """Whether a top-level entry of a folder without manifest is one a structkd writer leaves there
    before its first manifest: its lock record (or a lock just created, still empty: another writer
    starting), a temporary manifest, a broken lock on its way out. An empty ``.lock`` older than the
    grace period is not counted: it may be anyone's, and the lock would take it over."""
    if entry.is_symlink() or not entry.is_file():
        return False
    if entry.name == LOCK_FILE:
        with open(entry, "rb") as fh:
            raw = fh.read(4096)
        if raw.strip():
            return parse_lock(raw) is not None
        return time.time() - entry.stat().st_mtime <= UNREADABLE_LOCK_GRACE_S
    return bool(OWN_TEMP.fullmatch(entry.name))


def check_folder(root: Path) -> None:
    """Refuse a path annotate must not write a store into: a file, or a non-empty folder without
    ``manifest.json`` (someone's own folder: the writer would mix its files with theirs)."""
    if os.path.lexists(root) and not root.is_dir():
        raise StoreError(f"{root}: exists and is not a folder; a store is a folder: choose another --out")
    if not root.is_dir() or os.path.lexists(root / MANIFEST):
        return
    found = sorted(e.name + ("/" if e.is_dir() else "") for e in root.iterdir() if not _own_leftover(e))
    if found:
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        raise StoreError(f"{root}: not a structkd store (no {MANIFEST}) and not empty: it holds "
                         f"{', '.join(found[:5])}{more}; annotate writes a new store only into a missing "
                         "or empty folder: choose another --out")
