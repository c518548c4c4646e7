"""``ChainCRF``: the linear-chain CRF as a Structure, on the kernels of pipeline.crf.

Parts (docs/DESIGN.md, tensor conventions), all float32, divided by tau, forbidden factors -inf:

    node  [B, L, T]           emissions (zero at padding)
    edge  [T, T] or [B, T, T] transitions, ``edge[a, c]`` = label a followed by label c
    start [T] or [B, T]       first-label factor (zeros when the model has none)
    end   [T] or [B, T]       last-label factor

Marginals: ``node`` [B, L, T]; ``edge`` [B, L-1, T, T] per position (``edge[b, i, a, c]`` =
P(y_i = a, y_{i+1} = c), zero where i+1 is padding); ``start`` / ``end`` [B, T] are the node
marginals at the first / last real position, so ``expected_score`` derives them from ``node`` when a
teacher (the store keeps node and edge) does not give them.

Constraints are applied in one place, here: they become -inf potentials in ``parts``, and the
kernels run on those with no constraints argument.
"""
from __future__ import annotations

import functools
from functools import cached_property

import torch
from torch import Tensor

from pipeline import crf
from pipeline.potentials import NEG_INF, Constraints
from pipeline.structs.base import Structure
from pipeline.structs.ops import weighted


def fp32(method):
    """Run a kernel-calling method with autocast off: the dynamic programs stay in fp32 under
    mixed-precision training (autocast would run their batched matmuls in bf16 / fp16)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.autocast(device_type=self.mask.device.type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper


def _repeat(x: Tensor, k: int, shared_dims: int) -> Tensor:
    """One row per path for per-sentence tensors; shared ones ([T, T], [T]) stay as they are."""
    return x if x.dim() == shared_dims else x.repeat_interleave(k, 0)


class ChainCRF(Structure):
    """Linear-chain CRF over label sequences: scores [B, L, T] emissions plus transitions
    [T, T] (or per-sentence [B, T, T]), optional start / end [T] (or [B, T]) and scheme
    ``constraints`` (True = allowed)."""

    kind = "chain"
    target_names = ("node", "edge")
    part_names = ("node", "edge", "start", "end")

    def __init__(self, emissions: Tensor, transitions: Tensor, mask: Tensor, start: Tensor | None = None,
                 end: Tensor | None = None, constraints: Constraints | None = None, tau: float = 1.0):
        super().__init__(mask, tau)
        self.emissions, self.transitions, self.start, self.end = emissions, transitions, start, end
        self.constraints = constraints

    def init_args(self) -> dict:
        return {"emissions": self.emissions, "transitions": self.transitions, "mask": self.mask,
                "start": self.start, "end": self.end, "constraints": self.constraints, "tau": self.tau}

    @cached_property
    def parts(self) -> dict[str, Tensor]:
        em = self.emissions.float().masked_fill(~self.mask.unsqueeze(-1), 0.0)
        num_labels = em.shape[-1]
        zeros = em.new_zeros(num_labels)
        factors = {"edge": self.transitions.float(),
                   "start": zeros if self.start is None else self.start.float(),
                   "end": zeros if self.end is None else self.end.float()}
        if self.constraints is not None:
            for (name, value), allowed in zip(factors.items(), self.constraints):
                factors[name] = value.masked_fill(~allowed.to(em.device, torch.bool), NEG_INF)
        parts = {"node": em, **factors}
        return parts if self.tau == 1.0 else {name: x / self.tau for name, x in parts.items()}

    def _args(self) -> tuple:
        p = self.parts
        return p["node"], p["edge"], self.mask, p["start"], p["end"]

    @fp32
    def _log_partition(self) -> Tensor:
        return crf.log_partition(*self._args())

    @fp32
    def _compute_log_marginals(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        want_edge = "edge" in names
        node, edge, log_z = crf.forward_backward(*self._args(), edges=want_edge)
        if "log_partition" not in self.__dict__:
            self.__dict__["log_partition"] = log_z  # one forward pass serves log Z too
        out = {"node": node, "edge": edge}
        if "start" in names:
            out["start"] = node[:, 0]
        if "end" in names:
            out["end"] = _last(node, self.lengths)
        return {name: out[name] for name in names}

    @fp32
    def expected_score(self, marginals: dict[str, Tensor]) -> Tensor:
        """sum_u m(u) phi(u) [B]; ``marginals`` holds ``node`` and ``edge`` (start / end optional:
        taken from ``node`` when absent). Transitions are shared by all positions, so their
        expected count is summed over positions first: a [B, T, T] product instead of a
        [B, L-1, T, T] one (1.5x faster fwd+bwd at T=37, bench/README.md)."""
        missing = sorted({"node", "edge"} - set(marginals))
        if missing:
            raise ValueError(f"ChainCRF.expected_score needs marginals {missing}")
        p, mask = self.parts, self.mask
        node = marginals["node"].float().masked_fill(~mask.unsqueeze(-1), 0.0)
        # masked sum over positions as batched matmuls: 0.12 ms where masked_fill + sum took 0.82
        # ms at B=32, L=20, T=37 (bench/README.md). NaN / inf garbage can only sit where some
        # sentence has padding (from the shortest one's end on): only those positions are cleaned,
        # in one pass (where(isfinite) over all of them was eq, abs, ne: 17 of 31 ms at L=100, T=37)
        edge = marginals["edge"].float()
        weights = mask[:, 1:].to(edge.dtype)
        head = max(int(self.lengths.min()) - 1, 0)
        pairs = torch.einsum("bl,blac->bac", weights[:, :head], edge[:, :head])
        if head < edge.shape[1]:
            tail = edge[:, head:].nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
            pairs = pairs + torch.einsum("bl,blac->bac", weights[:, head:], tail)
        first = marginals["start"].float() if "start" in marginals else node[:, 0]
        last = marginals["end"].float() if "end" in marginals else _last(node, self.lengths)
        trans = p["edge"] if p["edge"].dim() == 3 else p["edge"].unsqueeze(0)
        return (weighted(node, p["node"]).sum((1, 2))
                + weighted(pairs, trans.expand_as(pairs)).sum((1, 2))
                + weighted(first, p["start"].expand_as(first)).sum(1)
                + weighted(last, p["end"].expand_as(last)).sum(1))

    def store_marginals(self) -> dict[str, Tensor]:
        return self.marginals("node", "edge")

    @fp32
    def score(self, y: Tensor) -> Tensor:
        """Unnormalized score of label paths y [B, L] -> [B], or y [B, K, L] -> [B, K] (one
        batched call over the B * K paths); -inf for a path that uses a forbidden factor."""
        em, trans, mask, start, end = self._args()
        if y.dim() == 2:
            return crf.path_score(em, trans, y, mask, start, end)
        batch, k, length = y.shape
        flat = crf.path_score(em.repeat_interleave(k, 0), _repeat(trans, k, 2), y.reshape(batch * k, length),
                              mask.repeat_interleave(k, 0), _repeat(start, k, 1), _repeat(end, k, 1))
        return flat.view(batch, k)

    @fp32
    def argmax(self) -> Tensor:
        """Viterbi path [B, L] long (0 at padding)."""
        return crf.viterbi(*self._args())[0]

    @fp32
    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The exact k best paths [B, k, L] and their log-probs [B, k] (-inf for surplus rows)."""
        em, trans, mask, start, end = self._args()
        paths, scores = crf.kbest(em, trans, mask, k, start, end)
        return paths, scores - self.log_partition.unsqueeze(1)


def _last(x: Tensor, lengths: Tensor) -> Tensor:
    """x [B, L, ...] at each row's last real position -> [B, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), lengths - 1]
