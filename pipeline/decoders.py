"""Decoders on top of word emissions: a linear-chain CRF and a MaxEnt (per-word softmax).

Both hold the tag-scheme constraints as (saved) bool buffers and expose the same three methods:
``potentials(emissions) -> StudentPotentials``, ``nll(potentials, tags, mask) -> [B]`` (the gold
NLL of ``pipeline.kd.nll``) and ``decode(potentials, mask) -> [B, L]`` label indices (0 at padding).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline import crf
from pipeline.crf import Constraints
from pipeline.kd.nll import nll as gold_nll
from pipeline.kd.types import StudentPotentials


class _Decoder(nn.Module):
    kind = ""

    def __init__(self, num_labels: int, constraints: Constraints | None = None):
        super().__init__()
        self.num_labels = num_labels
        self.has_constraints = constraints is not None
        if constraints is not None:
            self.register_buffer("allowed_transitions", constraints.transitions.bool().clone())
            self.register_buffer("allowed_start", constraints.start.bool().clone())
            self.register_buffer("allowed_end", constraints.end.bool().clone())

    @property
    def constraints(self) -> Constraints | None:
        if not self.has_constraints:
            return None
        return Constraints(self.allowed_transitions, self.allowed_start, self.allowed_end)

    def nll(self, potentials: StudentPotentials, tags: Tensor, mask: Tensor) -> Tensor:
        """Gold negative log-likelihood per sentence [B]."""
        return gold_nll(potentials, tags, mask)


class CRFDecoder(_Decoder):
    """Learnable transitions [T, T] (``transitions[a, c]``: a followed by c), start [T], end [T],
    initialised to zeros; forbidden factors are -inf inside the dynamic programs."""

    kind = "crf"

    def __init__(self, num_labels: int, constraints: Constraints | None = None):
        super().__init__(num_labels, constraints)
        self.transitions = nn.Parameter(torch.zeros(num_labels, num_labels))
        self.start = nn.Parameter(torch.zeros(num_labels))
        self.end = nn.Parameter(torch.zeros(num_labels))

    def potentials(self, emissions: Tensor) -> StudentPotentials:
        return StudentPotentials(emissions, self.transitions, self.start, self.end, self.constraints)

    def decode(self, potentials: StudentPotentials, mask: Tensor) -> Tensor:
        """Viterbi path [B, L] under the constraints."""
        return crf.viterbi(potentials.emissions, potentials.transitions, mask, potentials.start,
                           potentials.end, constraints=potentials.constraints)[0]


class MaxEntDecoder(_Decoder):
    """Independent softmax per word; no parameters. Decoding is the argmax per word, or, with
    constraints, the most probable sequence the scheme allows (Viterbi over log-softmax scores)."""

    kind = "maxent"

    def potentials(self, emissions: Tensor) -> StudentPotentials:
        return StudentPotentials(emissions, constraints=self.constraints)

    def decode(self, potentials: StudentPotentials, mask: Tensor) -> Tensor:
        if potentials.constraints is None:
            return potentials.emissions.argmax(-1).masked_fill(~mask.bool(), 0)
        return crf.maxent_kbest(potentials.emissions, mask, 1, constraints=potentials.constraints)[0][:, 0]


DECODERS = {"crf": CRFDecoder, "maxent": MaxEntDecoder}


def build_decoder(kind: str, num_labels: int, constraints: Constraints | None = None) -> _Decoder:
    if kind not in DECODERS:
        raise ValueError(f"decoder must be one of {sorted(DECODERS)}, got {kind!r}")
    return DECODERS[kind](num_labels, constraints)
