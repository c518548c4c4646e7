"""The two inputs every KD objective takes: the student's potentials and the teacher's targets.

Shapes follow docs/DESIGN.md: B sentences, L words (padded), T labels, K stored k-best paths.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def _move(value: Any, device: torch.device | str) -> Any:
    """Move a tensor, or a tuple of tensors such as ``Constraints``, to ``device``."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.to(device)
    return type(value)(*(v.to(device) for v in value))


@dataclass
class StudentPotentials:
    """Potentials of the student's decoder for a batch.

    emissions [B, L, T]; transitions [T, T] (or [B, T, T]), None for a MaxEnt student;
    start / end [T] (or [B, T]) or None (zeros); constraints: ``pipeline.crf.Constraints`` or None.
    """

    emissions: Tensor
    transitions: Tensor | None = None
    start: Tensor | None = None
    end: Tensor | None = None
    constraints: Any = None
    # log Z per (mask, tau), shared by the KD objective and the gold NLL of one training step; not an
    # init field, so dataclasses.replace(student, emissions=...) starts a fresh (never stale) memo
    log_z_memo: list = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def is_crf(self) -> bool:
        return self.transitions is not None

    def to(self, device: torch.device | str) -> StudentPotentials:
        return StudentPotentials(**{f.name: _move(getattr(self, f.name), device)
                                    for f in dataclasses.fields(self) if f.name != "log_z_memo"})


@dataclass
class TeacherTargets:
    """Per-sentence teacher outputs of a batch; fields an objective does not need may be None.

    emissions [B, L, T]; transitions [B, T, T]; start / end [B, T]; node [B, L, T] and
    edge [B, L-1, T, T] marginals; kbest_paths [B, K, L] long (best first); kbest_logprob [B, K]
    true log-probabilities, -inf for surplus rows; residual_mass [B] (1 - mass of the K paths);
    log_z [B]; crf [B] bool (decoder type of each sentence's teacher).
    """

    emissions: Tensor | None = None
    transitions: Tensor | None = None
    start: Tensor | None = None
    end: Tensor | None = None
    node: Tensor | None = None
    edge: Tensor | None = None
    kbest_paths: Tensor | None = None
    kbest_logprob: Tensor | None = None
    residual_mass: Tensor | None = None
    log_z: Tensor | None = None
    crf: Tensor | None = None

    def to(self, device: torch.device | str) -> TeacherTargets:
        return TeacherTargets(**{f.name: _move(getattr(self, f.name), device)
                                 for f in dataclasses.fields(self)})

    def select(self, k: int) -> TeacherTargets:
        """The same targets with only the first ``k`` k-best paths (all of them if fewer are stored).

        ``residual_mass`` is recomputed as 1 - (mass of the kept paths) when k-best data is present.
        """
        if k < 1:
            raise ValueError(f"select(k): k must be >= 1, got {k}")
        if self.kbest_paths is None or self.kbest_logprob is None:
            return dataclasses.replace(self)
        logprob = self.kbest_logprob[:, :k]
        kept = torch.logsumexp(logprob.double(), dim=1)
        residual = (-torch.expm1(kept)).clamp(min=0.0).to(logprob.dtype)
        return dataclasses.replace(self, kbest_paths=self.kbest_paths[:, :k], kbest_logprob=logprob,
                                   residual_mass=residual)
