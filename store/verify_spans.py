"""The invariants of a span shard's sentences (``store.verify.check_rows`` runs them on span
teachers' shards), recomputed from the stored span potentials: BIOES node marginals of each word
sum to 1, stored ones (full) match the recomputed ones, log Z, k-best BIOES paths sorted with
log-probs <= 0 and equal to the recomputed k best and to each stored path's own log-prob, residual
mass, the Viterbi path a valid BIOES sequence and the best one, gold ids."""
from __future__ import annotations

import numpy as np
import torch

from store.schema import SPAN_OFFSETS, TOKEN_OFFSETS, TeacherMeta
from store.spans import recompute_spans
from store.verify_kbest import gold_ids_agree, kbest_columns, kbest_problems


def _pad_labels(rows: list[np.ndarray], size: int) -> torch.Tensor:
    """Label rows [..., n] -> long [B, ..., size], zero padded."""
    out = np.zeros((len(rows),) + np.asarray(rows[0]).shape[:-1] + (size,), dtype=np.int64)
    for b, row in enumerate(rows):
        out[b, ..., :np.asarray(row).shape[-1]] = row
    return torch.from_numpy(out)


def span_references(teacher: TeacherMeta, stored: dict[str, np.ndarray], cols: dict) -> dict:
    """Recomputed ``node`` [N, 1 + 4E], ``log_z`` [n], ``viterbi`` [n, L], ``kbest_logprob`` [n, k],
    plus per sentence the log-probs ``own`` of the stored k-best paths, ``viterbi_lp`` of the stored
    Viterbi path (-inf: not a valid BIOES sequence) and ``best_lp`` of the recomputed best one."""
    n = len(stored[TOKEN_OFFSETS]) - 1
    extra = {"own": [None] * n, "viterbi_lp": np.zeros(n), "best_lp": np.zeros(n)}
    top = len(teacher.labels) - 1

    def score(structure, rows, ref) -> None:
        size = structure.scores.shape[1]
        # labels out of range are reported per sentence; clamped here only so that scoring runs
        paths = _pad_labels([cols["kbest_paths"].row(i).clip(0, top) for i in rows], size)
        viterbi = _pad_labels([cols["viterbi"].row(i).clip(0, top) for i in rows], size)
        best = torch.from_numpy(ref["viterbi"][rows, :size])
        log_z = torch.from_numpy(ref["log_z"][rows]).double().unsqueeze(1)
        own = structure.score(paths).double() - log_z
        scored = structure.score(torch.stack([viterbi, best], 1)).double() - log_z
        for b, i in enumerate(rows):
            extra["own"][i] = own[b].numpy()
            extra["viterbi_lp"][i], extra["best_lp"][i] = scored[b].tolist()

    return {**recompute_spans(teacher, stored, k=teacher.k, score=score), **extra}


def span_sentence(sid: str, L: int, cols: dict, row: int, teacher: TeacherMeta, stored: dict,
                  node: np.ndarray, ref: dict, mtol: float, full: bool) -> list[str]:
    """Problems of one sentence of a span shard (empty when every invariant holds). ``node`` is the
    sentence's [L, 1 + 4E] BIOES marginals (stored or recomputed), ``mtol`` the tolerance of a
    stored probability."""
    out = []
    T = len(teacher.labels)
    log_z, ztol, lp, paths, viterbi = kbest_columns(cols, row, L)
    a, b = stored[TOKEN_OFFSETS][row], stored[TOKEN_OFFSETS][row + 1]
    cells = stored[SPAN_OFFSETS]
    scores = stored["span_scores"][cells[row]:cells[row + 1]].astype(np.float32)

    def fail(what: str) -> None:
        out.append(f"sentence {sid}: {what}")

    if len(cols["tokens"].row(row)) != L or len(viterbi) != L or paths.shape != (len(lp), L) \
            or node.shape != (L, T):
        return [f"sentence {sid}: tokens / viterbi / k-best / marginal shapes do not match length {L}"]
    if np.isnan(scores).any() or np.isposinf(scores).any():
        fail("span potentials hold NaN or +inf")
    sums = np.abs(node.sum(1) - 1).max(initial=0)
    if sums > T * mtol or node.min(initial=0) < -mtol:
        fail(f"BIOES marginals of a word do not sum to 1 (max error {sums:.2e})")
    if full and np.abs(node - ref["node"][a:b]).max(initial=0) > mtol:
        fail(f"stored BIOES marginals differ from those recomputed from the potentials "
             f"(max {np.abs(node - ref['node'][a:b]).max():.2e})")
    if abs(log_z - ref["log_z"][row]) > ztol:
        fail(f"log Z {log_z:.6f} != {ref['log_z'][row]:.6f} recomputed from the potentials")
    real = np.isfinite(lp)
    if paths.min(initial=0) < 0 or paths.max(initial=0) >= T or np.any(paths[~real] != 0):
        fail(f"k-best BIOES labels out of range 0..{T - 1} or non-zero surplus rows")
    out += [f"sentence {sid}: {p}" for p in kbest_problems(
        lp, ref["kbest_logprob"][row].astype(np.float64), ref["own"][row][real],
        float(cols["residual_mass"].row(row)), ztol)]
    if viterbi.min(initial=0) < 0 or viterbi.max(initial=0) >= T or not np.isfinite(ref["viterbi_lp"][row]):
        fail(f"the stored Viterbi path {viterbi.tolist()} is not a valid BIOES sequence")
    elif ref["viterbi_lp"][row] < ref["best_lp"][row] - 2 * ztol:
        fail("the stored Viterbi path is not the best span set of the potentials")
    if not gold_ids_agree(cols["gold"].row(row), cols["gold_ids"].row(row), teacher.labels, L):
        fail("gold / gold_ids do not agree with the teacher's BIOES labels")
    return out


def span_checker(teacher: TeacherMeta, stored: dict, cols: dict, full: bool, mtol: float):
    """``sentence(sid, L, row) -> problems`` of a span shard (``full``: the store keeps the BIOES
    marginals; ``mtol``: the tolerance of a stored probability)."""
    ref = span_references(teacher, stored, cols)
    offsets = stored[TOKEN_OFFSETS]
    flat = stored["node"].astype(np.float32) if full else ref["node"]

    def sentence(sid: str, L: int, row: int) -> list[str]:
        node = flat[offsets[row]:offsets[row + 1]]
        return span_sentence(sid, L, cols, row, teacher, stored, node, ref, mtol, full)

    return sentence
