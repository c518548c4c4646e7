"""Brute-force oracles for the KD tests: enumerate every label sequence of one sentence in float64.

No dynamic program and nothing from pipeline.crf / pipeline.kd but the data types (Constraints,
the student's Structure, TeacherTargets): only itertools.product and plain float64 tensor indexing.
All functions take ONE sentence of length n (no padding): emissions [n, T], transitions [T, T],
start / end [T] or None, allowed = (transitions [T, T], start [T], end [T]) bool or None.
"""
from __future__ import annotations

import decimal
import itertools
import math
from dataclasses import dataclass

import torch

from pipeline.crf import Constraints
from pipeline.kd.types import TeacherTargets
from pipeline.structs import ChainCRF, Factorized, Structure

NEG_INF = float("-inf")


def all_paths(n: int, num_labels: int) -> torch.Tensor:
    """Every label sequence of length n, [T**n, n] long."""
    return torch.tensor(list(itertools.product(range(num_labels), repeat=n)), dtype=torch.long)


def crf_scores(paths, emissions, transitions, start=None, end=None, allowed=None, tau=1.0):
    """Score of each path [N] (differentiable w.r.t. the float64 potentials), -inf if forbidden."""
    n = paths.shape[1]
    score = emissions[torch.arange(n), paths].sum(dim=1)
    if n > 1:
        score = score + transitions[paths[:, :-1], paths[:, 1:]].sum(dim=1)
    if start is not None:
        score = score + start[paths[:, 0]]
    if end is not None:
        score = score + end[paths[:, -1]]
    score = score / tau
    if allowed is not None:
        ok = allowed[1][paths[:, 0]] & allowed[2][paths[:, -1]]
        if n > 1:
            ok = ok & allowed[0][paths[:, :-1], paths[:, 1:]].all(dim=1)
        score = torch.where(ok, score, torch.full_like(score, NEG_INF))
    return score


def maxent_scores(paths, emissions, tau=1.0):
    """Log-probability of each path under independent softmaxes (the MaxEnt decoder), [N]."""
    n = paths.shape[1]
    logp = [torch.log(torch.exp(emissions[i] / tau) / torch.exp(emissions[i] / tau).sum())
            for i in range(n)]
    return torch.stack([logp[i][paths[:, i]] for i in range(n)], dim=1).sum(dim=1)


def normalize(scores):
    """Log-probabilities from unnormalized log-scores (float64 log-sum-exp written out)."""
    top = scores.max()
    return scores - (top + torch.log(torch.exp(scores - top).sum()))


def node_edge(paths, logp, num_labels):
    """Exact node [n, T] and edge [n-1, T, T] marginals: sum of path probabilities per factor."""
    n = paths.shape[1]
    prob = torch.exp(logp)
    node = torch.stack([torch.zeros(num_labels, dtype=torch.float64).index_add(0, paths[:, i], prob)
                        for i in range(n)])
    edge = torch.zeros(max(n - 1, 0), num_labels * num_labels, dtype=torch.float64)
    for i in range(n - 1):
        edge[i].index_add_(0, paths[:, i] * num_labels + paths[:, i + 1], prob)
    return node, edge.view(-1, num_labels, num_labels)


def kbest(paths, logp, k):
    """The k most probable paths with a finite log-prob, best first: (list of paths, list of logp)."""
    order = sorted(range(len(paths)), key=lambda j: -logp[j].item())
    kept = [j for j in order if logp[j].item() > NEG_INF][:k]
    return [paths[j].tolist() for j in kept], [logp[j].item() for j in kept]


def xlogy(p: float, logq: float) -> float:
    """p * log q with the convention 0 * (-inf) = 0."""
    return 0.0 if p == 0.0 else p * logq


def cross_entropy(logp_t, logp_s):
    """-sum_y P_t(y) log P_s(y) over the enumerated paths."""
    return -sum(xlogy(math.exp(a), b) for a, b in zip(logp_t.tolist(), logp_s.tolist()))


def log1mexp(x: float) -> float:
    """log(1 - exp(x)) computed with 80 significant decimal digits, rounded to float."""
    if x >= 0.0:
        return NEG_INF
    with decimal.localcontext() as ctx:
        ctx.prec = 80
        return float((1 - decimal.Decimal(x).exp()).ln())


def path_index(path, num_labels: int) -> int:
    """Row of ``path`` in all_paths(len(path), T) (itertools.product order)."""
    index = 0
    for label in path:
        index = index * num_labels + int(label)
    return index


@dataclass
class Sentence:
    """Float64 data of one sentence for the oracles (teacher node is the stored float32, upcast)."""

    n: int
    paths: torch.Tensor
    s_logp: torch.Tensor
    t_logp: torch.Tensor
    kb_paths: list
    kb_logp: list
    hard: list
    s_em: torch.Tensor
    t_em: torch.Tensor
    t_node: torch.Tensor
    s_trans: torch.Tensor | None
    t_trans: torch.Tensor | None
    s_start: torch.Tensor | None
    t_start: torch.Tensor | None
    s_allowed: Constraints | None  # the CRF student's constraints
    t_logp_kd: torch.Tensor  # the teacher distribution marginal-based KD targets (restricted for a
    t_node_kd: torch.Tensor  # MaxEnt teacher and a constrained CRF student), and its node marginals


