"""Viterbi for the linear-chain CRF: max-sums forward with `amax`, backpointers only on the best path.

A forward step is one broadcast add into a [B, T, T] buffer, an `amax` over its contiguous last
dimension and the emission add. `max` with indices (what a backpointer table needs) cost 60 us per
[32, 37, 37] step against 12 us for `amax` (bench/README.md), so no table is kept: backtracking
recomputes, for the one label chosen at position i, argmax_a (score_{i-1}[a] + transitions[a, c])
on [B, T] (the same float additions as the forward step, so the same maxima). Sentences run on past
their end (values never read); backtracking starts at each sentence's last position. Every RENORM
positions each sentence's max is subtracted and added back in float64, as in `pipeline.chain_log`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF, RENORM, Potentials


def viterbi(p: Potentials) -> tuple[Tensor, Tensor]:
    """Best path [B, 1, L'] (0 at padding and for a sentence with no allowed path) and its score
    [B, 1]. Writes its buffers in place: call it under torch.inference_mode()."""
    em = p.emissions.transpose(0, 1).contiguous()  # [L', B, T]
    length, batch, num_labels = em.shape
    trans_t = p.transitions.transpose(1, 2).contiguous()  # [B or 1, c, a]
    scores = torch.empty_like(em)
    rows, cols, e_rows = scores.unbind(0), scores.unsqueeze(2).unbind(0), em.unbind(0)
    buf = em.new_empty(batch, num_labels, num_labels)
    shifts = em.new_zeros(length, batch, 1) if length > RENORM else None
    torch.add(p.start, e_rows[0], out=rows[0])
    for i in range(1, length):
        torch.add(cols[i - 1], trans_t, out=buf)  # buf[b, c, a] = score[b, a] + transitions[a, c]
        torch.amax(buf, 2, out=rows[i])
        rows[i].add_(e_rows[i])
        if i % RENORM == 0:
            shift = rows[i].amax(1, keepdim=True).nan_to_num_(nan=float("nan"), posinf=float("inf"),
                                                             neginf=0.0)
            rows[i].sub_(shift)
            shifts[i] = shift
    ends = p.lengths - 1
    last = scores.gather(0, ends.view(1, batch, 1).expand(1, batch, num_labels))[0] + p.end
    best, state = last.max(1)
    if shifts is not None:  # the shifts up to each sentence's last position
        kept = torch.where(p.mask.t().unsqueeze(2), shifts, 0.0)
        best = (best.double() + kept.sum((0, 2), dtype=torch.float64)).float()
    if trans_t.shape[0] == 1:
        shared = trans_t[0]
        into = shared.index_select  # into(0, c) = transitions[:, c] as [B, a]
    else:
        def into(_, labels):
            return trans_t.gather(1, labels.view(batch, 1, 1).expand(batch, 1, num_labels)).squeeze(1)
    labels, cur = [], state
    for i in range(length - 1, -1, -1):
        if i >= p.full - 1:  # position i is the last of some sentences: they start here
            cur = torch.where(ends <= i, state, cur)
        labels.append(cur)
        if i:
            cur = (rows[i - 1] + into(0, cur)).argmax(1)
    paths = torch.stack(labels[::-1], 1)  # [B, L']
    paths = paths.masked_fill_(~p.mask, 0).masked_fill_((best == NEG_INF).unsqueeze(1), 0)
    return paths.unsqueeze(1), best.unsqueeze(1)
