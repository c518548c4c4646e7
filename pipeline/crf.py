"""Linear-chain CRF and MaxEnt dynamic programs (see docs/DESIGN.md for conventions).

Every dynamic program runs in float32 log space whatever the input dtype; forbidden or absent
factors are -inf (never a finite sentinel) and `logsumexp` is safe on all -inf rows (value -inf,
gradient zero, never NaN). Padding never changes a result: padded emissions are zeroed before use
and every recursion carries its state unchanged across padded positions.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

NEG_INF = float("-inf")


class Constraints(NamedTuple):
    """Allowed factors implied by a tag scheme; True = allowed, a forbidden factor scores -inf."""

    transitions: torch.Tensor  # [T, T] bool
    start: torch.Tensor  # [T] bool
    end: torch.Tensor  # [T] bool


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


class _Potentials(NamedTuple):
    """Float32 potentials divided by tau, constraints applied, padded emissions zeroed."""

    emissions: Tensor  # [B, L', T], L' = longest sentence
    transitions: Tensor  # [B or 1, T, T]
    start: Tensor  # [B or 1, T]
    end: Tensor  # [B or 1, T]
    mask: Tensor  # [B, L'] bool
    lengths: Tensor  # [B] long
    full: int  # number of leading positions that are real in every sentence
    steps: tuple[Tensor, ...]  # emissions per position, [B, T] each (one unbind beats L slicings)
    real: tuple[Tensor, ...]  # mask per position, [B, 1] each


def _prepare(emissions, transitions, mask, start, end, constraints, tau) -> _Potentials:
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    mask = mask.bool()
    lengths = mask.sum(1)
    longest = int(lengths.max())
    mask = mask[:, :longest]
    em = emissions[:, :longest].float().masked_fill(~mask.unsqueeze(-1), 0.0)
    num_labels = em.shape[-1]
    trans = transitions.float()
    trans = trans.unsqueeze(0) if trans.dim() == 2 else trans
    zeros = em.new_zeros(1, num_labels)
    start = zeros if start is None else start.float().reshape(-1, num_labels)
    end = zeros if end is None else end.float().reshape(-1, num_labels)
    if tau != 1.0:
        em, trans, start, end = em / tau, trans / tau, start / tau, end / tau
    if constraints is not None:
        device = em.device
        trans = trans.masked_fill(~constraints.transitions.to(device, torch.bool), NEG_INF)
        start = start.masked_fill(~constraints.start.to(device, torch.bool), NEG_INF)
        end = end.masked_fill(~constraints.end.to(device, torch.bool), NEG_INF)
    return _Potentials(em, trans, start, end, mask, lengths, int(lengths.min()), em.unbind(1),
                       mask.unsqueeze(2).unbind(1))


def _pad_to(x: Tensor, length: int, dim: int = 1, fill: float = 0.0) -> Tensor:
    """Pad `x` with `fill` along `dim` up to `length` (outputs keep the caller's padded length)."""
    missing = length - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_full(shape, fill)], dim)


def _forward(p: _Potentials) -> tuple[list[Tensor], Tensor]:
    """Forward algorithm: alphas (one [B, T] per position, carried over padding) and log Z [B]."""
    alpha = p.start + p.steps[0]
    alphas = [alpha]
    for i in range(1, len(p.steps)):
        nxt = logsumexp(alpha.unsqueeze(2) + p.transitions, 1) + p.steps[i]
        alpha = nxt if i < p.full else torch.where(p.real[i], nxt, alpha)
        alphas.append(alpha)
    return alphas, logsumexp(alpha + p.end, 1)


def log_partition(emissions, transitions, mask, start=None, end=None, *,
                  constraints: Constraints | None = None, tau: float = 1.0) -> Tensor:
    """log Z [B] of the linear-chain CRF (differentiable)."""
    p = _prepare(emissions, transitions, mask, start, end, constraints, tau)
    return _forward(p)[1]


