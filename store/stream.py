"""Streaming the teacher-output store into student training (stage two's data path).

``StoreStream`` is a torch ``IterableDataset`` that yields ready, padded ``Batch`` objects (use it with
``DataLoader(stream, batch_size=None)``). Per epoch: the shards of the chosen splits are permuted
(seed, epoch) and their rows dealt out in equal contiguous parts to (rank, worker) pairs
(``my_pieces``); each worker reads one shard at a time (only the
Parquet columns and Zarr arrays its KD objective needs), verifies the shard's checksums first, feeds
the sentences in random order into a shuffle buffer, and, whenever the buffer is full, sorts it by
length, cuts batches under a padded word budget (``rows * longest <= batch_tokens``) and yields a
random half of them. Resident memory: one shard per worker + the buffer, whatever the store size.

Node / edge marginals of a ``potentials`` store are recomputed per batch from the stored emissions
(exact, see store/README.md); a ``full`` store's stored marginals are used as they are. A store of
dependency teachers: store/stream_trees.py (arc / rel targets, or a tagger's via ``head_encoding``);
of span teachers: store/stream_spans.py (a BIOES tagger's node targets).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.batching import pack
from pipeline.kd.types import TeacherTargets
from store.checks import check_k, check_store, open_checked, verify_files
from store.frame import list_column
from store.reader import Store
from store.schema import ARC_ARRAYS, ARC_OFFSETS, TOKEN_OFFSETS, StoreError
from store.select import RowFilter, selection
from store.stream_spans import SpanCollate, span_layout, teacher_kind
from store.stream_trees import KBEST_FIELDS, TENSOR_FIELDS, TREE_FIELDS, TreeCollate, stream_layout, tree_hard
from store.tensors import edge_offsets, teacher_structure

ALL_FIELDS = TENSOR_FIELDS + KBEST_FIELDS  # a chain store's; a tree store's: TREE_FIELDS + KBEST_FIELDS
BASE_COLUMNS = ["sid", "lang", "length", "tokens", "gold_ids", "viterbi"]


@dataclass
class Batch:
    """One padded student batch: B sentences of at most L words, T labels.

    ``teacher``: TeacherTargets (fields the objective does not need are None; transitions / start /
    end [B, T, T] / [B, T] are gathered from each row's teacher; ``crf`` [B] bool; ``kinds`` and
    ``tau`` set on the host); ``mask`` [B, L];
    ``hard`` [B, L] long = gold label ids where the sentence is labeled, else the teacher's Viterbi
    path (a tree store: [B, 2, L+1] heads and relations, see store/stream_trees.py); ``has_gold``
    [B] bool; ``tokens`` / ``sids`` / ``lang`` per row; ``features`` the student's
    input tensors (``featurize(tokens)``, computed in the loader worker) when the stream has one.
    """

    tokens: list[list[str]]
    sids: list[str]
    lang: list[str]
    teacher: TeacherTargets
    mask: Tensor
    hard: Tensor
    has_gold: Tensor
    features: dict[str, Tensor] | None = None

    @property
    def words(self) -> int:
        return int(self.mask.sum())

    def _map(self, fn) -> Batch:
        features = None if self.features is None else {k: fn(v) for k, v in self.features.items()}
        return replace(self, teacher=self.teacher.map(fn), mask=fn(self.mask), hard=fn(self.hard),
                       has_gold=fn(self.has_gold), features=features)

    def pin_memory(self) -> Batch:
        """Page-locked copies (``DataLoader(pin_memory=True)`` calls this in its pinning thread)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


