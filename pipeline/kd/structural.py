"""Marginal-based objectives: posterior distillation, factorized structural KD, sub-structure L2.

Structural KD and posterior distillation cover sequence students (chain, factorized), dependency
students (tree, heads, labeled_tree, labeled_heads: pipeline.structs.tree / labeled) and, for
structural KD, span-set students; the teacher's marginals are the TeacherTargets fields named by
the student's ``target_names`` (node / edge, arc / rel, span). The structural KD slides' cases:
1a chain -> chain; 1b / 2b a (second-order) graph-based parser -> a tagger whose labels encode
(head, relation): the stream maps P_t(h_i | x) P_t(l_i | x) onto the tagger's labels as ``node``;
tree -> tree (exact: ``DependencyCRF.cross_entropy``; labeled students through the case-1b
factorization, ``LabeledArcs``); 4 a span teacher -> a BIOES MaxEnt student, whose ``node``
targets are the teacher's BIOES marginals (``Spans.bioes_marginals``). A head-selection teacher
meeting a tree student gives its per-word softmaxes as ``arc``: the slides' factorized loss
log Z_s - sum_{h,d} P_t(h -> d) phi_s(h -> d), the cross entropy of every tree distribution with
those arc marginals when one exists (the product of softmaxes itself puts mass on non-trees).

Teacher marginals meet the student's structure in ``teacher_marginals``: the store's marginals,
except where a factorized (MaxEnt) teacher meets a constrained chain student (slide scenario 3,
e.g. zero-shot cross-lingual): the product of the teacher's softmaxes puts mass on label sequences
the student's scheme forbids, where the student's log-probability is -inf, so the cross entropy is
+inf. The teacher's distribution is then taken restricted to the sequences the student allows,
P_t(y | x, y allowed) = prod_i P_t(y_i | x) [y allowed] / Z_allowed, whose exact node and edge
marginals come from forward-backward over the teacher's log-softmax scores with the student's
constraints (``Factorized.restricted``). Unconstrained students keep the product marginals (the
cross entropy against the product distribution is finite and exact).
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.kd.base import SEQUENCE_STRUCTURES, TREE_STRUCTURES, Objective, check_tau, teacher_kinds
from pipeline.kd.types import TeacherTargets
from pipeline.potentials import Constraints
from pipeline.structs import STRUCTURES, ChainCRF, Factorized, Structure
from pipeline.structs.ops import weighted


def restricts(student_kind: str, teacher_kinds_: frozenset[str]) -> bool:
    """Whether teacher marginals may need the restricted distribution (then teacher emissions
    are needed too): a chain student with a factorized teacher in the batch."""
    return student_kind == "chain" and "factorized" in teacher_kinds_


def teacher_marginals(student: Structure, teacher: TeacherTargets, names: tuple[str, ...]) -> dict[str, Tensor]:
    """The teacher's marginals ``names`` for ``student`` (see the module docstring), at the
    student's temperature, which must be the temperature of the teacher's targets."""
    if abs(teacher.tau - student.tau) > 1e-12:
        raise ValueError(f"teacher marginals are at temperature {teacher.tau}, the objective at "
                         f"{student.tau}: the stream must compute them at the distillation tau")
    out = {name: getattr(teacher, name) for name in names}
    constraints = getattr(student, "constraints", None)
    if constraints is None or not restricts(student.kind, teacher_kinds(teacher)):
        return out
    with torch.no_grad():
        exact = restricted_marginals(teacher.emissions, student.mask, constraints, student.tau, names)
    if teacher_kinds(teacher) == {"factorized"} or teacher.crf is None:
        return exact
    for name in names:
        rows = (~teacher.crf.bool()).view(-1, *[1] * (exact[name].dim() - 1))
        out[name] = torch.where(rows, exact[name], out[name].float())
    return out


def restricted_marginals(emissions: Tensor, mask: Tensor, constraints: Constraints, tau: float,
                         names: tuple[str, ...]) -> dict[str, Tensor]:
    """Marginals ``names`` of a MaxEnt teacher's distribution restricted to ``constraints``."""
    return Factorized(emissions, mask, tau=tau).restricted(constraints).marginals(*names)


