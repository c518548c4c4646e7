"""Scaled forward-backward of the linear-chain CRF in probability space: one matmul per step.

With E_i = exp(e_i - max e_i) and P = exp(transitions - max transitions), the forward pass keeps
alpha_i = (alpha_{i-1} @ P) * E_i divided by its sum n_i (alpha_0 = exp(start - max start) * E_0),
and log Z = sum_i (log n_i + max e_i) + the other maxes + log(alpha_last . exp(end - max end)),
added up in float64. A step is 4 kernels (mm, mul, sum, div) where a log-space step is ~9, and every
value lies in [0, 1]: nothing overflows, and the per-position division keeps everything O(1) at any
length. The backward pass is the same on the right (beta_i = P @ (E_{i+1} * beta_{i+1}), divided by
its sum), and the marginals are products of the two (bench/README.md has the figures).

Exactness check (per sentence, after each pass; `ok` False sends the sentence to the log-space
recursions of `pipeline.chain_log`): float32 keeps full relative precision down to 2^-126, and a sum
of positive terms never loses relative precision, so the result is as exact as in log space when
 - every entry that is positive before the division by n_i is at least 2^-126 * T / eps, so whatever
   a product flushed to zero (each term at most 2^-126) is below rounding (`LOG_TINY`);
 - every entry is zero exactly where the structure says so (a label is reachable from the previous
   position's support through an allowed transition and has a finite emission): an underflowed E,
   P or product that zeroed a reachable label is caught here;
 - the final dot product with exp(end - max end) and each position's alpha . beta pass the same
   bound. -inf potentials (constraints) are exact zeros. A sentence with no allowed path (log Z =
   -inf), NaN or +inf fails the check and goes to log space, which handles it.
Measured (B=64, L=40): all sentences pass up to per-word emission ranges of ~30 nats (T=9) / ~34
(T=37), a fraction fails from ~36 / ~43, all fail from ~60; the trained CoNLL-2003 teacher
(../shared/models/conll03-minilm-crf, ranges 14 median, 20 max) passes on all 640 dev sentences.

Layout: position-major [L', B, T] buffers, so each step reads and writes contiguous [B, T] rows.
The forward pass runs on past a sentence's end (values never read; log Z reads each sentence's last
position); the backward pass restarts from exp(end) at each sentence's last position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF, Potentials

_FLOAT32 = torch.finfo(torch.float32)
LOG_TINY = math.log(_FLOAT32.tiny) - math.log(_FLOAT32.eps)  # + log T: see the module docstring


@dataclass
class Scaled:
    """The passes of one batch; beta, beta_norm and right are set by `backward`."""

    p: Potentials
    em: Tensor  # [L', B, T] emissions
    e_exp: Tensor  # [L', B, T] exp(emissions - their max per position)
    e_shift: Tensor  # [L', B, 1]
    t_exp: Tensor  # [B or 1, T, T] exp(transitions - their max)
    t_shift: Tensor  # [B or 1, 1, 1]
    end_exp: Tensor  # [B or 1, T] exp(end - its max)
    alpha: Tensor  # [L', B, T], each position sums to 1
    log_z: Tensor  # [B], the input dtype (float32 from `prepare`)
    ok: Tensor  # [B] bool: the check passed (so far)
    constrained: bool  # some transition or start factor is -inf
    beta: Tensor | None = None  # [L', B, T], each position sums to 1
    beta_norm: Tensor | None = None  # [L', B, 1]: the sum beta_i was divided by
    right: Tensor | None = None  # [L', B, T]: E_i * beta_i (row 0 unused)
    dot: Tensor | None = None  # [L', B]: alpha_i . beta_i


def _matmul(mat: Tensor):
    """out [B, T] = rows [B, T] @ mat, mat [1, T, T] (shared) or [B, T, T] (per sentence), as a
    function (rows, out) -> None with the shared case's [T, T] view taken once."""
    if mat.shape[0] == 1:
        shared = mat[0]
        return lambda rows, out: torch.mm(rows, shared, out=out)
    return lambda rows, out: torch.bmm(rows.unsqueeze(1), mat, out=out.unsqueeze(1))


def _support_step(support: Tensor, allowed: Tensor) -> Tensor:
    """Labels reachable in one step: support [N, B, T] bool @ allowed [B or 1, T, T] -> [N, B, T] bool."""
    n, batch, num_labels = support.shape
    if allowed.shape[0] == 1:
        return (support.reshape(-1, num_labels).float() @ allowed[0].float()).view(n, batch, num_labels) > 0
    return (support.transpose(0, 1).float() @ allowed.float()).transpose(0, 1) > 0


