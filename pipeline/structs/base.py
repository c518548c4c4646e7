"""The one interface every structured output distribution of structkd implements.

A ``Structure`` is a batch of B distributions P(y | x) proportional to exp(sum_u phi(u, x) / tau) over
the structures y of each sentence, factorized into named *parts* u (the interface of
pytorch-struct's ``StructDistribution`` and SuPar's ``structs``; our chain kernels stay, they
measure 10-4000x faster than torch-struct's semirings, bench/README.md). Everything the teacher
store keeps, every KD objective and every model's gold loss goes through these methods:

    parts                 {name: log-potential tensor} (tempered by tau, forbidden factors -inf)
    log_partition         [B] log Z, lazy and cached on the object (shared by every loss of a step)
    log_marginals(*names) {name: log marginal}, same names as ``parts`` (cached per name set)
    marginals(*names)     exp of ``log_marginals``; zero at padding and for impossible factors
    expected_score(m)     [B] sum_u m(u) phi(u) for marginals ``m`` keyed by part names (0 * -inf = 0)
    cross_entropy(m)      [B] log Z - expected_score(m): -sum_y P_m(y) log P(y) when ``m`` are the
                          exact marginals of a distribution P_m over the same factorization
    score(y), log_prob(y) [B] (or [B, K] for y with a K dimension)
    argmax()              the best structure; ``kbest(k)``: the k best and their log-probs
    summary(k)            the teacher quantities the store keeps (store/README.md)

Temperature: ``tau`` divides every potential (the tempered distribution); ``tempered(tau)`` is the
same potentials at another temperature (absolute, not compounded).
"""
from __future__ import annotations

from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor

ROUNDING = 8 * torch.finfo(torch.float32).eps


class Structure:
    """Base class; subclasses set ``kind`` and ``part_names`` and implement the abstract methods."""

    kind: ClassVar[str] = ""
    part_names: ClassVar[tuple[str, ...]] = ()
    # the marginals a teacher must give for ``cross_entropy`` (the store keeps these)
    target_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, mask: Tensor, tau: float = 1.0):
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.mask = mask.bool()
        self.tau = float(tau)
        self._log_marginals: dict[tuple[str, ...], dict[str, Tensor]] = {}

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(1)

    def init_args(self) -> dict:
        """The constructor arguments of this structure (``replace`` builds a new one from them)."""
        raise NotImplementedError

    def replace(self, **changes) -> Structure:
        """The same structure with some constructor arguments changed (nothing cached is shared)."""
        return type(self)(**{**self.init_args(), **changes})

    def to(self, device) -> Structure:
        """Every tensor argument (constraints included) moved to ``device``."""
        def move(x):
            if isinstance(x, Tensor):
                return x.to(device)
            if isinstance(x, tuple):
                return type(x)(*(move(v) for v in x))
            return x
        return self.replace(**{name: move(value) for name, value in self.init_args().items()})

    @property
    def parts(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def tempered(self, tau: float) -> Structure:
        """The same potentials at temperature ``tau`` (this object when ``tau`` is its own)."""
        return self if tau == self.tau else self.replace(tau=tau)

    @cached_property
    def log_partition(self) -> Tensor:
        return self._log_partition()

    def _log_partition(self) -> Tensor:
        raise NotImplementedError

    def log_marginals(self, *names: str) -> dict[str, Tensor]:
        names = tuple(names) or self.part_names
        unknown = sorted(set(names) - set(self.part_names))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no part(s) {unknown}; parts: {list(self.part_names)}")
        if names not in self._log_marginals:
            self._log_marginals[names] = self._compute_log_marginals(names)
        return self._log_marginals[names]

    def _compute_log_marginals(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        raise NotImplementedError

    def marginals(self, *names: str) -> dict[str, Tensor]:
        return {name: value.exp() for name, value in self.log_marginals(*names).items()}

    def expected_score(self, marginals: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def cross_entropy(self, marginals: dict[str, Tensor]) -> Tensor:
        """Factorized structural KD (structural KD slides): log Z - sum_u P_t(u | x) phi(u, x)."""
        return self.log_partition - self.expected_score(marginals)

    def score(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def log_prob(self, y: Tensor) -> Tensor:
        """log P(y | x) [B] for y [B, ...] or [B, K] for y [B, K, ...] (one batched scoring call)."""
        log_z = self.log_partition
        score = self.score(y)
        return score - (log_z.unsqueeze(1) if score.dim() == 2 else log_z)

    def argmax(self) -> Tensor:
        raise NotImplementedError

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def store_marginals(self) -> dict[str, Tensor]:
        """The marginals the store keeps for this structure (the chain's node / edge)."""
        return self.marginals()

    def summary(self, k: int, *, with_marginals: bool = True) -> dict[str, Tensor]:
        """What the store keeps of a teacher: ``log_z`` [B], ``viterbi``, ``kbest_paths`` [B, k, ...],
        ``kbest_logprob`` [B, k] (true log-probs, -inf for surplus rows), ``residual_mass`` [B], and
        with ``with_marginals`` the ``store_marginals`` (float32, zero at padding)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out = {"log_z": self.log_partition.float()}
        if with_marginals:
            out.update(self.store_marginals())
        out["viterbi"] = self.argmax()
        out["kbest_paths"], logprob = self.kbest(k)
        out["kbest_logprob"] = logprob.float()
        out["residual_mass"] = residual_mass(logprob, out["log_z"], self.lengths)
        return out


def residual_mass(kbest_logprob: Tensor, log_z: Tensor, lengths: Tensor) -> Tensor:
    """``1 - sum(exp(kbest_logprob))`` per sentence [B] (float32, computed in float64 as
    ``-expm1(logsumexp)``, which keeps its precision when the k paths hold almost all the mass).

    A negative value can only come from float32 rounding of scores and log Z: it is clamped to 0 when
    smaller in size than the rounding bound ``ROUNDING * (L + 1) * (1 + |log Z|)`` and is an error
    otherwise (the k-best log-probs would sum to more than 1: a bug, never silently hidden).
    """
    mass = torch.logsumexp(kbest_logprob.double(), 1)
    residual = -torch.expm1(mass)
    bound = ROUNDING * (lengths.double() + 1) * (1 + log_z.double().abs())
    bad = (residual < -bound).nonzero().flatten()
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"batch row {row}: k-best probabilities sum to {float(mass[row].exp()):.9f} > 1 "
                         f"(log Z {float(log_z[row]):.6f}); the k-best log-probs are inconsistent")
    return residual.clamp(min=0.0).float()
