"""Knowledge-distillation objectives, schedules and the loss combination (see docs/DESIGN.md)."""
from pipeline.kd.combine import combine
from pipeline.kd.nll import nll
from pipeline.kd.registry import OBJECTIVES, build_objective, objective_options
from pipeline.kd.schedules import SCHEDULES, lambda_for
from pipeline.kd.structural import structural_kd
from pipeline.kd.student import log1mexp
from pipeline.kd.types import StudentPotentials, TeacherTargets

__all__ = ["OBJECTIVES", "SCHEDULES", "StudentPotentials", "TeacherTargets", "build_objective",
           "combine", "lambda_for", "log1mexp", "nll", "objective_options", "structural_kd"]
