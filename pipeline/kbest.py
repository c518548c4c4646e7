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

Label pruning, from PRUNE_LABELS labels on (and T >= k): a forward max pass, run in the backward
pass's loop (`_both_passes`), gives mu_i(c), the best score of a path through label c at position
i. A lower bound lb on the k-th best path score (the k-th largest mu_i at any one position: k
distinct paths) rules out every label with mu_i(c) < lb, so the beam runs on the M labels a
position keeps at most (`_label_sets`; M = k = 10 of T = 37 on the benchmark's batches), each
step a top-k over k * M candidates. Measured against the unpruned beam (bench/README.md): 0.8-0.9x
its time at T = 37, 1.1-1.5x at T = 16-24 (the extra pass and the label sets cost more than the
smaller top-k saves), hence PRUNE_LABELS = 32. Exactness: see `_label_sets`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline import native
from pipeline.potentials import NEG_INF, RENORM, Potentials

# D is built for this many floats at a time (a chunk of positions); below ~1 MB it stays in cache.
CHUNK_FLOATS = 1 << 16
# Label pruning (`_label_sets`) from this many labels on (and T >= k); the kept labels' threshold
# is lowered by PRUNE_TOLERANCE * (1 + the largest |potential|) against float32 rounding (~50
# float32 additions of values up to ~2 * RENORM potentials: ~1e-4 relative).
PRUNE_LABELS = 32
PRUNE_TOLERANCE = 1e-4


def _sentence_minor(x: Tensor) -> Tensor:
    """[B or 1, ...] -> [..., B or 1] (a view)."""
    return x.permute(*range(1, x.dim()), 0)


def _completions(p: Potentials) -> tuple[Tensor, Tensor, Tensor | None]:
    """Backward max pass: ahead and behind, [L', T, B] each, and the shifts [L', 1, B] (None when
    nothing was shifted; their float64 sum is the offset that turns the beam's values into scores).

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
    return ahead, behind.add_(shifts), shifts


def _full_steps(p: Potentials, ahead: Tensor, behind: Tensor):
    """D_i as [B, c, a] (a view of a [c, a, B] chunk), i = 1 .. L' - 1, built a chunk at a time."""
    length, num_labels, batch = ahead.shape
    trans = _sentence_minor(p.transitions).transpose(0, 1)  # [c, a, B or 1]
    chunk = max(1, CHUNK_FLOATS // (batch * num_labels * num_labels))
    for lo in range(1, length, chunk):
        hi = min(length, lo + chunk)
        d = (ahead[lo:hi].unsqueeze(2) - behind[lo - 1:hi - 1].unsqueeze(1)).add_(trans)
        yield from d.permute(0, 3, 1, 2).unbind(0)


def _forward_beam(p: Potentials, ahead: Tensor, behind: Tensor, k: int,
                  sets: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The beam at every position: values [L', B, k] (best completed scores, best first) and
    states [L', B, k] (label * k + rank of the parent entry at the previous position). With
    `sets` = (slots, valid) from `_label_sets` the labels are slots: label s at position i is
    slots[i, b, s], and a slot that holds no label has ahead -inf."""
    length, num_labels, batch = ahead.shape
    start = _sentence_minor(p.start) + ahead[0]  # [T, B]
    if sets is None:
        steps = _full_steps(p, ahead, behind)
    else:
        slots, valid = sets
        num_labels = slots.shape[2]
        ahead_s = ahead.permute(0, 2, 1).gather(2, slots).masked_fill_(~valid, NEG_INF)  # [L',B,M]
        behind_s = behind.permute(0, 2, 1).gather(2, slots)
        full = ahead.shape[1]
        # [L' - 1, B, c, a]: the index a * T + c of transitions[a, c]
        index = slots[:-1].unsqueeze(2) * full + slots[1:].unsqueeze(3)
        if p.transitions.shape[0] > 1:
            index += (torch.arange(batch, device=index.device) * full * full).view(1, batch, 1, 1)
        steps = (ahead_s[1:].unsqueeze(3) - behind_s[:-1].unsqueeze(2)).add_(
            p.transitions.take(index)).unbind(0)
        start = start.t().gather(1, slots[0]).masked_fill_(~valid[0], NEG_INF).t()  # [M, B]
    states = torch.arange(k, device=ahead.device).expand(length, batch, k).contiguous()
    values = ahead.new_empty(length, batch, k)
    rows = ahead.new_full((batch, num_labels, k), NEG_INF)  # candidates, label-major
    rows[:, :, 0] = start.t()  # one entry (the empty prefix) at first
    flat_rows = rows.view(batch, -1)
    torch.topk(flat_rows, k, 1, out=(values[0], states[0]))
    state_at, value_at = states.unbind(0), values.unbind(0)
    state_cols, value_cols = states.unsqueeze(2).unbind(0), values.unsqueeze(2).unbind(0)  # [B, 1, k]
    label = states.new_empty(batch, 1, k)
    label_rows = label.expand(batch, num_labels, k)
    for i, step in zip(range(1, length), steps):  # step: [B, c, a]
        torch.div(state_cols[i - 1], k, rounding_mode="floor", out=label)
        torch.gather(step, 2, label_rows, out=rows)
        rows.add_(value_cols[i - 1])
        torch.topk(flat_rows, k, 1, out=(value_at[i], state_at[i]))
    return values, states


def _both_passes(p: Potentials) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor | None]:
    """`_completions` and, in the same loop, a forward max pass: ahead, behind, shifts as there,
    then mu [L', B, T], the best score of a path through each (position, label), less offset
    [L', B] (float64; None when nothing was shifted).

    mu = f + ahead, f_i(c) the best prefix into c at position i without e_i(c). Step j runs the
    backward step at position L' - 2 - j and the forward one at j + 1 as one [2, T, T, B] add and
    one amax (the forward on transposed transitions): half the kernels of two loops.
    """
    emissions = _sentence_minor(p.emissions).contiguous()  # [L', T, B]
    trans = _sentence_minor(p.transitions)  # [a, c, B or 1]
    both = torch.stack([trans, trans.transpose(0, 1)])  # [2, T, T, B or 1]
    end, start = _sentence_minor(p.end), _sentence_minor(p.start)  # [T, B or 1]
    real = p.mask.t().unsqueeze(1)  # [L', 1, B]
    length, num_labels, batch = emissions.shape
    # states[j] = (ahead at L' - 1 - j, f + e at j); pairs[j] = (behind at L' - 2 - j, f at j + 1)
    states = emissions.new_empty(length, 2, num_labels, batch)
    pairs = emissions.new_empty(max(length - 1, 0), 2, num_labels, batch)
    after = torch.stack([emissions[:-1].flip(0), emissions[1:]], 1)  # e at the two positions
    steps = emissions.new_zeros(length - 1, 2, 1, batch) if length > RENORM else None
    torch.add(emissions[-1], end, out=states[0, 0])
    torch.add(emissions[0], start, out=states[0, 1])
    state_rows, pair_at, after_at = states.unsqueeze(2).unbind(0), pairs.unbind(0), after.unbind(0)
    grid = emissions.new_empty(2, num_labels, num_labels, batch)
    for j in range(length - 1):
        i = length - 2 - j
        pair = pair_at[j]
        torch.amax(torch.add(both, state_rows[j], out=grid), 2, out=pair)
        if i + 1 >= p.full:  # a sentence whose position i + 1 is padding ends at i
            torch.where(real[i + 1], pair[0], end, out=pair[0])
        if (j + 1) % RENORM == 0:
            shift = pair.amax(1, keepdim=True).nan_to_num_(nan=float("nan"), posinf=float("inf"),
                                                           neginf=0.0)
            if i >= p.full:  # no backward shift where position i is padding
                shift[0].masked_fill_(~real[i], 0.0)
            pair.sub_(shift)
            steps[j] = shift
        torch.add(pair, after_at[j], out=states[j + 1])
    ahead = states[:, 0].flip(0)
    behind = torch.cat([pairs[:, 0].flip(0), end.expand(num_labels, batch).unsqueeze(0)])
    behind.masked_fill_(behind == NEG_INF, 0.0)
    mu = torch.cat([start.expand(num_labels, batch).unsqueeze(0), pairs[:, 1]]).add_(ahead)
    mu = mu.permute(0, 2, 1).contiguous()
    if steps is None:
        return ahead, behind, None, mu, None
    shifts = torch.cat([steps[:, 0].flip(0), steps.new_zeros(1, 1, batch)])  # backward, [L', 1, B]
    forward = torch.cat([steps.new_zeros(1, batch), steps[:, 1, 0]]).double().cumsum(0)
    offset = forward + shifts[:, 0].double().flip(0).cumsum(0).flip(0)
    return ahead, behind.add_(shifts), shifts, mu, offset


def _label_sets(p: Potentials, mu: Tensor, offset: Tensor | None,
                k: int) -> tuple[Tensor, Tensor] | None:
    """The labels a top-k path can take at each position: slots [L', B, M] (long, M < T) and
    which slots hold one ([L', B, M] bool; the others hold label 0, to be scored -inf), or None
    when some real position keeps all T.

    The k best mu_i(c) at one position (`_both_passes`) are k distinct paths, so lb = max_i (k-th
    largest mu_i) is at most the k-th best path score, and every label of a top-k path has
    mu >= lb. Labels with mu_i(c) >= lb - tolerance are kept, in label order (a cumsum and a
    scatter), M = the most kept anywhere. The beam over kept labels is exact: a kept prefix's
    best completion scores >= lb only through kept labels. Needs T >= k.
    """
    length, batch, num_labels = mu.shape
    real = p.mask.t()

    def stored(lb):  # a per-sentence score [B] (float64) -> [L', B] in mu's frame, +inf at padding
        frame = lb.expand(length, batch) if offset is None else lb - offset
        return frame.float().masked_fill_(~real, float("inf"))

    # A first lower bound per position: with label c in group c % k (labels past the last full
    # group left out), the least of the k group maxima is exceeded by k distinct labels. Only
    # positions that it leaves with k labels above max_i of it can raise lb: their k-th largest.
    groups = mu[:, :, :num_labels - num_labels % k].view(length, batch, -1, k)
    groups = groups.amax(2).amin(2).double()
    lb = (groups if offset is None else groups + offset).masked_fill_(~real, NEG_INF).amax(0)  # [B]
    where = ((mu >= stored(lb).unsqueeze(2)).sum(2) >= k).nonzero()  # [n, 2]: position, sentence
    if len(where):
        kth = mu[where[:, 0], where[:, 1]].topk(k, 1).values[:, k - 1].double()
        if offset is not None:
            kth += offset[where[:, 0], where[:, 1]]
        lb = lb.scatter_reduce(0, where[:, 1], kth, "amax")
    keep = mu >= stored(lb - PRUNE_TOLERANCE * _scale(p)).unsqueeze(2)
    rank = keep.cumsum(2)  # a kept label goes to slot rank - 1
    kept = rank[:, :, -1:].clone()
    most = max(1, int(kept.max()))
    if most >= num_labels:
        return None
    slots = rank.new_zeros(length, batch, num_labels + 2)
    labels = torch.arange(num_labels, device=mu.device).expand(length, batch, num_labels)
    slots.scatter_(2, rank.masked_fill_(~keep, num_labels + 1), labels)
    return slots[:, :, 1:most + 1], torch.arange(most, device=mu.device) < kept


def _scale(p: Potentials) -> float:
    """1 + the sum of the largest finite |potential| of each kind."""
    scale = 1.0
    for x in (p.emissions, p.transitions, p.start, p.end):
        low, high = (float(v) for v in torch.aminmax(x))
        if low == NEG_INF:
            low = float(x.nan_to_num(neginf=0.0).amin())
        scale += max(abs(low), abs(high))
    return scale


def _backtrack(p: Potentials, values: Tensor, states: Tensor, k: int,
               slots: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Paths [B, k, L'] and scores [B, k] read at each sentence's last position."""
    length, batch, _ = states.shape
    scores = values.gather(0, (p.lengths - 1).view(1, batch, 1).expand(1, batch, k))[0]
    labels = states.div(k, rounding_mode="floor")
    stay = torch.arange(k, device=states.device).expand(length, batch, k)
    parents = torch.where(p.mask.t().unsqueeze(2), states.sub_(labels * k), stay)
    if slots is not None:
        labels = slots.gather(2, labels)
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
    best first. Writes its buffers in place: call it under torch.inference_mode(). CPU batches run
    the same beam in C (`pipeline.native`) when a C compiler is there to build it."""
    lib = native.load() if p.emissions.device.type == "cpu" else None
    if lib is not None:
        return native.kbest(lib, p.emissions, p.transitions, p.start, p.end, p.lengths, k)
    sets = None
    if p.emissions.shape[2] >= max(k, PRUNE_LABELS):
        ahead, behind, shifts, mu, offset = _both_passes(p)
        sets = _label_sets(p, mu, offset, k)
    else:
        ahead, behind, shifts = _completions(p)
    values, states = _forward_beam(p, ahead, behind, k, sets)
    paths, scores = _backtrack(p, values, states, k, None if sets is None else sets[0])
    if shifts is None:
        return paths, scores
    return paths, (scores.double() + shifts.double().sum((0, 1)).unsqueeze(1)).float()
