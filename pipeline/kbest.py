"""The exact k-best beam behind ``crf.kbest`` (prepared potentials in, no autograd).

A backward max pass gives every (position, label) its best completion; a forward beam then keeps,
at each position, the k prefixes whose best completed score is highest. That is exact (ties
included) for the multiset of scores: were a prefix of a top-k path dropped, the k kept prefixes
would complete into k distinct paths at least as good. Each position costs one top-k over the
k * T extensions of the beam, where the classic per-label [B, T, k] table needs a [B, T, T * k] one.

With ``behind[i, a]`` the best score of everything after y_i = a (end included) and
``ahead[i, c] = emissions[i, c] + behind[i, c]``, a beam entry carries its prefix score plus
``behind`` at its last label (its best completed score), and extending an entry that ends in a at
position i - 1 by label c adds ``D_i[c, a] = transitions[a, c] + ahead[i, c] - behind[i - 1, a]``
(at most 0). So one step is a gather of D_i rows by the beam's labels, one add and one top-k.

Layouts, all measured in bench/README.md: sentences are the innermost dimension of the [L, T, B]
tables and of D (broadcasts over labels then vectorize over the batch); the candidates are
label-major ([B, T, k], where each label's k extensions are nearly sorted, which makes torch.topk
faster); buffers are allocated once and written in place. A sentence's beam runs on past its end
on finite or -inf values that are never read: its scores are taken at its last position and its
backtracking starts there.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF, RENORM, Potentials

# D is built for this many floats at a time (a chunk of positions); below ~1 MB it stays in cache.
CHUNK_FLOATS = 1 << 16


def _sentence_minor(x: Tensor) -> Tensor:
    """[B or 1, ...] -> [..., B or 1] (a view)."""
    return x.permute(*range(1, x.dim()), 0)


def _completions(p: Potentials) -> tuple[Tensor, Tensor, Tensor | None]:
    """Backward max pass: ahead and behind, [L', T, B] each, and the offset [B] (float64) that
    turns the beam's values into scores (None when nothing was shifted).

    Every RENORM-th position from the end subtracts each sentence's max of behind (the shift,
    [1, B]), so the tables stay O(RENORM * potentials) at any length; the returned behind has the
    shift at its own position added back, which is what D needs, and -inf (no allowed completion)
    replaced by 0.
    """
    emissions = _sentence_minor(p.emissions).contiguous()
    trans = _sentence_minor(p.transitions)  # [a, c, B or 1]
    end = _sentence_minor(p.end)  # [T, B or 1]
    real = p.mask.t().unsqueeze(1)  # [L', 1, B]
    length = len(emissions)
    ahead, behind = torch.empty_like(emissions), torch.empty_like(emissions)
    shifts = emissions.new_zeros(length, 1, emissions.shape[2]) if length > RENORM else None
    ahead_rows, behind_at, emissions_at = ahead.unsqueeze(1).unbind(0), behind.unbind(0), emissions.unbind(0)
    behind_at[-1].copy_(end.expand_as(behind_at[-1]))
    torch.add(emissions_at[-1], behind_at[-1], out=ahead[-1])
    for i in range(length - 2, -1, -1):
        torch.amax(trans + ahead_rows[i + 1], 1, out=behind_at[i])
        if i + 1 >= p.full:  # a sentence whose position i + 1 is padding ends at i
            torch.where(real[i + 1], behind_at[i], end, out=behind_at[i])
        if (length - 1 - i) % RENORM == 0:
            shift = behind_at[i].amax(0, keepdim=True).nan_to_num_(nan=float("nan"), posinf=float("inf"),
                                                                 neginf=0.0)
            if i >= p.full:  # no shift where position i is padding
                shift.masked_fill_(~real[i], 0.0)
            behind_at[i].sub_(shift)
            shifts[i] = shift
        torch.add(emissions_at[i], behind_at[i], out=ahead_rows[i][0])
    behind.masked_fill_(behind == NEG_INF, 0.0)
    if shifts is None:
        return ahead, behind, None
    return ahead, behind.add_(shifts), shifts.double().sum((0, 1))


def _forward_beam(p: Potentials, ahead: Tensor, behind: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The beam at every position: values [L', B, k] (best completed scores, best first) and
    states [L', B, k] (label * k + rank of the parent entry at the previous position)."""
    length, num_labels, batch = ahead.shape
    states = torch.arange(k, device=ahead.device).expand(length, batch, k).contiguous()
    values = ahead.new_empty(length, batch, k)
    rows = ahead.new_full((batch, num_labels, k), NEG_INF)  # candidates, label-major
    rows[:, :, 0] = (_sentence_minor(p.start) + ahead[0]).t()  # one entry (the empty prefix) at first
    flat_rows = rows.view(batch, -1)
    torch.topk(flat_rows, k, 1, out=(values[0], states[0]))
    state_at, value_at = states.unbind(0), values.unbind(0)
    state_cols, value_cols = states.unsqueeze(2).unbind(0), values.unsqueeze(2).unbind(0)  # [B, 1, k]
    label = states.new_empty(batch, 1, k)
    label_rows = label.expand(batch, num_labels, k)
    trans = _sentence_minor(p.transitions).transpose(0, 1)  # [c, a, B or 1]
    chunk = max(1, CHUNK_FLOATS // (batch * num_labels * num_labels))
    for lo in range(1, length, chunk):
        hi = min(length, lo + chunk)
        d = (ahead[lo:hi].unsqueeze(2) - behind[lo - 1:hi - 1].unsqueeze(1)).add_(trans)
        for i, step in zip(range(lo, hi), d.permute(0, 3, 1, 2).unbind(0)):  # step: [B, c, a]
            torch.div(state_cols[i - 1], k, rounding_mode="floor", out=label)
            torch.gather(step, 2, label_rows, out=rows)
            rows.add_(value_cols[i - 1])
            torch.topk(flat_rows, k, 1, out=(value_at[i], state_at[i]))
    return values, states


def _backtrack(p: Potentials, values: Tensor, states: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Paths [B, k, L'] and scores [B, k] read at each sentence's last position."""
    length, batch, _ = states.shape
    scores = values.gather(0, (p.lengths - 1).view(1, batch, 1).expand(1, batch, k))[0]
    labels = states.div(k, rounding_mode="floor")
    stay = torch.arange(k, device=states.device).expand(length, batch, k)
    parents = torch.where(p.mask.t().unsqueeze(2), states.sub_(labels * k), stay)
    # ranks[i] maps a final rank to the rank of its prefix at position i. It starts as the one-step
    # map parents[i + 1] and is composed with the map `step` positions on (pointer doubling), so
    # ceil(log2 L') rounds of one gather replace L' - 1 sequential ones.
    ranks = torch.cat([parents[1:], stay[:1]])
    spare = torch.empty_like(ranks)
    step = 1
    while step < length - 1:
        torch.gather(ranks[:length - step], 2, ranks[step:], out=spare[:length - step])
        spare[length - step:] = ranks[length - step:]
        ranks, spare = spare, ranks
        step *= 2
    paths = labels.gather(2, ranks).permute(1, 2, 0)
    keep = p.mask.unsqueeze(1) & (scores != NEG_INF).unsqueeze(2)
    return paths.masked_fill(~keep, 0), scores


def kbest_beam(p: Potentials, k: int) -> tuple[Tensor, Tensor]:
    """The k best paths [B, k, L'] (0 at padding and on rows of score -inf) and their scores [B, k],
    best first. Writes its buffers in place: call it under torch.inference_mode()."""
    ahead, behind, offset = _completions(p)
    values, states = _forward_beam(p, ahead, behind, k)
    paths, scores = _backtrack(p, values, states, k)
    return paths, scores if offset is None else (scores.double() + offset.unsqueeze(1)).float()
