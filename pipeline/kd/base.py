"""Base class of every KD objective: ``objective(student: Structure, teacher, hard) -> loss [B]``.

One signature for all (TextBrewer's registry): ``student`` is the student's ``Structure`` for the
batch (its mask inside), ``teacher`` the batch's ``TeacherTargets``, ``hard`` the gold output of a
labeled sentence or the teacher's top-1 of an unlabeled one, in the student's output format (what
its ``log_prob`` takes): [B, L] label ids (chain, factorized, spans as BIOES), heads [B, L+1]
(tree, heads) or [B, 2, L+1] heads and relations (labeled_tree, labeled_heads).

Temperature, the one rule: an objective built with ``tau`` compares the teacher's and the
student's distributions with every potential divided by tau and multiplies the loss by tau^2
(Hinton et al. 2015's gradient-scale correction, as the official StructuralKD code does for its
posterior and structural losses). The teacher's marginals must be at that same temperature
(``TeacherTargets.tau``; the stream computes them at the distillation tau): a mismatch is an
error, never silently ignored. Objectives without a temperature take no ``tau`` option.
"""
from __future__ import annotations

from torch import Tensor, nn

from pipeline.kd.types import TeacherTargets
from pipeline.structs import Structure

SEQUENCE_STRUCTURES = ("chain", "factorized")
TREE_STRUCTURES = ("tree", "heads", "labeled_tree", "labeled_heads")
# the structure kinds a teacher of the store can have (TeacherTargets.kinds)
TEACHER_KINDS = frozenset(SEQUENCE_STRUCTURES + TREE_STRUCTURES + ("spans",))


class Objective(nn.Module):
    """A per-sentence KD loss. Subclasses set ``name``, ``structures`` (the student structure kinds
    it is defined for), ``needs`` (TeacherTargets fields it reads; ``needs_for`` may refine them by
    the student's and the teachers' structure kinds) and implement ``loss``.

    ``owns_hard_loss``: the objective contains the gold / hard NLL itself (multigrained's eq. 7),
    so a schedule must not add another one (see pipeline.kd.schedules.check_schedule).
    """

    name: str = ""
    structures: tuple[str, ...] = SEQUENCE_STRUCTURES
    needs: tuple[str, ...] = ()
    owns_hard_loss: bool = False

    def needs_for(self, student_kind: str, teacher_kinds: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """The teacher fields read for a student of ``student_kind`` and teachers of ``teacher_kinds``
        (``TEACHER_KINDS``)."""
        return self.needs

    def forward(self, student: Structure, teacher: TeacherTargets, hard: Tensor) -> Tensor:
        if student.kind not in self.structures:
            raise ValueError(f"KD objective '{self.name}' is defined for {list(self.structures)} "
                             f"students, not '{student.kind}'")
        missing = [f for f in self.needs_for(student.kind, teacher_kinds(teacher))
                   if getattr(teacher, f) is None]
        if missing:
            raise ValueError(f"KD objective '{self.name}' needs teacher field(s) {missing}")
        return self.loss(student, teacher, hard)

    def loss(self, student: Structure, teacher: TeacherTargets, hard: Tensor) -> Tensor:
        raise NotImplementedError


def teacher_kinds(teacher: TeacherTargets) -> frozenset[str]:
    """Structure kinds of the batch's teachers: ``teacher.kinds`` (ValueError for a kind outside
    ``TEACHER_KINDS``), else read from ``teacher.crf`` (sequence teachers; a host sync on a GPU; the
    stream always sets ``kinds``), else empty."""
    unknown = sorted(set(teacher.kinds) - TEACHER_KINDS)
    if unknown:
        raise ValueError(f"unknown teacher structure kind(s) {unknown}; known: {sorted(TEACHER_KINDS)}")
    if teacher.kinds or teacher.crf is None:
        return teacher.kinds
    flags = set(teacher.crf.tolist())
    return frozenset({"chain"} if flags == {True} else {"factorized"} if flags == {False}
                     else {"chain", "factorized"})


def check_tau(name: str, tau: float) -> float:
    if not tau > 0:
        raise ValueError(f"{name}: tau must be > 0, got {tau}")
    return float(tau)
