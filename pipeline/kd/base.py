"""Base class of every KD objective: ``objective(student, teacher, mask, hard) -> loss [B]``."""
from __future__ import annotations

from torch import Tensor, nn

from pipeline.kd.types import StudentPotentials, TeacherTargets


class Objective(nn.Module):
    """A per-sentence KD loss. Subclasses set ``name`` / ``needs`` and implement ``loss``.

    ``needs`` lists the TeacherTargets fields the objective reads; a missing one is a ValueError.
    """

    name: str = ""
    needs: tuple[str, ...] = ()

    def forward(self, student: StudentPotentials, teacher: TeacherTargets, mask: Tensor,
                hard: Tensor) -> Tensor:
        missing = [f for f in self.needs if getattr(teacher, f) is None]
        if missing:
            raise ValueError(f"KD objective '{self.name}' needs teacher field(s) {missing}")
        return self.loss(student, teacher, mask.bool(), hard)

    def loss(self, student: StudentPotentials, teacher: TeacherTargets, mask: Tensor,
             hard: Tensor) -> Tensor:
        raise NotImplementedError
