"""What every KD objective reads of the teacher: ``TeacherTargets``, one batch of the store's
teacher summaries (the student side is a ``pipeline.structs.Structure``).

Shapes follow docs/DESIGN.md: B sentences, L words (padded), T labels, K stored k-best paths,
R dependency relations, E span types. The marginal fields are named after the parts of the student
structures they are targets for (``Structure.target_names``): node / edge (chain, factorized),
arc / rel (trees and head selection, labeled or not), span (span sets).
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
    ``tau`` (a span teacher's node: its BIOES marginals, ``Spans.bioes_marginals``);
    kbest_paths [B, K, ...] long (best first) in the student's output format: label sequences
    [B, K, L], heads [B, K, L+1] (the teacher's k best trees or head vectors), labeled
    [B, K, 2, L+1] (heads; relations: ``LabeledArcs.kbest``); kbest_logprob [B, K] their true
    log-probabilities, -inf for surplus rows; residual_mass [B] (1 - mass of the K paths); log_z
    [B]; crf [B] bool (True: the sentence's teacher is a chain CRF, False: a factorized MaxEnt
    teacher; sequence teachers only).

    Dependency teachers (positions 0..L, 0 the root, as pipeline.structs.tree): arc [B, L+1, L+1]
    ``arc[b, h, d] = P_t(h -> d)`` at temperature ``tau``, zero at padding, in column 0 and on the
    diagonal (the store's d-major [L, L+1] rows transposed: ``arc[b, :, d] = stored[d - 1]``);
    rel [B, L+1, R] ``P_t(rel_d = l)`` at ``tau``, zero in row 0 and at padding. Span teachers:
    span [B, L, L, E] ``P_t((s, t, e) in the set)``.

    ``kinds`` the structure kinds of the batch's teachers as known on the host (pipeline.kd.base
    TEACHER_KINDS; the stream sets it so that no objective has to read ``crf`` back from a GPU).
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
    arc: Tensor | None = None
    rel: Tensor | None = None
    span: Tensor | None = None
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
