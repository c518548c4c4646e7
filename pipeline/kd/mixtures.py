"""Objectives the papers report as mixtures of two others.

- ``posterior_topwk`` / ``posterior_topk``: "Pos.+Top-WK" and "Pos.+Top-K" of the multilingual
  paper (Tables 1-5): the mean of posterior (eq. 8) and weighted Top-K (eq. 7) / Top-K (eq. 6).
- ``multigrained_posterior``: L^u_Seq-all + L_Token-pos of the multi-grained paper (Table 2): the
  multi-grained loss (eq. 9) plus token-level posterior distillation (eq. 10 with CRF marginals).

``tau`` is the temperature of the posterior part (the k-best parts have none).
"""
from __future__ import annotations

from pipeline.kd.base import SEQUENCE_STRUCTURES, TREE_STRUCTURES, Objective
from pipeline.kd.sequence import MultiGrained, TopK, TopWK
from pipeline.kd.structural import Posterior


class _PosteriorMean(Objective):
    """0.5 * (posterior + a k-best objective)."""

    structures = SEQUENCE_STRUCTURES + TREE_STRUCTURES
    kbest_cls: type[Objective] = TopWK

    def __init__(self, k: int | None = None, tau: float = 1.0):
        super().__init__()
        self.posterior = Posterior(tau)
        self.kbest = self.kbest_cls(k)
        self.needs = tuple(dict.fromkeys(self.posterior.needs + self.kbest.needs))

    def needs_for(self, student_kind, teacher_kinds_=frozenset()):
        return tuple(dict.fromkeys(self.posterior.needs_for(student_kind, teacher_kinds_) + self.kbest.needs))

    def loss(self, student, teacher, hard):
        return 0.5 * (self.posterior.loss(student, teacher, hard) + self.kbest.loss(student, teacher, hard))


class PosteriorTopWK(_PosteriorMean):
    name = "posterior_topwk"
    kbest_cls = TopWK


class PosteriorTopK(_PosteriorMean):
    name = "posterior_topk"
    kbest_cls = TopK


class MultiGrainedPosterior(Objective):
    """multigrained (eq. 9, its options) + posterior (eq. 8 / eq. 10's L_Token-pos)."""

    name = "multigrained_posterior"
    structures = SEQUENCE_STRUCTURES + TREE_STRUCTURES

    def __init__(self, k: int | None = None, parts=MultiGrained.PARTS, learned: bool = True,
                 weights=None, tau: float = 1.0):
        super().__init__()
        self.multigrained = MultiGrained(k, parts, learned, weights)
        self.posterior = Posterior(tau)
        self.owns_hard_loss = self.multigrained.owns_hard_loss
        self.needs = tuple(dict.fromkeys(self.multigrained.needs + self.posterior.needs))

    @property
    def last_parts(self):
        return self.multigrained.last_parts

    def needs_for(self, student_kind, teacher_kinds_=frozenset()):
        return tuple(dict.fromkeys(self.multigrained.needs
                                   + self.posterior.needs_for(student_kind, teacher_kinds_)))

    def loss(self, student, teacher, hard):
        return self.multigrained.loss(student, teacher, hard) + self.posterior.loss(student, teacher, hard)
