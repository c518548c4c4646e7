"""Gold negative log-likelihood of the student, the (1 - lambda) side of every KD schedule."""
from __future__ import annotations

from torch import Tensor

from pipeline.structs import Structure


def nll(student: Structure, tags: Tensor) -> Tensor:
    """-log p_s(tags | x) per sentence [B] (multilingual paper, L_NLL of sec. 2.1; eq. 2 for a
    MaxEnt student). A path the student's constraints forbid costs +inf (never clamped)."""
    return -student.log_prob(tags)
