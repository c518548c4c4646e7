"""Ragged tensors: flat token-major arrays + offsets <-> padded batches, and marginals recomputed
from stored potentials (the reader's node / edge in ``potentials`` mode, and `verify`'s reference)."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.batching import budget_batches
from pipeline.structs import Structure
from pipeline.teaching import stored_structure, teacher_targets
from store.schema import TeacherMeta

RECOMPUTE_TOKENS = 8192  # padded words per recompute batch
QUANTUM = {"float16": 2.0 ** -11, "float32": 1e-6}  # rounding of a stored probability
DP_TOL = 1e-5  # float32 dynamic programs run on different batch shapes


def lse(x: np.ndarray) -> float:
    """logsumexp of a 1-D array in float64 (-inf for an empty or all -inf one)."""
    x = np.asarray(x, dtype=np.float64)
    top = x.max() if len(x) else -np.inf
    return float(top) if top == -np.inf else float(top + np.log(np.exp(x - top).sum()))


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """int64 offsets [n + 1] of rows of the given lengths."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def edge_offsets(offsets: np.ndarray) -> np.ndarray:
    """Offsets into the flat edge array: a sentence of length L has L - 1 edge rows."""
    return offsets - np.arange(len(offsets), dtype=np.int64)


def pad(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of a flat [N, ...] array -> padded float32 tensor [B, L, ...] and mask [B, L]."""
    lengths = offsets[rows + 1] - offsets[rows]
    out = np.zeros((len(rows), int(lengths.max())) + flat.shape[1:], dtype=np.float32)
    for b, i in enumerate(rows):
        out[b, :lengths[b]] = flat[offsets[i]:offsets[i + 1]]
    mask = np.arange(out.shape[1])[None, :] < lengths[:, None]
    return torch.from_numpy(out), torch.from_numpy(mask)


def teacher_structure(teacher: TeacherMeta, emissions: torch.Tensor, mask: torch.Tensor,
                      tau: float | None = None) -> Structure:
    """The teacher's Structure for a batch of stored emissions (effective factors, see TeacherMeta),
    at temperature ``tau`` (the store's when None)."""
    return stored_structure(teacher.decoder, teacher.arrays, emissions, mask,
                            teacher.tau if tau is None else tau)


def recompute(teacher: TeacherMeta, emissions: np.ndarray, offsets: np.ndarray, k: int | None = None,
              budget: int = RECOMPUTE_TOKENS) -> dict[str, np.ndarray]:
    """Node [N, T] and edge [N - n, T, T] marginals (flat, float32) from stored emissions; with ``k``,
    every teacher quantity: also ``log_z`` [n], ``viterbi`` (flat [N]), ``kbest_logprob`` [n, k]."""
    lengths = np.diff(offsets)
    num_labels = emissions.shape[1]
    edges = edge_offsets(offsets)
    out = {"node": np.zeros((int(offsets[-1]), num_labels), dtype=np.float32),
           "edge": np.zeros((int(edges[-1]), num_labels, num_labels), dtype=np.float32)}
    if k is not None:
        out["log_z"] = np.zeros(len(lengths), dtype=np.float32)
        out["viterbi"] = np.zeros(int(offsets[-1]), dtype=np.int64)
        out["kbest_logprob"] = np.zeros((len(lengths), k), dtype=np.float32)
    with torch.inference_mode():
        for rows in budget_batches(lengths, budget):
            padded, mask = pad(emissions, offsets, rows)
            structure = teacher_structure(teacher, padded, mask)
            if k is None:
                res = structure.store_marginals()
            else:
                res = teacher_targets(structure, k, tau=teacher.tau)
            for b, i in enumerate(rows):
                length = int(lengths[i])
                out["node"][offsets[i]:offsets[i + 1]] = res["node"][b, :length].numpy()
                out["edge"][edges[i]:edges[i + 1]] = res["edge"][b, :length - 1].numpy()
                if k is not None:
                    out["log_z"][i] = float(res["log_z"][b])
                    out["viterbi"][offsets[i]:offsets[i + 1]] = res["viterbi"][b, :length].numpy()
                    out["kbest_logprob"][i] = res["kbest_logprob"][b].numpy()
    return out
