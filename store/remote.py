"""Writing a store to an fsspec URL (``s3://``, ``gs://``, ``memory://`` ...): staged locally, uploaded
per shard (see store/README.md, "Writing to a URL").

``RemoteStoreWriter`` is a StoreWriter whose local folder is a staging copy (a temporary folder) of the
store's records: on open, under the lock at the URL, it downloads the manifest, the teachers' groups and
the completion markers. Every shard is committed in the staging folder exactly as in a local store
(checked rows, Parquet + Zarr, checksums, marker last), then uploaded in the local commit's order: an
intent marker (the files it brings, those it replaces), removal of the replaced files, the files, and
the final marker LAST, so that a reader or a resume never sees a final marker whose files are not all
there; then the staged files are deleted. Whether a shard is complete is read at the URL (its marker,
its file list and each file's sha256 through the fs), so a rerun skips the shards uploaded intact and
redoes the others (a missing or damaged file included). The manifest is uploaded each time the writer
saves it: the first record of a new store, the teachers, the plan, and after all shards at finalize.
Under torchrun every rank stages and uploads its own shards (``attach``); rank 0 finalizes.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
import weakref
from pathlib import Path

import fsspec

from store.files import (files_under, foreign_lock, holder_alive, is_lock_bytes, locked_by, parse_lock,
                         read_manifest, remove_named, sha256_file)
from store.schema import (LOCK_FILE, MANIFEST, MARKER_DIR, StoreError, StoreLockedError, StoreOptions,
                          TeacherMeta, check_relpath, is_shard_id, marker_path, table_path, teacher_path,
                          tensor_path)
from store.writer import SUBDIRS, ShardSpec, StoreWriter

READ_BACK_S = 0.5  # pause before reading back a lock written without exclusive create


def writer_type(out: str | os.PathLike) -> type[StoreWriter]:
    """The writer of the store ``out``: RemoteStoreWriter for a URL of another protocol than local
    files, StoreWriter for a local path or ``file://`` URL."""
    protocol, _ = fsspec.core.split_protocol(os.fspath(out))
    return StoreWriter if protocol in (None, "file", "local") else RemoteStoreWriter


class RemoteLock:
    """The store's write lock at ``<url>/.lock``: StoreLock's record (pid, host, since) and a random
    owner token; refused, stale and foreign locks as StoreLock (a lock whose pid is dead on this host
    is taken over, a ``.lock`` that is not a structkd lock is never removed).

    What is guaranteed depends on the backend; object stores have no atomic create-if-absent in
    general. The lock is created with ``fs.open(path, "xb")``. Where the backend makes that one
    conditional request (recent s3fs: an If-None-Match write; gcsfs: a generation precondition;
    adlfs: no overwrite; a POSIX file system), two jobs racing for the store get one winner. Where "x" is an
    existence check followed by a write (fsspec's memory file system, some backends) or is refused
    (then the record is written and read back after ``READ_BACK_S``: it must still hold this writer's
    token), a job started while another holds the lock is always refused, but two jobs starting in
    the same instant may both go on. A lock of another host is never stale here: that job holds the
    store until it ends or the user deletes the ``.lock`` (the message names it)."""

    def __init__(self, fs, path: str, url: str):
        self.fs, self.path, self.url = fs, path, url
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": uuid.uuid4().hex}
        self.held = False

    def _read(self) -> bytes | None:
        try:
            return self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None

    def _create(self, data: bytes) -> bool:
        """Create the lock if absent (FileExistsError if present); False when another writer's
        record replaced ours (no exclusive create)."""
        try:
            with self.fs.open(self.path, "xb") as fh:
                fh.write(data)
            return True
        except (ValueError, NotImplementedError):  # this backend has no exclusive create
            if self.fs.exists(self.path):
                raise FileExistsError(self.path) from None
            self.fs.pipe_file(self.path, data)
            time.sleep(READ_BACK_S)
            return self._read() == data
        except OSError:  # a backend may report a failed precondition as another OSError
            if self._read() is not None:
                raise FileExistsError(self.path) from None
            raise

    def acquire(self) -> None:
        data = json.dumps(self.record).encode("utf-8")
        for _ in range(3):
            try:
                if self._create(data):
                    self.held = True
                    return
                continue
            except FileExistsError:
                raw = self._read()
            if raw is None:
                continue
            if not is_lock_bytes(raw):
                raise foreign_lock(f"{self.url}/{LOCK_FILE}", raw)
            holder = parse_lock(raw)
            if holder is None or holder_alive(holder):
                raise locked_by(self.url, holder, f"{self.url}/{LOCK_FILE}")
            if self._read() == raw:  # stale: its process is dead on this host
                self.fs.rm_file(self.path)
        raise StoreLockedError(f"{self.url}/{LOCK_FILE}: could not take the store lock (contended)")

    def release(self) -> None:
        raw = self._read() if self.held else None
        if raw is not None and (parse_lock(raw) or {}).get("token") == self.record["token"]:
            self.fs.rm_file(self.path)
        self.held = False


