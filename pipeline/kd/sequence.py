"""Sequence-level objectives over the teacher's k-best label sequences.

Top-K and Top-WK: Wang et al. 2020, "Structure-Level Knowledge Distillation For Multilingual
Sequence Labeling" (multilingual paper), eqs. 6 and 7. Multi-grained: "Multi-Grained Knowledge
Distillation for Named Entity Recognition" (k-best paper), eqs. 4-9.

The definitions carry over to dependency students unchanged: the teacher's k best trees (head
vectors; labeled outputs for labeled students, ``LabeledArcs.kbest``) with their true teacher
probabilities, scored by the student's ``log_prob``. ``TeacherTargets.kbest_paths`` must be in the
student's output format (checked). A tree-constrained student (tree, labeled_tree) is refused a
head-selection teacher's k best: those head vectors need not be trees (log p_s = -inf).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline import crf
from pipeline.kd.base import SEQUENCE_STRUCTURES, TREE_STRUCTURES, Objective, teacher_kinds
from pipeline.kd.nll import nll
from pipeline.kd.types import TeacherTargets
from pipeline.structs import ROUNDING, Structure
from pipeline.structs.ops import NEG_INF, log1mexp, weighted

# Cap on log p_s_sum: the student's k-path log-mass is (score - log Z) in float32, whose rounding can
# reach or pass 0 when the k paths hold (almost) all of its mass; log(1 - p) stays finite below it.
LOG_MASS_CAP = -torch.finfo(torch.float32).eps


def _check_k(k: int | None) -> int | None:
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive int or None (all stored paths), got {k!r}")
    return k


def mass_resolution(student: Structure) -> Tensor:
    """[B] the float32 rounding bound of a student path log-prob ``score - log Z``:
    ``ROUNDING * (L + 1) * (1 + |log Z_s|)``, as for the teacher's residual mass
    (pipeline.structs.residual_mass); log Z is the one the path log-probs used (cached)."""
    return ROUNDING * (student.lengths + 1) * (1 + student.log_partition.detach().abs())


def kbest_log_probs(student: Structure, teacher: TeacherTargets,
                    k: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Student and teacher log-probs of the teacher's first k paths: (log p_s, log p_t, valid) [B, K].

    Surplus rows (teacher log-prob -inf) are invalid; both log-probs are -inf there (their paths,
    garbage or not, are never read).
    """
    check_kbest_format(student, teacher)
    if k is not None:
        teacher = teacher.select(k)
    log_pt = teacher.kbest_logprob.float()
    valid = torch.isfinite(log_pt)
    paths = teacher.kbest_paths
    log_ps = student.log_prob(paths.masked_fill(~valid.view(*valid.shape, *[1] * (paths.dim() - 2)), 0))
    neg_inf = torch.full_like(log_ps, NEG_INF)
    return torch.where(valid, log_ps, neg_inf), torch.where(valid, log_pt, neg_inf), valid


def check_kbest_format(student: Structure, teacher: TeacherTargets) -> None:
    """kbest_paths [B, K, 2, L+1] for labeled students, [B, K, ...] with one output row per path
    otherwise; no head-selection teacher's k best for a tree-constrained student."""
    labeled = student.kind.startswith("labeled_")
    if teacher.kbest_paths.dim() != (4 if labeled else 3):
        raise ValueError(f"k-best paths {tuple(teacher.kbest_paths.shape)} are not outputs of a '{student.kind}' "
                         f"student ({'[B, K, 2, L+1] heads and relations' if labeled else '[B, K, positions]'})")
    if student.kind in ("tree", "labeled_tree") and teacher_kinds(teacher) & {"heads", "labeled_heads"}:
        raise ValueError(f"a head-selection teacher's k best head vectors need not be trees: they cannot "
                         f"teach a '{student.kind}' student a k-best objective (use structural or posterior)")


class TopK(Objective):
    """Top-K distillation, multilingual paper eq. 6: L = -(1/k) sum_{y in T} log p_s(y | x).

    T = the teacher's k best paths (first ``k`` stored, all when None); surplus rows are excluded
    and k becomes the number of valid paths of the sentence.
    """

    name = "topk"
    structures = SEQUENCE_STRUCTURES + TREE_STRUCTURES
    needs = ("kbest_paths", "kbest_logprob")

    def __init__(self, k: int | None = None):
        super().__init__()
        self.k = _check_k(k)

    def loss(self, student, teacher, hard):
        log_ps, _, valid = kbest_log_probs(student, teacher, self.k)
        count = valid.sum(1).clamp(min=1)
        return -weighted(valid.float(), log_ps).sum(1) / count


