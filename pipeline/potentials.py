"""Potentials as every dynamic program of pipeline.crf and pipeline.kbest sees them.

`prepare` casts to float32, divides by tau, applies the tag-scheme constraints as -inf factors and
zeroes padded emissions; conventions are in docs/DESIGN.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor

NEG_INF = float("-inf")
# The recursions of pipeline.crf and pipeline.kbest subtract a per-sentence shift every RENORM
# positions (added back in float64) so their float32 values stay O(RENORM * potentials) at any
# length. 16: node marginals within 7e-6 of float64 at 20,000 words (4e-7 with 1, 4e-5 with 64)
# for 1 renormalization per 16 steps (3 small kernels).
RENORM = 16


class Constraints(NamedTuple):
    """Allowed factors implied by a tag scheme; True = allowed, a forbidden factor scores -inf."""

    transitions: torch.Tensor  # [T, T] bool
    start: torch.Tensor  # [T] bool
    end: torch.Tensor  # [T] bool


@dataclass
class Potentials:
    """Float32 potentials divided by tau, constraints applied, padded emissions zeroed."""

    emissions: Tensor  # [B, L', T], L' = longest sentence
    transitions: Tensor  # [B or 1, T, T]
    start: Tensor  # [B or 1, T]
    end: Tensor  # [B or 1, T]
    mask: Tensor  # [B, L'] bool
    lengths: Tensor  # [B] long
    full: int  # number of leading positions that are real in every sentence

    @cached_property
    def steps(self) -> tuple[Tensor, ...]:
        """Emissions per position, [B, T] each (one unbind beats L slicings)."""
        return self.emissions.unbind(1)

    @cached_property
    def real(self) -> tuple[Tensor, ...]:
        """Mask per position, [B, 1] each."""
        return self.mask.unsqueeze(2).unbind(1)

    def rows(self, index: Tensor) -> Potentials:
        """The sentences `index` [n] (long) alone, cut to the longest of them."""
        lengths = self.lengths[index]
        longest = int(lengths.max())

        def pick(x: Tensor) -> Tensor:  # shared [1, ...] factors stay shared
            return x if x.shape[0] == 1 else x[index]

        return Potentials(self.emissions[index, :longest], pick(self.transitions), pick(self.start),
                          pick(self.end), self.mask[index, :longest], lengths, int(lengths.min()))


def prepare(emissions, transitions, mask, start, end, constraints, tau) -> Potentials:
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    mask = mask.bool()
    lengths = mask.sum(1)
    longest = int(lengths.max())
    mask = mask[:, :longest]
    em = emissions[:, :longest].float().masked_fill(~mask.unsqueeze(-1), 0.0)
    num_labels = em.shape[-1]
    trans = transitions.float()
    trans = trans.unsqueeze(0) if trans.dim() == 2 else trans
    zeros = em.new_zeros(1, num_labels)
    start = zeros if start is None else start.float().reshape(-1, num_labels)
    end = zeros if end is None else end.float().reshape(-1, num_labels)
    if tau != 1.0:
        em, trans, start, end = em / tau, trans / tau, start / tau, end / tau
    if constraints is not None:
        device = em.device
        trans = trans.masked_fill(~constraints.transitions.to(device, torch.bool), NEG_INF)
        start = start.masked_fill(~constraints.start.to(device, torch.bool), NEG_INF)
        end = end.masked_fill(~constraints.end.to(device, torch.bool), NEG_INF)
    return Potentials(em, trans, start, end, mask, lengths, int(lengths.min()))


def pad_to(x: Tensor, length: int, dim: int = 1, fill: float = 0.0) -> Tensor:
    """Pad `x` with `fill` along `dim` up to `length` (outputs keep the caller's padded length)."""
    missing = length - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_full(shape, fill)], dim)