def _as_url(method):
    """A StoreError names the URL rather than the staging folder; a failing transfer is one."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreError as err:
            raise type(err)(str(err).replace(str(self.root), self.url)) from None
        except OSError as err:
            raise StoreError(f"{self.url}: {type(err).__name__}: {err}") from None
    return wrapper


class RemoteStoreWriter(StoreWriter):
    """A StoreWriter of the store at an fsspec URL, staged in a temporary folder (module docstring)."""

    def __init__(self, url: str | os.PathLike, options: StoreOptions, *, mix_teachers: bool = False):
        self.url = os.fspath(url).rstrip("/")
        self.fs, remote = fsspec.core.url_to_fs(self.url)
        self.remote = remote.rstrip("/")
        self.staging = tempfile.mkdtemp(prefix="structkd-staging-")
        weakref.finalize(self, shutil.rmtree, self.staging, ignore_errors=True)
        super().__init__(Path(self.staging) / "store", options, mix_teachers=mix_teachers)
        self.remote_lock = RemoteLock(self.fs, self._full(LOCK_FILE), self.url)
        self._folders: set[str] = set()

    @classmethod
    def attach(cls, path: str | os.PathLike, options: StoreOptions,
               teachers: dict[str, TeacherMeta]) -> StoreWriter:
        writer = super().attach(path, options, teachers)
        _as_url(cls._pull)(writer)
        writer.manifest = read_manifest(writer.root) or {"shards": {}}
        for sub in SUBDIRS:
            (writer.root / sub).mkdir(parents=True, exist_ok=True)
        return writer

    def _full(self, rel: str) -> str:
        return f"{self.remote}/{rel}" if rel else self.remote

    def _files(self, rel: str) -> list[str]:
        """Store-relative paths of the files at the URL under ``rel`` (a file or a folder), sorted."""
        prefix = self.remote + "/"
        return sorted(p[len(prefix):] for p in self.fs.find(self._full(rel)) if p.startswith(prefix))

    def _sha256(self, rel: str) -> str | None:
        try:
            return sha256_file(self._full(rel), self.fs)
        except FileNotFoundError:
            return None

    def _get(self, rel: str) -> None:
        local = self.root / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self._full(check_relpath(rel)), str(local))

    def _put(self, rel: str, data: bytes | None = None) -> None:
        """Upload the staged file ``rel`` (or ``data``) to the URL."""
        full = self._full(check_relpath(rel))
        parent = full.rsplit("/", 1)[0]
        if parent not in self._folders:  # object stores need none; other file systems do
            self.fs.makedirs(parent, exist_ok=True)
            self._folders.add(parent)
        if data is None:
            self.fs.put_file(str(self.root / rel), full)
        else:
            self.fs.pipe_file(full, data)

    def _pull(self) -> None:
        """Download the store's records into the staging folder: manifest, teachers' groups and
        completion markers. A URL holding files but no manifest is refused (as ``check_folder``)."""
        if not self.fs.exists(self._full(MANIFEST)):
            found = [rel for rel in self._files("") if rel != LOCK_FILE]
            if found:
                raise StoreError(f"{self.url}: not a structkd store (no {MANIFEST}) and not empty: it holds "
                                 f"{', '.join(found[:5])}; annotate writes a new store only where nothing is: "
                                 "choose another --out")
            return
        self._get(MANIFEST)
        manifest = read_manifest(self.root)
        rels = [f for tid in manifest["teachers"] for f in self._files(teacher_path(tid))]
        rels += [f for f in self._files(MARKER_DIR)
                 if f.count("/") == 1 and f.endswith(".json") and is_shard_id(f[len(MARKER_DIR) + 1:-5])]
        for rel in rels:
            self._get(rel)

    @_as_url
    def __enter__(self) -> StoreWriter:
        self.remote_lock.acquire()
        try:
            self._pull()
            return super().__enter__()
        except BaseException:
            self.remote_lock.release()
            raise

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self.remote_lock.release()
            shutil.rmtree(self.staging, ignore_errors=True)

    def _save_manifest(self) -> None:
        super()._save_manifest()
        self._put(MANIFEST)

    def _marker(self, shard: str) -> dict | None:
        """The shard's marker at the URL (refreshed into the staging copy: another rank may have
        written it since the pull)."""
        try:
            self._get(marker_path(shard))
        except FileNotFoundError:
            (self.root / marker_path(shard)).unlink(missing_ok=True)
        except (OSError, StoreError):
            return None
        return super()._marker(shard)

    def _intact(self, shard: str, marker: dict) -> bool:
        """Whether the marker lists exactly the shard's files at the URL, all matching."""
        if marker.get("options") != self.options.to_json():
            return False
        files = marker["files"]
        return sorted(files) == self._files(table_path(shard)) + self._files(tensor_path(shard)) \
            and all(self._sha256(f) == h for f, h in files.items())

    is_complete = _as_url(StoreWriter.is_complete)
    begin = _as_url(StoreWriter.begin)
    finalize = _as_url(StoreWriter.finalize)

    @_as_url
    def add_teacher(self, meta: TeacherMeta) -> str:
        """Register the teacher (StoreWriter.add_teacher: the manifest first), then make its group at
        the URL the staged one: upload what differs, remove what the writer removed."""
        tid = super().add_teacher(meta)
        rel = teacher_path(tid)
        staged = files_under(self.root, rel)
        for f in staged:
            if self._sha256(f) != self.manifest["teachers"][tid]["files"].get(f):
                self._put(f)
        self._remove_at_url(set(self._files(rel)) - set(staged))
        return tid

    @_as_url
    def write_shard(self, spec: ShardSpec, rows: list[dict]) -> dict:
        """Commit the shard in the staging folder, then upload it: intent marker, removal of the files
        it replaces, its files, its final marker last; then delete the staged files."""
        named = self._named(spec.id)
        present = self._files(table_path(spec.id)) + self._files(tensor_path(spec.id))
        foreign = [f for f in present if f not in named]
        if foreign:
            raise StoreError(f"{self.url}: shard {spec.id}: {foreign[0]} is not named by this store's "
                             "records; annotate does not delete it: move it out of the store")
        marker = super().write_shard(spec, rows)
        intent = {"spec": marker["spec"], "writing": True, "files": marker["files"], "replaces": sorted(named)}
        self._put(marker_path(spec.id), json.dumps(intent, indent=1, sort_keys=True).encode("utf-8") + b"\n")
        self._remove_at_url(set(present) - set(marker["files"]))
        for rel in marker["files"]:
            self._put(rel)
        self._put(marker_path(spec.id))
        remove_named(self.root, set(marker["files"]))
        return marker

    def _remove(self, rels: set[str]) -> None:
        super()._remove(rels)
        self._remove_at_url(rels)

    def _remove_at_url(self, rels: set[str]) -> None:
        for rel in sorted(rels):
            try:
                self.fs.rm_file(self._full(check_relpath(rel)))
            except FileNotFoundError:
                pass
