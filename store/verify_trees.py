"""The invariants of a tree shard's sentences (``store.verify.check_rows`` runs them on tree
teachers' shards), recomputed from the stored arc potentials: head marginals of each word sum to 1,
relation marginals too, stored arc marginals (full) and log Z match the recomputed ones, k-best
head vectors sorted with log-probs <= 0 and equal to the recomputed k best, each stored vector's
own log-prob, residual mass, the Viterbi heads a tree and the best one, relation and gold ids."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.structs import mst
from pipeline.teaching import TREE_DECODERS
from store.schema import ARC_OFFSETS, TOKEN_OFFSETS, TeacherMeta
from store.trees import pad_heads, recompute_arcs
from store.verify_kbest import gold_ids_agree, kbest_columns, kbest_problems


def tree_references(teacher: TeacherMeta, stored: dict[str, np.ndarray], cols: dict) -> dict:
    """Recomputed ``arc`` (flat), ``log_z``, ``kbest_logprob`` and the best tree's log-prob per
    sentence, plus the log-probs of the stored k-best vectors and Viterbi heads and whether those
    Viterbi heads are a tree (single root; projective for a projective teacher)."""
    n = len(stored[TOKEN_OFFSETS]) - 1
    extra = {"own": [None] * n, "viterbi_lp": np.zeros(n), "best_lp": np.zeros(n),
             "is_tree": np.zeros(n, dtype=bool)}
    projective = bool(TREE_DECODERS[teacher.decoder])

    def score(structure, rows, ref) -> None:
        size = structure.scores.shape[-1]
        # heads out of range are reported per sentence; clamped here only so that scoring runs
        paths = pad_heads([cols["kbest_paths"].row(i).clip(0, size - 1) for i in rows], size - 1)
        viterbi = pad_heads([cols["viterbi"].row(i).clip(0, size - 1) for i in rows], size - 1)
        best = torch.from_numpy(ref["viterbi"][rows, :size])
        with torch.inference_mode(False), torch.no_grad():
            log_z = torch.from_numpy(ref["log_z"][rows]).double().unsqueeze(1)
            own = structure.score(paths).double() - log_z
            scored = structure.score(torch.stack([viterbi, best], 1)).double() - log_z
        trees = mst.is_tree(viterbi, structure.word_lengths, True, projective)
        for b, i in enumerate(rows):
            extra["own"][i] = own[b].numpy()
            extra["viterbi_lp"][i], extra["best_lp"][i] = scored[b].tolist()
            extra["is_tree"][i] = bool(trees[b])

    return {**recompute_arcs(teacher, stored, k=teacher.k, score=score), **extra}


def tree_sentence(sid: str, L: int, cols: dict, row: int, teacher: TeacherMeta, stored: dict,
                  arc: np.ndarray, ref: dict, mtol: float, rtol: float, full: bool) -> list[str]:
    """Problems of one sentence of a tree shard (empty when every invariant holds). ``arc`` is the
    sentence's [L, L+1] head marginals (stored or recomputed), ``mtol`` / ``rtol`` the tolerance of
    a stored arc / relation probability."""
    out = []
    R = len(teacher.labels)
    log_z, ztol, lp, paths, viterbi = kbest_columns(cols, row, L)
    relations = cols["relations"].row(row)
    a, b = stored[TOKEN_OFFSETS][row], stored[TOKEN_OFFSETS][row + 1]
    scores = stored["arc_scores"][stored[ARC_OFFSETS][row]:stored[ARC_OFFSETS][row + 1]].astype(np.float32)
    rel = stored["rel"][a:b].astype(np.float32)

    def fail(what: str) -> None:
        out.append(f"sentence {sid}: {what}")

    if len(cols["tokens"].row(row)) != L or len(viterbi) != L or paths.shape != (len(lp), L) \
            or relations is None or len(relations) != L or rel.shape != (L, R):
        return [f"sentence {sid}: tokens / heads / k-best / relations shapes do not match length {L}"]
    if np.isnan(scores).any() or np.isposinf(scores).any():
        fail("arc potentials hold NaN or +inf")
    sums = np.abs(arc.sum(1) - 1).max(initial=0)
    if sums > (L + 1) * mtol or arc.min(initial=0) < -mtol:
        fail(f"head marginals of a word do not sum to 1 (max error {sums:.2e})")
    ref_arc = ref["arc"][stored[ARC_OFFSETS][row]:stored[ARC_OFFSETS][row + 1]].reshape(L, L + 1)
    if full and np.abs(arc - ref_arc).max(initial=0) > mtol:
        fail(f"stored arc marginals differ from those recomputed from the potentials "
             f"(max {np.abs(arc - ref_arc).max():.2e})")
    rsums = np.abs(rel.sum(1) - 1).max(initial=0)
    if rsums > R * rtol or rel.min(initial=0) < -rtol:
        fail(f"relation marginals of a word do not sum to 1 (max error {rsums:.2e})")
    if abs(log_z - ref["log_z"][row]) > ztol:
        fail(f"log Z {log_z:.6f} != {ref['log_z'][row]:.6f} recomputed from the potentials")
    real = np.isfinite(lp)
    if paths.min(initial=0) < 0 or paths.max(initial=0) > L or np.any(paths[~real] != 0):
        fail("k-best heads out of range 0..L or non-zero surplus rows")
    out += [f"sentence {sid}: {p}" for p in kbest_problems(
        lp, ref["kbest_logprob"][row].astype(np.float64), ref["own"][row][real],
        float(cols["residual_mass"].row(row)), ztol)]
    if viterbi.min(initial=0) < 0 or viterbi.max(initial=0) > L or not ref["is_tree"][row]:
        fail(f"the stored Viterbi heads {viterbi.tolist()} are not a dependency tree")
    elif ref["viterbi_lp"][row] < ref["best_lp"][row] - 2 * ztol:
        fail("the stored Viterbi heads are not the best tree of the potentials")
    if np.asarray(relations).min(initial=0) < 0 or np.asarray(relations).max(initial=0) >= R:
        fail(f"relation ids out of range 0..{R - 1}")
    gold, gold_heads = cols["gold"].row(row), cols["gold_heads"].row(row)
    if not gold_ids_agree(gold, cols["gold_ids"].row(row), teacher.labels, L):
        fail("gold relations / gold_ids do not agree with the teacher's relation names")
    if (gold_heads is None) != (gold is None) or (gold_heads is not None and (
            len(gold_heads) != L or np.min(gold_heads) < 0 or np.max(gold_heads) > L)):
        fail("gold heads missing, of another length or out of range 0..L")
    return out
