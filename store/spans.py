"""The span layout of a shard (store/README.md, "Spans"): per sentence of L words the span
potentials [L, L, E] (span (start, end inclusive, type); every start-end pair, entries with
end < start stored as 0, spans a teacher forbids, e.g. wider than its ``max_span_width``, as -inf),
flattened to 1-D with their own offsets, and with ``tensors=full`` the BIOES node marginals
[L, 1 + 4E] on the token offsets; padded batches [B, L, L, E] of them, and the teacher quantities
recomputed from the stored span potentials (the reader's ``node`` in ``potentials`` mode, and
`verify`'s reference)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipeline.batching import budget_batches
from pipeline.schemes import encode, spans
from pipeline.structs import Spans
from pipeline.teaching import span_targets
from store.schema import SPAN_OFFSETS, TOKEN_OFFSETS, StoreOptions, TeacherMeta, stored_arrays

RECOMPUTE_CELLS = 1 << 16  # padded span cells (L * L * E) per recompute batch


def num_types(teacher: TeacherMeta) -> int:
    """E of a span teacher, whose labels are the 1 + 4E BIOES labels."""
    return (len(teacher.labels) - 1) // 4


def span_offsets(lengths: np.ndarray, types: int) -> np.ndarray:
    """int64 offsets [n + 1] into a flat span array: a sentence of L words owns L * L * E values."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths * lengths * types)]).astype(np.int64)


def pad_spans(rows: list[np.ndarray], lengths: list[int], types: int) -> Tensor:
    """Stored per-sentence span blocks (flat or [n, n, E]) -> float32 [B, L, L, E], zero padded."""
    size = max(lengths)
    out = np.zeros((len(rows), size, size, types), dtype=np.float32)
    for b, (row, n) in enumerate(zip(rows, lengths)):
        out[b, :n, :n] = np.asarray(row, dtype=np.float32).reshape(n, n, types)
    return torch.from_numpy(out)


def bioes_gold(labels: list[str] | None) -> list[str] | None:
    """Corpus gold tags (any prefixed scheme) as the BIOES labels of their span set."""
    return None if labels is None else encode(spans(labels), len(labels), "BIOES")


def span_row(out: dict[str, np.ndarray], b: int, n: int) -> dict:
    """The store row fields of batch row ``b`` (n words) of ``span_targets`` outputs."""
    row = {"viterbi": out["viterbi"][b, :n], "kbest_paths": out["kbest_paths"][b, :, :n],
           "span_scores": out["span_scores"][b, :n, :n]}
    if "node" in out:
        row["node"] = out["node"][b, :n]
    return row


def span_arrays(rows: list[dict], options: StoreOptions, decoder: str, offsets: np.ndarray) -> dict:
    """A span shard's Zarr arrays (besides the token offsets) from per-sentence dicts, in the storage
    dtype (``prune`` zeroes the stored BIOES marginals below it)."""
    dtype = np.dtype(options.dtype)
    types = np.asarray(rows[0]["span_scores"]).shape[-1]
    arrays = {SPAN_OFFSETS: span_offsets(np.diff(offsets), types)}
    for name in stored_arrays(decoder, options.tensors):
        shape = (-1,) if name == "span_scores" else (-1, 1 + 4 * types)
        arrays[name] = np.concatenate([np.asarray(r[name]).reshape(shape) for r in rows]).astype(dtype)
    if options.prune and "node" in arrays:
        arrays["node"][arrays["node"] < options.prune] = 0
    return arrays


def sentence_spans(teacher: TeacherMeta, stored: dict[str, np.ndarray], rows: np.ndarray,
                   tau: float | None = None) -> Spans:
    """The teacher's ``Spans`` for sentences ``rows`` of a shard, from its stored span potentials."""
    offsets, cells = stored[TOKEN_OFFSETS], stored[SPAN_OFFSETS]
    lengths = [int(offsets[i + 1] - offsets[i]) for i in rows]
    scores = pad_spans([stored["span_scores"][cells[i]:cells[i + 1]] for i in rows], lengths, num_types(teacher))
    return Spans(scores, torch.tensor(lengths), teacher.labels, teacher.tau if tau is None else tau)


def recompute_spans(teacher: TeacherMeta, stored: dict[str, np.ndarray], k: int | None = None,
                    score=None) -> dict[str, np.ndarray]:
    """BIOES node marginals [N, 1 + 4E] (float32, on the token offsets) from a shard's stored span
    potentials; with ``k`` also ``log_z`` [n], ``viterbi`` [n, L] (padded) and ``kbest_logprob``
    [n, k]; ``score(structure, rows, out)`` is called on each batch's structure once its rows of
    ``out`` are filled (verify scores the stored paths with it)."""
    offsets = stored[TOKEN_OFFSETS]
    lengths = np.diff(offsets)
    out = {"node": np.zeros((int(offsets[-1]), len(teacher.labels)), dtype=np.float32)}
    if k is not None:
        out.update(log_z=np.zeros(len(lengths), dtype=np.float32),
                   viterbi=np.zeros((len(lengths), int(lengths.max(initial=0))), dtype=np.int64),
                   kbest_logprob=np.zeros((len(lengths), k), dtype=np.float32))
    cells = np.asarray(lengths, dtype=np.int64) ** 2 * num_types(teacher)
    for rows in budget_batches(cells, RECOMPUTE_CELLS):
        structure = sentence_spans(teacher, stored, rows)
        res = span_targets(structure, k or 1, tau=teacher.tau) if k is not None \
            else {"node": structure.bioes_marginals()}
        for b, i in enumerate(rows):
            n = int(lengths[i])
            out["node"][offsets[i]:offsets[i + 1]] = res["node"][b, :n].numpy()
            if k is not None:
                out["log_z"][i] = float(res["log_z"][b])
                out["viterbi"][i, :n] = res["viterbi"][b, :n].numpy()
                out["kbest_logprob"][i] = res["kbest_logprob"][b].numpy()
        if score is not None:
            score(structure, rows, out)
    return out
