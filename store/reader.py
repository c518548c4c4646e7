"""Reading a store from a local path or any fsspec URL: ``open_store(path)`` (see store/README.md)."""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec.implementations.local import LocalFileSystem

from store.frame import build_frame, list_column, sentence_dict
from store.schema import (ARC_ARRAYS, ARC_OFFSETS, FORMAT, MANIFEST, OLD_COLUMNS, SCHEMA_VERSION,
                          SPAN_OFFSETS, TABLE_COLUMNS, TABLE_SCHEMA, TOKEN_OFFSETS, TREE_COLUMNS, StoreError,
                          StoreOptions, StoreWarning,
                          TeacherMeta, check_relpath, check_shard_id, manifest_state, modified_message,
                          parse_sid, stored_arrays, table_path, teacher_arrays, teacher_path, tensor_path)
from store.spans import num_types, recompute_spans, span_offsets
from store.tensors import edge_offsets, recompute
from store.trees import arc_offsets, recompute_arcs


class Store:
    """A read-only view of a finalized (or partially written) store; see ``open_store``."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = os.fspath(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.real_root = os.path.realpath(self.root) if isinstance(self.fs, LocalFileSystem) else None
        try:
            with self.fs.open(self.path(MANIFEST), "rb") as fh:
                manifest = json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{self.url}: no {MANIFEST} (not a store, or never written)") from None
        except ValueError as err:
            raise StoreError(f"{self.url}: unreadable {MANIFEST}: {err}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
                or manifest.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{self.url}: not a structkd store of schema version {SCHEMA_VERSION}")
        # Readers go on with a modified manifest (verify reports it, check_store refuses to train).
        self.manifest_state = manifest_state(manifest)
        if self.manifest_state == "modified":
            warnings.warn(modified_message(self.url), StoreWarning, stacklevel=3)
        elif self.manifest_state == "unsigned":
            warnings.warn(f"{self.url}: manifest.json has no digest (written by an earlier structkd): "
                          "edits to it cannot be detected; re-run annotate to add one", StoreWarning,
                          stacklevel=3)
        try:
            for shard, entry in manifest.get("shards", {}).items():
                check_shard_id(shard)
                for rel in entry.get("files", {}):
                    check_relpath(rel)
        except StoreError as err:
            raise StoreError(f"{self.url}: {MANIFEST}: {err}") from None
        self.manifest = manifest
        self.options = StoreOptions(**manifest["options"])
        self.teacher_attrs: dict[str, dict] = {}
        self.teachers = {tid: TeacherMeta.from_json(tid, data, self._teacher_arrays(tid, data.get("decoder")))
                         for tid, data in manifest["teachers"].items()}
        self._cache: tuple[str, pa.Table, dict] | None = None

    def path(self, rel: str) -> str:
        """Full path (in ``self.fs``) of a store-relative path; never outside the store (a local path
        that a symbolic link takes out of the store is refused)."""
        full = f"{self.root}/{check_relpath(rel)}"
        if self.real_root is not None:
            real = os.path.realpath(full)
            if real != self.real_root and not real.startswith(self.real_root + os.sep):
                raise StoreError(f"{self.url}: {rel} is a symbolic link out of the store")
        return full

    def _group(self, rel: str) -> zarr.Group:
        if isinstance(self.fs, LocalFileSystem):
            store = zarr.storage.LocalStore(self.path(rel), read_only=True)
        else:
            store = zarr.storage.FsspecStore.from_url(self.fs.unstrip_protocol(self.path(rel)),
                                                      storage_options=self.storage_options or None,
                                                      read_only=True)
        try:
            return zarr.open_group(store, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise StoreError(f"{self.url}: missing Zarr group {rel}: {err}") from None

    def _teacher_arrays(self, teacher: str, decoder: str) -> dict[str, np.ndarray]:
        """The teacher's factor arrays (none for a tree teacher); its group attributes (the writer's
        copy of the teacher's manifest entry, checksummed with the teacher files) go to
        ``teacher_attrs``."""
        group = self._group(teacher_path(teacher))
        self.teacher_attrs[teacher] = dict(group.attrs)
        return {name: group[name][...] for name in teacher_arrays(decoder)}

    @property
    def complete(self) -> bool:
        """True when every shard the last annotate run planned is written (``manifest["pending"]`` empty)."""
        return bool(self.manifest.get("complete")) and not self.manifest.get("pending")

    @property
    def labels(self) -> list[str]:
        """The label list shared by every teacher of the store."""
        sets = {tuple(t.labels) for t in self.teachers.values()}
        if len(sets) != 1:
            raise StoreError(f"{self.url}: teachers have {len(sets)} different label lists; "
                             "use store.teachers[id].labels")
        return list(sets.pop())

    def shards(self, split: str | None = None, *, teacher: str | None = None,
               corpus: str | None = None) -> list[str]:
        """Shard ids in manifest order, optionally only those of one split / teacher / corpus."""
        return [sid for sid, e in self.manifest["shards"].items()
                if (split is None or e["split"] == split) and (teacher is None or e["teacher"] == teacher)
                and (corpus is None or e["corpus"] == corpus)]

    def shard_info(self, shard: str) -> dict:
        try:
            return self.manifest["shards"][check_shard_id(shard)]
        except KeyError:
            raise KeyError(f"{self.url}: no shard {shard!r}") from None

    def read_table(self, shard: str, columns: list[str] | None = None) -> pa.Table:
        """The shard's Parquet rows (all TABLE_COLUMNS, or ``columns``); row count checked. A table
        written before trees (OLD_COLUMNS) gets the tree columns as nulls."""
        info = self.shard_info(shard)
        try:
            with self.fs.open(self.path(table_path(shard)), "rb") as fh:
                parquet = pq.ParquetFile(fh)
                present = parquet.schema_arrow.names
                wanted = list(TABLE_COLUMNS if columns is None else columns)
                table = parquet.read([c for c in wanted if c in present or c not in TREE_COLUMNS])
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"{self.url}: shard {shard}: unreadable table: {err}") from None
        if table.num_rows != info["rows"]:
            raise StoreError(f"{self.url}: shard {shard}: table has {table.num_rows} rows, "
                             f"manifest says {info['rows']}")
        if columns is None and tuple(present) not in (TABLE_COLUMNS, OLD_COLUMNS):
            raise StoreError(f"{self.url}: shard {shard}: columns {present} != {TABLE_COLUMNS}")
        for name in wanted:
            if name not in table.column_names:
                field = TABLE_SCHEMA.field(name)
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        return table.select(wanted)

    def _decoder(self, shard: str) -> str:
        tid = self.shard_info(shard)["teacher"]
        if tid not in self.teachers:
            raise StoreError(f"{self.url}: shard {shard}: unknown teacher {tid}")
        return self.teachers[tid].decoder

    def read_stored(self, shard: str) -> dict[str, np.ndarray]:
        """The arrays stored in the shard's Zarr group as written (offsets checked against the manifest)."""
        info = self.shard_info(shard)
        group = self._group(tensor_path(shard))
        names = stored_arrays(self._decoder(shard), self.options.tensors)
        names = (TOKEN_OFFSETS,) + ((ARC_OFFSETS,) if "arc_scores" in names else ()) \
            + ((SPAN_OFFSETS,) if "span_scores" in names else ()) + names
        try:
            out = {name: group[name][...] for name in names}
        except (KeyError, ValueError, OSError) as err:
            raise StoreError(f"{self.url}: shard {shard}: unreadable tensors: {err}") from None
        offsets = out[TOKEN_OFFSETS]
        per_token = next((out[n] for n in ("rel", "emissions", "node") if n in out), None)
        if len(offsets) != info["rows"] + 1 or offsets[0] != 0 or offsets[-1] != info["tokens"] \
                or np.any(np.diff(offsets) < 1) or (per_token is not None and len(per_token) != info["tokens"]):
            raise StoreError(f"{self.url}: shard {shard}: offsets do not match {info['rows']} sentences "
                             f"/ {info['tokens']} tokens in the manifest")
        arcs = out.get(ARC_OFFSETS)
        if arcs is not None and not (np.array_equal(arcs, arc_offsets(np.diff(offsets)))
                                     and all(len(out[n]) == arcs[-1] for n in ARC_ARRAYS if n in out)):
            raise StoreError(f"{self.url}: shard {shard}: arc offsets do not match the sentence lengths")
        cells = out.get(SPAN_OFFSETS)
        teacher = self.teachers[self.shard_info(shard)["teacher"]]
        if cells is not None and not (np.array_equal(cells, span_offsets(np.diff(offsets), num_types(teacher)))
                                      and len(out["span_scores"]) == cells[-1]):
            raise StoreError(f"{self.url}: shard {shard}: span offsets do not match the sentence lengths")
        return out

    def read_arrays(self, shard: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``name -> (flat float32 array, int64 offsets)``: a chain shard's emissions, node and edge
        (node and edge recomputed from the emissions when the store keeps potentials only); a tree
        shard's arc_scores and arc (1-D, on the arc offsets; arc recomputed likewise) and rel; a span
        shard's span_scores (1-D, on the span offsets) and BIOES node marginals (recomputed likewise)."""
        stored = self.read_stored(shard)
        offsets = stored[TOKEN_OFFSETS]
        teacher = self.teachers[self.shard_info(shard)["teacher"]]
        flat = {name: stored[name].astype(np.float32)
                for name in stored_arrays(teacher.decoder, self.options.tensors)}
        if teacher.is_span:
            if "node" not in flat:
                flat.update(recompute_spans(teacher, {**stored, "span_scores": flat["span_scores"]}))
            return {"span_scores": (flat["span_scores"], stored[SPAN_OFFSETS]), "node": (flat["node"], offsets)}
        if teacher.is_tree:
            if "arc" not in flat:
                flat.update(recompute_arcs(teacher, {**stored, "arc_scores": flat["arc_scores"]}))
            return {name: (flat[name], stored[ARC_OFFSETS] if name in ARC_ARRAYS else offsets)
                    for name in ("arc_scores", "arc", "rel")}
        if "node" not in flat:
            flat.update(recompute(teacher, flat["emissions"], offsets))
        edges = edge_offsets(offsets)
        return {name: (flat[name], edges if name == "edge" else offsets)
                for name in ("emissions", "node", "edge")}

    def read_shard(self, shard: str) -> tuple[pa.Table, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """(Parquet rows, ``name -> (flat array, offsets)``) of one shard: the streaming loader's unit."""
        if self._cache is None or self._cache[0] != shard:
            self._cache = (shard, self.read_table(shard), self.read_arrays(shard))
        return self._cache[1], self._cache[2]

    def iter_shard(self, shard: str) -> Iterator[dict]:
        """Per-sentence dicts (the keys of ``get``) of one shard, in stored order."""
        table, arrays = self.read_shard(shard)
        teacher = self.teachers[self.shard_info(shard)["teacher"]]
        columns = {name: list_column(table, name) for name in table.column_names}
        for row in range(table.num_rows):
            yield sentence_dict(columns, arrays, row, teacher)

    def locate(self, sid: str, teacher: str | None = None) -> tuple[str, int]:
        """(shard id, row) of sentence ``sid`` (``teacher`` picks one when several annotated it)."""
        corpus, split, index = parse_sid(sid)
        hits = [(shard, index - e["first_index"]) for shard, e in self.manifest["shards"].items()
                if (e["corpus"], e["split"]) == (corpus, split)
                and (teacher is None or e["teacher"] == teacher)
                and e["first_index"] <= index < e["first_index"] + e["rows"]]
        if not hits:
            raise KeyError(f"{self.url}: no sentence {sid!r}" + (f" of teacher {teacher}" if teacher else ""))
        if len(hits) > 1:
            names = sorted(self.manifest["shards"][shard]["teacher"] for shard, _ in hits)
            raise StoreError(f"{sid}: annotated by several teachers {names}; pass teacher=")
        return hits[0]

    def get(self, sid: str, teacher: str | None = None) -> dict:
        """One sentence: metadata, ``tokens``, ``gold`` and numpy arrays ``emissions, node, edge,
        transitions, start, end, viterbi, kbest_paths, kbest_logprob, log_z, residual_mass``."""
        shard, row = self.locate(sid, teacher)
        table, arrays = self.read_shard(shard)
        columns = {name: list_column(table, name) for name in table.column_names}
        out = sentence_dict(columns, arrays, row, self.teachers[self.shard_info(shard)["teacher"]])
        if out["sid"] != sid:
            raise StoreError(f"{self.url}: shard {shard} row {row} holds {out['sid']!r}, not {sid!r}")
        return out

    def frame(self, columns: list[str] | None = None, split: str | None = None) -> pd.DataFrame:
        """One row per sentence (manifest order); all TABLE_COLUMNS unless ``columns`` is given."""
        return build_frame(self, columns, split)


def open_store(path: str | os.PathLike, storage_options: dict | None = None) -> Store:
    """Open the store at a local path or fsspec URL (``memory://``, ``file://``, ``s3://`` ...)."""
    return Store(path, storage_options)
