"""Knowledge-distillation objectives, schedules and the loss combination (see docs/DESIGN.md)."""
from pipeline.kd.combine import combine
from pipeline.kd.nll import nll
from pipeline.kd.registry import OBJECTIVES, build_objective, objective_options
from pipeline.kd.schedules import SCHEDULES, check_schedule, lambda_for
from pipeline.kd.structural import structural_kd
from pipeline.kd.types import TeacherTargets
from pipeline.structs.ops import log1mexp

__all__ = ["OBJECTIVES", "SCHEDULES", "TeacherTargets", "build_objective", "check_schedule", "combine",
           "lambda_for", "log1mexp", "nll", "objective_options", "structural_kd"]
