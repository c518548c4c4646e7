"""``Spans``: NER as parsing (structural KD slides, case 4) as a distribution over span sets.

A structure of a sentence of n words is a set of non-overlapping typed spans (start, end inclusive,
type e); every word outside the spans is O. P(set) is proportional to exp(sum of its spans' scores
/ tau), the empty set scoring 0: a semi-Markov CRF (Sarawagi & Cohen 2004) whose segments are the
spans plus one-word O segments of score 0.

Part ``span`` [B, L, L, E]: scores / tau in float32, -inf where end < start or end >= n.
Marginals ``span`` [B, L, L, E] = P(span in the set), by the semi-Markov forward-backward in log
space (alpha[j] = log-sum over the first j words, beta[j] over the words j.., both exact):

    alpha[j] = log( exp(alpha[j-1]) + sum_{s < j, e} exp(alpha[s] + span[s, j-1, e]) ),  alpha[0] = 0
    beta[j]  = log( exp(beta[j+1])  + sum_{t >= j, e} exp(span[j, t, e] + beta[t+1]) ), beta[n] = 0
    P(s, t, e) = exp(alpha[s] + span[s, t, e] + beta[t+1] - log Z),  log Z = alpha[n]

The O segment keeps every alpha / beta finite, so no logsumexp ever sees an all -inf row. The
forward-backward runs in float64 (parts and results float32): alpha, beta and log Z grow with the
length times the score scale, and exp(alpha + span + beta - log Z) in float32 put the BIOES marginals
3e-4 / 1.1e-3 off (40 / 100 words, scores N(0, 20^2); 3e-5 at N(0, 2^2)), measured against float64;
float64 costs ~25% here (32 x 40 words: ~15 ms on one thread). k-best (max-plus, no exp) stays float32.

BIOES labels (``bioes_marginals``, ``score``, ``argmax``, ``kbest``): [1 + 4E] indices, O = 0, then
for each type e: B-e = 1 + 4e, I-e = 2 + 4e, E-e = 3 + 4e, S-e = 4 + 4e. A span (s, t, e) is
S-e when s = t, else B-e at s, I-e inside and E-e at t. Label sequences [B, L] (or [B, K, L]) are
the outputs; a sequence that is not valid BIOES scores -inf.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from pipeline.potentials import NEG_INF
from pipeline.structs.base import Structure
from pipeline.structs.chain import fp32
from pipeline.structs.ops import weighted

B_, I_, E_, S_ = range(4)


def bioes_allowed(num_types: int) -> tuple[Tensor, Tensor, Tensor]:
    """(transitions [T, T], start [T], end [T]) bool of valid BIOES sequences, T = 1 + 4E."""
    kind = torch.tensor([-1] + [k for _ in range(num_types) for k in range(4)])
    etype = torch.tensor([-1] + [e for e in range(num_types) for _ in range(4)])
    opens, closes = (kind == B_) | (kind == I_), (kind == E_) | (kind == S_) | (kind == -1)
    begins = (kind == B_) | (kind == S_) | (kind == -1)
    continues = (kind == I_) | (kind == E_)
    same = etype[:, None] == etype[None, :]
    trans = (closes[:, None] & begins[None, :]) | (opens[:, None] & continues[None, :] & same)
    return trans, begins, closes


class Spans(Structure):
    """Distribution over sets of non-overlapping typed spans: scores [B, L, L, E] (span (start,
    end inclusive, type)), lengths [B] (words); ``labels_bioes``: optional names of the 1 + 4E
    BIOES labels in index order (kept for callers; checked for its size)."""

    kind = "spans"
    part_names = ("span",)
    target_names = ("span",)

    def __init__(self, scores: Tensor, lengths: Tensor, labels_bioes: list[str] | tuple[str, ...] | None = None,
                 tau: float = 1.0):
        if scores.dim() != 4 or scores.shape[1] != scores.shape[2]:
            raise ValueError(f"span scores must be [B, L, L, E], got {tuple(scores.shape)}")
        if lengths.dim() != 1 or len(lengths) != scores.shape[0]:
            raise ValueError(f"lengths must be [B] with B = {scores.shape[0]}, got {tuple(lengths.shape)}")
        if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > scores.shape[1]):
            raise ValueError(f"lengths must be in 1..{scores.shape[1]}, got {lengths.tolist()}")
        self.num_types = scores.shape[-1]
        if labels_bioes is not None and len(labels_bioes) != 1 + 4 * self.num_types:
            raise ValueError(f"labels_bioes must name 1 + 4E = {1 + 4 * self.num_types} labels, "
                             f"got {len(labels_bioes)}")
        super().__init__(torch.arange(scores.shape[1], device=lengths.device) < lengths.unsqueeze(1), tau)
        self.scores, self.word_lengths, self.labels_bioes = scores, lengths.long(), labels_bioes

    def init_args(self) -> dict:
        return {"scores": self.scores, "lengths": self.word_lengths, "labels_bioes": self.labels_bioes,
                "tau": self.tau}

    @cached_property
    def allowed(self) -> Tensor:
        """[B, L, L] bool: start <= end < n."""
        pos = torch.arange(self.scores.shape[1], device=self.mask.device)
        return (pos[:, None] <= pos[None, :]) & self.mask.unsqueeze(1)

    @cached_property
    def parts(self) -> dict[str, Tensor]:
        x = self.scores.float()
        x = x if self.tau == 1.0 else x / self.tau
        return {"span": x.masked_fill(~self.allowed.unsqueeze(-1), NEG_INF)}

    def _alpha(self) -> Tensor:
        """[B, L+1] prefix log-sums, float64 (carried on with O words past each length; log Z = alpha[n])."""
        span = self.parts["span"].double()
        alphas = [span.new_zeros(len(span))]
        for j in range(1, span.shape[1] + 1):
            prev = torch.stack(alphas, 1)                                  # [B, j]
            cand = (prev[:, :, None] + span[:, :j, j - 1]).flatten(1)      # start s, type e
            alphas.append(torch.logsumexp(torch.cat([alphas[-1].unsqueeze(1), cand], 1), 1))
        return torch.stack(alphas, 1)

    def _beta(self) -> Tensor:
        """[B, L+1] suffix log-sums. beta[j] = 0 for every j >= n without a special case: past the
        length only the O segment (score 0) exists, every span touching padding being -inf. Float64."""
        span = self.parts["span"].double()
        betas = [span.new_zeros(len(span))]                                # beta[L], built backwards
        for j in range(span.shape[1] - 1, -1, -1):
            later = torch.stack(betas[::-1], 1)                             # beta[j+1 .. L]
            cand = (span[:, j, j:] + later[:, :, None]).flatten(1)          # end t, type e
            betas.append(torch.logsumexp(torch.cat([betas[-1].unsqueeze(1), cand], 1), 1))
        return torch.stack(betas[::-1], 1)

    @fp32
    def _log_partition(self) -> Tensor:
        return self._alpha().gather(1, self.word_lengths.unsqueeze(1)).squeeze(1).float()

    @fp32
    def _forward_backward(self) -> tuple[Tensor, Tensor, Tensor]:
        """(log span marginals [B, L, L, E], log O marginals [B, L], log Z [B]), all float64."""
        alpha, beta = self._alpha(), self._beta()
        log_z = alpha.gather(1, self.word_lengths.unsqueeze(1)).squeeze(1)
        self.__dict__.setdefault("log_partition", log_z.float())
        z = log_z[:, None, None, None]
        span = alpha[:, :-1, None, None] + self.parts["span"] + beta[:, None, 1:, None] - z
        outside = (alpha[:, :-1] + beta[:, 1:] - log_z[:, None]).masked_fill(~self.mask, NEG_INF)
        return span, outside, log_z

    def _compute_log_marginals(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        return {"span": self._forward_backward()[0].float()}

    def bioes_marginals(self) -> Tensor:
        """[B, L, 1 + 4E] P(label of word j), derived from the span marginals mu (exact):
        S-e = mu[j, j, e], B-e = sum_{t > j} mu[j, t, e], E-e = sum_{s < j} mu[s, j, e],
        I-e = sum_{s < j < t} mu[s, t, e], O = exp(alpha[j] + beta[j+1] - log Z); all sums of
        nonnegative terms (no subtraction), zero at padding. Each real row sums to 1."""
        log_mu, log_out, _ = self._forward_backward()
        mu = log_mu.exp()                                                  # [B, s, t, E]
        size = mu.shape[1]
        pos = torch.arange(size, device=mu.device)
        single = torch.diagonal(mu, dim1=1, dim2=2).transpose(1, 2)        # [B, L, E]
        begin = (mu * (pos[None, :] > pos[:, None])[..., None]).sum(2)      # over t > s = j
        end = (mu * (pos[:, None] < pos[None, :])[..., None]).sum(1)        # over s < t = j
        # R[s, j] = sum_{t >= j} mu[s, t]; I(j) = sum_{s < j} R[s, j + 1]
        tail = mu.flip(2).cumsum(2).flip(2)
        tail = torch.cat([tail[:, :, 1:], torch.zeros_like(tail[:, :, :1])], 2)   # R[s, j + 1]
        inside = (tail * (pos[:, None] < pos[None, :])[..., None]).sum(1)
        per_type = torch.stack([begin, inside, end, single], -1).flatten(2)  # [B, L, 4E]: B, I, E, S per type
        out = torch.cat([log_out.exp().unsqueeze(-1), per_type], -1)
        return out.masked_fill(~self.mask.unsqueeze(-1), 0.0).float()

    def expected_score(self, marginals: dict[str, Tensor]) -> Tensor:
        if "span" not in marginals:
            raise ValueError("Spans.expected_score needs the marginals 'span'")
        m = marginals["span"].float().masked_fill(~self.allowed.unsqueeze(-1), 0.0)
        return weighted(m, self.parts["span"]).sum((1, 2, 3))

    def score(self, y: Tensor) -> Tensor:
        """Sum of the span scores of BIOES sequences y [B, L] -> [B] or [B, K, L] -> [B, K];
        -inf for a sequence that is not valid BIOES (ValueError for indices outside 0..4E)."""
        flat = y.long() if y.dim() == 3 else y.long().unsqueeze(1)
        batch, k, size = flat.shape
        real = self.mask.unsqueeze(1).expand_as(flat)
        if bool(((flat < 0) | (flat > 4 * self.num_types))[real].any()):
            raise ValueError(f"BIOES labels must be in 0..{4 * self.num_types}")
        labels = flat.masked_fill(~real, 0)
        trans, begins, closes = (x.to(labels.device) for x in bioes_allowed(self.num_types))
        ok = begins[labels[..., 0]]
        ok &= (trans[labels[..., :-1], labels[..., 1:]] | ~real[..., 1:]).all(-1)
        last = labels.gather(2, (self.word_lengths - 1).view(batch, 1, 1).expand(batch, k, 1)).squeeze(2)
        ok &= closes[last]
        kind, etype = (labels - 1) % 4, (labels - 1).div(4, rounding_mode="floor")
        pos = torch.arange(size, device=labels.device).expand_as(labels)
        opening = (labels > 0) & ((kind == B_) | (kind == S_))
        start = torch.where(opening, pos, torch.zeros_like(pos)).cummax(2).values
        closing = (labels > 0) & ((kind == E_) | (kind == S_)) & real
        span = self.parts["span"].unsqueeze(1).expand(-1, k, -1, -1, -1)
        picked = span[torch.arange(batch, device=labels.device)[:, None, None],
                      torch.arange(k, device=labels.device)[None, :, None], start, pos,
                      etype.clamp(min=0)]
        total = torch.where(closing, picked, torch.zeros_like(picked)).sum(-1)
        total = torch.where(ok, total, torch.full_like(total, NEG_INF))
        return total if y.dim() == 3 else total[:, 0]

    def argmax(self) -> Tensor:
        """The best span set as BIOES labels [B, L] (semi-Markov Viterbi = ``kbest(1)``)."""
        return self.kbest(1)[0][:, 0]

    @fp32
    @torch.no_grad()
    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The exact k best span sets, BIOES [B, k, L] (0 at padding and surplus rows), and their
        log-probs [B, k] (-inf for surplus rows): k-best semi-Markov Viterbi, each prefix keeping
        its k best segmentations (a segmentation has one derivation, so these are exact)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        span = self.parts["span"]
        batch, size, _, num_types = span.shape
        best = [span.new_full((batch, k), NEG_INF)]
        best[0][:, 0] = 0.0
        back = []
        for j in range(1, size + 1):
            prev = torch.stack(best, 1)                                              # [B, j, k]
            cand = (prev[:, :, None, :] + span[:, :j, j - 1, :, None]).flatten(1)    # (s, e, rank)
            cand = torch.cat([best[-1], cand], 1)                                    # O first
            values, index = cand.topk(k, 1)
            best.append(values)
            back.append(index)
        scores = torch.stack(best, 1).gather(1, self.word_lengths.view(batch, 1, 1).expand(batch, 1, k))[:, 0]
        labels = torch.zeros((batch, k, size), dtype=torch.long)
        back_np = torch.stack(back, 1).cpu().numpy()                                  # [B, L, k]
        finite = torch.isfinite(scores).cpu().numpy()
        for row, n in enumerate(self.word_lengths.tolist()):
            for rank in range(k):
                if finite[row, rank]:
                    labels[row, rank] = torch.from_numpy(_backtrack(back_np[row], n, rank, k, num_types, size))
        return labels.to(span.device), scores - self.log_partition.detach().unsqueeze(1)

    def store_marginals(self) -> dict[str, Tensor]:
        """The span marginals and the BIOES marginals a word-level (case 4) student is distilled on."""
        return {"span": self.marginals()["span"], "bioes": self.bioes_marginals()}


def _backtrack(back: np.ndarray, n: int, rank: int, k: int, num_types: int, size: int) -> np.ndarray:
    """BIOES labels [size] of derivation ``rank`` of the first n words (back [L, k] flat indices:
    < k = an O word from that rank, else (start, type, rank) of the span ending there)."""
    labels = np.zeros(size, dtype=np.int64)
    j = n
    while j > 0:
        flat = int(back[j - 1, rank])
        if flat < k:
            j, rank = j - 1, flat
            continue
        start, rest = divmod(flat - k, num_types * k)
        etype, rank = divmod(rest, k)
        base = 1 + 4 * etype
        if start == j - 1:
            labels[start] = base + S_
        else:
            labels[start], labels[j - 1] = base + B_, base + E_
            labels[start + 1:j - 1] = base + I_
        j = start
    return labels
