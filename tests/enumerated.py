"""The brute-force oracle as a Structure: every output of one sentence enumerated, in float64.

``Enumerated(outputs, indicators, potentials)``: ``outputs`` [N, ...] every structure of the
sentence, ``indicators[name]`` [N, *part shape] how often output n uses each factor of part
``name`` (0/1 counts), ``potentials[name]`` the float64 log-potential of each factor (-inf =
forbidden). Then score(y) = sum_parts <indicator(y), potential> and every method of
pipeline.structs.Structure follows by enumeration: no dynamic program anywhere.

``chain`` / ``factorized`` / ``trees`` / ``head_selections`` / ``labeled`` / ``span_sets`` build it
for the structures of pipeline.structs: each adds an enumerator of its outputs and nothing else.
"""
from __future__ import annotations

import itertools

import torch

NEG_INF = float("-inf")


class Enumerated:
    """One sentence's distribution P(y) = exp(score(y)) / Z over the enumerated ``outputs``."""

    def __init__(self, outputs: torch.Tensor, indicators: dict[str, torch.Tensor],
                 potentials: dict[str, torch.Tensor]):
        self.outputs, self.indicators, self.potentials = outputs, indicators, potentials
        total = torch.zeros(len(outputs), dtype=torch.float64)
        for name, ind in indicators.items():
            phi = potentials[name].double().expand(ind.shape[1:])
            used = ind.double() * torch.where(torch.isfinite(phi), phi, torch.zeros_like(phi))
            forbidden = ((ind > 0) & ~torch.isfinite(phi)).flatten(1).any(1)
            total = total + used.flatten(1).sum(1)
            total = torch.where(forbidden, torch.full_like(total, NEG_INF), total)
        self.scores = total

    @property
    def log_partition(self) -> float:
        return torch.logsumexp(self.scores, 0).item()

    @property
    def log_probs(self) -> torch.Tensor:
        return self.scores - torch.logsumexp(self.scores, 0)

    def marginals(self) -> dict[str, torch.Tensor]:
        p = self.log_probs.exp()
        return {name: (p.view(-1, *[1] * (ind.dim() - 1)) * ind.double()).sum(0)
                for name, ind in self.indicators.items()}

    def expected_score(self, marginals: dict[str, torch.Tensor]) -> float:
        total = 0.0
        for name, m in marginals.items():
            phi = self.potentials[name].double().expand(m.shape)
            total += torch.where(m > 0, m.double() * phi, torch.zeros_like(phi)).sum().item()
        return total

    def cross_entropy_to(self, other: Enumerated) -> float:
        """-sum_y P_other(y) log P_self(y) over the same outputs (0 * -inf = 0)."""
        p = other.log_probs.exp()
        return -torch.where(p > 0, p * self.log_probs, torch.zeros_like(p)).sum().item()

    def index(self, y: torch.Tensor) -> int:
        return int((self.outputs == y).flatten(1).all(1).nonzero()[0])

    def log_prob(self, y: torch.Tensor) -> float:
        return self.log_probs[self.index(y)].item()

    def argmax(self) -> torch.Tensor:
        return self.outputs[int(self.scores.argmax())]

    def kbest(self, k: int) -> tuple[list[torch.Tensor], list[float]]:
        order = sorted(range(len(self.outputs)), key=lambda n: -self.scores[n].item())
        kept = [n for n in order if self.scores[n].item() > NEG_INF][:k]
        return [self.outputs[n] for n in kept], [self.log_probs[n].item() for n in kept]


def chain(emissions, transitions, start=None, end=None, allowed=None, tau=1.0) -> Enumerated:
    """Every label sequence of a linear-chain CRF: emissions [n, T], transitions [T, T], start / end
    [T] or None, allowed = Constraints or None; the parts of pipeline.structs.ChainCRF."""
    n, T = emissions.shape
    outputs = torch.tensor(list(itertools.product(range(T), repeat=n)), dtype=torch.long)
    N = len(outputs)
    node = torch.zeros(N, n, T)
    node[torch.arange(N)[:, None], torch.arange(n)[None, :], outputs] = 1
    edge = torch.zeros(N, max(n - 1, 0), T, T)
    for i in range(n - 1):
        edge[torch.arange(N), i, outputs[:, i], outputs[:, i + 1]] = 1
    first, last = node[:, 0], node[:, n - 1]
    zeros = torch.zeros(T, dtype=torch.float64)
    trans = transitions.double()
    start = zeros if start is None else start.double()
    end = zeros if end is None else end.double()
    if allowed is not None:
        trans = trans.masked_fill(~allowed.transitions, NEG_INF)
        start, end = start.masked_fill(~allowed.start, NEG_INF), end.masked_fill(~allowed.end, NEG_INF)
    potentials = {"node": emissions.double() / tau, "edge": trans / tau, "start": start / tau, "end": end / tau}
    return Enumerated(outputs, {"node": node, "edge": edge, "start": first, "end": last}, potentials)