class StoreStream(IterableDataset):
    """Length-bucketed, shuffled batches of the store's sentences of ``splits`` (see module doc).

    fields: TeacherTargets fields to deliver (None: all the store's layout gives; a chain store: a subset
    of ALL_FIELDS, a tree store: of TREE_FIELDS + KBEST_FIELDS; a chain store's per-teacher factors and
    ``crf`` always come). k: keep the first k k-best paths (residual mass recomputed; more than the
    store holds is refused). tau: the temperature of the delivered node / edge marginals (the
    store's when None; otherwise recomputed from the stored emissions at tau). labels: the
    student's label list (a store with another is refused). verify: check every shard's checksums
    before reading it. rank / world_size: this process's part of the shards under DDP. featurize:
    the student's ``featurize(tokens) -> dict of tensors``, run per batch where the batch is made
    (loader workers), so the training thread only runs tensors. head_encoding: a tagger student
    (``labels`` its labels) of a dependency-teacher store gets node targets over its labels
    (``rel_pos`` | ``rel_offset``, store/stream_trees.py). A store of span teachers gives a tagger
    over their BIOES labels ``node`` and the k-best fields (store/stream_spans.py). unlabeled: which
    rows of the ``unlabeled`` split to keep (store/select.py; all when None).
    """

    def __init__(self, store: str | Store, splits: list[str] | tuple[str, ...], *,
                 fields: tuple[str, ...] | list[str] | None = None, k: int | None = None,
                 batch_tokens: int = 1024, max_sentences: int | None = None, shuffle_buffer: int = 2048,
                 seed: int = 0, rank: int = 0, world_size: int = 1, verify: bool = True,
                 labels: list[str] | None = None, tau: float | None = None, featurize=None,
                 head_encoding: str | None = None, unlabeled: RowFilter | None = None):
        super().__init__()
        self.store = open_checked(store) if isinstance(store, str) else store
        unknown = sorted(set(fields or ()) - set(ALL_FIELDS + TREE_FIELDS))
        if unknown:
            raise ValueError(f"unknown teacher field(s) {unknown}; valid: {list(ALL_FIELDS + TREE_FIELDS)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_tokens < 1 or shuffle_buffer < 1 or (k is not None and k < 1):
            raise ValueError("batch_tokens, shuffle_buffer and k must be >= 1")
        self.labels, self.scheme = check_store(self.store, None if head_encoding else labels)
        check_k(self.store, k)
        self.tau = float(self.store.options.tau if tau is None else tau)
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.splits = list(splits)
        self.teacher_ids = sorted(self.store.teachers)
        metas = [self.store.teachers[t] for t in self.teacher_ids]
        span_fields = span_layout(self.store.url, metas, fields, head_encoding)
        self.tree, fields = (False, span_fields) if span_fields is not None else \
            stream_layout(self.store.url, metas, fields, head_encoding, labels, self.tau)
        self.fields = tuple(f for f in ALL_FIELDS + TREE_FIELDS if f in fields)
        self.trees = TreeCollate(metas, self.fields, self.tau, head_encoding, labels) if self.tree else None
        self.spans = SpanCollate(metas, self.fields, self.tau) if span_fields is not None else None
        self.k, self.batch_tokens, self.max_sentences = k, batch_tokens, max_sentences
        self.shuffle_buffer, self.seed, self.verify = shuffle_buffer, seed, verify
        self.rank, self.world_size = rank, world_size
        self.featurize = featurize
        self.epoch = 0
        self.factors = {} if self.tree or self.spans else {  # a chain teacher's factors, per teacher
            name: torch.from_numpy(np.stack([np.asarray(m.arrays[name], dtype=np.float32) for m in metas]))
            for name in ("transitions", "start", "end")}
        self.is_crf = torch.tensor([m.is_crf for m in metas])
        self.kinds = [teacher_kind(m, head_encoding) for m in metas]
        self.stale = any(m.tau != self.tau for m in metas)  # stored marginals at another tau
        self.shard_ids = [s for split in self.splits for s in self.store.shards(split)]
        self.kept = selection(self.store, [s for s in self.shard_ids if self.store.shard_info(s)["split"] ==
                                           "unlabeled"], unlabeled, self.labels) \
            if unlabeled is not None and unlabeled.active else {}

    @property
    def sentences(self) -> int:
        """Sentences per epoch over all ranks (from the manifest and the kept unlabeled rows)."""
        return sum(self._rows(s) for s in self.shard_ids)

    @property
    def words(self) -> int:
        """Words per epoch over all ranks (from the manifest and the kept unlabeled rows)."""
        return sum(self.kept[s][1] if s in self.kept else self.store.shard_info(s)["tokens"]
                   for s in self.shard_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (call before iterating; workers see it at their start)."""
        self.epoch = int(epoch)

    def my_pieces(self, worker: int = 0, workers: int = 1) -> list[tuple[str, int, int]]:
        """This (rank, worker)'s part of the current epoch as (shard, first, stop) row ranges.

        The shards in one permutation shared by all (new each epoch) make one sequence of N
        (kept) rows; slot s of S = ranks x workers gets rows [s N / S, (s + 1) N / S): every slot
        the same number of sentences (+-1), whatever the shards' sizes, at the cost of reading
        at most S - 1 shards twice. Dealing whole shards gave rank 0 8,000 of CoNLL-2003's 14,041
        training sentences on 2 ranks (shards of 2,000), and the 2-rank epoch waited on it
        (bench/README.md, "Scale-out"). One slot: every shard whole, in the permuted order."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shard_ids))
        shards = [self.shard_ids[i] for i in order]
        sizes = [self._rows(shard) for shard in shards]
        slot, slots, total = self.rank * workers + worker, self.world_size * workers, sum(sizes)
        first, stop = slot * total // slots, (slot + 1) * total // slots
        pieces, start = [], 0
        for shard, size in zip(shards, sizes):
            lo, hi = max(first - start, 0), min(stop - start, size)
            if lo < hi:
                pieces.append((shard, lo, hi))
            start += size
        return pieces

    def _rows(self, shard: str) -> int:
        return len(self.kept[shard][0]) if shard in self.kept else self.store.shard_info(shard)["rows"]

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        # under DDP the ranks' j-th batches are picked at the same length quantile (see _drain)
        shared = np.random.default_rng([self.seed, self.epoch, worker, 1]) if self.world_size > 1 else None
        buffer: list[dict] = []
        for shard, first, stop in self.my_pieces(worker, workers):
            for item in self._read(shard, rng, first, stop):
                buffer.append(item)
                if len(buffer) >= self.shuffle_buffer:
                    yield from self._drain(buffer, rng, keep=self.shuffle_buffer // 2, shared=shared)
        yield from self._drain(buffer, rng, keep=0, shared=shared)

    def _drain(self, buffer: list[dict], rng: np.random.Generator, keep: int,
               shared: np.random.Generator | None = None) -> Iterator[Batch]:
        """Sort the buffer by length, cut batches, yield random ones until ``keep`` sentences remain.

        One process: a random permutation of the batches. Under DDP (``shared``, one generator
        for every rank, drawn once per batch): the j-th batch is the remaining batch at length
        rank floor(u_j * remaining), u_j from ``shared`` -- still a uniformly random order on
        each rank, but the ranks' j-th steps (which DDP runs in lock-step) get batches at the same
        length quantile, so neither waits for the other's long batch. Measured in
        bench/README.md ("Scale-out")."""
        order = rng.permutation(len(buffer))
        ordered = sorted((buffer[i] for i in order), key=lambda item: item["length"])
        batches = pack([item["length"] for item in ordered], self.batch_tokens, self.max_sentences)
        if shared is None:
            rng.shuffle(batches)
        left = len(ordered)
        out = []
        while batches and left > keep:
            rows = batches.pop() if shared is None else batches.pop(int(shared.random() * len(batches)))
            left -= len(rows)
            out.append([ordered[i] for i in rows])
        buffer[:] = [ordered[i] for rows in batches for i in rows]
        for items in out:
            yield self.collate(items)

    def _read(self, shard: str, rng: np.random.Generator, first: int = 0, stop: int | None = None
              ) -> Iterator[dict]:
        """The shard's (kept) rows [first, stop) in random order, as small self-contained dicts
        (copies, so the shard's arrays are freed once it is consumed)."""
        info = self.store.shard_info(shard)
        if self.verify:
            verify_files(self.store, info.get("files", {}), f"shard {shard}")
        columns = BASE_COLUMNS + [f for f in KBEST_FIELDS if f in self.fields]
        if self.tree:
            columns += ["gold_heads", "relations"] + (["upos"] if self.trees.head_encoding else [])
        table = self.store.read_table(shard, columns)
        cols = {name: list_column(table, name) for name in columns if name != "tokens"}
        tokens = table.column("tokens").to_pylist()
        stored = self._tensors(shard)
        teacher = self.teacher_ids.index(info["teacher"])
        rows = self.kept[shard][0] if shard in self.kept else np.arange(table.num_rows)
        for row in rng.permutation(rows[first:stop]):
            gold = cols["gold_ids"].row(row)
            item = {"sid": str(cols["sid"].row(row)), "lang": str(cols["lang"].row(row)),
                    "length": int(cols["length"].row(row)), "tokens": tokens[row], "teacher": teacher,
                    "has_gold": gold is not None,
                    "hard": (cols["viterbi"].row(row) if gold is None else gold).copy()}
            if self.tree:
                item["hard"] = tree_hard(cols, row, item["sid"], len(self.labels))
                if "upos" in cols:
                    item["upos"] = cols["upos"].row(row)
            elif gold is not None and (gold < 0).any():
                raise StoreError(f"{self.store.url}: sentence {item['sid']} has gold labels outside "
                                 f"the label list {self.labels}")
            for name in KBEST_FIELDS:
                if name in cols:
                    value = cols[name].row(row)
                    item[name] = value.copy() if isinstance(value, np.ndarray) else float(value)
            for name, (flat, offsets) in stored.items():
                item[name] = flat[offsets[row]:offsets[row + 1]].copy()
            yield item

    def _tensors(self, shard: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The shard's stored ragged arrays this stream needs, as stored (float16 stays float16)."""
        if self.spans:
            names = self.spans.stored_names(self.store.options.tensors == "full")
            stored = self.store.read_stored(shard) if names else {}
            return {n: (stored[n], self.spans.offsets(n, stored)) for n in names}
        if self.tree:
            names = self.trees.stored_names(self.store.options.tensors == "full")
            stored = self.store.read_stored(shard) if names else {}
            return {n: (stored[n], stored[ARC_OFFSETS] if n in ARC_ARRAYS else stored[TOKEN_OFFSETS])
                    for n in names}
        wanted = [f for f in TENSOR_FIELDS if f in self.fields]
        if not wanted:
            return {}
        stored = self.store.read_stored(shard)
        offsets = stored[TOKEN_OFFSETS]
        names = [n for n in wanted if n in stored]
        if any(n in wanted and (n not in stored or self.stale) for n in ("node", "edge")) \
                and "emissions" not in names:
            names.append("emissions")
        return {n: (stored[n], edge_offsets(offsets) if n == "edge" else offsets) for n in names}

    def collate(self, items: list[dict]) -> Batch:
        """Pad a list of sentence dicts into a Batch (marginals recomputed when not stored)."""
        lengths = np.array([it["length"] for it in items])
        longest = int(lengths.max())
        mask = torch.from_numpy(np.arange(longest)[None, :] < lengths[:, None])
        has_gold = torch.tensor([it["has_gold"] for it in items])
        teacher_idx = torch.tensor([it["teacher"] for it in items])
        if self.tree:
            out, hard = self.trees(items, teacher_idx)
        elif self.spans:
            out, hard = self.spans(items, teacher_idx), _pad_ints([it["hard"] for it in items], longest)
        else:
            out = self._chain_targets(items, mask, teacher_idx)
            hard = _pad_ints([it["hard"] for it in items], longest)
        for name in ("kbest_logprob", "residual_mass", "log_z"):
            if name in self.fields:
                out[name] = torch.from_numpy(np.array([it[name] for it in items], dtype=np.float32))
        kinds = frozenset(self.kinds[t] for t in set(teacher_idx.tolist()))
        targets = TeacherTargets(**out, tau=self.tau, kinds=kinds)
        if self.k is not None:
            targets = targets.select(self.k)
        tokens = [it["tokens"] for it in items]
        features = self.featurize(tokens) if self.featurize is not None else None
        return Batch(tokens, [it["sid"] for it in items], [it["lang"] for it in items], targets, mask,
                     hard, has_gold, features)

    def _chain_targets(self, items: list[dict], mask: Tensor, teacher_idx: Tensor) -> dict[str, Tensor]:
        """A chain batch's TeacherTargets fields besides the k-best scalars: factors, crf, emissions /
        node / edge (marginals recomputed when not stored) and k-best paths."""
        longest = mask.shape[1]
        out = {name: value[teacher_idx] for name, value in self.factors.items()}
        out["crf"] = self.is_crf[teacher_idx]
        padded = {name: _pad_floats([it[name] for it in items], longest - (name == "edge"))
                  for name in TENSOR_FIELDS if name in items[0]}
        if any(f in self.fields and (f not in padded or self.stale) for f in ("node", "edge")):
            padded["node"], padded["edge"] = self._marginals(padded["emissions"], mask, teacher_idx,
                                                             edges="edge" in self.fields)
        out.update({name: padded[name] for name in TENSOR_FIELDS if name in self.fields})
        if "kbest_paths" in self.fields:
            out["kbest_paths"] = _pad_ints([it["kbest_paths"] for it in items], longest)
        return out

    def _marginals(self, emissions: Tensor, mask: Tensor, teacher_idx: Tensor,
                   edges: bool) -> tuple[Tensor, Tensor | None]:
        """Node (and with ``edges`` edge) marginals of each row's teacher from the (stored) emissions,
        teacher by teacher."""
        size, longest, labels = emissions.shape
        node = emissions.new_zeros(size, longest, labels)
        edge = emissions.new_zeros(size, max(longest - 1, 0), labels, labels) if edges else None
        with torch.no_grad():
            for t in teacher_idx.unique().tolist():
                rows = (teacher_idx == t).nonzero().flatten()
                meta = self.store.teachers[self.teacher_ids[t]]
                sub = mask[rows]
                width = int(sub.sum(1).max())
                structure = teacher_structure(meta, emissions[rows, :width], sub[:, :width], self.tau)
                marg = (structure.store_marginals() if edges else structure.marginals("node"))
                node[rows, :width] = marg["node"]
                if edges:
                    edge[rows, :width - 1] = marg["edge"]
        return node, edge


def _pad_ints(rows: list[np.ndarray], longest: int) -> Tensor:
    """Ragged int rows ([L] or [K, L]) -> long tensor [B, L] or [B, K, L], zero padded."""
    first = rows[0]
    out = np.zeros((len(rows),) + first.shape[:-1] + (longest,), dtype=np.int64)
    for b, row in enumerate(rows):
        out[b, ..., :row.shape[-1]] = row
    return torch.from_numpy(out)


def _pad_floats(rows: list[np.ndarray], longest: int) -> Tensor:
    """Ragged [L, ...] float rows -> float32 tensor [B, longest, ...], zero padded."""
    out = np.zeros((len(rows), longest) + rows[0].shape[1:], dtype=np.float32)
    for b, row in enumerate(rows):
        out[b, :len(row)] = row
    return torch.from_numpy(out)
