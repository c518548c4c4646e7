"""Schedules of lambda in  L = lambda * L_KD + (1 - lambda) * L_NLL  (epochs are 0-based).

``anneal`` takes its step in either unit, named so that nobody confuses them: ``rate``, the
fraction of lambda removed per epoch (multilingual paper, Alg. 1: 0.5 halves it), or ``percent``,
the official MultilangStructureKD code's unit (``lambda = 1 - epoch * percent / 100``). Both give
lambda = max(0, 1 - epoch * step).
"""
from __future__ import annotations

import inspect
from typing import Callable


def constant(epoch: int, n_epochs: int, *, lam: float = 1.0) -> float:
    """A fixed interpolation weight (multilingual paper, L = lambda L_KD + (1 - lambda) L_NLL)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"constant schedule: lam must be in [0, 1], got {lam}")
    return float(lam)


def anneal(epoch: int, n_epochs: int, *, rate: float | None = None, percent: float | None = None) -> float:
    """Multilingual paper Alg. 1: lambda = 1 in the first epoch; after each epoch, if lambda - step > 0
    then lambda = lambda - step, else lambda = 0; step = ``rate`` or ``percent`` / 100 (exactly one)."""
    if (rate is None) == (percent is None):
        raise ValueError("anneal schedule: give exactly one of rate (fraction per epoch) and "
                         f"percent (official code's percent per epoch), got rate={rate}, percent={percent}")
    step = rate if rate is not None else percent / 100.0
    if step < 0:
        raise ValueError(f"anneal schedule: the step must be >= 0, got rate={rate}, percent={percent}")
    lam = 1.0
    for _ in range(epoch):
        lam = lam - step if lam - step > 0 else 0.0
    return lam


def kd_then_nll(epoch: int, n_epochs: int) -> float:
    """Efficient sub-structured KD paper: lambda = 1, set to 0 only at the last epoch (the training
    loop always runs that NLL-only epoch, also when early stopping ends the KD epochs first)."""
    return 0.0 if epoch >= n_epochs - 1 else 1.0


def learned(epoch: int, n_epochs: int) -> float:
    """lambda = 1: the multigrained objective weighs its own parts (hard loss included, eq. 9)."""
    return 1.0


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant, "anneal": anneal, "kd_then_nll": kd_then_nll, "learned": learned}


def lambda_for(schedule: str, epoch: int, n_epochs: int, **opts: float) -> float:
    """lambda of ``schedule`` at 0-based ``epoch`` of ``n_epochs``; opts: lam (constant), rate or
    percent (anneal)."""
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


def check_schedule(schedule: str, objective_name: str, owns_hard_loss: bool) -> None:
    """Refuse the combinations that would silently change the loss:

    - ``learned`` (lambda = 1) drops the gold NLL: only an objective that contains the hard loss
      itself (multigrained with its ``hard`` part) may use it;
    - such an objective under any other schedule would count the hard NLL twice (its own eq. 7 and
      the (1 - lambda) NLL): use ``learned``, or drop ``hard`` from its parts.
    The gold-only baseline ``none`` has lambda 0 whatever the schedule.
    """
    if objective_name == "none":
        return
    if schedule == "learned" and not owns_hard_loss:
        raise ValueError(f"schedule 'learned' gives lambda = 1 and so drops the gold NLL; objective "
                         f"'{objective_name}' has no hard loss of its own: use it with multigrained "
                         "(parts including 'hard') or choose another schedule")
    if schedule != "learned" and owns_hard_loss:
        raise ValueError(f"objective '{objective_name}' contains the hard NLL (its 'hard' part): schedule "
                         f"'{schedule}' would add the gold NLL a second time; use schedule 'learned', "
                         "or drop 'hard' from its parts")
