"""Numerical helpers every structure and objective shares (one ``NEG_INF``: pipeline.potentials)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF

__all__ = ["NEG_INF", "log1mexp", "weighted"]


def weighted(p: Tensor, phi: Tensor) -> Tensor:
    """Elementwise ``p * phi`` with 0 wherever ``p == 0`` (so 0 * (-inf) = 0), NaN-free gradients.

    When ``p`` (a teacher's marginals) needs no gradient one ``where`` suffices: phi's gradient is
    p * where(pos, g, 0), finite; only p's own (phi * g) would be NaN at an unselected -inf."""
    pos = p > 0
    if not p.requires_grad:
        return torch.where(pos, p * phi, 0.0)
    return torch.where(pos, p * torch.where(pos, phi, torch.zeros_like(phi)), torch.zeros_like(phi))


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate for x near 0 and very negative alike.

    Maechler (2012): log(-expm1(x)) for x > -log 2, else log1p(-exp(x)); log1mexp(0) = -inf.
    """
    near = x > -math.log(2.0)
    a = torch.log(-torch.expm1(torch.where(near, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near, torch.full_like(x, -1.0), x)))
    return torch.where(near, a, b)