def _fine(values: Tensor, norm: Tensor, expected: Tensor | None, real: Tensor) -> Tensor:
    """[B] bool: at every real position, every entry the structure makes reachable (`expected`
    [L', B, T] bool, None = all) is positive and, undivided (value * norm), above the precision
    bound. Unreachable entries are exact zeros (0 times anything finite), so the support matches."""
    reachable = values if expected is None else torch.where(expected, values, 1.0)
    tiny = math.exp(LOG_TINY) * values.shape[2]
    return ((norm.squeeze(2) * reachable.amin(2) >= tiny) | ~real).all(0)


def _pass(first: Tensor, rows: tuple[Tensor, ...], mat: Tensor, out: Tensor, norm: Tensor) -> None:
    """out[0] = first / its sum; out[i] = (out[i - 1] @ mat) * rows[i], divided by its sum (kept in
    norm [L', B, 1]). Views are unbound once: indexing the buffers at each step cost as much as the
    matmul (a [B, T] select is ~1 us of dispatch, the [32, 9] @ [9, 9] product ~2 us)."""
    outs, norms, step = out.unbind(0), norm.unbind(0), _matmul(mat)
    outs[0].copy_(first)
    torch.sum(outs[0], 1, keepdim=True, out=norms[0])
    outs[0].div_(norms[0])
    for i in range(1, len(outs)):
        step(outs[i - 1], outs[i])
        outs[i].mul_(rows[i])
        torch.sum(outs[i], 1, keepdim=True, out=norms[i])
        outs[i].div_(norms[i])


def forward(p: Potentials) -> Scaled:
    """Forward pass, log Z and its exactness check (no autograd: call under no_grad).

    Emissions are taken as finite: a -inf emission zeroes a label the check expects reachable and
    sends the sentence to log space, as NaN and +inf do."""
    em = p.emissions.transpose(0, 1).contiguous()  # [L', B, T]
    length, batch, num_labels = em.shape
    e_shift = em.amax(2, keepdim=True)
    e_exp = (em - e_shift).exp_()
    t_shift = p.transitions.amax((1, 2), keepdim=True)
    t_exp = (p.transitions - t_shift).exp_()
    start_shift, end_shift = p.start.amax(1, keepdim=True), p.end.amax(1, keepdim=True)
    end_exp = (p.end - end_shift).exp_()
    alpha, norm = torch.empty_like(em), em.new_empty(length, batch, 1)
    _pass((p.start - start_shift).exp_() * e_exp[0], e_exp.unbind(0), t_exp, alpha, norm)
    real = p.mask.t()  # [L', B]
    last = alpha.gather(0, (p.lengths - 1).view(1, batch, 1).expand(1, batch, num_labels))[0]
    final = (last * end_exp).sum(1)
    # Per position log n_i + max e_i + max transitions (added for position 0 too and taken off
    # again below), summed in float64: float32 would lose 1e-3 over 20,000 positions.
    step = (norm.log() + e_shift).squeeze(2).add_(t_shift.view(1, -1))
    rest = final.log() + (start_shift + end_shift - t_shift.view(-1, 1)).squeeze(1)
    log_z = (torch.where(real, step, 0.0).sum(0, dtype=torch.float64) + rest.double()).to(em.dtype)
    allowed = p.transitions > NEG_INF
    constrained = not (bool(allowed.all()) and bool((p.start > NEG_INF).all()))
    expected = None
    if constrained:
        expected = torch.cat([(p.start > NEG_INF).expand(batch, num_labels).unsqueeze(0),
                              _support_step(alpha[:-1] > 0, allowed)])
    ok = _fine(alpha, norm, expected, real) & (final >= math.exp(LOG_TINY) * num_labels)
    return Scaled(p, em, e_exp, e_shift, t_exp, t_shift, end_exp, alpha, log_z, ok, constrained)