def marginals(emissions, transitions, mask, start=None, end=None, *,
              constraints: Constraints | None = None, tau: float = 1.0,
              edges: bool = True) -> tuple[Tensor, Tensor | None]:
    """Node [B, L, T] and edge [B, L-1, T, T] posterior marginals by forward-backward.

    edge[b, i, a, c] = P(y_i = a, y_{i+1} = c); zero at padding. Plain differentiable tensor ops, so
    it works under no_grad / inference_mode and can be backpropagated through when inputs need grad.
    ``edges=False`` skips the [B, L-1, T, T] edge tensor (returned as None) when only nodes are used.
    """
    log_node, log_edge = log_marginals(emissions, transitions, mask, start, end,
                                       constraints=constraints, tau=tau, edges=edges)
    return log_node.exp(), None if log_edge is None else log_edge.exp()


def log_marginals(emissions, transitions, mask, start=None, end=None, *,
                  constraints: Constraints | None = None, tau: float = 1.0,
                  edges: bool = True) -> tuple[Tensor, Tensor | None]:
    """log of ``marginals``: -inf at padding and for impossible labels; finite where a marginal is
    too small for float32 probabilities (no underflow to log 0)."""
    return forward_backward(emissions, transitions, mask, start, end, constraints=constraints,
                            tau=tau, edges=edges)[:2]


