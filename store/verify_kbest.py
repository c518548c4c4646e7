"""The per-sentence invariants every structure kind's shard shares (``store.verify`` for chains,
``store.verify_trees`` for trees): the k-best columns and the gold ids.

``kbest_columns`` reads a sentence's log Z, its tolerance (``ROUNDING`` per part of the stored
potentials plus the dynamic program's ``DP_TOL``), k-best log-probs and structures and Viterbi
structure; ``kbest_problems`` checks the k-best log-probs: sorted best first (surplus -inf rows last),
at most 0 with a sum at most 1, equal to the k best recomputed from the potentials and to each stored
structure's own log-prob, and the stored residual mass equal to 1 - their sum."""
from __future__ import annotations

import numpy as np

from pipeline.structs import ROUNDING
from store.tensors import DP_TOL, lse


def kbest_columns(cols: dict, row: int, L: int) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """(log Z, its tolerance, k-best log-probs [k] float64, k-best structures [k, L], Viterbi [L])."""
    log_z = float(cols["log_z"].row(row))
    ztol = float(ROUNDING * (L + 1) * (1 + abs(log_z))) + DP_TOL
    lp = cols["kbest_logprob"].row(row).astype(np.float64)
    paths = cols["kbest_paths"].row(row).astype(np.int64)
    viterbi = cols["viterbi"].row(row).astype(np.int64)
    return log_z, ztol, lp, paths, viterbi


def kbest_problems(lp: np.ndarray, ref_lp: np.ndarray, own: np.ndarray, residual: float, ztol: float) -> list[str]:
    """What is wrong with a sentence's k-best log-probs ``lp`` [k] given the recomputed k best
    ``ref_lp`` [k], the stored structures' own log-probs ``own`` (one per finite entry of ``lp``) and
    the stored ``residual`` mass (module docstring); empty when nothing is."""
    out = []
    real = np.isfinite(lp)
    with np.errstate(invalid="ignore"):  # -inf - -inf between surplus rows
        unsorted = np.any(np.diff(lp) > ztol)
    if unsorted or (real[1:] & ~real[:-1]).any():
        out.append(f"k-best log-probs are not sorted best first: {lp.tolist()}")
    if np.any(lp > ztol) or lse(lp) > ztol:
        out.append(f"k-best log-probs exceed 0 or sum above 1: {lp.tolist()}")
    same = np.array_equal(np.isfinite(ref_lp), real)
    if not same or np.abs(lp[real] - ref_lp[real]).max(initial=0) > 2 * ztol:
        out.append(f"k-best log-probs {lp.tolist()} differ from the recomputed k best {ref_lp.tolist()}")
    if np.abs(own - lp[real]).max(initial=0) > 2 * ztol or not np.isfinite(own).all():
        out.append(f"k-best log-probs {lp[real].tolist()} are not those of the stored structures ({own.tolist()})")
    expected = max(0.0, -np.expm1(lse(lp)))
    if abs(residual - expected) > 2 * ztol + 1e-6:
        out.append(f"residual mass {residual:.3e} != 1 - sum p = {expected:.3e}")
    return out


def gold_ids_agree(gold, gold_ids, labels: list[str], L: int) -> bool:
    """Whether the stored ``gold_ids`` are the ids of the ``gold`` names in ``labels`` (-1 for an
    unknown name; both None for a sentence without gold) and gold has the sentence's length."""
    index = {label: i for i, label in enumerate(labels)}
    expected = None if gold is None else [index.get(g, -1) for g in gold]
    stored = None if gold_ids is None else list(gold_ids)
    return expected == stored and (gold is None or len(gold) == L)
