"""log Z with a hand-written backward, and marginals without a graph, on the scaled kernels.

`LogPartition` is the autograd.Function behind ``crf.log_partition`` when an input needs a gradient
(the student's gold NLL and structural KD): its forward runs the scaled forward pass of
`pipeline.chain_scaled` with no autograd graph over positions, and its backward runs one backward
pass and returns the marginals times the incoming gradient (d log Z / d emissions = node marginals,
/ d transitions = edge marginals summed over positions, / d start and end = node marginals at the
first and last position). `posteriors` is the same pair of passes for marginals without gradients
(teacher marginals, the loader). On CPU, when the C kernels build (`pipeline.native`), log Z and
its gradient come from the same passes in C (in double: pipeline/csrc/partition.c). Sentences the
scaled check refuses are recomputed by the log-space recursions of `pipeline.chain_log`, rows only.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline import chain_log, chain_scaled, native
from pipeline.potentials import NEG_INF, Potentials


def _refused(ok: Tensor) -> Tensor | None:
    """Indices [n] of the sentences whose check failed, or None (the usual case)."""
    return None if bool(ok.all()) else (~ok).nonzero().flatten()


def _log_space(p: Potentials, rows: Tensor, edges: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """chain_log.forward_backward of sentences `rows` only, without a graph."""
    with torch.no_grad():
        return chain_log.forward_backward(p.rows(rows), edges)


def _put(target: Tensor, rows: Tensor, value: Tensor) -> None:
    """target[rows, :value.shape[1]] = value (a refused sentence's slice may be shorter)."""
    target[rows, :value.shape[1]] = value


class LogPartition(torch.autograd.Function):
    """log Z [B] of prepared potentials (emissions [B, L', T], transitions [B or 1, T, T], start and
    end [B or 1, T]); ``LogPartition.apply(p, p.emissions, p.transitions, p.start, p.end)``.

    The backward is written out (no graph over positions), so it cannot be differentiated again:
    a backward with create_graph=True (double backward) raises a RuntimeError; marginals to
    backpropagate through come from ``crf.marginals``, plain tensor ops when inputs need grad.
    """

    @staticmethod
    def forward(ctx, p: Potentials, emissions, transitions, start, end):
        cpu32 = p.emissions.device.type == "cpu" and p.emissions.dtype == torch.float32
        lib = native.load() if cpu32 else None
        if lib is not None:  # the same passes in C, double inside (pipeline/csrc/partition.c)
            grad = any(ctx.needs_input_grad[1:])
            log_z, ok, node, counts = native.log_partition(lib, p.emissions, p.transitions, p.start,
                                                           p.end, p.lengths, grad)
            log_z = log_z.to(p.emissions.dtype)
            ctx.native = (p, ok, node, counts)
        else:
            scaled = chain_scaled.forward(p)
            log_z, ok = scaled.log_z, scaled.ok
            ctx.native, ctx.scaled = None, scaled
        rows = _refused(ok)
        if rows is not None:
            log_z[rows] = _log_space(p, rows, edges=False)[2]
        return log_z

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the backward itself would be differentiated
            raise RuntimeError("crf.log_partition does not support double backward (its backward is "
                               "written out); backpropagate through crf.marginals instead")
        if ctx.native is not None:
            p, ok, node, counts = ctx.native
            rows = ok.view(-1, 1, 1)
            node = torch.where(rows, node, 0.0)
            counts = torch.where(rows, counts * grad.view(-1, 1, 1), 0.0)
            if p.transitions.shape[0] == 1:
                counts = counts.sum(0, keepdim=True)
        else:
            scaled = ctx.scaled
            p = scaled.p
            chain_scaled.backward(scaled)
            ok = scaled.ok
            node = torch.where(ok.view(-1, 1, 1), chain_scaled.node(scaled, log=False), 0.0)
            counts = chain_scaled.transition_counts(scaled, torch.where(ok, grad, 0.0))
        rows = _refused(ok)
        if rows is not None:
            log_node, log_edge, _ = _log_space(p, rows, edges=True)
            _put(node, rows, log_node.exp())
            sub_counts = log_edge.exp().sum(1) * grad[rows].view(-1, 1, 1)
            if counts.shape[0] == 1:
                counts = counts + sub_counts.sum(0, keepdim=True)
            else:
                counts[rows] = sub_counts
        node = node * grad.view(-1, 1, 1)
        batch = node.shape[0]
        first = node[:, 0]
        last = node[torch.arange(batch, device=node.device), p.lengths - 1]

        def like(value: Tensor, shared: Tensor) -> Tensor:  # summed over the batch when shared
            return value.sum(0, keepdim=True) if shared.shape[0] == 1 and batch > 1 else value

        return None, node, counts, like(first, p.start), like(last, p.end)


def log_partition(p: Potentials) -> Tensor:
    """log Z [B] (differentiable through `LogPartition` when an input needs grad)."""
    return LogPartition.apply(p, p.emissions, p.transitions, p.start, p.end)


def posteriors(p: Potentials, edges: bool, log: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """Node [B, L', T] and edge [B, L'-1, T, T] (None without ``edges``) marginals, or their logs,
    and log Z [B], by the scaled passes; no autograd (call under no_grad or inference_mode)."""
    scaled = chain_scaled.forward(p)
    chain_scaled.backward(scaled)
    node = chain_scaled.node(scaled, log)
    edge = chain_scaled.edge(scaled, log) if edges else None
    log_z = scaled.log_z
    rows = _refused(scaled.ok)
    if rows is not None:
        sub_node, sub_edge, sub_log_z = _log_space(p, rows, edges)
        fill = NEG_INF if log else 0.0
        node[rows] = fill
        _put(node, rows, sub_node if log else sub_node.exp())
        if edges:
            edge[rows] = fill
            _put(edge, rows, sub_edge if log else sub_edge.exp())
        log_z[rows] = sub_log_z
    return node, edge, log_z
