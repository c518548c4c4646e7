"""Marginal-based objectives: posterior distillation, factorized structural KD, sub-structure L2."""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline import crf
from pipeline.kd.base import Objective
from pipeline.kd.sequence import TopWK
from pipeline.kd.student import constrained_factors, log_partition, node_log_marginals, weighted
from pipeline.kd.types import StudentPotentials


def structural_kd(s_emissions: Tensor, s_transitions: Tensor | None, mask: Tensor, t_node: Tensor,
                  t_edge: Tensor | None, s_start: Tensor | None = None, s_end: Tensor | None = None,
                  *, constraints: crf.Constraints | None = None, tau: float = 1.0) -> Tensor:
    """Factorized structural KD (Wang et al. 2021, structural KD slides), per sentence [B]:

        L = -sum_{u in U_s(x)} P_t(u | x) phi_s(u, x) + log Z_s(x)

    over the CRF student's substructures: the start factor (P_t(y_1) = t_node[:, 0]), the emissions
    (t_node), the transitions (t_edge) and the end factor (t_node at the last real position). With
    t_node / t_edge the exact marginals of a CRF teacher this IS the cross entropy
    -sum_y P_t(y | x) log P_s(y | x); a MaxEnt teacher passes edge = outer product of its node
    marginals. Student potentials are divided by ``tau`` and its ``constraints`` make forbidden
    factors -inf; a factor the teacher gives zero mass contributes 0 (never 0 * -inf = NaN), one it
    gives positive mass makes the loss +inf (the exact value; never clamped). For a MaxEnt student
    (``s_transitions`` None) it is posterior distillation: -sum_i sum_j t_node_ij log softmax(s_i)_j.
    """
    mask = mask.bool()
    node = t_node.float().masked_fill(~mask.unsqueeze(-1), 0.0)
    if s_transitions is None:
        return -weighted(node, crf.maxent_log_probs(s_emissions, mask, tau=tau)).sum((1, 2))
    student = StudentPotentials(s_emissions, s_transitions, s_start, s_end, constraints)
    em, trans, start, end = constrained_factors(student, tau=tau)
    # Transitions are shared by all positions, so their expected count is summed over positions
    # first: a [B, T, T] product instead of a [B, L-1, T, T] one (1.5x faster fwd+bwd at T=37).
    pairs = t_edge.float().masked_fill(~mask[:, 1:, None, None], 0.0).sum(1)
    trans = trans if trans.dim() == 3 else trans.unsqueeze(0)
    first = node[:, 0]
    last = node[torch.arange(node.shape[0], device=node.device), mask.sum(1) - 1]
    expected = (weighted(node, em).sum((1, 2))
                + weighted(pairs, trans.expand_as(pairs)).sum((1, 2))
                + weighted(first, start.expand_as(first)).sum(1)
                + weighted(last, end.expand_as(last)).sum(1))
    return log_partition(student, mask, tau=tau) - expected


class Structural(Objective):
    """Structural KD (structural KD slides, factorized form); see :func:`structural_kd`.

    Works with a CRF teacher (edge = its edge marginals) or a MaxEnt teacher (edge = product of its
    node marginals, as stored); reduces to posterior distillation for a MaxEnt student.
    """

    name = "structural"
    needs = ("node",)

    def __init__(self, tau: float = 1.0):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"structural KD: tau must be > 0, got {tau}")
        self.tau = float(tau)

    def loss(self, student, teacher, mask, hard):
        if student.is_crf and teacher.edge is None:
            raise ValueError("KD objective 'structural' needs teacher field 'edge' for a CRF student")
        return structural_kd(student.emissions, student.transitions, mask, teacher.node,
                             teacher.edge, student.start, student.end,
                             constraints=student.constraints, tau=self.tau)


class Posterior(Objective):
    """Posterior distillation, multilingual paper eq. 8:

        L = -sum_i sum_j q_t(y_i = j | x) log q_s(y_i = j | x)

    q_t = the teacher's node marginals; q_s = the student's node marginals (CRF: forward-backward,
    differentiable; MaxEnt: softmax of its emissions).
    """

    name = "posterior"
    needs = ("node",)

    def loss(self, student, teacher, mask, hard):
        node = teacher.node.float().masked_fill(~mask.unsqueeze(-1), 0.0)
        return -weighted(node, node_log_marginals(student, mask)).sum((1, 2))


class PosteriorTopWK(Objective):
    """Average of posterior (eq. 8) and Top-WK (eq. 7) of the multilingual paper ("Pos.+Top-WK")."""

    name = "posterior_topwk"
    needs = ("node", "kbest_paths", "kbest_logprob")

    def __init__(self, k: int | None = None):
        super().__init__()
        self.posterior = Posterior()
        self.topwk = TopWK(k)

    def loss(self, student, teacher, mask, hard):
        return 0.5 * (self.posterior.loss(student, teacher, mask, hard)
                      + self.topwk.loss(student, teacher, mask, hard))


class SubstructureL2(Objective):
    """Efficient sub-structured KD (Lin et al. 2022) eq. 9 with the sub-structure score of eq. 3:

        L = sum_{u in U(x)} (s_student(u, x) - s_teacher(u, x))^2 / |U(x)|

    s(y_l, y_{l-1}, x_l) = t_{y_{l-1}, y_l} + e_l[y_l] under the factorization of eq. 4, with y_0 the
    start state: at position 1 the T units start[y] + e_1[y] (start = zeros when None), at each later
    real position l the T*T units t[y', y] + e_l[y]; |U(x)| = T + (n - 1) T^2 for n words. Eq. 4 has
    no end factor, so there is no end term. Raw potentials: no CRF forward algorithm. A unit the tag
    scheme forbids (teacher factor stored as -inf, or forbidden by a CRF student's constraints) is
    not in U(x), so |U(x)| counts the allowed units only (all of them without constraints). A MaxEnt
    student or teacher has zero transitions and start. Padding never counts.
    """

    name = "substructure_l2"
    needs = ("emissions",)

    def loss(self, student, teacher, mask, hard):
        s_em, t_em = student.emissions.float(), teacher.emissions.float()
        batch, _, num_labels = s_em.shape
        square, first_shape = (num_labels, num_labels), (num_labels,)
        t_trans = _per_sentence(teacher.transitions, square, s_em)
        t_start = _per_sentence(teacher.start, first_shape, s_em)
        trans_ok, start_ok = torch.isfinite(t_trans), torch.isfinite(t_start)
        if student.is_crf and student.constraints is not None:
            trans_ok = trans_ok & student.constraints.transitions.to(s_em.device, torch.bool)
            start_ok = start_ok & student.constraints.start.to(s_em.device, torch.bool)
        d_trans = torch.where(trans_ok, _per_sentence(student.transitions, square, s_em) - t_trans, 0.0)
        d_start = torch.where(start_ok, _per_sentence(student.start, first_shape, s_em) - t_start, 0.0)
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