@dataclass
class Case:
    student: Structure
    teacher: TeacherTargets
    mask: torch.Tensor
    hard: torch.Tensor
    sentences: list


def random_constraints(gen, num_labels):
    """Random allowed factors; label 0 may start, follow itself and end, so a path always exists."""
    trans = (torch.rand(num_labels, num_labels, generator=gen) < 0.6) | torch.eye(num_labels).bool()
    start = torch.rand(num_labels, generator=gen) < 0.6
    end = torch.rand(num_labels, generator=gen) < 0.6
    start[0] = end[0] = True
    return Constraints(trans, start, end)


def make_case(seed, num_labels, lengths, *, student_crf=True, teacher_crf=True, start_end=True,
              constrained=False, k=5):
    """A padded batch with finite garbage in every padded slot, and its per-sentence oracle data."""
    gen = torch.Generator().manual_seed(seed)
    batch, width, T = len(lengths), max(lengths) + 1, num_labels

    def randn(*shape, scale=1.5):
        return torch.randn(*shape, generator=gen) * scale

    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    pad = ~mask[..., None]
    allowed = random_constraints(gen, T) if constrained else None
    s_em = torch.where(pad, randn(batch, width, T, scale=50.0), randn(batch, width, T))
    t_em = torch.where(pad, randn(batch, width, T, scale=50.0), randn(batch, width, T, scale=2.0))
    s_trans = randn(T, T) if student_crf else None
    s_start, s_end = (randn(T), randn(T)) if student_crf and start_end else (None, None)
    t_trans = randn(batch, T, T, scale=2.0) if teacher_crf else None
    t_start, t_end = (randn(batch, T), randn(batch, T)) if teacher_crf and start_end else (None, None)
    if teacher_crf and constrained:  # as the store keeps a CRF teacher's factors: -inf if forbidden
        t_trans = t_trans.masked_fill(~allowed.transitions, NEG_INF)
        t_start, t_end = [(torch.zeros(batch, T) if x is None else x).masked_fill(~ok, NEG_INF)
                          for x, ok in ((t_start, allowed.start), (t_end, allowed.end))]
    node = torch.rand(batch, width, T, generator=gen) * 3
    edge = torch.rand(batch, width - 1, T, T, generator=gen) * 3
    kb_paths = torch.randint(0, T, (batch, k, width), generator=gen)
    kb_logp = torch.full((batch, k), NEG_INF)
    hard = torch.randint(0, T, (batch, width), generator=gen)
    sentences = []
    for b, n in enumerate(lengths):
        paths = all_paths(n, T)
        d = lambda x: None if x is None else x.double()  # noqa: E731
        if teacher_crf:
            t_logp = normalize(crf_scores(paths, d(t_em[b, :n]), d(t_trans[b]),
                                          None if t_start is None else d(t_start[b]),
                                          None if t_end is None else d(t_end[b]), allowed))
        else:
            t_logp = maxent_scores(paths, d(t_em[b, :n]))
        if student_crf:
            s_logp = normalize(crf_scores(paths, d(s_em[b, :n]), d(s_trans), d(s_start), d(s_end),
                                          allowed))
        else:
            s_logp = maxent_scores(paths, d(s_em[b, :n]))
        t_node, t_edge = node_edge(paths, t_logp, T)
        node[b, :n], edge[b, :n - 1] = t_node.float(), t_edge.float()
        t_logp_kd, t_node_kd = t_logp, node[b, :n].double()
        if student_crf and constrained and not teacher_crf:  # the teacher restricted to allowed paths
            allowed_paths = torch.isfinite(crf_scores(paths, torch.zeros(n, T, dtype=torch.float64),
                                                      torch.zeros(T, T, dtype=torch.float64), None, None, allowed))
            t_logp_kd = normalize(torch.where(allowed_paths, t_logp, torch.full_like(t_logp, NEG_INF)))
            t_node_kd = node_edge(paths, t_logp_kd, T)[0]
        best, best_logp = kbest(paths, t_logp, k)
        kb_paths[b, :len(best), :n] = torch.tensor(best)
        kb_logp[b, :len(best)] = torch.tensor(best_logp)
        hard[b, :n] = torch.tensor(best[0])
        sentences.append(Sentence(
            n, paths, s_logp, t_logp, best, [float(x) for x in kb_logp[b, :len(best)].double()],
            best[0], d(s_em[b, :n]), d(t_em[b, :n]), d(node[b, :n]), d(s_trans),
            None if t_trans is None else d(t_trans[b]), d(s_start),
            None if t_start is None else d(t_start[b]), allowed if student_crf else None,
            t_logp_kd, t_node_kd))
    student = (ChainCRF(s_em, s_trans, mask, s_start, s_end, allowed) if student_crf
               else Factorized(s_em, mask, allowed))
    teacher = TeacherTargets(t_em, t_trans, t_start, t_end, node, edge, kb_paths, kb_logp,
                             crf=torch.full((batch,), teacher_crf))
    return Case(student, teacher, mask, hard, sentences)


