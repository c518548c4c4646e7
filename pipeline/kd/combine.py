"""The one place where KD and gold losses are interpolated, reduced and normalized."""
from __future__ import annotations

import torch
from torch import Tensor

NORMALIZATIONS = ("sentence", "token")


def combine(kd: Tensor | None, nll: Tensor | None, lam: float | Tensor, mask: Tensor,
            normalize: str = "sentence") -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar training loss from per-sentence losses [B]: reduce(lam * kd + (1 - lam) * nll).

    ``lam``: a float, or per-sentence weights [B] (``distill.unlabeled.lam`` on the rows without
    gold). ``sentence``: mean over sentences; ``token``: sum / number of real tokens in ``mask``
    [B, L]. A term whose weight is 0 (on every row) is skipped (it may be None), and an inf in a
    row of weight 0 cannot turn into NaN. Returns (loss, parts) where parts holds the detached
    reduced ``kd``, ``nll`` (unweighted), ``lambda`` (its mean over rows), ``loss``.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization '{normalize}'; valid: {list(NORMALIZATIONS)}")
    rows = isinstance(lam, Tensor)
    if rows and lam.shape != (mask.shape[0],):
        raise ValueError(f"per-sentence lambda must be [B] = [{mask.shape[0]}], got {tuple(lam.shape)}")
    low, high = (float(lam.min()), float(lam.max())) if rows else (lam, lam)
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    weights = (lam.float(), 1.0 - lam.float()) if rows else (float(lam), 1.0 - lam)
    terms = [(weights[0], kd, "kd"), (weights[1], nll, "nll")]

    def active(weight) -> bool:
        return bool((weight > 0).any()) if rows else weight > 0

    if any(active(weight) and value is None for weight, value, _ in terms):
        raise ValueError(f"combine: a term with nonzero weight is None (lambda={lam})")
    denom = mask.shape[0] if normalize == "sentence" else mask.bool().sum()

    def reduce(x: Tensor) -> Tensor:
        return x.float().sum() / denom

    def weighted(weight, x: Tensor) -> Tensor:
        return torch.where(weight > 0, weight * x.float(), 0.0) if rows else weight * x.float()

    parts = {name: reduce(value).detach() for _, value, name in terms if value is not None}
    loss = sum(reduce(weighted(weight, value)) for weight, value, _ in terms if active(weight))
    parts["lambda"] = lam.float().mean().detach() if rows else torch.tensor(float(lam))
    parts["loss"] = loss.detach()
    return loss, parts
