"""``LabeledArcs``: labeled dependency structures (the biaffine parser, Dozat & Manning 2017).

    P(heads, rels | x) = P_arcs(heads | x) prod_d P(rel_d | head_d -> d)

``arcs`` is any first-order arc structure of pipeline.structs.tree (``DependencyCRF``: trees,
``HeadSelection``: a softmax per word) and ``labels`` an ``ArcLabels`` (the relation classifier,
locally normalized per arc), so log Z = the arcs' log Z. ``kind`` = ``"labeled_" + arcs.kind``.

Outputs y: [B, 2, L+1] long (row 0 the heads, row 1 the relation ids; position 0 and padding
unused, 0 in every output) or [B, K, 2, L+1]. Indexing as in tree.py (0 = the root).

Parts: ``arc`` [B, L+1, L+1] (the arcs' part) and ``rel`` [B, L+1, L+1, R] = log P(l | h -> d)
(-inf for impossible arcs). Marginals: ``arc`` (the arcs') and ``rel`` [B, L+1, R] =
P(rel_d = l | x) = sum_h P(h -> d) P(l | h -> d) (zero at position 0 and padding): the relation
part summed over heads, the quantity a teacher stores (issue 17, store: label marginals [L, R]).

``expected_score`` / ``cross_entropy`` take teacher marginals {"arc" [B, L+1, L+1], "rel"
[B, L+1, R]} and use the factorization of the structural KD slides, case 1b,
P_t(h, l | d) = P_t(h | d) P_t(l | d):

    cross_entropy(m) = log Z - sum_{h,d} m_arc[h, d] arc[h, d]
                             - sum_{h,d,l} m_arc[h, d] m_rel[d, l] log P(l | h -> d)

which is exactly -sum_y Q(y) log P(y) for Q(heads, rels) = P_t(heads) prod_d m_rel[d, rels_d]:
the teacher's cross entropy whenever its relation distribution does not depend on the head
(P_t(l | h -> d) = P_t(l | d) for every h with P_t(h -> d) > 0), an approximation otherwise.

Temperature ``tau`` divides every score: the arc scores and the relation logits (P(l | h -> d) =
softmax(label scores / tau), still locally normalized).
"""
from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF
from pipeline.structs.base import Structure
from pipeline.structs.eisner import logsumexp
from pipeline.structs.ops import weighted
from pipeline.structs.tree import ArcLabels


class LabeledArcs(Structure):
    """Labeled trees (or head vectors) over ``arcs`` with the relation classifier ``labels``."""

    kind = "labeled"
    part_names = ("arc", "rel")
    target_names = ("arc", "rel")

    def __init__(self, arcs: Structure, labels: ArcLabels, tau: float | None = None):
        tau = arcs.tau if tau is None else float(tau)
        if labels.scores.shape[1] != arcs.scores.shape[1] or not torch.equal(labels.lengths, arcs.word_lengths):
            raise ValueError(f"label scores {tuple(labels.scores.shape)} / lengths do not match the arcs' "
                             f"{tuple(arcs.scores.shape)}")
        arcs = arcs.tempered(tau)
        super().__init__(arcs.mask, tau)
        self.arcs = arcs
        self.labels = labels if labels.tau == tau else ArcLabels(labels.scores, labels.lengths, tau)
        self.kind = "labeled_" + arcs.kind

    def init_args(self) -> dict:
        return {"arcs": self.arcs, "labels": self.labels, "tau": self.tau}

    def to(self, device) -> LabeledArcs:
        labels = ArcLabels(self.labels.scores.to(device), self.labels.lengths.to(device), self.tau)
        return LabeledArcs(self.arcs.to(device), labels, self.tau)

    @property
    def num_labels(self) -> int:
        return self.labels.scores.shape[-1]

    @cached_property
    def parts(self) -> dict[str, Tensor]:
        return {"arc": self.arcs.parts["arc"], "rel": self.labels.log_probs}

    def _log_partition(self) -> Tensor:
        return self.arcs.log_partition

    def _compute_log_marginals(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        """log P(h -> d) and log P(rel_d = l) = logsumexp_h(log P(h -> d) + log P(l | h -> d))."""
        log_arc = self.arcs.log_marginals("arc")["arc"]
        out = {"arc": log_arc}
        if "rel" in names:
            out["rel"] = logsumexp(log_arc.unsqueeze(-1) + self.labels.log_probs, 1)
        return {name: out[name] for name in names}

    def expected_score(self, marginals: dict[str, Tensor]) -> Tensor:
        """[B] sum m_arc * arc + sum m_arc[h, d] m_rel[d, l] log P(l | h -> d) (the factorization of
        the module docstring; 0 * -inf = 0; marginals outside the possible arcs ignored)."""
        missing = sorted(set(self.target_names) - set(marginals))
        if missing:
            raise ValueError(f"LabeledArcs.expected_score needs the marginals {missing}")
        arc = marginals["arc"].float().masked_fill(~self.labels.allowed, 0.0)
        joint = arc.unsqueeze(-1) * marginals["rel"].float().unsqueeze(1)
        rel = weighted(joint, self.labels.log_probs).sum((1, 2, 3))
        return self.arcs.expected_score({"arc": arc}) + rel

    def _split(self, y: Tensor) -> tuple[Tensor, Tensor]:
        size = self.arcs.scores.shape[1]
        if y.dim() not in (3, 4) or y.shape[-2:] != (2, size):
            raise ValueError(f"labeled trees must be [B, 2, {size}] or [B, K, 2, {size}], got {tuple(y.shape)}")
        heads, rels = y.long().unbind(-2)
        pos = torch.arange(size, device=y.device)
        real = (pos >= 1) & (pos <= self.arcs.word_lengths.unsqueeze(1))
        real = real if heads.dim() == 2 else real.unsqueeze(1).expand_as(heads)
        if bool(((rels < 0) | (rels >= self.num_labels))[real].any()):
            raise ValueError(f"relation ids must be in 0..{self.num_labels - 1}")
        return heads, rels

    def score(self, y: Tensor) -> Tensor:
        """arcs.score(heads) + sum_d log P(rel_d | head_d -> d): [B] or [B, K] (-inf where the
        heads are not an output of ``arcs``)."""
        heads, rels = self._split(y)
        return self.arcs.score(heads) + self.labels.log_prob(heads, rels)

    def argmax(self) -> Tensor:
        """The most probable labeled output [B, 2, L+1]: each arc's best relation does not depend
        on the other arcs, so it is the arcs' argmax under arc + max_l log P(l | h -> d) with those
        relations (exact; ``kbest(1)``)."""
        return self.kbest(1)[0][:, 0]

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The k outputs of the arcs with the highest score under arc + max_l log P(l | h -> d),
        each with its most probable relations: [B, k, 2, L+1] and their true log-probs [B, k]
        (-inf, zeros for surplus rows). The first is the exact best labeled output, but these are
        NOT the k best labeled outputs (the best tree with a second-best relation on one arc may be
        more probable than the next tree): k distinct labeled outputs, the best labeling of each of
        the k best trees, so ``residual_mass`` is the mass outside exactly these k."""
        best = self.labels.log_probs.detach().amax(-1)
        relabeled = self.arcs.replace(scores=self.parts["arc"].detach() + best, tau=1.0)
        heads, logprob = relabeled.kbest(k)
        found = torch.isfinite(logprob)
        y = torch.stack([heads, self.labels.best(heads)], -2).masked_fill(~found[..., None, None], 0)
        with torch.no_grad():
            true = self.log_prob(y)
        return y, torch.where(found, true, torch.full_like(true, NEG_INF))


__all__ = ["LabeledArcs"]
