"""Linear-chain CRF and MaxEnt dynamic programs (see docs/DESIGN.md for conventions)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class Constraints(NamedTuple):
    """Allowed factors implied by a tag scheme; True = allowed, a forbidden factor scores -inf."""

    transitions: torch.Tensor  # [T, T] bool
    start: torch.Tensor  # [T] bool
    end: torch.Tensor  # [T] bool