def _log_softmax_rows(x):
    return torch.stack([normalize(row) for row in x])


def _student_logp(s: Sentence, paths, num_labels):
    return [s.s_logp[path_index(p, num_labels)].item() for p in paths]


def oracle_token(s: Sentence, tau=1.0):
    log_p, log_q = _log_softmax_rows(s.t_em / tau), _log_softmax_rows(s.s_em / tau)
    return tau ** 2 * sum(xlogy(math.exp(a), a - b)
                          for a, b in zip(log_p.flatten().tolist(), log_q.flatten().tolist()))


def oracle_emission(s: Sentence):
    log_p, log_q = _log_softmax_rows(s.t_em), _log_softmax_rows(s.s_em)
    return -sum(xlogy(math.exp(a), b) for a, b in zip(log_p.flatten().tolist(), log_q.flatten().tolist()))


def oracle_topk(s: Sentence, k=None):
    logp = _student_logp(s, s.kb_paths[:k], s.s_em.shape[1])
    return -sum(logp) / len(logp)


def oracle_topwk(s: Sentence, k=None):
    logp = _student_logp(s, s.kb_paths[:k], s.s_em.shape[1])
    probs = [math.exp(x) for x in s.kb_logp[:k]]
    return -sum(xlogy(p / sum(probs), q) for p, q in zip(probs, logp))


def oracle_posterior(s: Sentence):
    s_node = node_edge(s.paths, s.s_logp, s.s_em.shape[1])[0]
    return -sum(xlogy(p, math.log(q) if q > 0 else NEG_INF)
                for p, q in zip(s.t_node_kd.flatten().tolist(), s_node.flatten().tolist()))


def oracle_structural(s: Sentence):
    return cross_entropy(s.t_logp_kd, s.s_logp)


def oracle_substructure_l2(s: Sentence):
    """Eq. 9 with eq. 3 units, looping over every unit; a unit forbidden by the teacher's stored
    factors (-inf) or the CRF student's constraints is not in U(x)."""
    n, T = s.n, s.s_em.shape[1]
    ok = s.s_allowed

    def factor(trans, start, l, prev, y):
        if l == 0:
            return 0.0 if start is None else start[y].item()
        return 0.0 if trans is None else trans[prev, y].item()

    total, units = 0.0, 0
    for l in range(n):
        for prev in ([None] if l == 0 else range(T)):
            for y in range(T):
                teacher = factor(s.t_trans, s.t_start, l, prev, y)
                if teacher == NEG_INF or (ok is not None and not (
                        ok.start[y] if l == 0 else ok.transitions[prev, y])):
                    continue
                diff = (factor(s.s_trans, s.s_start, l, prev, y) + s.s_em[l, y].item()
                        - teacher - s.t_em[l, y].item())
                total, units = total + diff ** 2, units + 1
    return total / units


def oracle_multigrained_parts(s: Sentence, k=None):
    """{'ce': eq. 4, 'fuzzy': eq. 6, 'hard': eq. 7} in float64."""
    T = s.s_em.shape[1]
    logp = _student_logp(s, s.kb_paths[:k], T)
    probs = [math.exp(x) for x in s.kb_logp[:k]]
    pt_sum = sum(probs)
    ps_sum = sum(math.exp(x) for x in logp)
    covered = len(probs) == int(torch.isfinite(s.t_logp).sum())  # then 1 - pt_sum is exactly 0
    residual = 0.0 if covered else -xlogy(1.0 - pt_sum, log1mexp(math.log(ps_sum)) if ps_sum > 0 else 0.0)
    ce = -sum(xlogy(p, q) for p, q in zip(probs, logp)) + residual
    fuzzy = -xlogy(pt_sum, math.log(ps_sum) if ps_sum > 0 else NEG_INF) + residual
    return {"ce": ce, "fuzzy": fuzzy, "hard": -s.s_logp[path_index(s.hard, T)].item()}


def oracle_nll(s: Sentence):
    return -s.s_logp[path_index(s.hard, s.s_em.shape[1])].item()


ORACLES = {
    "none": lambda s: 0.0, "token": oracle_token, "emission": oracle_emission, "topk": oracle_topk,
    "topwk": oracle_topwk, "posterior": oracle_posterior,
    "posterior_topwk": lambda s, k=None: 0.5 * (oracle_posterior(s) + oracle_topwk(s, k)),
    "posterior_topk": lambda s, k=None: 0.5 * (oracle_posterior(s) + oracle_topk(s, k)),
    "multigrained_posterior": lambda s, k=None: (sum(oracle_multigrained_parts(s, k).values())
                                                 + oracle_posterior(s)),
    "structural": oracle_structural, "substructure_l2": oracle_substructure_l2,
    "multigrained": lambda s, k=None: sum(oracle_multigrained_parts(s, k).values()),
}


def oracle(name, case: Case, **options):
    """The oracle loss [B] (float64) of objective ``name`` on every sentence of ``case``."""
    return torch.tensor([ORACLES[name](s, **options) for s in case.sentences], dtype=torch.float64)
