"""Linear-chain CRF and MaxEnt dynamic programs (see docs/DESIGN.md for conventions).

Every dynamic program runs in float32 log space whatever the input dtype; forbidden or absent
factors are -inf (never a finite sentinel) and `logsumexp` is safe on all -inf rows (value -inf,
gradient zero, never NaN). Padding never changes a result: padded emissions are zeroed before use
and every recursion carries its state unchanged across padded positions.

Long sentences: every recursion subtracts a per-sentence shift every RENORM positions and adds the
shifts back in float64, and each position's marginals are normalized by their own sum, so that
alpha + beta - log Z is computed from O(1) quantities (tests/test_long_sentences.py: 20,000 words).
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.kbest import kbest_beam
from pipeline.potentials import NEG_INF, RENORM, Constraints, Potentials, pad_to, prepare


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


def _shift(x: Tensor) -> Tensor:
    """Each row's max of `x` [B, T] as a detached constant [B, 1]; 0 on an all -inf row."""
    return x.detach().amax(1, keepdim=True).nan_to_num(nan=float("nan"), posinf=float("inf"), neginf=0.0)


def _forward(p: Potentials) -> tuple[list[Tensor], dict[int, Tensor], Tensor]:
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
            shift = _shift(nxt)
            nxt = nxt - shift
            shifts[i] = shift if i < p.full else torch.where(p.real[i], shift, 0.0)
        alpha = nxt if i < p.full else torch.where(p.real[i], nxt, alpha)
        alphas.append(alpha)
    log_z = logsumexp(alpha + p.end, 1)
    if shifts:
        log_z = (log_z.double() + torch.cat(list(shifts.values()), 1).double().sum(1)).float()
    return alphas, shifts, log_z


def log_partition(emissions, transitions, mask, start=None, end=None, *,
                  constraints: Constraints | None = None, tau: float = 1.0) -> Tensor:
    """log Z [B] of the linear-chain CRF (differentiable)."""
    p = prepare(emissions, transitions, mask, start, end, constraints, tau)
    return _forward(p)[2]


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
    p = prepare(emissions, transitions, mask, start, end, constraints, tau)
    alphas, shifts, log_z = _forward(p)
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
        return pad_to(node, full_len, fill=NEG_INF), None, log_z
    right = torch.stack(rights[::-1], 1) if rights else p.emissions[:, 1:]  # [B, L'-1, T]
    after = (right - norm[:, 1:]).masked_fill_(padding[:, 1:], NEG_INF)
    edge = (alpha[:, :-1].unsqueeze(3) + after.unsqueeze(2)).add_(p.transitions.unsqueeze(1))
    return pad_to(node, full_len, fill=NEG_INF), pad_to(edge, full_len - 1, fill=NEG_INF), log_z


def _viterbi(p: Potentials) -> tuple[Tensor, Tensor]:
    """Best path [B, 1, L'] and its score [B, 1]; renormalized every RENORM positions like `_forward`
    (the shifts add back in float64), so that the max-sums keep their precision at any length."""
    num_labels = p.emissions.shape[2]
    same = torch.arange(num_labels, device=p.emissions.device).expand(p.emissions.shape[0], -1)
    score = p.start + p.steps[0]
    backpointers, shifts = [], []
    for i in range(1, len(p.steps)):
        best, bp = (score.unsqueeze(2) + p.transitions).max(1)
        best = best + p.steps[i]
        if i % RENORM == 0:
            shift = _shift(best)
            best = best - shift
            shifts.append(shift if i < p.full else torch.where(p.real[i], shift, 0.0))
        if i >= p.full:  # padded position: keep the score, point every label to itself
            real = p.real[i]
            best, bp = torch.where(real, best, score), torch.where(real, bp, same)
        score = best
        backpointers.append(bp)
    scores, last = (score + p.end).max(1, keepdim=True)
    if shifts:
        scores = (scores.double() + torch.cat(shifts, 1).double().sum(1, keepdim=True)).float()
    states = [last]
    for bp in reversed(backpointers):
        last = bp.gather(1, last)
        states.append(last)
    paths = torch.stack(states[::-1], 2)  # [B, 1, L']
    paths = paths.masked_fill(~p.mask.unsqueeze(1), 0).masked_fill((scores == NEG_INF).unsqueeze(2), 0)
    return paths, scores


