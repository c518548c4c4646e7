"""Which unlabeled rows of a store a student trains on (``distill.unlabeled``: ``min_top1``,
``drop_outside_only``).

Rows are chosen once, when the stream is opened, from two Parquet columns of each unlabeled shard
(``kbest_logprob``: the teacher's log P(top-1) is its first entry; ``viterbi``: the top-1 labels),
so the epoch's sentence and word counts, which size the learning-rate schedule and the step
budget, are those of the rows kept. Gold rows are never dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from store.frame import list_column
from store.reader import Store
from store.schema import StoreError


@dataclass(frozen=True)
class RowFilter:
    """Keep an unlabeled row when its teacher P(top-1) >= ``min_top1`` and, with
    ``drop_outside_only``, its top-1 path has a label other than ``outside`` (the id of O)."""

    min_top1: float = 0.0
    drop_outside_only: bool = False

    @property
    def active(self) -> bool:
        return self.min_top1 > 0 or self.drop_outside_only


def outside_id(store: Store, labels: list[str], rule: RowFilter) -> int | None:
    """The id of the outside label O that ``drop_outside_only`` tests for (None when not asked);
    refused for stores whose top-1 is not a label sequence of an entity scheme (chain and span teachers)."""
    if not rule.drop_outside_only:
        return None
    if any(meta.is_tree for meta in store.teachers.values()) or "O" not in labels:
        kinds = sorted({meta.decoder for meta in store.teachers.values()})
        raise StoreError(f"{store.url}: distill.unlabeled.drop_outside_only keeps the sentences whose teacher "
                         f"top-1 labels are not all O; this store's teachers ({kinds}) have no outside "
                         "label O in their top-1 outputs")
    return labels.index("O")


def kept_rows(store: Store, shard: str, rule: RowFilter, outside: int | None) -> np.ndarray:
    """Row indices [R'] (ascending) of ``shard`` that ``rule`` keeps."""
    table = store.read_table(shard, ["kbest_logprob", "viterbi", "length"])
    keep = np.ones(table.num_rows, dtype=bool)
    if rule.min_top1 > 0:
        logprob = list_column(table, "kbest_logprob")
        first = np.array([logprob.row(r)[0] for r in range(table.num_rows)], dtype=np.float64)
        keep &= first >= math.log(rule.min_top1)
    if outside is not None:
        viterbi = list_column(table, "viterbi")
        keep &= np.array([bool((viterbi.row(r) != outside).any()) for r in range(table.num_rows)])
    return np.flatnonzero(keep)


def selection(store: Store, shards: list[str], rule: RowFilter, labels: list[str]) -> dict[str, tuple[np.ndarray, int]]:
    """shard -> (kept row indices, their words) for every shard of ``shards`` (the unlabeled ones)."""
    outside = outside_id(store, labels, rule)
    out = {}
    for shard in shards:
        rows = kept_rows(store, shard, rule, outside)
        lengths = list_column(store.read_table(shard, ["length"]), "length").values
        out[shard] = (rows, int(np.asarray(lengths)[rows].sum()))
    return out
