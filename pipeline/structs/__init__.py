"""Structured output distributions (see base.py): one interface, one class per structure kind."""
from pipeline.structs.base import ROUNDING, Structure, residual_mass
from pipeline.structs.chain import ChainCRF
from pipeline.structs.factorized import Factorized

STRUCTURES: dict[str, type[Structure]] = {cls.kind: cls for cls in (ChainCRF, Factorized)}

__all__ = ["ROUNDING", "STRUCTURES", "ChainCRF", "Factorized", "Structure", "residual_mass"]