def backward(s: Scaled) -> None:
    """Backward pass and its check: sets beta, beta_norm, right and dot, and clears `ok` of the
    sentences it cannot compute exactly."""
    p = s.p
    length, batch, num_labels = s.alpha.shape
    t_exp_t = s.t_exp.transpose(1, 2).contiguous()  # [B or 1, c, a]
    end_exp = s.end_exp.expand(batch, num_labels)
    real_rows = p.mask.t().unsqueeze(2)  # [L', B, 1]
    beta, right, norm = torch.empty_like(s.alpha), torch.empty_like(s.alpha), s.alpha.new_empty(length, batch, 1)
    betas, rights, norms, e_rows = beta.unbind(0), right.unbind(0), norm.unbind(0), s.e_exp.unbind(0)
    real_at, step = real_rows.unbind(0), _matmul(t_exp_t)
    betas[-1].copy_(end_exp)
    for i in range(length - 1, -1, -1):
        if i < length - 1:
            torch.mul(e_rows[i + 1], betas[i + 1], out=rights[i + 1])
            step(rights[i + 1], betas[i])
            if i + 1 >= p.full:  # a sentence whose position i + 1 is padding ends at i
                torch.where(real_at[i + 1], betas[i], end_exp, out=betas[i])
        torch.sum(betas[i], 1, keepdim=True, out=norms[i])
        betas[i].div_(norms[i])
    expected = None
    ends = p.end > NEG_INF
    if s.constrained or not bool(ends.all()):
        ends = ends.expand(batch, num_labels)
        reach = _support_step(beta[1:] > 0, (p.transitions > NEG_INF).transpose(1, 2))
        expected = torch.cat([torch.where(real_rows[1:], reach, ends), ends.unsqueeze(0)])
    dot = (s.alpha * beta).sum(2)
    overlap = (dot >= math.exp(LOG_TINY) * num_labels) | ~p.mask.t()
    s.ok = s.ok & _fine(beta, norm, expected, p.mask.t()) & overlap.all(0)
    s.beta, s.beta_norm, s.right, s.dot = beta, norm, right, dot


def node(s: Scaled, log: bool) -> Tensor:
    """Node marginals [B, L', T] (0 at padding), or their logs (-inf at padding)."""
    padding = ~s.p.mask.t().unsqueeze(2)
    if log:
        value = s.alpha.log() + s.beta.log() - s.dot.log().unsqueeze(2)
        return value.masked_fill_(padding, NEG_INF).transpose(0, 1)
    return (s.alpha * s.beta / s.dot.unsqueeze(2)).masked_fill_(padding, 0.0).transpose(0, 1)


def _edge_factors(s: Scaled) -> tuple[Tensor, Tensor]:
    """left, right [L'-1, B, T] with edge[i, b, a, c] = left[i, b, a] * P[a, c] * right[i, b, c].

    left = alpha_i / (beta_norm_i * alpha_i . beta_i), zero where position i + 1 is padding (no
    edge there); right = E_{i+1} * beta_{i+1}.
    """
    keep = s.p.mask.t()[1:].unsqueeze(2)
    left = s.alpha[:-1] / (s.beta_norm[:-1] * s.dot[:-1].unsqueeze(2))
    return left.masked_fill_(~keep, 0.0), s.right[1:]


def edge(s: Scaled, log: bool) -> Tensor:
    """Edge marginals [B, L'-1, T, T] (0 where position i + 1 is padding), or their logs (from the
    exact logs of E and P, so that no underflowed factor turns a finite log into -inf)."""
    left, right = (x.transpose(0, 1) for x in _edge_factors(s))
    if log:
        log_right = (s.em[1:] - s.e_shift[1:]).transpose(0, 1) + s.beta[1:].log().transpose(0, 1)
        log_right = log_right.masked_fill_(~s.p.mask[:, 1:, None], NEG_INF)
        log_t = (s.p.transitions - s.t_shift).unsqueeze(1)
        return (left.log().unsqueeze(3) + log_right.unsqueeze(2)).add_(log_t)
    return (left.unsqueeze(3) * right.unsqueeze(2)).mul_(s.t_exp.unsqueeze(1))


def transition_counts(s: Scaled, weight: Tensor) -> Tensor:
    """sum_i weight_b * edge[b, i] as [B, T, T] (per-sentence transitions) or summed over the batch
    [1, T, T] (shared ones): one matmul over all positions instead of building the edge tensor.
    `weight` [B] must be 0 for sentences whose `ok` is False."""
    left, right = _edge_factors(s)
    left = torch.where(weight.view(1, -1, 1) != 0, left * weight.view(1, -1, 1), 0.0)
    right = torch.where(s.ok.view(1, -1, 1), right, 0.0)
    num_labels = left.shape[2]
    if s.t_exp.shape[0] == 1:
        counts = (left.reshape(-1, num_labels).t() @ right.reshape(-1, num_labels)).unsqueeze(0)
    else:
        counts = left.permute(1, 2, 0) @ right.transpose(0, 1)
    return counts.mul_(s.t_exp)
