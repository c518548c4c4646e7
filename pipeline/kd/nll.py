"""Gold negative log-likelihood of the student, the (1 - lambda) side of every KD schedule."""
from __future__ import annotations

from torch import Tensor

from pipeline.kd.student import path_log_probs
from pipeline.kd.types import StudentPotentials


def nll(student: StudentPotentials, tags: Tensor, mask: Tensor) -> Tensor:
    """-log p_s(tags | x) per sentence [B] (multilingual paper, L_NLL of sec. 2.1).

    CRF student: log Z - score(tags) (constraints applied: a forbidden gold path costs +inf).
    MaxEnt student: -sum_i log softmax(emissions_i)[tags_i] (eq. 2).
    """
    return -path_log_probs(student, tags.unsqueeze(1), mask)[:, 0]