def factorized(emissions, tau=1.0) -> Enumerated:
    """Every label sequence under independent per-word softmaxes (no constraints in the distribution)."""
    n, T = emissions.shape
    outputs = torch.tensor(list(itertools.product(range(T), repeat=n)), dtype=torch.long)
    N = len(outputs)
    node = torch.zeros(N, n, T)
    node[torch.arange(N)[:, None], torch.arange(n)[None, :], outputs] = 1
    return Enumerated(outputs, {"node": node}, {"node": emissions.double() / tau})


def _is_tree(heads, projective: bool, single_root: bool) -> bool:
    """heads [n+1] (heads[0] unused): every word reaches the root 0 by following heads (so no
    cycle), one root child if ``single_root``, no two crossing arcs if ``projective``."""
    n = len(heads) - 1
    for d in range(1, n + 1):
        node, steps = d, 0
        while node != 0 and steps <= n:
            node, steps = heads[node], steps + 1
        if node != 0:
            return False
    if single_root and sum(1 for d in range(1, n + 1) if heads[d] == 0) != 1:
        return False
    if projective:
        arcs = [(min(d, heads[d]), max(d, heads[d])) for d in range(1, n + 1)]
        if any(a < c < b < e for a, b in arcs for c, e in arcs):
            return False
    return True


def _arc_potentials(scores, tau):
    """[n+1, n+1] float64 arc potentials / tau, -inf for self loops and arcs into the root."""
    phi = scores.double() / tau
    size = phi.shape[0]
    forbidden = torch.eye(size, dtype=torch.bool)
    forbidden[:, 0] = True
    return phi.masked_fill(forbidden, NEG_INF)


_HEAD_OUTPUTS: dict[tuple, torch.Tensor] = {}


def _head_outputs(n: int, trees_only: bool, projective: bool = False, single_root: bool = True) -> torch.Tensor:
    """Every head vector [N, n+1] without self loops (only the trees when ``trees_only``), cached."""
    key = (n, trees_only, projective, single_root)
    if key not in _HEAD_OUTPUTS:
        rows = [(0, *h) for h in itertools.product(range(n + 1), repeat=n)
                if all(h[d - 1] != d for d in range(1, n + 1))
                and (not trees_only or _is_tree((0, *h), projective, single_root))]
        _HEAD_OUTPUTS[key] = torch.tensor(rows, dtype=torch.long)
    return _HEAD_OUTPUTS[key]


def _arc_indicators(outputs) -> torch.Tensor:
    N, size = outputs.shape
    arc = torch.zeros(N, size, size)
    deps = torch.arange(1, size)
    arc[torch.arange(N)[:, None], outputs[:, 1:], deps[None, :]] = 1
    return arc


def trees(scores, projective=False, single_root=True, tau=1.0) -> Enumerated:
    """Every dependency tree of n = len(scores) - 1 words (scores [n+1, n+1], scores[h, d] the arc
    h -> d, 0 the root): head vectors [N, n+1] filtered by ``_is_tree``; the part of DependencyCRF."""
    n = scores.shape[0] - 1
    outputs = _head_outputs(n, True, projective, single_root)
    return Enumerated(outputs, {"arc": _arc_indicators(outputs)}, {"arc": _arc_potentials(scores, tau)})


def head_selections(scores, tau=1.0) -> Enumerated:
    """Every head vector (each word any head but itself, cycles included): HeadSelection."""
    n = scores.shape[0] - 1
    outputs = _head_outputs(n, False)
    return Enumerated(outputs, {"arc": _arc_indicators(outputs)}, {"arc": _arc_potentials(scores, tau)})


