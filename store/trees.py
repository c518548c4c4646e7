"""The tree layout of a shard (store/README.md, "Trees"): per sentence of L words the arc potentials
and marginals [L, L+1] (d-major: row d - 1 = word d's possible heads h = 0..L), flattened to 1-D
with their own offsets, and the relation marginals [L, R] on the token offsets; padded batches
[B, L+1, L+1] (h, d) of them, and arc marginals / teacher quantities recomputed from the stored
arc potentials (the reader's ``arc`` in ``potentials`` mode, and `verify`'s reference)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipeline.batching import budget_batches
from pipeline.structs import Structure
from pipeline.teaching import arc_targets, stored_arcs
from store.schema import ARC_ARRAYS, ARC_OFFSETS, TOKEN_OFFSETS, StoreOptions, TeacherMeta, stored_arrays

RECOMPUTE_CELLS = 1 << 16  # padded arcs ((L + 1)^2) per recompute batch


def arc_offsets(lengths: np.ndarray) -> np.ndarray:
    """int64 offsets [n + 1] into a flat arc array: a sentence of L words owns L * (L + 1) values."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths * (lengths + 1))]).astype(np.int64)


def to_rows(square: np.ndarray, n: int) -> np.ndarray:
    """[>= n+1, >= n+1] (h, d) -> the stored [n, n+1] (d-major) block of a sentence of n words."""
    return np.ascontiguousarray(np.asarray(square)[:n + 1, 1:n + 1].T)


def pad_arcs(rows: list[np.ndarray], lengths: list[int]) -> Tensor:
    """Stored per-sentence arc blocks (flat or [n, n+1]) -> float32 [B, L+1, L+1] (h, d), zero padded."""
    size = max(lengths) + 1
    out = np.zeros((len(rows), size, size), dtype=np.float32)
    for b, (row, n) in enumerate(zip(rows, lengths)):
        out[b, :n + 1, 1:n + 1] = np.asarray(row, dtype=np.float32).reshape(n, n + 1).T
    return torch.from_numpy(out)


def pad_words(rows: list[np.ndarray], lengths: list[int]) -> Tensor:
    """Per-word rows [n, ...] -> float32 [B, L+1, ...] at positions 1..n (position 0 = the root: 0)."""
    out = np.zeros((len(rows), max(lengths) + 1) + np.asarray(rows[0]).shape[1:], dtype=np.float32)
    for b, (row, n) in enumerate(zip(rows, lengths)):
        out[b, 1:n + 1] = row
    return torch.from_numpy(out)


def pad_heads(rows: list[np.ndarray], longest: int) -> Tensor:
    """Head / relation rows [..., n] of words 1..n -> long [B, ..., longest + 1] (position 0 and
    padding 0), the layout of pipeline.structs.tree outputs."""
    out = np.zeros((len(rows),) + np.asarray(rows[0]).shape[:-1] + (longest + 1,), dtype=np.int64)
    for b, row in enumerate(rows):
        out[b, ..., 1:np.asarray(row).shape[-1] + 1] = row
    return torch.from_numpy(out)


def tree_arrays(rows: list[dict], options: StoreOptions, decoder: str, offsets: np.ndarray) -> dict:
    """A tree shard's Zarr arrays (besides the token offsets) from per-sentence dicts, in the
    storage dtype (``prune`` zeroes the stored arc marginals below it)."""
    dtype = np.dtype(options.dtype)
    arrays = {ARC_OFFSETS: arc_offsets(np.diff(offsets))}
    for name in stored_arrays(decoder, options.tensors):
        shape = (-1,) if name in ARC_ARRAYS else (-1, len(rows[0]["rel"][0]))
        arrays[name] = np.concatenate([np.asarray(r[name]).reshape(shape) for r in rows]).astype(dtype)
    if options.prune and "arc" in arrays:
        arrays["arc"][arrays["arc"] < options.prune] = 0
    return arrays


def _batches(lengths: np.ndarray) -> list[np.ndarray]:
    """Length-bucketed batches of at most RECOMPUTE_CELLS padded arcs ((L + 1)^2 per sentence)."""
    return budget_batches((np.asarray(lengths, dtype=np.int64) + 1) ** 2, RECOMPUTE_CELLS)


def sentence_arcs(teacher: TeacherMeta, stored: dict[str, np.ndarray], rows: np.ndarray,
                  tau: float | None = None) -> Structure:
    """The teacher's arc structure for sentences ``rows`` of a shard, from its stored potentials."""
    offsets, arcs = stored[TOKEN_OFFSETS], stored[ARC_OFFSETS]
    lengths = [int(offsets[i + 1] - offsets[i]) for i in rows]
    scores = pad_arcs([stored["arc_scores"][arcs[i]:arcs[i + 1]] for i in rows], lengths)
    return stored_arcs(teacher.decoder, scores, torch.tensor(lengths), teacher.tau if tau is None else tau)


def recompute_arcs(teacher: TeacherMeta, stored: dict[str, np.ndarray], k: int | None = None,
                   score=None) -> dict[str, np.ndarray]:
    """Arc marginals (flat, float32, on the arc offsets) from a shard's stored arc potentials; with
    ``k`` every teacher quantity: also ``log_z`` [n], ``viterbi`` [n, L+1] (padded), ``kbest_logprob``
    [n, k]; ``score(structure, rows, out)`` is called on each batch's structure once its rows of
    ``out`` are filled (verify scores the stored paths with it)."""
    offsets, arcs = stored[TOKEN_OFFSETS], stored[ARC_OFFSETS]
    lengths = np.diff(offsets)
    out = {"arc": np.zeros(int(arcs[-1]), dtype=np.float32)}
    if k is not None:
        out.update(log_z=np.zeros(len(lengths), dtype=np.float32),
                   viterbi=np.zeros((len(lengths), int(lengths.max(initial=0)) + 1), dtype=np.int64),
                   kbest_logprob=np.zeros((len(lengths), k), dtype=np.float32))
    for rows in _batches(lengths):
        structure = sentence_arcs(teacher, stored, rows)
        res = arc_targets(structure, k or 1, tau=teacher.tau) if k is not None \
            else {"arc": arc_marginals(structure)}
        for b, i in enumerate(rows):
            n = int(lengths[i])
            out["arc"][arcs[i]:arcs[i + 1]] = to_rows(res["arc"][b].numpy(), n).reshape(-1)
            if k is not None:
                out["log_z"][i] = float(res["log_z"][b])
                out["viterbi"][i, :n + 1] = res["viterbi"][b, :n + 1].numpy()
                out["kbest_logprob"][i] = res["kbest_logprob"][b].numpy()
        if score is not None:
            score(structure, rows, out)
    return out


def arc_marginals(structure: Structure) -> Tensor:
    """Arc marginals [B, L+1, L+1] (the tree ones by autograd: normal mode, no graph kept)."""
    with torch.inference_mode(False), torch.no_grad():
        return structure.replace(scores=structure.scores.clone()).marginals()["arc"]