def structural_kd(s_emissions: Tensor, s_transitions: Tensor | None, mask: Tensor, t_node: Tensor,
                  t_edge: Tensor | None, s_start: Tensor | None = None, s_end: Tensor | None = None,
                  *, constraints: Constraints | None = None, tau: float = 1.0) -> Tensor:
    """Factorized structural KD (Wang et al. 2021, structural KD slides), per sentence [B]:

        L = -sum_{u in U_s(x)} P_t(u | x) phi_s(u, x) / tau + log Z_s(x; tau)

    over the student's substructures, i.e. ``Structure.cross_entropy``: for a chain CRF student the
    start factor (P_t(y_1) = t_node[:, 0]), the emissions (t_node), the transitions (t_edge) and
    the end factor (t_node at the last real position); with the exact marginals of a CRF teacher
    this IS -sum_y P_t(y | x) log P_s(y | x). For a MaxEnt student (``s_transitions`` None) it is
    posterior distillation. A factor the teacher gives zero mass contributes 0 (never 0 * -inf), one
    it gives positive mass while the student forbids it makes the loss +inf (exact, never clamped).
    This is the kernel; the ``structural`` objective adds the tau^2 scale (pipeline.kd.base).
    """
    if s_transitions is None:
        student: Structure = Factorized(s_emissions, mask, tau=tau)
        return student.cross_entropy({"node": t_node})
    student = ChainCRF(s_emissions, s_transitions, mask, s_start, s_end, constraints, tau)
    return student.cross_entropy({"node": t_node, "edge": t_edge})


class Structural(Objective):
    """Structural KD (structural KD slides, factorized form) for any student structure whose
    ``target_names`` marginals the teacher covers: tau^2 * (log Z_s - E_{P_t}[phi_s]) with teacher
    and student both at temperature tau (the official code's ``_calculate_xstruct_distillation_loss``).
    A MaxEnt student gets posterior distillation; a MaxEnt teacher's edges are the product of its
    node marginals (restricted for a constrained chain student, see ``teacher_marginals``)."""

    name = "structural"
    structures = SEQUENCE_STRUCTURES + TREE_STRUCTURES + ("spans",)
    needs = ("node",)

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_tau("structural KD", tau)

    def needs_for(self, student_kind, teacher_kinds_=frozenset()):
        extra = ("emissions",) if restricts(student_kind, teacher_kinds_) else ()
        return STRUCTURES[student_kind].target_names + extra

    def loss(self, student, teacher, hard):
        s = student.tempered(self.tau)
        return self.tau ** 2 * s.cross_entropy(teacher_marginals(s, teacher, s.target_names))


# the per-word marginals posterior distillation compares, by student kind
POSTERIORS = {"chain": ("node",), "factorized": ("node",), "tree": ("arc",), "heads": ("arc",),
              "labeled_tree": ("arc", "rel"), "labeled_heads": ("arc", "rel")}


def support(student: Structure, name: str) -> Tensor:
    """Where the per-word marginals ``name`` of ``student`` live (broadcastable bool): real words
    (node), possible arcs (arc: the finite arc potentials), real dependents (rel)."""
    if name == "node":
        return student.mask.unsqueeze(-1)
    arcs = torch.isfinite(student.parts["arc"])
    return arcs if name == "arc" else arcs.any(1).unsqueeze(-1)


