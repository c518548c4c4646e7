"""Table access: the pandas frame of a store, and per-sentence dicts built from Arrow columns; the
reverse for the writer: a shard's Parquet rows and Zarr arrays from per-sentence dicts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from store.schema import (ARC_ARRAYS, EDGE_OFFSETS, SPAN_DECODERS, TABLE_SCHEMA, TOKEN_OFFSETS, TREE_DECODERS,
                          StoreOptions, TeacherMeta, stored_arrays)
from store.spans import span_arrays
from store.tensors import edge_offsets, offsets_of
from store.trees import tree_arrays

SCALARS = ("sid", "corpus", "split", "lang", "teacher", "shard", "index", "length", "residual_mass", "log_z")


@dataclass
class Column:
    """One Arrow column as flat numpy values + offsets per list level (row access without a per-row
    Python conversion of the whole table)."""

    values: np.ndarray
    levels: list[np.ndarray]
    nulls: np.ndarray | None

    def row(self, i: int):
        if self.nulls is not None and self.nulls[i]:
            return None
        if not self.levels:
            return self.values[i]
        lo, hi = i, i + 1
        for offsets in self.levels:
            lo, hi = offsets[lo], offsets[hi]
        flat = self.values[lo:hi]
        if len(self.levels) == 2:
            outer = self.levels[0]
            return flat.reshape(int(outer[i + 1] - outer[i]), -1)
        return flat


def list_column(table: pa.Table, name: str) -> Column:
    arr = table.column(name).combine_chunks()
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    levels = []
    while pa.types.is_list(arr.type):
        offsets = arr.offsets.to_numpy().astype(np.int64)
        levels.append(offsets - offsets[0])
        arr = arr.flatten()
    return Column(arr.to_numpy(zero_copy_only=False), levels, nulls)


def sentence_dict(columns: dict[str, Column], arrays: dict[str, tuple[np.ndarray, np.ndarray]], row: int,
                  teacher: TeacherMeta) -> dict:
    """The ``Store.get`` dict of table row ``row`` (see store/README.md for the keys)."""
    out = {name: columns[name].row(row) for name in SCALARS}
    for name in ("sid", "corpus", "split", "lang", "teacher", "shard"):
        out[name] = str(out[name])
    out["index"], out["length"] = int(out["index"]), int(out["length"])
    out["tokens"] = np.asarray(columns["tokens"].row(row), dtype=str)
    gold = columns["gold"].row(row)
    out["gold"] = None if gold is None else np.asarray(gold, dtype=str)
    gold_ids = columns["gold_ids"].row(row)
    out["gold_ids"] = None if gold_ids is None else gold_ids.astype(np.int64)
    for name in ("viterbi", "kbest_paths"):
        out[name] = columns[name].row(row).astype(np.int64)
    out["kbest_logprob"] = columns["kbest_logprob"].row(row).astype(np.float32)
    out["log_z"], out["residual_mass"] = np.float32(out["log_z"]), np.float32(out["residual_mass"])
    for name, (flat, offsets) in arrays.items():
        out[name] = flat[offsets[row]:offsets[row + 1]]
        if name in ARC_ARRAYS:
            out[name] = out[name].reshape(out["length"], out["length"] + 1)
        elif name == "span_scores":
            out[name] = out[name].reshape(out["length"], out["length"], -1)
    if teacher.is_tree:
        for name in ("gold_heads", "relations"):
            value = columns[name].row(row)
            out[name] = None if value is None else value.astype(np.int64)
        upos = columns["upos"].row(row)
        out["upos"] = None if upos is None else np.asarray(upos, dtype=str)
    elif not teacher.is_span:
        for name in ("transitions", "start", "end"):
            out[name] = teacher.arrays[name]
    return out


def build_frame(store, columns: list[str] | None = None, split: str | None = None) -> pd.DataFrame:
    """All shards' rows (manifest order) as one DataFrame; list columns hold numpy arrays. A store
    with a tree teacher also gets ``heads`` (its rows' ``viterbi``; None in chain rows) and shows
    ``relations`` as relation names."""
    tables = [store.read_table(shard, columns) for shard in store.shards(split)]
    if not tables:
        empty = TABLE_SCHEMA.empty_table()
        return (empty.select(columns) if columns else empty).to_pandas()
    frame = pa.concat_tables(tables).to_pandas()
    trees = {tid: t.labels for tid, t in store.teachers.items() if t.is_tree}
    if not trees or "teacher" not in frame:
        return frame
    tree_rows = frame["teacher"].isin(list(trees))
    if "viterbi" in frame:
        frame.insert(frame.columns.get_loc("viterbi"), "heads", frame["viterbi"].where(tree_rows, None))
    if "relations" in frame:
        frame["relations"] = [None if ids is None else [trees[tid][i] for i in ids]
                              for tid, ids in zip(frame["teacher"], frame["relations"])]
    return frame


def _list_array(values: np.ndarray, lengths: np.ndarray, item: pa.DataType) -> pa.Array:
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values, type=item))


def shard_table(rows: list[dict]) -> pa.Table:
    """The Parquet rows of a shard (TABLE_SCHEMA) from per-sentence dicts (a chain row has no
    ``gold_heads`` / ``relations`` / ``upos``: null)."""
    lengths = np.array([r["length"] for r in rows], dtype=np.int64)
    k = len(rows[0]["kbest_logprob"])
    paths = np.concatenate([np.asarray(r["kbest_paths"], dtype=np.int16).reshape(-1) for r in rows])
    inner = _list_array(paths, np.repeat(lengths, k), pa.int16())
    cols = {name: pa.array([r[name] for r in rows], type=TABLE_SCHEMA.field(name).type)
            for name in ("sid", "corpus", "split", "lang", "teacher", "shard", "index", "length",
                         "tokens", "gold", "gold_ids", "residual_mass", "log_z")}
    cols["upos"] = pa.array([r.get("upos") for r in rows], type=TABLE_SCHEMA.field("upos").type)
    for name in ("gold_heads", "relations"):
        cols[name] = pa.array([None if r.get(name) is None else np.asarray(r[name], dtype=np.int16)
                               for r in rows], type=TABLE_SCHEMA.field(name).type)
    cols["viterbi"] = _list_array(np.concatenate([np.asarray(r["viterbi"], dtype=np.int16) for r in rows]),
                                  lengths, pa.int16())
    cols["kbest_paths"] = pa.ListArray.from_arrays(
        pa.array(np.arange(len(rows) + 1, dtype=np.int32) * k), inner)
    cols["kbest_logprob"] = _list_array(
        np.concatenate([np.asarray(r["kbest_logprob"], dtype=np.float32) for r in rows]),
        np.full(len(rows), k), pa.float32())
    return pa.Table.from_arrays([cols[name] for name in TABLE_SCHEMA.names], schema=TABLE_SCHEMA)


def shard_arrays(rows: list[dict], options: StoreOptions, decoder: str) -> dict[str, np.ndarray]:
    """The Zarr arrays of a shard from per-sentence dicts: offsets, and the tensors the options keep
    for a teacher with ``decoder`` in the storage dtype (probabilities below ``prune`` zeroed)."""
    dtype = np.dtype(options.dtype)
    offsets = offsets_of([r["length"] for r in rows])
    arrays = {TOKEN_OFFSETS: offsets}
    if decoder in TREE_DECODERS:
        return {**arrays, **tree_arrays(rows, options, decoder, offsets)}
    if decoder in SPAN_DECODERS:
        return {**arrays, **span_arrays(rows, options, decoder, offsets)}
    names = stored_arrays(decoder, options.tensors)
    for name in names:
        arrays[name] = np.concatenate([np.asarray(r[name]) for r in rows]).astype(dtype)
    if "edge" in names:
        arrays[EDGE_OFFSETS] = edge_offsets(offsets)
        if options.prune:
            for name in ("node", "edge"):
                arrays[name][arrays[name] < options.prune] = 0
    return arrays
