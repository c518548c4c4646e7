"""StoreWriter: one process writes a store; every shard is committed atomically (see store/README.md).

Commit of a shard: check the invariants of its rows (store/verify.py), build the Parquet file and the
Zarr group under ``.tmp/``, fsync, checksum every file; replace the completion marker by an intent
marker naming the new files and the old ones; remove the old files; rename the Zarr group then the
Parquet file into place; write the final marker ``shards/<shard>.json`` (files + sha256) last. A
shard is complete only when its final marker exists and every file matches it. ``finalize`` rebuilds
``manifest.json`` and removes the files of shards it no longer lists.

The writer deletes only what its records name: the files of a manifest entry or of a marker, and its
own temporary names (``.tmp/<shard>``, ``.manifest.json.tmp-<pid>`` ...). It refuses a non-empty
folder that is not a store, and a path it must fill that holds anything its records do not name.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pyarrow.parquet as pq

from store.files import (StoreLock, atomic_json, check_folder, entries_under, files_under, fsync_dir,
                         fsync_tree, local_root, read_manifest, remove_named, remove_scratch, sha256_file,
                         write_arrays)
from store.frame import shard_arrays, shard_table
from store.schema import (DIGEST, FORMAT, MANIFEST, MARKER_DIR, OWN_MARKER_TEMP, OWN_TEMP, SCHEMA_VERSION,
                          SPLITS, TABLE_DIR, TEACHER_DIR, TENSOR_DIR, TMP_DIR, TOKEN_OFFSETS,
                          VERIFIED, StoreError, StoreOptions, StoreWarning, TeacherMeta, is_shard_id,
                          manifest_digest, manifest_state, marker_path, shard_id, table_path,
                          teacher_arrays, teacher_entry_problems, teacher_path, tensor_path)
from store.verify import check_rows

ROW_GROUP = 1024  # sentences per Parquet row group (streaming reads one group at a time)
SUBDIRS = (TABLE_DIR, TENSOR_DIR, MARKER_DIR, TEACHER_DIR, TMP_DIR)


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


def _own_files(shard: str, names) -> set[str]:
    """The names among ``names`` that are files of ``shard`` (its table file, under its tensor group)."""
    table, tensors = table_path(shard), tensor_path(shard) + "/"
    return {n for n in names if isinstance(n, str) and (n == table or n.startswith(tensors))
            and ".." not in n.split("/")}


def _entry(marker: dict) -> dict:
    """A manifest shard entry from a final completion marker."""
    entry = {key: value for key, value in marker["spec"].items() if key != "id"}
    entry.update(tokens=marker["tokens"], bytes=marker["bytes"], files=marker["files"])
    if "verified" in marker:
        entry["verified"] = marker["verified"]
    return entry


class StoreWriter:
    """Writes shards into the local store at ``path`` (a URL: store/remote.py), holding its lock while open."""

    def __init__(self, path: str | os.PathLike, options: StoreOptions, *, mix_teachers: bool = False):
        self.root = local_root(path)
        self.options = options
        self.mix_teachers = mix_teachers
        self.lock = StoreLock(self.root)
        self.manifest: dict = {}
        self.previous_teachers: set[str] = set()
        self.teachers: dict[str, TeacherMeta] = {}  # id -> meta of the teachers added by this run
        self.done: dict[str, dict] = {}

    @classmethod
    def attach(cls, path: str | os.PathLike, options: StoreOptions,
               teachers: dict[str, TeacherMeta]) -> StoreWriter:
        """A shard writer for a process of a torchrun job whose rank 0 holds the lock (an open
        StoreWriter that registered ``teachers`` and began the plan): it writes and commits its own
        shards only; the manifest, the teachers and ``finalize`` stay rank 0's."""
        writer = cls(path, options)
        writer.manifest = read_manifest(writer.root) or {"shards": {}}
        writer.teachers = dict(teachers)
        return writer

    @contextmanager
    def _io(self, what: str):
        """A failing file operation (disk full, permissions) as one StoreError naming the store."""
        try:
            yield
        except OSError as err:
            raise StoreError(f"{self.root}: {what}: {err}") from None

    def __enter__(self) -> StoreWriter:
        with self._io("cannot create the store folder or its lock"):
            check_folder(self.root)
            self.root.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        try:
            with self._io("cannot open the store"):
                check_folder(self.root)  # again under the lock: the folder may have changed meanwhile
                self._open()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def _open(self) -> None:
        odd = [sub for sub in SUBDIRS + (MANIFEST,) if (self.root / sub).is_symlink()
               or (sub != MANIFEST and os.path.lexists(self.root / sub) and not (self.root / sub).is_dir())]
        if odd:  # the writer removes files in these folders: never in one outside the store
            raise StoreError(f"{self.root}: {odd} are symbolic links or not folders; a store's folders "
                             "and manifest must be real ones inside it")
        manifest = read_manifest(self.root)
        if manifest is not None and manifest["options"] != self.options.to_json():
            raise StoreError(f"{self.root}: store was written with options {manifest['options']}; this "
                             f"run asks {self.options.to_json()}. Write a new store.")
        self.manifest = manifest or {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                                     "options": self.options.to_json(), "teachers": {}, "shards": {},
                                     "pending": [], "complete": False}
        if manifest is None:
            self._save_manifest()  # the store's first record, before any of its folders
        for tid, entry in self.manifest["teachers"].items():
            self._check_teacher_entry(tid, entry)
        if manifest_state(self.manifest) == "modified":
            warnings.warn(f"{self.root}: manifest.json was modified after annotate wrote it; annotate "
                          "rebuilds its shard list from the completion markers", StoreWarning, stacklevel=4)
            self.manifest["shards"] = self._shards_from_markers()
        self.previous_teachers = {t["fingerprint"] for t in self.manifest["teachers"].values()}
        for leftover in self.root.iterdir():  # a killed writer's temporary manifest or broken lock
            if OWN_TEMP.fullmatch(leftover.name) and not leftover.is_dir():
                leftover.unlink()
        for sub in SUBDIRS:
            (self.root / sub).mkdir(exist_ok=True)
        for scratch in (self.root / TMP_DIR).iterdir():  # a killed writer's; add_teacher clears others
            if is_shard_id(scratch.name) or scratch.name.removesuffix(".zarr") in self.manifest["teachers"]:
                remove_scratch(scratch)
        for temp in (self.root / MARKER_DIR).iterdir():
            if OWN_MARKER_TEMP.fullmatch(temp.name) and not temp.is_dir():
                temp.unlink()

    def _check_teacher_entry(self, tid: str, entry: dict) -> None:
        """Refuse a manifest whose teacher entry disagrees with the copy in the teacher's Zarr group."""
        try:
            group = self.root / teacher_path(tid) / "zarr.json"
            attrs = json.loads(group.read_text(encoding="utf-8"))["attributes"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # no copy (an earlier structkd) or damaged files: add_teacher rewrites those
        problems = teacher_entry_problems(tid, entry, attrs)
        if problems:
            raise StoreError(f"{self.root}: {problems[0]}; the manifest was changed: write a new store")

    def _shards_from_markers(self) -> dict:
        """Shard entries of every final marker whose files are all present and match it."""
        shards = {}
        for path in sorted((self.root / MARKER_DIR).glob("*.json")):
            marker = self._marker(path.stem)
            if marker is not None and not marker.get("writing") and self._intact(path.stem, marker):
                shards[path.stem] = _entry(marker)
        return shards

    def add_teacher(self, meta: TeacherMeta) -> str:
        """Register a teacher (refused if the store holds another teacher and ``mix_teachers`` is
        off); returns its id. The teacher is written to the manifest (the record naming its files)
        before its files are moved into place."""
        old = None
        for tid, known in self.manifest["teachers"].items():
            if known["fingerprint"] == meta.fingerprint:
                if known.get("labels") != list(meta.labels):
                    raise StoreError(f"{self.root}: teacher {tid}: the manifest's labels "
                                     f"{known.get('labels')} are not the teacher's {list(meta.labels)}; the "
                                     "manifest was changed: write a new store")
                meta = replace(meta, id=tid)
                if self._teacher_intact(tid, known):
                    self.teachers[tid] = meta
                    return tid
                old = known
                break
        if old is None and self.previous_teachers and not self.mix_teachers:
            known = ", ".join(f"{tid} ({t['fingerprint'][:12]})"
                              for tid, t in self.manifest["teachers"].items())
            raise StoreError(f"{self.root}: store holds outputs of teacher(s) {known}; teacher {meta.id} has "
                             f"fingerprint {meta.fingerprint[:12]}. Pass mix_teachers to add it, or "
                             "write a new store.")
        if old is None and meta.id in self.manifest["teachers"]:
            raise StoreError(f"{self.root}: teacher id {meta.id} is taken by another fingerprint")
        rel = teacher_path(meta.id)
        named = {f for f in (old or {}).get("files", {}) if f.startswith(rel + "/")}
        foreign = sorted(set(entries_under(self.root, rel)) - named)
        if foreign:
            raise StoreError(f"{self.root}: teacher {meta.id}: {foreign[0]} is not named by this store's "
                             "records; annotate does not delete it: move it out of the store")
        with self._io(f"cannot write teacher {meta.id}"):
            tmp = self.root / TMP_DIR / f"{meta.id}.zarr"
            remove_scratch(tmp)
            write_arrays(tmp, {name: meta.arrays[name] for name in teacher_arrays(meta.decoder)},
                          {"teacher": meta.id, **meta.to_json()})
            fsync_tree(tmp)
            entry = meta.to_json()
            entry["files"] = {rel + f[len(tmp.name):]: sha256_file(tmp.parent / f)
                              for f in files_under(tmp.parent, tmp.name)}
            self.manifest["teachers"][meta.id] = entry
            self._save_manifest()
            remove_named(self.root, named)
            os.rename(tmp, self.root / rel)
            fsync_dir(self.root / TEACHER_DIR)
        self.teachers[meta.id] = meta
        return meta.id

    def _teacher_intact(self, tid: str, entry: dict) -> bool:
        files = entry.get("files", {})
        return (entries_under(self.root, teacher_path(tid)) == sorted(files)
                and all(sha256_file(self.root / f) == h for f, h in files.items()))

    def _marker(self, shard: str) -> dict | None:
        """The shard's completion (or intent) marker; None when absent or not one of this writer's."""
        try:
            marker = json.loads((self.root / marker_path(shard)).read_text(encoding="utf-8"))
        except (OSError, ValueError, StoreError):
            return None
        ok = (isinstance(marker, dict) and isinstance(marker.get("spec"), dict)
              and marker["spec"].get("id") == shard and isinstance(marker.get("files"), dict))
        return marker if ok else None

    def _intact(self, shard: str, marker: dict) -> bool:
        """Whether the marker (of this run's options) lists exactly the shard's files, all matching."""
        if marker.get("options") != self.options.to_json():
            return False
        files = marker["files"]
        on_disk = entries_under(self.root, table_path(shard)) + entries_under(self.root, tensor_path(shard))
        return sorted(files) == on_disk and not any((self.root / f).is_symlink() for f in files) \
            and all(sha256_file(self.root / f) == h for f, h in files.items())

    def is_complete(self, spec: ShardSpec) -> bool:
        """Whether ``spec``'s shard is on disk, complete, of the same input, and matches its checksums."""
        marker = self._marker(spec.id)
        if marker is None or marker.get("writing") or marker.get("spec") != spec.__dict__:
            return False
        if not self._intact(spec.id, marker):
            return False
        self.done[spec.id] = marker
        return True

    def _named(self, shard: str) -> set[str]:
        """The shard's files that the store's records name: its manifest entry and its marker (an
        intent marker names both the files it brings and those it replaces)."""
        names = set(self.manifest["shards"].get(shard, {}).get("files", {}))
        marker = self._marker(shard)
        if marker is not None:
            names |= set(marker["files"]) | set(marker.get("replaces", []))
        return _own_files(shard, names)

    def write_shard(self, spec: ShardSpec, rows: list[dict]) -> dict:
        """Commit one shard atomically from per-sentence dicts (table columns + tensors). Its rows
        are checked first (the invariants `store verify` checks): a shard that fails is not written,
        and the error names the shard and the sentence."""
        if len(rows) != spec.rows:
            raise StoreError(f"shard {spec.id}: {len(rows)} rows given, {spec.rows} planned")
        teacher = self.teachers.get(spec.teacher)
        if teacher is None:
            raise StoreError(f"{self.root}: shard {spec.id}: teacher {spec.teacher} was not added "
                             "(add_teacher)")
        rel_table, rel_tensors = table_path(spec.id), tensor_path(spec.id)
        old = self._named(spec.id)
        foreign = [f for f in entries_under(self.root, rel_table) + entries_under(self.root, rel_tensors)
                   if f not in old]
        if os.path.lexists(self.root / marker_path(spec.id)) and self._marker(spec.id) is None \
                and spec.id not in self.manifest["shards"]:
            foreign.append(marker_path(spec.id))
        if foreign:
            raise StoreError(f"{self.root}: shard {spec.id}: {foreign[0]} is not named by this store's "
                             "records; annotate does not delete it: move it out of the store")
        arrays = shard_arrays(rows, self.options, teacher.decoder)
        offsets = arrays[TOKEN_OFFSETS]
        table = shard_table(rows)
        problems = check_rows(spec.id, spec.__dict__, teacher, self.options, table, arrays, max_problems=3)
        if problems:
            raise StoreError(f"{self.root}: {problems[0]}; annotate verifies what it writes and did not "
                             f"write shard {spec.id}")
        with self._io(f"cannot write shard {spec.id}"):
            tmp = self.root / TMP_DIR / spec.id
            remove_scratch(tmp)
            tmp.mkdir(parents=True)
            write_arrays(tmp / "tensors.zarr", arrays, {"shard": spec.id, "rows": spec.rows,
                                                         "tokens": int(offsets[-1])})
            pq.write_table(table, tmp / "table.parquet", row_group_size=ROW_GROUP, compression="zstd")
            fsync_tree(tmp)
            files = {rel_table: sha256_file(tmp / "table.parquet")}
            for f in files_under(tmp, "tensors.zarr"):
                files[rel_tensors + f[len("tensors.zarr"):]] = sha256_file(tmp / f)
            atomic_json(self.root / marker_path(spec.id), {"spec": spec.__dict__, "writing": True,
                                                           "files": files, "replaces": sorted(old)})
            remove_named(self.root, old)
            os.rename(tmp / "tensors.zarr", self.root / rel_tensors)
            os.rename(tmp / "table.parquet", self.root / rel_table)
            for sub in (TENSOR_DIR, TABLE_DIR):
                fsync_dir(self.root / sub)
            shutil.rmtree(tmp)
            marker = {"spec": spec.__dict__, "options": self.options.to_json(), "tokens": int(offsets[-1]),
                      "bytes": sum((self.root / f).stat().st_size for f in files),
                      "files": dict(sorted(files.items())), "verified": VERIFIED}
            atomic_json(self.root / marker_path(spec.id), marker)
        self.done[spec.id] = marker
        return marker

    def check_plan(self, plan: list[ShardSpec]) -> None:
        """Refuse a plan in which two shards would hold the same sentences: a shard id twice or the
        same sids twice (two corpora of one name), or sids the store already holds from another input
        (another teacher's shards of a corpus of the same name but other sentences). A spec must be
        the chunk its id names."""
        size, seen = self.options.shard_size, {}
        for spec in plan:
            if spec.first_index % size or not 0 < spec.rows <= size or spec.id != shard_id(
                    spec.teacher, spec.corpus, spec.split, spec.first_index // size):
                raise StoreError(f"{self.root}: shard {spec.id} is not chunk {spec.first_index // size} "
                                 f"({spec.rows} sentences from {spec.first_index}) of corpus {spec.corpus} "
                                 f"{spec.split} with shard_size {size}")
            key = (spec.corpus, spec.split, spec.first_index)
            if key in seen:
                raise StoreError(f"{self.root}: corpus {spec.corpus!r} is planned twice (shards {seen[key]} "
                                 f"and {spec.id}): two corpora of one store need different names")
            seen[key] = spec.id
        groups = {s.group for s in plan}
        claims = {(s.corpus, s.split, s.first_index): (s.input_sha256, s.id) for s in plan}
        for sid, entry in self.manifest["shards"].items():
            if (entry["teacher"], entry["corpus"], entry["split"]) in groups:
                continue
            sha, other = claims.get((entry["corpus"], entry["split"], entry["first_index"]),
                                    (entry.get("input_sha256"), sid))
            if sha != entry.get("input_sha256"):
                raise StoreError(f"{self.root}: corpus {entry['corpus']!r}: sentences {entry['corpus']}/"
                                 f"{entry['split']}/{entry['first_index']}... come from two different inputs "
                                 f"(shards {sid} and {other}); a corpus name must name one corpus in a store")

    def begin(self, plan: list[ShardSpec]) -> None:
        """Check the plan (``check_plan``) and record that its shards are being written: the manifest
        says incomplete until finalize."""
        self.check_plan(plan)
        self.manifest["pending"] = [s.id for s in plan]
        self.manifest["complete"] = False
        self._save_manifest()

    def finalize(self, plan: list[ShardSpec]) -> dict:
        """Rebuild the manifest: shards of earlier runs outside this run's (teacher, corpus, split)
        groups, plus this run's complete shards; then remove the files of the shards it no longer
        lists (and only those: files named by their old entry or marker)."""
        before = self.manifest["shards"]
        groups = {s.group for s in plan}
        shards = {sid: entry for sid, entry in before.items()
                  if (entry["teacher"], entry["corpus"], entry["split"]) not in groups}
        for spec in plan:
            if spec.id in self.done:
                shards[spec.id] = _entry(self.done[spec.id])
        order = sorted(shards, key=lambda s: (shards[s]["teacher"], shards[s]["corpus"],
                                              SPLITS.index(shards[s]["split"]), shards[s]["first_index"]))
        self.manifest["shards"] = {sid: shards[sid] for sid in order}
        self.manifest["pending"] = [s.id for s in plan if s.id not in self.done]
        self.manifest["complete"] = not self.manifest["pending"]
        self.manifest["totals"] = {key: sum(s[key] for s in shards.values())
                                   for key in ("rows", "tokens", "bytes")}
        self._save_manifest()
        with self._io("cannot remove the files of dropped shards"):
            self._remove_unlisted(before)
        return self.manifest

    def _remove_unlisted(self, before: dict[str, dict]) -> None:
        """Delete the files of shards the manifest no longer lists that a record names (the previous
        manifest, or a marker of this writer), then those markers. A file no record names stays
        (`store verify` reports it as stray)."""
        listed = self.manifest["shards"]
        dropped = {sid for sid in before if sid not in listed}
        dropped |= {p.stem for p in (self.root / MARKER_DIR).glob("*.json")
                    if p.stem not in listed and is_shard_id(p.stem) and self._marker(p.stem)}
        files = set()
        for sid in dropped:
            files |= _own_files(sid, before.get(sid, {}).get("files", {})) | self._named(sid)
        self._remove(files)
        self._remove({marker_path(sid) for sid in dropped})

    def _remove(self, rels: set[str]) -> None:
        """Delete the store-relative files ``rels`` of dropped shards (a remote writer: there too)."""
        remove_named(self.root, rels)

    def _save_manifest(self) -> None:
        self.manifest.pop(DIGEST, None)
        self.manifest[DIGEST] = manifest_digest(self.manifest)
        atomic_json(self.root / MANIFEST, self.manifest)

