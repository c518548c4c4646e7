"""Log-space forward-backward of the linear-chain CRF in plain differentiable tensor ops.

The reference recursions: what `pipeline.crf` runs when marginals must be backpropagated through
(posterior KD) and for the sentences the scaled kernels of `pipeline.chain_scaled` refuse. Every
RENORM-th position subtracts each sentence's max (a detached constant, added back in float64), and
each position's marginals are normalized by their own sum, so alpha + beta - log Z is computed from
O(1) quantities at any length (tests/test_long_sentences.py: 20,000 words).
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF, RENORM, Potentials


class _LogSumExp(torch.autograd.Function):
    """torch.logsumexp forward (fast, already -inf on all -inf rows) with a NaN-free backward."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        out = torch.logsumexp(x, dim)
        ctx.save_for_backward(x, out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, out = ctx.saved_tensors
        # An all -inf row has out = -inf; shifting by 0 there makes every weight exp(-inf) = 0.
        shift = out.masked_fill(out == NEG_INF, 0.0).unsqueeze(ctx.dim)
        return grad.unsqueeze(ctx.dim) * (x - shift).exp(), None


def logsumexp(x: Tensor, dim: int) -> Tensor:
    """log(sum(exp(x))) over `dim`; -inf (with zero gradient) where every entry is -inf."""
    if x.requires_grad and torch.is_grad_enabled():
        return _LogSumExp.apply(x, dim)
    return torch.logsumexp(x, dim)


def shift_of(x: Tensor) -> Tensor:
    """Each row's max of `x` [B, T] as a detached constant [B, 1]; 0 on an all -inf row."""
    return x.detach().amax(1, keepdim=True).nan_to_num(nan=float("nan"), posinf=float("inf"), neginf=0.0)


def forward(p: Potentials) -> tuple[list[Tensor], dict[int, Tensor], Tensor]:
    """Forward algorithm: alphas (one [B, T] per position, carried over padding), the shifts
    subtracted from them ({position: [B, 1]}, zero where the position is padding) and log Z [B].

    Every RENORM-th position subtracts each sentence's max, so alphas stay O(RENORM * potentials)
    however long the sentence, and log Z adds the shifts back in float64. The shifts are detached
    constants: alpha minus a constant has the gradient of alpha, so autograd stays exact.
    """
    alpha = p.start + p.steps[0]
    alphas, shifts = [alpha], {}
    for i in range(1, len(p.steps)):
        nxt = logsumexp(alpha.unsqueeze(2) + p.transitions, 1) + p.steps[i]
        if i % RENORM == 0:
            shift = shift_of(nxt)
            nxt = nxt - shift
            shifts[i] = shift if i < p.full else torch.where(p.real[i], shift, 0.0)
        alpha = nxt if i < p.full else torch.where(p.real[i], nxt, alpha)
        alphas.append(alpha)
    log_z = logsumexp(alpha + p.end, 1)
    if shifts:
        log_z = (log_z.double() + torch.cat(list(shifts.values()), 1).double().sum(1)).to(log_z.dtype)
    return alphas, shifts, log_z


def forward_backward(p: Potentials, edges: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """log node [B, L', T] and edge [B, L'-1, T, T] marginals (None without ``edges``; -inf at
    padding and for impossible labels) and log Z [B], all differentiable."""
    alphas, shifts, log_z = forward(p)
    length = p.emissions.shape[1]
    # beta_i[a] = log-sum of the scores of every continuation after y_i = a (end included), minus
    # the forward shifts after i. right_{i+1} = emissions_{i+1} + beta_{i+1} - shift_{i+1} is all
    # that an edge (i, i+1) needs right of it; beta_i = logsumexp_c(transitions[:, c] + right_{i+1}).
    beta = p.end.expand_as(alphas[0])
    betas, rights = [beta], []
    for i in range(length - 2, -1, -1):
        right = p.steps[i + 1] + beta
        if i + 1 in shifts:
            right = right - shifts[i + 1]
        rights.append(right)
        nxt = logsumexp(p.transitions + right.unsqueeze(1), 2)
        beta = nxt if i + 1 < p.full else torch.where(p.real[i + 1], nxt, p.end)
        betas.append(beta)
    alpha = torch.stack(alphas, 1)  # [B, L', T]
    padding = ~p.mask.unsqueeze(-1)
    # Each position is normalized by its own log-sum of alpha + beta: in exact arithmetic that is
    # log Z minus the shifts at every position, but in float32 the backward pass drifts from the
    # forward one by the rounding it accumulates (node sums off by 3e-4 at 20,000 words without it).
    # An all -inf position (padding, no allowed path) is shifted by 0: marginals zero there, and
    # -inf at padding makes exp() zero node and edge without a [B, L, T, T] mask.
    node = (alpha + torch.stack(betas[::-1], 1)).masked_fill_(padding, NEG_INF)
    norm = logsumexp(node, 2).unsqueeze(2)
    norm = norm.masked_fill(norm == NEG_INF, 0.0)
    node = node - norm
    if not edges:
        return node, None, log_z
    right = torch.stack(rights[::-1], 1) if rights else p.emissions[:, 1:]  # [B, L'-1, T]
    after = (right - norm[:, 1:]).masked_fill_(padding[:, 1:], NEG_INF)
    edge = (alpha[:, :-1].unsqueeze(3) + after.unsqueeze(2)).add_(p.transitions.unsqueeze(1))
    return node, edge, log_z
