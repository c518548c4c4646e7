"""Schedules of lambda in  L = lambda * L_KD + (1 - lambda) * L_NLL  (epochs are 0-based)."""
from __future__ import annotations

import inspect
from typing import Callable


def constant(epoch: int, n_epochs: int, *, lam: float = 1.0) -> float:
    """A fixed interpolation weight (multilingual paper, L = lambda L_KD + (1 - lambda) L_NLL)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"constant schedule: lam must be in [0, 1], got {lam}")
    return float(lam)


def anneal(epoch: int, n_epochs: int, *, rate: float = 0.1) -> float:
    """Multilingual paper Alg. 1: lambda = 1 in the first epoch; after each epoch, if lambda - rate > 0
    then lambda = lambda - rate, else lambda = 0."""
    if rate < 0:
        raise ValueError(f"anneal schedule: rate must be >= 0, got {rate}")
    lam = 1.0
    for _ in range(epoch):
        lam = lam - rate if lam - rate > 0 else 0.0
    return lam


def kd_then_nll(epoch: int, n_epochs: int) -> float:
    """Efficient sub-structured KD paper: lambda = 1, set to 0 only at the last epoch."""
    return 0.0 if epoch >= n_epochs - 1 else 1.0


def learned(epoch: int, n_epochs: int) -> float:
    """lambda = 1: the multigrained objective weighs its own parts (hard loss included, eq. 9)."""
    return 1.0


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant, "anneal": anneal, "kd_then_nll": kd_then_nll, "learned": learned}


def lambda_for(schedule: str, epoch: int, n_epochs: int, **opts: float) -> float:
    """lambda of ``schedule`` at 0-based ``epoch`` of ``n_epochs``; opts: lam (constant), rate (anneal)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown KD schedule '{schedule}'; valid: {sorted(SCHEDULES)}")
    if not 0 <= epoch < n_epochs:
        raise ValueError(f"epoch must be in [0, n_epochs={n_epochs}), got {epoch}")
    fn = SCHEDULES[schedule]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("epoch", "n_epochs")]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f"KD schedule '{schedule}': unknown option(s) {unknown}; valid: {allowed}")
    return fn(epoch, n_epochs, **opts)
