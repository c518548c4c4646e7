"""The one place where KD and gold losses are interpolated, reduced and normalized."""
from __future__ import annotations

import torch
from torch import Tensor

NORMALIZATIONS = ("sentence", "token")


def combine(kd: Tensor | None, nll: Tensor | None, lam: float, mask: Tensor,
            normalize: str = "sentence") -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar training loss from per-sentence losses [B]: reduce(lam * kd + (1 - lam) * nll).

    ``sentence``: mean over sentences; ``token``: sum / number of real tokens in ``mask`` [B, L].
    A term whose weight is 0 is skipped (it may be None, and an inf in it cannot turn into NaN).
    Returns (loss, parts) where parts holds the detached reduced ``kd``, ``nll``, ``lambda``, ``loss``.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization '{normalize}'; valid: {list(NORMALIZATIONS)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    terms = [(lam, kd, "kd"), (1.0 - lam, nll, "nll")]
    if any(weight > 0 and value is None for weight, value, _ in terms):
        raise ValueError(f"combine: a term with nonzero weight is None (lambda={lam})")
    denom = mask.shape[0] if normalize == "sentence" else mask.bool().sum()

    def reduce(x: Tensor) -> Tensor:
        return x.float().sum() / denom

    parts = {name: reduce(value).detach() for _, value, name in terms if value is not None}
    loss = sum(weight * reduce(value) for weight, value, _ in terms if weight > 0)
    parts["lambda"] = torch.tensor(float(lam))
    parts["loss"] = loss.detach()
    return loss, parts