def forward_backward(emissions, transitions, mask, start=None, end=None, *,
                     constraints: Constraints | None = None, tau: float = 1.0,
                     edges: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
    """One forward-backward pass: ``log_marginals`` (node, edge or None) and ``log_partition`` [B]
    (differentiable), for callers that need both (posterior KD and the gold NLL of one step)."""
    full_len = emissions.shape[1]
    p = _prepare(emissions, transitions, mask, start, end, constraints, tau)
    alphas, log_z = _forward(p)
    length = p.emissions.shape[1]
    # beta_i[a] = log-sum of the scores of every continuation after y_i = a (end included).
    beta = p.end.expand_as(alphas[0])
    betas = [beta]
    for i in range(length - 2, -1, -1):
        nxt = logsumexp(p.transitions + (p.steps[i + 1] + beta).unsqueeze(1), 2)
        beta = nxt if i + 1 < p.full else torch.where(p.real[i + 1], nxt, p.end)
        betas.append(beta)
    alpha = torch.stack(alphas, 1)  # [B, L', T]
    # A row with no allowed path has log Z = -inf: shift it by 0 so its marginals are all zero.
    shift = log_z.masked_fill(log_z == NEG_INF, 0.0)[:, None, None]
    # beta - log Z, -inf at padding so that exp() zeroes node and edge there (no [B, L, T, T] mask).
    beta = (torch.stack(betas[::-1], 1) - shift).masked_fill(~p.mask.unsqueeze(-1), NEG_INF)
    node = _pad_to(alpha + beta, full_len, fill=NEG_INF)
    if not edges:
        return node, None, log_z
    after = p.emissions[:, 1:] + beta[:, 1:]  # [B, L'-1, T]: everything right of the edge
    edge = (alpha[:, :-1].unsqueeze(3) + after.unsqueeze(2)).add_(p.transitions.unsqueeze(1))
    return node, _pad_to(edge, full_len - 1, fill=NEG_INF), log_z


def _backtrack(backpointers, last: Tensor) -> Tensor:
    """Follow backpointers (per position i > 0, [B, N]: state at i -> state at i - 1) back from the
    states `last` [B, M] at the last position; -> states [B, M, L]."""
    states = [last]
    for bp in reversed(backpointers):
        last = bp.gather(1, last)
        states.append(last)
    return torch.stack(states[::-1], 2)


def viterbi(emissions, transitions, mask, start=None, end=None, *,
            constraints: Constraints | None = None, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Best path [B, L] long and its unnormalized score [B].

    Paths are 0 at padding, and all 0 for a sentence with no allowed path (score -inf).
    """
    full_len = emissions.shape[1]
    p = _prepare(emissions, transitions, mask, start, end, constraints, tau)
    num_labels = p.emissions.shape[2]
    same = torch.arange(num_labels, device=p.emissions.device).expand(p.emissions.shape[0], -1)
    score = p.start + p.steps[0]
    backpointers = []
    for i in range(1, len(p.steps)):
        best, bp = (score.unsqueeze(2) + p.transitions).max(1)
        best = best + p.steps[i]
        if i >= p.full:  # padded position: keep the score, point every label to itself
            real = p.real[i]
            best, bp = torch.where(real, best, score), torch.where(real, bp, same)
        score = best
        backpointers.append(bp)
    scores, last = (score + p.end).max(1)
    paths = _backtrack(backpointers, last.unsqueeze(1))[:, 0]
    paths = paths.masked_fill(~p.mask, 0).masked_fill((scores == NEG_INF).unsqueeze(1), 0)
    return _pad_to(paths, full_len), scores


def _best_completions(p: _Potentials) -> Tensor:
    """[B, L', T]: the best score of any continuation after y_i = a (end included)."""
    batch, length, _ = p.emissions.shape
    best = p.end.expand(batch, -1)
    bests = [best]
    for i in range(length - 2, -1, -1):
        nxt = (p.transitions + (p.steps[i + 1] + best).unsqueeze(1)).amax(2)
        best = nxt if i + 1 < p.full else torch.where(p.real[i + 1], nxt, p.end)
        bests.append(best)
    return torch.stack(bests[::-1], 1)


def kbest(emissions, transitions, mask, k: int, start=None, end=None, *,
          constraints: Constraints | None = None, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """The exact k highest-scoring paths [B, k, L] and their unnormalized scores [B, k], best first.

    A backward max pass gives every prefix its exact best completion; a forward beam then keeps, at
    each position, the k prefixes whose best completed score is highest. That is exact (ties
    included) for the multiset of scores: if a prefix of a top-k path were dropped, the k kept
    prefixes would complete into k distinct paths at least as good. One [B, k * T] top-k per
    position instead of a [B, T, T * k] one for a per-label table. Surplus rows (fewer than k paths
    of finite score) score -inf and have paths 0.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k == 1:
        paths, scores = viterbi(emissions, transitions, mask, start, end,
                                constraints=constraints, tau=tau)
        return paths.unsqueeze(1), scores.unsqueeze(1)
    full_len = emissions.shape[1]
    p = _prepare(emissions, transitions, mask, start, end, constraints, tau)
    batch, length, num_labels = p.emissions.shape
    device = p.emissions.device
    completion = _best_completions(p)
    # A beam state is flat = parent_rank * T + label; its row of candidate potentials is taken from
    # `rows_of`: transitions[label, :] at a real position, and at padding a row that is 0 at `label`
    # and -inf elsewhere, so that the beam is carried through padding by the same top-k.
    span = k * num_labels
    same = torch.eye(num_labels, dtype=torch.bool, device=device).repeat(k, 1)
    stay = p.emissions.new_zeros(span, num_labels).masked_fill(~same, NEG_INF)
    groups = p.transitions.shape[0]
    rows_of = torch.cat([p.transitions.repeat(1, k, 1), stay.expand(groups, -1, -1)], 1)
    rows_of = rows_of.reshape(-1, num_labels)
    offset = (~p.mask).long() * span
    offset_free = groups == 1  # then the offset is 0 wherever every sentence is real
    if not offset_free:  # per-sentence transitions: sentence b's rows start at b * 2kT
        offset = offset + torch.arange(batch, device=device)[:, None] * (2 * span)
    ranks = torch.arange(k, device=device).expand(batch, -1)
    prefix = p.emissions.new_full((batch, k), NEG_INF)  # beam of k prefix scores, one real at first
    prefix[:, 0] = 0.0
    flat = ranks
    states = []
    emission_rows = p.emissions.unsqueeze(2).unbind(1)  # [B, 1, T] per position
    completion_rows = completion.unsqueeze(2).unbind(1)
    offsets = offset.unsqueeze(2).unbind(1)  # [B, 1] per position
    for i in range(length):
        if i == 0:
            grown = prefix.unsqueeze(2) + p.start.unsqueeze(1)
        else:
            index = flat if i < p.full and offset_free else flat + offsets[i]
            rows = rows_of.index_select(0, index.view(-1))
            grown = prefix.unsqueeze(2) + rows.view(batch, k, num_labels)
        grown += emission_rows[i]
        # Ranked by the best completed score; at the last position that is exactly the final score.
        flat = (grown + completion_rows[i]).view(batch, -1).topk(k, 1)[1]
        prefix = grown.view(batch, -1).gather(1, flat)
        states.append(flat)
    label = flat % num_labels
    scores = prefix + p.end.expand(batch, -1).gather(1, label)
    states = torch.stack(states, 2)  # [B, k, L']
    parents, labels = states // num_labels, states % num_labels
    paths = labels.gather(1, _backtrack(parents.unbind(2)[1:], ranks))
    paths = paths.masked_fill(~p.mask.unsqueeze(1), 0)
    paths = paths.masked_fill((scores == NEG_INF).unsqueeze(2), 0)
    return _pad_to(paths, full_len, 2), scores


def path_score(emissions, transitions, tags, mask, start=None, end=None, *,
               constraints: Constraints | None = None, tau: float = 1.0) -> Tensor:
    """Unnormalized score [B] of `tags` [B, L] (-inf if the path uses a forbidden factor)."""
    p = _prepare(emissions, transitions, mask, start, end, constraints, tau)
    batch, length, num_labels = p.emissions.shape
    tags = tags[:, :length].long().masked_fill(~p.mask, 0)
    score = p.emissions.gather(2, tags.unsqueeze(2)).sum((1, 2))
    score = score + p.start.expand(batch, -1).gather(1, tags[:, :1]).squeeze(1)
    last = tags.gather(1, (p.lengths - 1).unsqueeze(1))
    score = score + p.end.expand(batch, -1).gather(1, last).squeeze(1)
    if length > 1:
        flat = p.transitions.expand(batch, -1, -1).reshape(batch, -1)
        pairs = flat.gather(1, tags[:, :-1] * num_labels + tags[:, 1:])
        score = score + torch.where(p.mask[:, 1:], pairs, 0.0).sum(1)
    return score


def maxent_log_probs(emissions, mask, *, tau: float = 1.0) -> Tensor:
    """Per-position log-softmax [B, L, T] (float32, zero at padding)."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    mask = mask.bool().unsqueeze(-1)
    em = emissions.float().masked_fill(~mask, 0.0)
    return (em / tau).log_softmax(-1).masked_fill(~mask, 0.0)


def maxent_marginals(emissions, mask, *, tau: float = 1.0,
                     edges: bool = True) -> tuple[Tensor, Tensor | None]:
    """Node = softmax [B, L, T]; edge [B, L-1, T, T] = outer product of neighbouring nodes (None
    without ``edges``)."""
    padding = ~mask.bool().unsqueeze(-1)
    node = maxent_log_probs(emissions, mask, tau=tau).exp().masked_fill(padding, 0.0)
    if not edges:
        return node, None
    edge = node[:, :-1, :, None] * node[:, 1:, None, :]  # zero where i+1 is padding (node is 0)
    return node, edge


def maxent_kbest(emissions, mask, k: int, *, constraints: Constraints | None = None,
                 tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Exact k most probable sequences of the softmax decoder: paths [B, k, L], log-probs [B, k].

    Positions are independent, so this is the CRF k-best over log-softmax emissions with zero
    transitions. With `constraints`, only allowed sequences are returned; their scores stay the
    (unrenormalized) softmax log-probs.
    """
    log_probs = maxent_log_probs(emissions, mask, tau=tau)
    zeros = log_probs.new_zeros(log_probs.shape[-1], log_probs.shape[-1])
    return kbest(log_probs, zeros, mask, k, constraints=constraints)


def maxent_path_score(emissions, tags, mask, *, constraints: Constraints | None = None,
                      tau: float = 1.0) -> Tensor:
    """Log-probability [B] of `tags` under the softmax decoder (-inf if it breaks `constraints`)."""
    log_probs = maxent_log_probs(emissions, mask, tau=tau)
    mask = mask.bool()
    tags = tags.long().masked_fill(~mask, 0)
    score = log_probs.gather(2, tags.unsqueeze(2)).squeeze(2).sum(1)
    if constraints is not None:
        num_labels = log_probs.shape[-1]
        zeros = log_probs.new_zeros(num_labels, num_labels)
        score = score + path_score(torch.zeros_like(log_probs), zeros, tags, mask,
                                   constraints=constraints)
    return score
