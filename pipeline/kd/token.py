"""Token-level objectives: no KD (gold-only baseline), Hinton KD on logits, emission distillation."""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.kd.base import Objective
from pipeline.kd.student import weighted
from pipeline.kd.types import StudentPotentials, TeacherTargets


def _masked_sum(per_position: Tensor, mask: Tensor) -> Tensor:
    """Sum [B, L] over the real positions only (padding garbage, even inf/NaN, never counts)."""
    return per_position.masked_fill(~mask, 0.0).sum(1)


class NoKD(Objective):
    """Zero KD loss: training on the gold NLL only (the baseline)."""

    name = "none"

    def loss(self, student: StudentPotentials, teacher: TeacherTargets, mask: Tensor,
             hard: Tensor) -> Tensor:
        return student.emissions.new_zeros(mask.shape[0], dtype=torch.float32)


class TokenKD(Objective):
    """Hinton et al. (2015) KD: tau^2 * sum_i KL(softmax(t_i / tau) || softmax(s_i / tau)).

    The teacher logits are its emissions; summed over the real positions of the sentence.
    """

    name = "token"
    needs = ("emissions",)

    def __init__(self, tau: float = 1.0):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"token KD: tau must be > 0, got {tau}")
        self.tau = float(tau)

    def loss(self, student: StudentPotentials, teacher: TeacherTargets, mask: Tensor,
             hard: Tensor) -> Tensor:
        log_q = (student.emissions.float() / self.tau).log_softmax(-1)
        log_p = (teacher.emissions.float() / self.tau).log_softmax(-1)
        kl = weighted(log_p.exp(), log_p - log_q).sum(-1)
        return self.tau ** 2 * _masked_sum(kl, mask)


class EmissionKD(Objective):
    """Emission distillation, multilingual structure-level KD paper (Wang et al. 2020) eq. 3:

    L = -sum_i sum_j softmax(t_em)_ij log softmax(s_em)_ij over the real positions.
    """

    name = "emission"
    needs = ("emissions",)

    def loss(self, student: StudentPotentials, teacher: TeacherTargets, mask: Tensor,
             hard: Tensor) -> Tensor:
        log_q = student.emissions.float().log_softmax(-1)
        p = teacher.emissions.float().softmax(-1)
        return -_masked_sum(weighted(p, log_q).sum(-1), mask)