class TopWK(Objective):
    """Weighted Top-K, multilingual paper eq. 7: L = -sum_{y in T} p'_t(y | x) log p_s(y | x),

    p'_t(y | x) = p_t(y | x) / sum_{y' in T} p_t(y' | x): the teacher's true path probabilities
    renormalized over its (valid) k best paths.
    """

    name = "topwk"
    structures = SEQUENCE_STRUCTURES + TREE_STRUCTURES
    needs = ("kbest_paths", "kbest_logprob")

    def __init__(self, k: int | None = None):
        super().__init__()
        self.k = _check_k(k)

    def loss(self, student, teacher, hard):
        log_ps, log_pt, _ = kbest_log_probs(student, teacher, self.k)
        weights = (log_pt - crf.logsumexp(log_pt, 1).unsqueeze(1)).exp()
        return -weighted(weights, log_ps).sum(1)


class MultiGrained(Objective):
    """Multi-grained k-best distillation (k-best paper), per sentence b:

    eq. 4 (ce):    -sum_j p_t_j log p_s_j - (1 - p_t_sum) log(1 - p_s_sum)
    eq. 6 (fuzzy): -p_t_sum log p_s_sum - (1 - p_t_sum) log(1 - p_s_sum)
    eq. 7 (hard):  -log P_s(y_hard | x)
    eq. 8/9:       loss_b = sum_i lambda_i L_i,b - 1/2 sum_i log lambda_i (learned=True), so the batch
                   mean is eq. 9; learned=False uses the fixed ``weights`` and no log term.

    p_t_j are the teacher's true path probabilities (not renormalized), p_t_sum / p_s_sum (eq. 5)
    the teacher / student mass of the teacher's k paths; p_s_sum = logsumexp of the student's path
    log-probs and log(1 - p) = log1mexp(log p). ``weights`` are the initial (learned) or fixed
    lambdas, one per part (default 1). ``last_parts`` holds the detached batch mean of each part and
    each lambda after a call, for logging.
    """

    name = "multigrained"
    structures = SEQUENCE_STRUCTURES + TREE_STRUCTURES
    PARTS = ("ce", "fuzzy", "hard")

    def __init__(self, k: int | None = None, parts: tuple[str, ...] | list[str] = PARTS,
                 learned: bool = True, weights: tuple[float, ...] | list[float] | None = None):
        super().__init__()
        self.k = _check_k(k)
        parts = tuple(parts)
        if not parts or len(set(parts)) != len(parts) or not set(parts) <= set(self.PARTS):
            raise ValueError(f"multigrained: parts must be distinct names from {self.PARTS}, "
                             f"got {parts}")
        weights = tuple(float(w) for w in (weights or [1.0] * len(parts)))
        if len(weights) != len(parts) or min(weights) <= 0:
            raise ValueError(f"multigrained: need one positive weight per part {parts}, got {weights}")
        self.parts = parts
        self.learned = bool(learned)
        log_lambda = torch.tensor([math.log(w) for w in weights])
        if self.learned:
            self.log_lambda = nn.Parameter(log_lambda)
        else:
            self.register_buffer("log_lambda", log_lambda)
        self.needs = ("kbest_paths", "kbest_logprob") if set(parts) - {"hard"} else ()
        self.owns_hard_loss = "hard" in parts
        self.last_parts: dict[str, Tensor] = {}

    def part_losses(self, student, teacher, hard) -> dict[str, Tensor]:
        """The unweighted per-sentence losses [B] of the selected parts."""
        values = {}
        if "hard" in self.parts:
            values["hard"] = nll(student, hard)
        if set(self.parts) & {"ce", "fuzzy"}:
            log_ps, log_pt, _ = kbest_log_probs(student, teacher, self.k)
            residual_t = (-torch.expm1(crf.logsumexp(log_pt, 1))).clamp(0.0, 1.0)
            log_ps_sum = crf.logsumexp(log_ps, 1)
            # Where the student's mass outside the k paths is below float32 resolution (e.g. the k
            # paths are all its allowed paths), the gradient of log(1 - p_s_sum) would be rounding
            # noise amplified by 1 / |log p_s_sum|: it is stopped there (the value is unchanged).
            resolved = log_ps_sum < -mass_resolution(student)
            capped = torch.where(resolved, log_ps_sum, log_ps_sum.detach().clamp(max=LOG_MASS_CAP))
            residual_term = -weighted(residual_t, log1mexp(capped))
            if "ce" in self.parts:
                values["ce"] = -weighted(log_pt.exp(), log_ps).sum(1) + residual_term
            if "fuzzy" in self.parts:
                values["fuzzy"] = -weighted(1.0 - residual_t, log_ps_sum) + residual_term
        return values

    def loss(self, student, teacher, hard):
        values = self.part_losses(student, teacher, hard)
        lam = self.log_lambda.exp()
        total = sum(lam[i] * values[p] for i, p in enumerate(self.parts))
        if self.learned:
            total = total - 0.5 * self.log_lambda.sum()
        self.last_parts = {p: values[p].detach().mean() for p in self.parts}
        self.last_parts.update({f"lambda_{p}": lam[i].detach() for i, p in enumerate(self.parts)})
        return total
