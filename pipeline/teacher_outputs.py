"""The teacher quantities of one batch, computed from its potentials: what `annotate` stores.

Conventions (docs/DESIGN.md, store/README.md):

- CRF teacher: log Z by the forward algorithm; node / edge marginals by forward-backward; Viterbi;
  exact k-best with true log-probabilities ``score - log Z``; all at temperature ``tau``.
- MaxEnt teacher: node = softmax(emissions / tau); edge = outer product of neighbouring nodes;
  ``log Z = sum_i logsumexp(emissions_i / tau)`` (the partition function of the factorized model),
  so a path's log-prob ``score - log Z`` = the sum of its per-word log-softmax values. Viterbi is the
  argmax, or the most probable path the tag scheme allows when the teacher has constraints.
- Residual mass ``1 - sum_k p_k`` is computed as ``-expm1(logsumexp(logprob))`` (in float64), which
  keeps its precision when the k paths hold almost all the mass. A negative value can only come from
  float32 rounding of scores and log Z: it is clamped to 0 when smaller in size than a rounding bound
  (``ROUNDING * (L + 1) * (1 + |log Z|)``, L = sentence length) and is an error otherwise (the k-best
  log-probs would sum to more than 1: a bug in the dynamic programs, never silently hidden).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from pipeline import crf

ROUNDING = 8 * torch.finfo(torch.float32).eps


def one_thread_on_cpu(fn):
    """Run ``fn(potentials, ...)`` with one intra-op thread when the potentials are on the CPU: the
    dynamic programs are long chains of tiny [B, T, T] ops, for which thread hand-offs cost more than
    they save (measured on 2 loaded cores: a k=5 batch took 15-20x longer with 2 threads than 1)."""

    @functools.wraps(fn)
    def wrapper(potentials, *args, **kwargs):
        if potentials.emissions.device.type != "cpu":
            return fn(potentials, *args, **kwargs)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(potentials, *args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


def residual_mass(kbest_logprob: Tensor, log_z: Tensor, lengths: Tensor) -> Tensor:
    """``1 - sum(exp(kbest_logprob))`` per sentence [B] (float32), clamped only at rounding negatives."""
    mass = torch.logsumexp(kbest_logprob.double(), 1)
    residual = -torch.expm1(mass)
    bound = ROUNDING * (lengths.double() + 1) * (1 + log_z.double().abs())
    bad = (residual < -bound).nonzero().flatten()
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"batch row {row}: k-best probabilities sum to {float(mass[row].exp()):.9f} > 1 "
                         f"(log Z {float(log_z[row]):.6f}); the k-best log-probs are inconsistent")
    return residual.clamp(min=0.0).float()


def _maxent_viterbi(emissions: Tensor, mask: Tensor, constraints, tau: float) -> Tensor:
    if constraints is None:
        return emissions.float().argmax(-1).masked_fill(~mask, 0)
    return crf.maxent_kbest(emissions, mask, 1, constraints=constraints, tau=tau)[0][:, 0]


def _crf_args(potentials, mask: Tensor) -> tuple:
    if potentials.transitions is None:
        raise ValueError("a CRF teacher needs transitions (potentials.transitions is None)")
    return potentials.emissions.float(), potentials.transitions, mask, potentials.start, potentials.end


@one_thread_on_cpu
def log_partition(potentials, mask: Tensor, tau: float = 1.0, is_crf: bool = True) -> Tensor:
    """log Z [B] (float32) of the CRF, or of the factorized MaxEnt model (sum of per-word logsumexp)."""
    mask = mask.bool()
    if is_crf:
        return crf.log_partition(*_crf_args(potentials, mask), constraints=potentials.constraints, tau=tau)
    scaled = potentials.emissions.float() / tau
    return torch.logsumexp(scaled, -1).masked_fill(~mask, 0.0).sum(1)


@one_thread_on_cpu
def marginals(potentials, mask: Tensor, tau: float = 1.0, is_crf: bool = True, *,
              edges: bool = True) -> tuple[Tensor, Tensor | None]:
    """Node [B, L, T] and edge [B, L-1, T, T] marginals (float32, zero at padding); edge None
    without ``edges``."""
    mask = mask.bool()
    if is_crf:
        return crf.marginals(*_crf_args(potentials, mask), constraints=potentials.constraints, tau=tau,
                             edges=edges)
    return crf.maxent_marginals(potentials.emissions, mask, tau=tau, edges=edges)


@one_thread_on_cpu
def teacher_outputs(potentials, mask: Tensor, k: int, tau: float = 1.0, is_crf: bool = True, *,
                    with_marginals: bool = True) -> dict[str, Tensor]:
    """Batched teacher quantities from ``potentials`` (a ``StudentPotentials``) and ``mask`` [B, L].

    Returns float32 / long tensors on the input device: ``log_z`` [B], ``viterbi`` [B, L],
    ``kbest_paths`` [B, k, L], ``kbest_logprob`` [B, k] (true log-probs, -inf for surplus rows),
    ``residual_mass`` [B], and with ``with_marginals`` also ``node`` [B, L, T] and ``edge``
    [B, L-1, T, T].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    mask = mask.bool()
    constraints = potentials.constraints
    out = {"log_z": log_partition(potentials, mask, tau, is_crf)}
    if with_marginals:
        out["node"], out["edge"] = marginals(potentials, mask, tau, is_crf)
    if is_crf:
        args = _crf_args(potentials, mask)
        out["viterbi"] = crf.viterbi(*args, constraints=constraints, tau=tau)[0]
        paths, scores = crf.kbest(*args[:3], k, *args[3:], constraints=constraints, tau=tau)
        logprob = scores - out["log_z"].unsqueeze(1)
    else:
        emissions = potentials.emissions.float()
        out["viterbi"] = _maxent_viterbi(emissions, mask, constraints, tau)
        paths, logprob = crf.maxent_kbest(emissions, mask, k, constraints=constraints, tau=tau)
    out["kbest_paths"] = paths
    out["kbest_logprob"] = logprob.float()
    out["residual_mass"] = residual_mass(logprob, out["log_z"], mask.sum(1))
    return out
