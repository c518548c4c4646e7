"""What every KD objective reads of the teacher: ``TeacherTargets``, one batch of the store's
teacher summaries (the student side is a ``pipeline.structs.Structure``).

Shapes follow docs/DESIGN.md: B sentences, L words (padded), T labels, K stored k-best paths.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class TeacherTargets:
    """Per-sentence teacher outputs of a batch; fields an objective does not need may be None.

    emissions [B, L, T]; transitions [B, T, T]; start / end [B, T] (the teacher's factors, -inf
    where its scheme forbids them); node [B, L, T] and edge [B, L-1, T, T] marginals at temperature
    ``tau``; kbest_paths [B, K, L] long (best first); kbest_logprob [B, K] true log-probabilities,
    -inf for surplus rows; residual_mass [B] (1 - mass of the K paths); log_z [B]; crf [B] bool
    (True: the sentence's teacher is a chain CRF, False: a factorized MaxEnt teacher); ``kinds``
    the structure kinds of the batch's teachers as known on the host ({"chain", "factorized"}; the
    stream sets it so that no objective has to read ``crf`` back from a GPU).
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
    tau: float = 1.0
    kinds: frozenset = frozenset()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TeacherTargets:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def map(self, fn) -> TeacherTargets:
        """``fn`` applied to every tensor field (None and ``tau`` stay as they are)."""
        return TeacherTargets(**{f.name: _apply(fn, getattr(self, f.name)) for f in dataclasses.fields(self)})

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


def _apply(fn, value: Any) -> Any:
    if value is None or isinstance(value, (int, float, frozenset)):
        return value
    return fn(value)
