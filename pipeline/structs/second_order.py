"""Second-order dependency teacher (structural KD slides, case 2b): approximate head marginals
Q(h_d | x) by mean-field variational inference over sibling (and grandparent) factors.

The formulation of Wang & Tu (2020, "Second-Order Neural Dependency Parsing with Message Passing
and End-to-End Training", section 3, the head-selection variant, also the official StructuralKD
code's ``mean_field_variational_infernece``): one categorical variable h_d per word over its
possible heads, no tree constraint, score(y) = sum_d arc[y_d, d] + second-order terms, and

    Q^0(h_d = h) = softmax_h arc[h, d]
    F^t[h, d]    = arc[h, d] + sum_{s not in {h, d}} Q^{t-1}(h_s = h) sib[h, d, s]            (siblings)
                             + sum_{g not in {h, d}} Q^{t-1}(h_h = g) gp[g, h, d]              (d's grandparent g)
                             + sum_{c not in {h, d}} Q^{t-1}(h_c = d) gp[h, d, c]              (d's children c)
    Q^t(h_d = h) = softmax_h F^t[h, d],   t = 1..T, all words updated at once (parallel updates)

T = ``iterations`` (3 in Wang & Tu and in the official code); the result is Q^T. For sib symmetric in
its last two indices these are the exact mean-field fixed-point updates of the energy
sum_h sum_{d < s} sib[h, d, s] [h_d = h][h_s = h] + sum gp[g, h, d] [h_h = g][h_d = h]; for a non
symmetric ``sib`` the message is Wang & Tu's, as given. Degenerate index triples (s = d, arcs that
are impossible, padding) contribute nothing: they are masked out, not subtracted.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF
from pipeline.structs.eisner import logsumexp
from pipeline.structs.tree import allowed_arcs


def _head_softmax(logits: Tensor) -> Tensor:
    """softmax over heads (dim 1) per word column; 0 in columns with no possible head."""
    z = logsumexp(logits, 1)
    z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
    return (logits - z.unsqueeze(1)).exp()


def mean_field_heads(arc: Tensor, sib: Tensor | None, mask: Tensor, iterations: int = 3,
                     grandparent: Tensor | None = None, tau: float = 1.0) -> Tensor:
    """Mean-field head marginals Q^T [B, L+1, L+1] (``Q[b, h, d]`` ~ P(head(d) = h), each real word's
    column sums to 1, zero for impossible arcs and padding; differentiable).

    arc [B, L+1, L+1] first-order scores (``arc[b, h, d]``: h -> d, position 0 = the root);
    sib [B, L+1, L+1, L+1] or None, ``sib[b, h, d, s]`` the score of h -> d and h -> s together;
    grandparent [B, L+1, L+1, L+1] or None, ``grandparent[b, g, h, d]`` the score of g -> h -> d;
    mask [B, L] bool over the words (word i + 1 exists); every score is divided by ``tau``.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    size = arc.shape[-1]
    if mask.shape != (arc.shape[0], size - 1):
        raise ValueError(f"mask must be [B, L] = {(arc.shape[0], size - 1)} over the words, "
                         f"got {tuple(mask.shape)}")
    allowed = allowed_arcs(mask.bool().sum(1), size)
    unary = (arc.float() / tau).masked_fill(~allowed, NEG_INF)
    distinct = ~torch.eye(size, dtype=torch.bool, device=arc.device)
    zero = torch.zeros((), device=arc.device)
    if sib is not None:
        ok = allowed[:, :, :, None] & allowed[:, :, None, :] & distinct[None, None]        # [b, h, d, s]
        sib = torch.where(ok, sib.float() / tau, zero)
    if grandparent is not None:
        ok = allowed[:, :, :, None] & allowed[:, None, :, :] & distinct[None, :, None, :]  # [b, g, h, d]
        grandparent = torch.where(ok, grandparent.float() / tau, zero)
    q = _head_softmax(unary)
    for _ in range(iterations):
        logits = unary
        if sib is not None:
            logits = logits + torch.einsum("bhs,bhds->bhd", q, sib)
        if grandparent is not None:
            logits = (logits + torch.einsum("bgh,bghd->bhd", q, grandparent)
                      + torch.einsum("bdc,bhdc->bhd", q, grandparent))
        q = _head_softmax(logits)
    return q