class LabeledEnumerated(Enumerated):
    """Labeled outputs [N, 2, n+1]; ``kbest`` follows LabeledArcs.kbest's definition: the best
    labeling of each head vector, the k best of those (not the k best labeled outputs)."""

    def kbest(self, k: int) -> tuple[list[torch.Tensor], list[float]]:
        best: dict[tuple, int] = {}
        for n, heads in enumerate(self.outputs[:, 0].tolist()):
            if tuple(heads) not in best or self.scores[n] > self.scores[best[tuple(heads)]]:
                best[tuple(heads)] = n
        order = sorted(best.values(), key=lambda n: -self.scores[n].item())
        kept = [n for n in order if self.scores[n].item() > NEG_INF][:k]
        return [self.outputs[n] for n in kept], [self.log_probs[n].item() for n in kept]


def labeled(scores, label_scores, trees_only=True, projective=False, single_root=True, tau=1.0) -> Enumerated:
    """Every labeled tree (``trees_only``) or head vector of n words with every relation per word:
    outputs [N, 2, n+1] (heads; relation ids), scores[h, d] the arc h -> d, label_scores [n+1, n+1, R]
    the relation logits. Scored parts: ``arc`` and ``label`` (h, d, l) with potential
    log softmax_l(label_scores / tau); ``rel`` [N, n+1, R] (relation l at word d, potential 0) is
    only there for its marginal P(rel_d = l): the parts of LabeledArcs."""
    n, num_labels = scores.shape[0] - 1, label_scores.shape[-1]
    heads = _head_outputs(n, trees_only, projective, single_root)
    rels = torch.tensor([(0, *r) for r in itertools.product(range(num_labels), repeat=n)], dtype=torch.long)
    outputs = torch.stack([heads.repeat_interleave(len(rels), 0), rels.repeat(len(heads), 1)], 1)
    N, deps = len(outputs), torch.arange(1, n + 1)
    label = torch.zeros(N, n + 1, n + 1, num_labels)
    label[torch.arange(N)[:, None], outputs[:, 0, 1:], deps[None, :], outputs[:, 1, 1:]] = 1
    rel = torch.zeros(N, n + 1, num_labels)
    rel[torch.arange(N)[:, None], deps[None, :], outputs[:, 1, 1:]] = 1
    potentials = {"arc": _arc_potentials(scores, tau), "label": torch.log_softmax(label_scores.double() / tau, -1),
                  "rel": torch.zeros(n + 1, num_labels, dtype=torch.float64)}
    indicators = {"arc": _arc_indicators(outputs[:, 0]), "label": label, "rel": rel}
    return LabeledEnumerated(outputs, indicators, potentials)


def bioes(kind: str, entity: int) -> int:
    """The BIOES label index of pipeline.structs.spans: O = 0, then B, I, E, S of each type."""
    return 0 if kind == "O" else 1 + 4 * entity + "BIES".index(kind)


def span_sets(scores, tau=1.0) -> Enumerated:
    """Every set of non-overlapping typed spans of n words (scores [n, n, E], span (start, end
    inclusive, type)); outputs are BIOES label sequences [N, n]; the part of Spans."""
    n, _, num_types = scores.shape

    def sets(start):
        if start == n:
            yield []
            return
        for rest in sets(start + 1):
            yield [None] + rest
        for end in range(start, n):
            for e in range(num_types):
                for rest in sets(end + 1):
                    yield [(start, end, e)] + [None] * (end - start) + rest

    outputs, indicators = [], []
    for segmentation in sets(0):
        labels, ind = [0] * n, torch.zeros(n, n, num_types)
        for span in segmentation:
            if span is None:
                continue
            s, t, e = span
            ind[s, t, e] = 1
            if s == t:
                labels[s] = bioes("S", e)
            else:
                labels[s], labels[t] = bioes("B", e), bioes("E", e)
                labels[s + 1:t] = [bioes("I", e)] * (t - s - 1)
        outputs.append(labels)
        indicators.append(ind)
    ends = torch.arange(n)[None, :] >= torch.arange(n)[:, None]
    phi = (scores.double() / tau).masked_fill(~ends[..., None], NEG_INF)
    return Enumerated(torch.tensor(outputs, dtype=torch.long), {"span": torch.stack(indicators)}, {"span": phi})
