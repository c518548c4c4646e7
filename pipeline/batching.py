"""The one length batcher: sentences of similar length under a padded-word budget.

``pack`` cuts a run of lengths sorted ascending into consecutive batches with
``rows * longest <= budget`` (a sentence longer than the budget is a batch of its own) and at most
``max_sentences`` rows; ``budget_batches`` does it for unsorted lengths and returns indices. The
stream (student batches), annotate (teacher batches), the store's recompute and teacher training
(fixed-size batches, ``budget=None``) all cut their batches with it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack(lengths: Sequence[int], budget: int | None, max_sentences: int | None = None) -> list[list[int]]:
    """Consecutive index runs of ``lengths`` (sorted ascending) with ``rows * longest <= budget``
    (no budget: None) and at most ``max_sentences`` rows."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i, length in enumerate(lengths):
        full = max_sentences is not None and len(current) >= max_sentences
        over = budget is not None and (len(current) + 1) * length > budget
        if current and (over or full):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def budget_batches(lengths: Sequence[int], budget: int | None,
                   max_sentences: int | None = None) -> list[np.ndarray]:
    """Indices into ``lengths`` grouped by length (shortest first, stable) under ``budget``."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[rows] for rows in pack([int(lengths[i]) for i in order], budget, max_sentences)]
