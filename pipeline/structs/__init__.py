"""Structured output distributions (see base.py): one interface, one class per structure kind."""
from pipeline.structs.base import ROUNDING, Structure, residual_mass
from pipeline.structs.chain import ChainCRF
from pipeline.structs.factorized import Factorized
from pipeline.structs.labeled import LabeledArcs
from pipeline.structs.second_order import mean_field_heads
from pipeline.structs.spans import Spans
from pipeline.structs.tree import ArcLabels, DependencyCRF, HeadSelection

# kind -> class; a LabeledArcs' kind is "labeled_" + the kind of its arc structure
STRUCTURES: dict[str, type[Structure]] = {
    **{cls.kind: cls for cls in (ChainCRF, Factorized, DependencyCRF, HeadSelection, Spans)},
    **{f"labeled_{arcs.kind}": LabeledArcs for arcs in (DependencyCRF, HeadSelection)}}

__all__ = ["ROUNDING", "STRUCTURES", "ArcLabels", "ChainCRF", "DependencyCRF", "Factorized", "HeadSelection",
           "LabeledArcs", "Spans", "Structure", "mean_field_heads", "residual_mass"]
