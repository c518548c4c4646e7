"""Eisner's O(n^3) dynamic program over projective dependency trees, batched, log space, float32.

Positions 0..L (0 = the root), ``arc[b, h, d]`` the log-potential of h -> d (-inf = impossible),
``lengths[b]`` = n_b words. Charts (Eisner 1996; the notation of McDonald's thesis, 2006, fig. 3.3):

    C_r[i, j]  complete span i..j headed at i        C_l[i, j]  complete span i..j headed at j
    I_r[i, j]  incomplete span with the arc i -> j   I_l[i, j]  incomplete span with the arc j -> i

    I_*[i, j] = (+)_{i <= k < j} C_r[i, k] (x) C_l[k+1, j]  (x)  arc[i, j] (I_r) or arc[j, i] (I_l)
    C_l[i, j] = (+)_{i <= k < j} C_l[i, k] (x) I_l[k, j]
    C_r[i, j] = (+)_{i < k <= j} I_r[i, k] (x) C_r[k, j]         result: C_r[0, n]

Each projective tree has exactly one derivation, so the log semiring gives log Z (marginals: its
autograd, the outside pass) and the k-best semiring gives the exact k best trees. Single root
(the root has one child): C_r[0, j] is kept only for j = n, so an I_r[0, k] can only split at
k = 0 and C_r[0, n] = (+)_k I_r[0, k] (x) C_r[k, n] adds exactly one root arc (SuPar's
``multiroot=False``). Spans of width w are computed at once (one gather per chart), so a sentence
costs L Python steps.

The inside pass runs in float64: in float32 its marginals were 2e-5 / 7e-5 off (40 / 100 words,
scores N(0, 20^2); 5e-6 at N(0, 2^2)) against float64, the chart entries growing with length x
scale, for a 25% cost (log Z + marginals of 32 x 40 words: 50 -> 63 ms on one thread, measured).
The k-best pass is max-plus (sums only, no exp) and stays float32.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipeline.potentials import NEG_INF


def logsumexp(x: Tensor, dim: int) -> Tensor:
    """log(sum(exp(x))) over ``dim``; -inf with a zero (not NaN) gradient where all entries are
    -inf (torch.logsumexp's gradient there is NaN: measured, torch 2.13)."""
    shift = x.detach().amax(dim, keepdim=True)
    shift = shift.masked_fill(shift == NEG_INF, 0.0)
    total = (x - shift).exp().sum(dim)
    positive = total > 0
    log_total = torch.where(positive, total.masked_fill(~positive, 1.0).log(), torch.full_like(total, NEG_INF))
    return log_total + shift.squeeze(dim)


def _spans(width: int, size: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """Start i [S, 1], end j [S, 1] of the S = size - width spans of ``width``, and offsets t [w]."""
    i = torch.arange(size - width, device=device).unsqueeze(1)
    return i, i + width, torch.arange(width, device=device)


def _root_gate(value: Tensor, lengths: Tensor, width: int) -> Tensor:
    """Single root: C_r[0, width] survives only for sentences of exactly ``width`` words."""
    keep = (lengths == width).view(-1, *[1] * (value.dim() - 1))
    first = torch.where(keep, value[:, :1], torch.full_like(value[:, :1], NEG_INF))
    return torch.cat([first, value[:, 1:]], 1)


def log_partition(arc: Tensor, lengths: Tensor, single_root: bool = True) -> Tensor:
    """log Z [B] over projective trees, in ``arc``'s dtype, computed in float64 (differentiable: its
    gradient with respect to ``arc`` is the arc marginals, Eisner's outside pass)."""
    dtype, arc = arc.dtype, arc.double()
    batch, size, _ = arc.shape
    full = arc.new_full((batch, size, size), NEG_INF)
    c_l, c_r, i_l, i_r = full.clone(), full.clone(), full.clone(), full.clone()
    diag = torch.arange(size, device=arc.device)
    c_l[:, diag, diag] = 0.0
    c_r[:, diag, diag] = 0.0
    for w in range(1, size):
        i, j, t = _spans(w, size, arc.device)
        inner = logsumexp(c_r[:, i, i + t] + c_l[:, i + t + 1, j], -1)
        i_r[:, i[:, 0], j[:, 0]] = inner + arc[:, i[:, 0], j[:, 0]]
        i_l[:, i[:, 0], j[:, 0]] = inner + arc[:, j[:, 0], i[:, 0]]
        c_l[:, i[:, 0], j[:, 0]] = logsumexp(c_l[:, i, i + t] + i_l[:, i + t, j], -1)
        right = logsumexp(i_r[:, i, i + t + 1] + c_r[:, i + t + 1, j], -1)
        c_r[:, i[:, 0], j[:, 0]] = _root_gate(right, lengths, w) if single_root else right
    return c_r[torch.arange(batch, device=arc.device), 0, lengths].to(dtype)


def _rank_pairs(k: int, device) -> tuple[Tensor, Tensor]:
    """The rank pairs (a, b) with (a + 1)(b + 1) <= k: every other pair of two best-first lists is
    beaten by at least k pairs of the same split, so these hold the exact top k (k ln k pairs, not
    k^2: 5,000 instead of 490,000 at k = 700)."""
    pairs = [(a, b) for a in range(k) for b in range(k) if (a + 1) * (b + 1) <= k]
    a, b = torch.tensor(pairs, device=device).T
    return a, b


def _top(left: Tensor, right: Tensor, pairs: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Top k of left[.., t, a] + right[.., t, b] over splits t and rank pairs: values [B, S, k]
    (-inf padded) and the flat index t * P + pair."""
    a, b = pairs
    cand = (left[..., a] + right[..., b]).flatten(-2)
    take = min(k, cand.shape[-1])
    values, index = cand.topk(take, -1)
    if take < k:
        values = torch.cat([values, values.new_full((*values.shape[:-1], k - take), NEG_INF)], -1)
        index = torch.cat([index, index.new_zeros((*index.shape[:-1], k - take))], -1)
    return values, index


@torch.no_grad()
def kbest(arc: Tensor, lengths: Tensor, k: int, single_root: bool = True) -> tuple[Tensor, Tensor]:
    """The exact k best projective trees: heads [B, k, L+1] long (0 at position 0, padding and
    surplus rows) and their scores [B, k] (sum of arc potentials, float32, -inf for surplus rows),
    best first (Huang & Chiang 2005, algorithm 1: each chart cell keeps its k best derivations)."""
    batch, size, _ = arc.shape
    pairs = _rank_pairs(k, arc.device)
    full = arc.new_full((batch, size, size, k), NEG_INF)
    c_l, c_r, i_l, i_r = full.clone(), full.clone(), full.clone(), full.clone()
    diag = torch.arange(size, device=arc.device)
    c_l[:, diag, diag, 0] = 0.0
    c_r[:, diag, diag, 0] = 0.0
    back = {name: torch.zeros((batch, size, size, k), dtype=torch.long, device=arc.device)
            for name in ("I", "C_l", "C_r")}
    for w in range(1, size):
        i, j, t = _spans(w, size, arc.device)
        ii, jj = i[:, 0], j[:, 0]
        inner, back["I"][:, ii, jj] = _top(c_r[:, i, i + t], c_l[:, i + t + 1, j], pairs, k)
        i_r[:, ii, jj] = inner + arc[:, ii, jj, None]
        i_l[:, ii, jj] = inner + arc[:, jj, ii, None]
        c_l[:, ii, jj], back["C_l"][:, ii, jj] = _top(c_l[:, i, i + t], i_l[:, i + t, j], pairs, k)
        right, back["C_r"][:, ii, jj] = _top(i_r[:, i, i + t + 1], c_r[:, i + t + 1, j], pairs, k)
        c_r[:, ii, jj] = _root_gate(right, lengths, w) if single_root else right
    scores = c_r[torch.arange(batch, device=arc.device), 0, lengths]
    heads = torch.zeros((batch, k, size), dtype=torch.long)
    back_np = {name: value.cpu().numpy() for name, value in back.items()}
    a_np, b_np = (x.cpu().numpy() for x in pairs)
    finite = torch.isfinite(scores).cpu().numpy()
    for row in range(batch):
        for rank in range(k):
            if finite[row, rank]:
                heads[row, rank] = torch.from_numpy(
                    _backtrack(back_np, a_np, b_np, row, int(lengths[row]), rank, size))
    return heads.to(arc.device), scores


def _backtrack(back: dict, a: np.ndarray, b: np.ndarray, row: int, n: int, rank: int,
               size: int) -> np.ndarray:
    """Heads [size] of the derivation ``rank`` of C_r[0, n] (an explicit stack, no recursion)."""
    heads = np.zeros(size, dtype=np.int64)
    stack = [("C_r", 0, n, rank)]
    num_pairs = len(a)
    while stack:
        kind, i, j, r = stack.pop()
        if i == j:
            continue
        flat = back["I" if kind in ("I_r", "I_l") else kind][row, i, j, r]
        split, pair = divmod(int(flat), num_pairs)
        ra, rb = int(a[pair]), int(b[pair])
        if kind == "C_r":
            stack += [("I_r", i, i + split + 1, ra), ("C_r", i + split + 1, j, rb)]
        elif kind == "C_l":
            stack += [("C_l", i, i + split, ra), ("I_l", i + split, j, rb)]
        else:
            if kind == "I_r":
                heads[j] = i
            else:
                heads[i] = j
            stack += [("C_r", i, i + split, ra), ("C_l", i + split + 1, j, rb)]
    return heads
