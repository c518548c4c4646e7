"""``Factorized``: the MaxEnt decoder (an independent softmax per word) as a Structure.

P(y | x) = prod_i softmax(e_i / tau)[y_i]: one part, ``node`` [B, L, T] (tempered emissions, zero at
padding); log Z = sum_i logsumexp(e_i / tau), so log_prob(y) = the sum of the per-word
log-softmax values. Scheme ``constraints`` are a decoding device here: ``argmax`` / ``kbest`` return
the most probable sequences the scheme allows, with their (unrenormalized) log-probs; the
distribution itself stays the product of softmaxes. ``restricted()`` is that distribution
conditioned on the allowed sequences, a ChainCRF over the log-softmax scores (what a constrained CRF
student can be distilled towards: slide scenario 3).
"""
from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor

from pipeline import crf
from pipeline.potentials import NEG_INF, Constraints
from pipeline.structs.base import Structure
from pipeline.structs.chain import ChainCRF
from pipeline.structs.ops import weighted


class Factorized(Structure):
    """Independent per-word softmax over T labels: emissions [B, L, T], mask [B, L]."""

    kind = "factorized"
    target_names = ("node",)
    part_names = ("node",)

    def __init__(self, emissions: Tensor, mask: Tensor, constraints: Constraints | None = None,
                 tau: float = 1.0):
        super().__init__(mask, tau)
        self.emissions, self.constraints = emissions, constraints

    def init_args(self) -> dict:
        return {"emissions": self.emissions, "mask": self.mask, "constraints": self.constraints,
                "tau": self.tau}

    @cached_property
    def parts(self) -> dict[str, Tensor]:
        em = self.emissions.float().masked_fill(~self.mask.unsqueeze(-1), 0.0)
        return {"node": em if self.tau == 1.0 else em / self.tau}

    @cached_property
    def log_softmax(self) -> Tensor:
        """[B, L, T] per-word log-probabilities, zero at padding."""
        return crf.maxent_log_probs(self.emissions, self.mask, tau=self.tau)

    def _log_partition(self) -> Tensor:
        return torch.logsumexp(self.parts["node"], -1).masked_fill(~self.mask, 0.0).sum(1)

    def _compute_log_marginals(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        return {"node": self.log_softmax.masked_fill(~self.mask.unsqueeze(-1), NEG_INF)}

    def expected_score(self, marginals: dict[str, Tensor]) -> Tensor:
        node = marginals["node"].float().masked_fill(~self.mask.unsqueeze(-1), 0.0)
        return weighted(node, self.parts["node"]).sum((1, 2))

    def score(self, y: Tensor) -> Tensor:
        """sum_i e_i[y_i] / tau for y [B, L] -> [B] or y [B, K, L] -> [B, K]."""
        em = self.parts["node"] if y.dim() == 2 else self.parts["node"].unsqueeze(1).expand(-1, y.shape[1], -1, -1)
        mask = self.mask if y.dim() == 2 else self.mask.unsqueeze(1)
        picked = em.gather(-1, y.long().masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
        return picked.masked_fill(~mask, 0.0).sum(-1)

    def argmax(self) -> Tensor:
        if self.constraints is None:
            return self.parts["node"].argmax(-1).masked_fill(~self.mask, 0)
        return self.kbest(1)[0][:, 0]

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        return crf.maxent_kbest(self.emissions, self.mask, k, constraints=self.constraints, tau=self.tau)

    def restricted(self, constraints: Constraints | None = None) -> ChainCRF:
        """P(y | x, y allowed) = prod_i softmax_i[y_i] / sum_{y' allowed} prod_i softmax_i[y'_i]: a
        ChainCRF with emissions = the log-softmax, zero transitions and the ``constraints`` (this
        structure's own when None). Without any constraints it is this same distribution."""
        allowed = constraints if constraints is not None else self.constraints
        num_labels = self.emissions.shape[-1]
        zeros = self.log_softmax.new_zeros(num_labels, num_labels)
        return ChainCRF(self.log_softmax, zeros, self.mask, constraints=allowed)

    def store_marginals(self) -> dict[str, Tensor]:
        """node = softmax, edge = outer product of neighbouring nodes (the store's MaxEnt layout)."""
        node = self.marginals()["node"]
        return {"node": node, "edge": node[:, :-1, :, None] * node[:, 1:, None, :]}
