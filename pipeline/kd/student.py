"""Student-side quantities the KD objectives share; the dynamic programs come from pipeline.crf.

A MaxEnt student's distribution is the product of per-position softmaxes; its ``constraints`` (if any)
are a decoding device and do not enter its log-probabilities here.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline import crf
from pipeline.kd.types import StudentPotentials

NEG_INF = float("-inf")


def weighted(p: Tensor, phi: Tensor) -> Tensor:
    """Elementwise ``p * phi`` with 0 wherever ``p == 0`` (so 0 * (-inf) = 0), NaN-free gradients."""
    pos = p > 0
    return torch.where(pos, p * torch.where(pos, phi, torch.zeros_like(phi)), torch.zeros_like(phi))


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate for x near 0 and very negative alike.

    Maechler (2012): log(-expm1(x)) for x > -log 2, else log1p(-exp(x)); log1mexp(0) = -inf.
    """
    near = x > -math.log(2.0)
    a = torch.log(-torch.expm1(torch.where(near, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near, torch.full_like(x, -1.0), x)))
    return torch.where(near, a, b)


def _memo(student: StudentPotentials, mask: Tensor, tau: float) -> Tensor | None:
    """The step's memoized log Z for this (mask object, tau), if any."""
    return next((log_z for m, t, log_z in student.log_z_memo if m is mask and t == tau), None)


def log_partition(student: StudentPotentials, mask: Tensor, *, tau: float = 1.0) -> Tensor:
    """log Z_s [B] of a CRF student (its constraints applied), computed once per (mask, tau) and
    shared by every loss term of a step (the KD objective and the gold NLL)."""
    log_z = _memo(student, mask, tau)
    if log_z is not None:
        return log_z
    log_z = crf.log_partition(student.emissions, student.transitions, mask, student.start,
                              student.end, constraints=student.constraints, tau=tau)
    student.log_z_memo.append((mask, tau, log_z))
    return log_z


def _per_path(x: Tensor | None, k: int, batched_dims: int) -> Tensor | None:
    """Repeat a per-sentence tensor once per path (shared [T, T] / [T] tensors stay as they are)."""
    if x is None or x.dim() < batched_dims:
        return x
    return x.repeat_interleave(k, 0)


def path_log_probs(student: StudentPotentials, paths: Tensor, mask: Tensor, *,
                   tau: float = 1.0) -> Tensor:
    """log p_s(y | x) [B, K] of the label sequences ``paths`` [B, K, L] (CRF or MaxEnt student);
    the K paths of every sentence are scored in one batched call."""
    batch, k, length = paths.shape
    flat_paths = paths.reshape(batch * k, length)
    emissions, flat_mask = _per_path(student.emissions, k, 3), _per_path(mask, k, 2)
    if student.is_crf:
        scores = crf.path_score(emissions, _per_path(student.transitions, k, 3), flat_paths,
                                flat_mask, _per_path(student.start, k, 2),
                                _per_path(student.end, k, 2), constraints=student.constraints,
                                tau=tau).view(batch, k)
        return scores - log_partition(student, mask, tau=tau).unsqueeze(1)
    return crf.maxent_path_score(emissions, flat_paths, flat_mask, tau=tau).view(batch, k)


def node_log_marginals(student: StudentPotentials, mask: Tensor, *, tau: float = 1.0) -> Tensor:
    """log q_s(y_i = j | x) [B, L, T]: CRF forward-backward marginals or the MaxEnt log-softmax.

    Zero at padding (callers weight it by teacher marginals that are masked there); -inf where a
    constrained CRF student gives a label zero probability.
    """
    if not student.is_crf:
        return crf.maxent_log_probs(student.emissions, mask, tau=tau)
    log_node, _, log_z = crf.forward_backward(student.emissions, student.transitions, mask, student.start,
                                              student.end, constraints=student.constraints, tau=tau,
                                              edges=False)
    if _memo(student, mask, tau) is None:
        student.log_z_memo.append((mask, tau, log_z))  # the step's gold NLL reuses this forward pass
    return log_node.masked_fill(~mask.bool().unsqueeze(-1), 0.0)


def constrained_factors(student: StudentPotentials, *, tau: float = 1.0
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CRF student factor potentials phi_s / tau in float32, forbidden factors at -inf.

    -> emissions [B, L, T], transitions [T, T] or [B, T, T], start and end [T] or [B, T] (zeros when
    None). These are exactly the potentials crf.log_partition normalizes.
    """
    em = student.emissions.float()
    num_labels = em.shape[-1]
    trans = student.transitions.float()
    start = em.new_zeros(num_labels) if student.start is None else student.start.float()
    end = em.new_zeros(num_labels) if student.end is None else student.end.float()
    if tau != 1.0:
        em, trans, start, end = em / tau, trans / tau, start / tau, end / tau
    if student.constraints is not None:
        allowed = student.constraints
        trans = trans.masked_fill(~allowed.transitions.to(em.device, torch.bool), NEG_INF)
        start = start.masked_fill(~allowed.start.to(em.device, torch.bool), NEG_INF)
        end = end.masked_fill(~allowed.end.to(em.device, torch.bool), NEG_INF)
    return em, trans, start, end

