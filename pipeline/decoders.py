"""Decoders on top of word emissions: they build the model's ``Structure`` and know nothing of KD.

``CRFDecoder`` (learnable transitions / start / end -> ``ChainCRF``) and ``MaxEntDecoder`` (an
independent softmax per word -> ``Factorized``) hold the tag-scheme constraints as (saved) bool
buffers. The gold NLL is ``-structure.log_prob(gold)``; decoding is ``structure.argmax()``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.potentials import Constraints
from pipeline.structs import ChainCRF, Factorized, Structure


class _Decoder(nn.Module):
    kind = ""
    structure_kind = ""  # the kind of Structure ``structure`` builds

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

    def structure(self, emissions: Tensor, mask: Tensor) -> Structure:
        raise NotImplementedError


class CRFDecoder(_Decoder):
    """Learnable transitions [T, T] (``transitions[a, c]``: a followed by c), start [T], end [T],
    initialised to zeros; forbidden factors are -inf inside the dynamic programs."""

    kind = "crf"
    structure_kind = "chain"

    def __init__(self, num_labels: int, constraints: Constraints | None = None):
        super().__init__(num_labels, constraints)
        self.transitions = nn.Parameter(torch.zeros(num_labels, num_labels))
        self.start = nn.Parameter(torch.zeros(num_labels))
        self.end = nn.Parameter(torch.zeros(num_labels))

    def structure(self, emissions: Tensor, mask: Tensor) -> ChainCRF:
        return ChainCRF(emissions, self.transitions, mask, self.start, self.end, self.constraints)


class MaxEntDecoder(_Decoder):
    """Independent softmax per word; no parameters. Its argmax is per word, or, with constraints,
    the most probable sequence the scheme allows."""

    kind = "maxent"
    structure_kind = "factorized"

    def structure(self, emissions: Tensor, mask: Tensor) -> Factorized:
        return Factorized(emissions, mask, self.constraints)


DECODERS = {"crf": CRFDecoder, "maxent": MaxEntDecoder}


def build_decoder(kind: str, num_labels: int, constraints: Constraints | None = None) -> _Decoder:
    if kind not in DECODERS:
        raise ValueError(f"decoder must be one of {sorted(DECODERS)}, got {kind!r}")
    return DECODERS[kind](num_labels, constraints)
