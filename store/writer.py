"""StoreWriter: one process writes a store; every shard is committed atomically (see store/README.md).

Commit of a shard: build the Parquet file and the Zarr group under ``.tmp/``, fsync, checksum every
file; drop the old completion marker; rename the Zarr group then the Parquet file into place; write the
marker ``shards/<shard>.json`` (files + sha256) last. A shard is complete only when its marker exists
and every file matches it. ``finalize`` rebuilds ``manifest.json`` and removes files of no shard.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from store.files import (StoreLock, atomic_json, files_under, fsync_dir, fsync_tree, local_root,
                         sha256_file)
from store.schema import (EDGE_OFFSETS, FORMAT, MANIFEST, MARKER_DIR, SCHEMA_VERSION, SPLITS,
                          STORED_ARRAYS, TABLE_DIR, TABLE_SCHEMA, TEACHER_ARRAYS, TEACHER_DIR,
                          TENSOR_DIR, TMP_DIR, TOKEN_OFFSETS, StoreError, StoreOptions, TeacherMeta,
                          marker_path, table_path, teacher_path, tensor_path)
from store.tensors import edge_offsets, offsets_of

ROW_GROUP = 1024  # sentences per Parquet row group (streaming reads one group at a time)
CHUNK_BYTES = 4 << 20  # target uncompressed bytes of one Zarr chunk


@dataclass(frozen=True)
class ShardSpec:
    """One planned shard: sentences ``first_index .. first_index + rows - 1`` of a corpus split."""

    id: str
    teacher: str
    corpus: str
    split: str
    lang: str
    first_index: int
    rows: int
    input_sha256: str  # of the shard's input sentences (sids, tokens, gold)

    @property
    def group(self) -> tuple[str, str, str]:
        return self.teacher, self.corpus, self.split


def _compressor(dtype: np.dtype):
    if dtype == np.float32:  # byte-shuffling float32 before zstd saves ~8% on emissions
        return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4)
    return ZstdCodec(level=3)


def _write_arrays(folder: Path, arrays: dict[str, np.ndarray], attributes: dict) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(folder), mode="w", zarr_format=3,
                            attributes=attributes)
    for name, data in arrays.items():
        row = max(1, data[:1].nbytes or data.dtype.itemsize)
        chunks = (max(1, min(len(data), CHUNK_BYTES // row)),) + data.shape[1:]
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                 compressors=_compressor(data.dtype))
        if data.size:
            arr[...] = data


def _list_array(values: np.ndarray, lengths: np.ndarray, item: pa.DataType) -> pa.Array:
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values, type=item))


def shard_table(rows: list[dict]) -> pa.Table:
    """The Parquet rows of a shard (TABLE_SCHEMA) from per-sentence dicts."""
    lengths = np.array([r["length"] for r in rows], dtype=np.int64)
    k = len(rows[0]["kbest_logprob"])
    paths = np.concatenate([np.asarray(r["kbest_paths"], dtype=np.int16).reshape(-1) for r in rows])
    inner = _list_array(paths, np.repeat(lengths, k), pa.int16())
    cols = {name: pa.array([r[name] for r in rows], type=TABLE_SCHEMA.field(name).type)
            for name in ("sid", "corpus", "split", "lang", "teacher", "shard", "index", "length",
                         "tokens", "gold", "gold_ids", "residual_mass", "log_z")}
    cols["viterbi"] = _list_array(np.concatenate([np.asarray(r["viterbi"], dtype=np.int16) for r in rows]),
                                  lengths, pa.int16())
    cols["kbest_paths"] = pa.ListArray.from_arrays(
        pa.array(np.arange(len(rows) + 1, dtype=np.int32) * k), inner)
    cols["kbest_logprob"] = _list_array(
        np.concatenate([np.asarray(r["kbest_logprob"], dtype=np.float32) for r in rows]),
        np.full(len(rows), k), pa.float32())
    return pa.Table.from_arrays([cols[name] for name in TABLE_SCHEMA.names], schema=TABLE_SCHEMA)


def read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{root}: not a structkd store of schema version {SCHEMA_VERSION}")
    return manifest


class StoreWriter:
    """Writes shards into the store at ``path`` (local), holding its lock while open (a context manager)."""

    def __init__(self, path: str | os.PathLike, options: StoreOptions, *, mix_teachers: bool = False):
        self.root = local_root(path)
        self.options = options
        self.mix_teachers = mix_teachers
        self.lock = StoreLock(self.root)
        self.manifest: dict = {}
        self.previous_teachers: set[str] = set()
        self.done: dict[str, dict] = {}

    def __enter__(self) -> StoreWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._open()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def _open(self) -> None:
        manifest = read_manifest(self.root)
        if manifest is not None and manifest["options"] != self.options.to_json():
            raise StoreError(f"{self.root}: store was written with options {manifest['options']}; this "
                             f"run asks {self.options.to_json()}. Write a new store.")
        self.manifest = manifest or {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                                     "options": self.options.to_json(), "teachers": {}, "shards": {},
                                     "pending": [], "complete": False}
        self.previous_teachers = {t["fingerprint"] for t in self.manifest["teachers"].values()}
        linked = [sub for sub in (TABLE_DIR, TENSOR_DIR, MARKER_DIR, TEACHER_DIR, TMP_DIR)
                  if (self.root / sub).is_symlink()]
        if linked:  # finalize deletes the files it does not list: never in a folder outside the store
            raise StoreError(f"{self.root}: {linked} are symbolic links; a store's folders must be real "
                             "folders inside it")
        shutil.rmtree(self.root / TMP_DIR, ignore_errors=True)
        for leftover in self.root.glob(f".{MANIFEST}.tmp-*"):  # a killed writer's unrenamed manifest
            leftover.unlink()
        for sub in (TABLE_DIR, TENSOR_DIR, MARKER_DIR, TMP_DIR):
            (self.root / sub).mkdir(exist_ok=True)

    def add_teacher(self, meta: TeacherMeta) -> str:
        """Register a teacher (refused if the store holds another teacher and ``mix_teachers`` is
        off); returns its id. The teacher is written to the manifest at once."""
        for tid, known in self.manifest["teachers"].items():
            if known["fingerprint"] == meta.fingerprint:
                return tid
        if self.previous_teachers and not self.mix_teachers:
            known = ", ".join(f"{tid} ({t['fingerprint'][:12]})"
                              for tid, t in self.manifest["teachers"].items())
            raise StoreError(f"{self.root}: store holds outputs of teacher(s) {known}; teacher {meta.id} has "
                             f"fingerprint {meta.fingerprint[:12]}. Pass mix_teachers to add it, or "
                             "write a new store.")
        if meta.id in self.manifest["teachers"]:
            raise StoreError(f"{self.root}: teacher id {meta.id} is taken by another fingerprint")
        rel = teacher_path(meta.id)
        tmp = self.root / TMP_DIR / f"{meta.id}.zarr"
        _write_arrays(tmp, {name: meta.arrays[name] for name in TEACHER_ARRAYS}, {"teacher": meta.id})
        fsync_tree(tmp)
        (self.root / rel).parent.mkdir(exist_ok=True)
        shutil.rmtree(self.root / rel, ignore_errors=True)
        os.rename(tmp, self.root / rel)
        entry = meta.to_json()
        entry["files"] = {f: sha256_file(self.root / f) for f in files_under(self.root, rel)}
        self.manifest["teachers"][meta.id] = entry
        self._save_manifest()
        return meta.id

    def _marker(self, shard: str) -> dict | None:
        try:
            return json.loads((self.root / marker_path(shard)).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_complete(self, spec: ShardSpec) -> bool:
        """Whether ``spec``'s shard is on disk, complete, of the same input, and matches its checksums."""
        marker = self._marker(spec.id)
        if marker is None or marker.get("spec") != spec.__dict__:
            return False
        if marker.get("options") != self.options.to_json():
            return False
        files = marker.get("files", {})
        listed = files_under(self.root, table_path(spec.id)) + files_under(self.root, tensor_path(spec.id))
        if sorted(files) != listed or not all(sha256_file(self.root / f) == h for f, h in files.items()):
            return False
        self.done[spec.id] = marker
        return True

    def _remove(self, shard: str) -> None:
        (self.root / marker_path(shard)).unlink(missing_ok=True)
        (self.root / table_path(shard)).unlink(missing_ok=True)
        shutil.rmtree(self.root / tensor_path(shard), ignore_errors=True)

    def write_shard(self, spec: ShardSpec, rows: list[dict]) -> dict:
        """Commit one shard atomically from per-sentence dicts (table columns + tensors)."""
        if len(rows) != spec.rows:
            raise StoreError(f"shard {spec.id}: {len(rows)} rows given, {spec.rows} planned")
        dtype = np.dtype(self.options.dtype)
        offsets = offsets_of([r["length"] for r in rows])
        arrays = {TOKEN_OFFSETS: offsets}
        names = STORED_ARRAYS[self.options.tensors]
        for name in names:
            arrays[name] = np.concatenate([np.asarray(r[name]) for r in rows]).astype(dtype)
        if "edge" in names:
            arrays[EDGE_OFFSETS] = edge_offsets(offsets)
            if self.options.prune:
                for name in ("node", "edge"):
                    arrays[name][arrays[name] < self.options.prune] = 0
        tmp = self.root / TMP_DIR / spec.id
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        rel_table, rel_tensors = table_path(spec.id), tensor_path(spec.id)
        _write_arrays(tmp / "tensors.zarr", arrays, {"shard": spec.id, "rows": spec.rows,
                                                     "tokens": int(offsets[-1])})
        pq.write_table(shard_table(rows), tmp / "table.parquet", row_group_size=ROW_GROUP,
                       compression="zstd")
        fsync_tree(tmp)
        files = {f"{rel_table}": sha256_file(tmp / "table.parquet")}
        for f in files_under(tmp, "tensors.zarr"):
            files[rel_tensors + f[len("tensors.zarr"):]] = sha256_file(tmp / f)
        self._remove(spec.id)
        os.rename(tmp / "tensors.zarr", self.root / rel_tensors)
        os.rename(tmp / "table.parquet", self.root / rel_table)
        for sub in (TENSOR_DIR, TABLE_DIR):
            fsync_dir(self.root / sub)
        shutil.rmtree(tmp)
        marker = {"spec": spec.__dict__, "options": self.options.to_json(), "tokens": int(offsets[-1]),
                  "bytes": sum((self.root / f).stat().st_size for f in files),
                  "files": dict(sorted(files.items()))}
        atomic_json(self.root / marker_path(spec.id), marker)
        self.done[spec.id] = marker
        return marker

    def begin(self, plan: list[ShardSpec]) -> None:
        """Record that the planned shards are being written: the manifest says incomplete until finalize."""
        self.manifest["pending"] = [s.id for s in plan]
        self.manifest["complete"] = False
        self._save_manifest()

    def finalize(self, plan: list[ShardSpec]) -> dict:
        """Rebuild the manifest: shards of earlier runs outside this run's (teacher, corpus, split)
        groups, plus this run's complete shards; remove every file that belongs to no listed shard."""
        groups = {s.group for s in plan}
        shards = {sid: entry for sid, entry in self.manifest["shards"].items()
                  if (entry["teacher"], entry["corpus"], entry["split"]) not in groups}
        for spec in plan:
            if spec.id in self.done:
                marker = self.done[spec.id]
                entry = {key: value for key, value in spec.__dict__.items() if key != "id"}
                shards[spec.id] = {**entry, "tokens": marker["tokens"], "bytes": marker["bytes"],
                                   "files": marker["files"]}
        order = sorted(shards, key=lambda s: (shards[s]["teacher"], shards[s]["corpus"],
                                              SPLITS.index(shards[s]["split"]), shards[s]["first_index"]))
        self.manifest["shards"] = {sid: shards[sid] for sid in order}
        self.manifest["pending"] = [s.id for s in plan if s.id not in self.done]
        self.manifest["complete"] = not self.manifest["pending"]
        self.manifest["totals"] = {key: sum(s[key] for s in shards.values())
                                   for key in ("rows", "tokens", "bytes")}
        self._remove_strays()
        self._save_manifest()
        return self.manifest

    def _remove_strays(self) -> None:
        keep = {f for s in self.manifest["shards"].values() for f in s["files"]}
        keep |= {f for t in self.manifest["teachers"].values() for f in t["files"]}
        keep |= {marker_path(s) for s in self.manifest["shards"]}
        for sub in (TABLE_DIR, TENSOR_DIR, MARKER_DIR, TEACHER_DIR):
            if not (self.root / sub).exists():
                continue
            for rel in files_under(self.root, sub):
                if rel not in keep:
                    (self.root / rel).unlink()
            for folder in sorted((self.root / sub).rglob("*"), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    def _save_manifest(self) -> None:
        atomic_json(self.root / MANIFEST, self.manifest)
