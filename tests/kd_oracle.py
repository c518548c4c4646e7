"""Brute-force oracles for the KD tests: enumerate every label sequence of one sentence in float64.

Independent of pipeline/crf.py and pipeline/kd: only itertools.product and plain tensor indexing.
All functions take ONE sentence of length n (no padding): emissions [n, T], transitions [T, T],
start / end [T] or None, allowed = (transitions [T, T], start [T], end [T]) bool or None.
"""
from __future__ import annotations

import itertools
import math

import torch

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
    """Exact node [n, T] and edge [n-1, T, T] marginals from path log-probabilities."""
    n = paths.shape[1]
    prob = torch.exp(logp)
    node = torch.zeros(n, num_labels, dtype=torch.float64)
    edge = torch.zeros(max(n - 1, 0), num_labels, num_labels, dtype=torch.float64)
    for p, w in zip(paths.tolist(), prob.tolist()):
        for i in range(n):
            node[i, p[i]] += w
        for i in range(n - 1):
            edge[i, p[i], p[i + 1]] += w
    return node, edge


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
    """log(1 - exp(x)) in float64 Python arithmetic."""
    if x >= 0.0:
        return NEG_INF
    return math.log(-math.expm1(x))