class Posterior(Objective):
    """Posterior distillation, multilingual paper eq. 8, with the temperature rule:

        L = -tau^2 sum_i sum_j q_t(y_i = j | x) log q_s(y_i = j | x)

    over the per-word marginals of ``POSTERIORS``: labels (chain: forward-backward, differentiable;
    MaxEnt: softmax of its emissions); heads, q(y_d = h) = P(h -> d) (tree: matrix-tree / Eisner
    marginals by autograd, differentiable, as the official code's ``distill_posterior`` with the
    student's inside-outside marginals; heads: the per-word softmax); and for labeled students also
    relations, q(rel_d = l) = sum_h P(h -> d) P(l | h -> d). Teacher and student at temperature tau."""

    name = "posterior"
    structures = SEQUENCE_STRUCTURES + TREE_STRUCTURES
    needs = ("node",)

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_tau("posterior KD", tau)

    def needs_for(self, student_kind, teacher_kinds_=frozenset()):
        return POSTERIORS[student_kind] + (("emissions",) if restricts(student_kind, teacher_kinds_) else ())

    def loss(self, student, teacher, hard):
        s = student.tempered(self.tau)
        names = POSTERIORS[s.kind]
        targets = teacher_marginals(s, teacher, names)
        log_q = s.log_marginals(*names)
        total = 0.0
        for name in names:
            where = support(s, name)
            q_t = targets[name].float().masked_fill(~where, 0.0)
            total = total + weighted(q_t, log_q[name].masked_fill(~where, 0.0)).flatten(1).sum(1)
        return -self.tau ** 2 * total


class SubstructureL2(Objective):
    """Efficient sub-structured KD (Lin et al. 2022) eq. 9 with the sub-structure score of eq. 3:

        L = sum_{u in U(x)} (s_student(u, x) - s_teacher(u, x))^2 / |U(x)|

    s(y_l, y_{l-1}, x_l) = t_{y_{l-1}, y_l} + e_l[y_l] under the factorization of eq. 4, with y_0 the
    start state: at position 1 the T units start[y] + e_1[y] (start = zeros when None), at each later
    real position l the T*T units t[y', y] + e_l[y]; |U(x)| = T + (n - 1) T^2 for n words. Eq. 4 has
    no end factor, so there is no end term. Raw potentials (no temperature, no forward algorithm).
    A unit the tag scheme forbids (teacher factor stored as -inf, or forbidden by a chain student's
    constraints) is not in U(x), so |U(x)| counts the allowed units only. A MaxEnt student or
    teacher has zero transitions and start. Padding never counts.
    """

    name = "substructure_l2"
    needs = ("emissions",)

    def loss(self, student, teacher, hard):
        mask = student.mask
        s_em, t_em = student.emissions.float(), teacher.emissions.float()
        num_labels = s_em.shape[-1]
        square, first_shape = (num_labels, num_labels), (num_labels,)
        t_trans = _per_sentence(teacher.transitions, square, s_em)
        t_start = _per_sentence(teacher.start, first_shape, s_em)
        trans_ok, start_ok = torch.isfinite(t_trans), torch.isfinite(t_start)
        chain = student.kind == "chain"
        constraints = student.constraints
        if chain and constraints is not None:
            trans_ok = trans_ok & constraints.transitions.to(s_em.device, torch.bool)
            start_ok = start_ok & constraints.start.to(s_em.device, torch.bool)
        s_trans = _per_sentence(student.transitions if chain else None, square, s_em)
        s_start = _per_sentence(student.start if chain else None, first_shape, s_em)
        d_trans = torch.where(trans_ok, s_trans - t_trans, 0.0)
        d_start = torch.where(start_ok, s_start - t_start, 0.0)
        d_em = torch.where(mask.unsqueeze(-1), s_em - t_em, 0.0)
        first = torch.where(start_ok, d_start + d_em[:, 0], 0.0).square().sum(1)
        later = torch.where(trans_ok.unsqueeze(1), d_trans.unsqueeze(1) + d_em[:, 1:, None, :], 0.0)
        later = torch.where(mask[:, 1:], later.square().sum((2, 3)), 0.0).sum(1)
        units = start_ok.sum(1) + (mask.sum(1) - 1) * trans_ok.sum((1, 2))
        return (first + later) / units


def _per_sentence(x: Tensor | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``x`` as a float32 [B, *shape] tensor (zeros when None, broadcast when shared)."""
    value = like.new_zeros(shape) if x is None else x.float()
    return value.expand(like.shape[0], *shape)
