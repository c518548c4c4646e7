"""Token-level objectives: no KD (gold-only baseline), Hinton KD on logits, emission distillation.

Both distil the student's emission scores (its ``node`` part before any transition), whatever its
structure: a per-word softmax of the raw emissions on each side.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.kd.base import TEACHER_KINDS, Objective, check_tau
from pipeline.structs import Structure
from pipeline.structs.ops import weighted


def _masked_sum(per_position: Tensor, mask: Tensor) -> Tensor:
    """Sum [B, L] over the real positions only (padding garbage, even inf/NaN, never counts)."""
    return per_position.masked_fill(~mask, 0.0).sum(1)


def _emissions(student: Structure) -> Tensor:
    """The student's raw emission scores [B, L, T] (float32, untempered)."""
    return student.emissions.float()


class NoKD(Objective):
    """Zero KD loss: training on the gold NLL only (the baseline)."""

    name = "none"
    structures = tuple(sorted(TEACHER_KINDS))

    def loss(self, student, teacher, hard):
        return student.mask.new_zeros(student.mask.shape[0], dtype=torch.float32)


class TokenKD(Objective):
    """Hinton et al. (2015) KD: tau^2 * sum_i KL(softmax(t_i / tau) || softmax(s_i / tau)).

    The teacher logits are its emissions; summed over the real positions of the sentence.
    """

    name = "token"
    needs = ("emissions",)

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_tau("token KD", tau)

    def loss(self, student, teacher, hard):
        log_q = (_emissions(student) / self.tau).log_softmax(-1)
        log_p = (teacher.emissions.float() / self.tau).log_softmax(-1)
        kl = weighted(log_p.exp(), log_p - log_q).sum(-1)
        return self.tau ** 2 * _masked_sum(kl, student.mask)


class EmissionKD(Objective):
    """Emission distillation, multilingual structure-level KD paper (Wang et al. 2020) eq. 3, with
    the temperature rule of pipeline.kd.base:

        L = -tau^2 sum_i sum_j softmax(t_em_i / tau)_j log softmax(s_em_i / tau)_j  (real positions)
    """

    name = "emission"
    needs = ("emissions",)

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_tau("emission KD", tau)

    def loss(self, student, teacher, hard):
        log_q = (_emissions(student) / self.tau).log_softmax(-1)
        p = (teacher.emissions.float() / self.tau).softmax(-1)
        return -self.tau ** 2 * _masked_sum(weighted(p, log_q).sum(-1), student.mask)