def _decode(search, k, emissions, transitions, mask, start, end, constraints, tau):
    """Run `search` (prepared potentials -> paths [B, k, L'], scores [B, k]) without autograd.

    Decoding runs under inference mode (measured 10-15% faster than no_grad for these many small
    kernels); the outputs are copied out as ordinary tensors. When an input needs a gradient, the
    scores are recomputed differentiably as the paths' scores (`path_score`).
    """
    full_len = emissions.shape[1]
    with torch.inference_mode():
        paths, scores = search(prepare(emissions, transitions, mask, start, end, constraints, tau))
        paths = pad_to(paths, full_len, 2)
    paths, scores = paths.clone(memory_format=torch.contiguous_format), scores.clone()
    inputs = (emissions, transitions, start, end)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        def rows(x, shared_dims):  # one row per returned path, unless x is shared by the batch
            if x is None or x.dim() == shared_dims or (x.dim() > shared_dims and x.shape[0] == 1):
                return x
            return x.repeat_interleave(k, 0)

        batch = scores.shape[0]
        rescored = path_score(emissions.repeat_interleave(k, 0), rows(transitions, 2), paths.flatten(0, 1),
                              mask.repeat_interleave(k, 0), rows(start, 1), rows(end, 1),
                              constraints=constraints, tau=tau).view(batch, k)
        scores = torch.where(scores == NEG_INF, scores, rescored)
    return paths, scores


def viterbi(emissions, transitions, mask, start=None, end=None, *,
            constraints: Constraints | None = None, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Best path [B, L] long and its unnormalized score [B] (differentiable when inputs need grad).

    Paths are 0 at padding, and all 0 for a sentence with no allowed path (score -inf).
    """
    paths, scores = _decode(_viterbi, 1, emissions, transitions, mask, start, end, constraints, tau)
    return paths[:, 0], scores[:, 0]


def kbest(emissions, transitions, mask, k: int, start=None, end=None, *,
          constraints: Constraints | None = None, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """The exact k highest-scoring paths [B, k, L] and their unnormalized scores [B, k], best first.

    Surplus rows (fewer than k paths of finite score) score -inf and have paths 0; k = 1 is
    Viterbi. The search is `pipeline.kbest.kbest_beam`; scores are differentiable when inputs need
    grad.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k == 1:
        paths, scores = viterbi(emissions, transitions, mask, start, end, constraints=constraints, tau=tau)
        return paths.unsqueeze(1), scores.unsqueeze(1)
    return _decode(lambda p: kbest_beam(p, k), k, emissions, transitions, mask, start, end,
                   constraints, tau)


def path_score(emissions, transitions, tags, mask, start=None, end=None, *,
               constraints: Constraints | None = None, tau: float = 1.0) -> Tensor:
    """Unnormalized score [B] of `tags` [B, L] (-inf if the path uses a forbidden factor)."""
    p = prepare(emissions, transitions, mask, start, end, constraints, tau)
    batch, length, num_labels = p.emissions.shape
    tags = tags[:, :length].long().masked_fill(~p.mask, 0)
    last = tags.gather(1, (p.lengths - 1).unsqueeze(1))
    factors = [p.emissions.gather(2, tags.unsqueeze(2)).squeeze(2),  # zero at padding
               p.start.expand(batch, -1).gather(1, tags[:, :1]),
               p.end.expand(batch, -1).gather(1, last)]
    if length > 1:
        flat = p.transitions.expand(batch, -1, -1).reshape(batch, -1)
        pairs = flat.gather(1, tags[:, :-1] * num_labels + tags[:, 1:])
        factors.append(torch.where(p.mask[:, 1:], pairs, 0.0))
    # Summed in float64 and rounded once: a float32 sum of 20,000 factors was off by 8e-3.
    return torch.cat(factors, 1).sum(1, dtype=torch.float64).float()


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
