"""KD objectives by name: ``build_objective(name, **options)``; every one is called
``objective(student: Structure, teacher: TeacherTargets, hard) -> loss [B]``."""
from __future__ import annotations

import inspect

from pipeline.kd.base import Objective
from pipeline.kd.mixtures import MultiGrainedPosterior, PosteriorTopK, PosteriorTopWK
from pipeline.kd.sequence import MultiGrained, TopK, TopWK
from pipeline.kd.structural import Posterior, Structural, SubstructureL2
from pipeline.kd.token import EmissionKD, NoKD, TokenKD

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (
    NoKD, TokenKD, EmissionKD, TopK, TopWK, Posterior, PosteriorTopWK, PosteriorTopK, Structural,
    SubstructureL2, MultiGrained, MultiGrainedPosterior)}


def objective_options(name: str) -> list[str]:
    """The option names ``build_objective(name, ...)`` accepts."""
    return [p for p in inspect.signature(_lookup(name).__init__).parameters if p != "self"]


def build_objective(name: str, **options) -> Objective:
    """Instantiate the objective ``name`` with ``options``; unknown names / options are ValueErrors."""
    cls = _lookup(name)
    valid = objective_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"KD objective '{name}': unknown option(s) {unknown}; valid: {valid}")
    return cls(**options)


def _lookup(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown KD objective '{name}'; valid: {list(OBJECTIVES)}")
    return OBJECTIVES[name]
