"""Dependency structures: ``DependencyCRF`` (distribution over trees), ``HeadSelection`` (a softmax
over heads per word) and ``ArcLabels`` (relation labels per arc).

Indexing (one for all three): positions 0..L, 0 = the root, words 1..n; ``scores[b, h, d]`` is the
score of the arc h -> d, ``lengths[b] = n_b`` the number of words (1 <= n_b <= L). The base class's
``mask`` is [B, L] over the *words* (``mask[b, i]`` = word i + 1 exists), so ``lengths`` /
``residual_mass`` count words. Heads y: [B, L+1] long (or [B, K, L+1]), ``y[b, d]`` = head of word d,
position 0 and padding unused (0 in every output).

Part ``arc`` [B, L+1, L+1]: scores / tau in float32, -inf for the impossible arcs (self loops, arcs
into the root, arcs from or to positions beyond the length). Marginals ``arc`` in the same indexing:
``marginals()["arc"][b, h, d] = P(head(d) = h)``, zero for impossible arcs and padding, so every
real column sums to 1.
"""
from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF
from pipeline.structs import eisner, matrix_tree, mst
from pipeline.structs.base import ROUNDING, Structure
from pipeline.structs.chain import fp32
from pipeline.structs.ops import weighted


def check_arcs(scores: Tensor, lengths: Tensor) -> None:
    if scores.dim() < 3 or scores.shape[1] != scores.shape[2]:
        raise ValueError(f"arc scores must be [B, L+1, L+1, ...], got {tuple(scores.shape)}")
    if lengths.dim() != 1 or len(lengths) != scores.shape[0]:
        raise ValueError(f"lengths must be [B] with B = {scores.shape[0]}, got {tuple(lengths.shape)}")
    if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > scores.shape[1] - 1):
        raise ValueError(f"lengths must be in 1..{scores.shape[1] - 1} (words), got {lengths.tolist()}")


def allowed_arcs(lengths: Tensor, size: int) -> Tensor:
    """[B, L+1, L+1] bool: h -> d possible (h <= n, 1 <= d <= n, h != d)."""
    pos = torch.arange(size, device=lengths.device)
    head_ok = pos <= lengths.unsqueeze(1)
    dep_ok = head_ok & (pos >= 1)
    return head_ok[:, :, None] & dep_ok[:, None, :] & (pos[:, None] != pos[None, :])


def _check_heads(y: Tensor, size: int) -> Tensor:
    if y.shape[-1] != size or y.dim() not in (2, 3):
        raise ValueError(f"heads must be [B, {size}] or [B, K, {size}], got {tuple(y.shape)}")
    return y.long()


def arc_score(arc: Tensor, lengths: Tensor, y: Tensor) -> Tensor:
    """sum_d arc[y_d, d] over real words: y [B, L+1] -> [B], y [B, K, L+1] -> [B, K]; heads must
    be in 0..L (ValueError otherwise); a head beyond the length or a self loop scores -inf."""
    size = arc.shape[-1]
    y = _check_heads(y, size)
    flat = y if y.dim() == 3 else y.unsqueeze(1)
    pos = torch.arange(size, device=y.device)
    real = ((pos >= 1) & (pos <= lengths.unsqueeze(1))).unsqueeze(1).expand_as(flat)
    if bool(((flat < 0) | (flat >= size))[real].any()):
        raise ValueError(f"heads must be positions in 0..{size - 1}")
    index = flat.masked_fill(~real, 0)
    picked = arc.unsqueeze(1).expand(-1, flat.shape[1], -1, -1).gather(2, index.unsqueeze(2)).squeeze(2)
    total = torch.where(real, picked, torch.zeros_like(picked)).sum(-1)
    return total if y.dim() == 3 else total[:, 0]


def autograd_marginals(log_partition_fn, arc: Tensor) -> tuple[Tensor, Tensor]:
    """(d log Z / d arc, log Z): the exact marginals of an exponential family (the outside pass
    by reverse-mode differentiation, Eisner 2016). Differentiable itself when ``arc`` needs a
    gradient and grad mode is on; works under ``torch.no_grad`` too (teachers)."""
    needs_graph = torch.is_grad_enabled() and arc.requires_grad
    with torch.enable_grad():
        leaf = arc if needs_graph else arc.detach().requires_grad_()
        log_z = log_partition_fn(leaf)
        (grad,) = torch.autograd.grad(log_z.sum(), leaf, create_graph=needs_graph)
    return grad, (log_z if needs_graph else log_z.detach())


class _Arcs(Structure):
    """What every first-order arc structure shares: the ``arc`` part and its expectation."""

    part_names = ("arc",)
    target_names = ("arc",)

    def __init__(self, scores: Tensor, lengths: Tensor, tau: float = 1.0):
        check_arcs(scores, lengths)
        size = scores.shape[1]
        super().__init__(torch.arange(size - 1, device=lengths.device) < lengths.unsqueeze(1), tau)
        self.scores, self.word_lengths = scores, lengths.long()

    @cached_property
    def allowed(self) -> Tensor:
        return allowed_arcs(self.word_lengths, self.scores.shape[1])

    @cached_property
    def parts(self) -> dict[str, Tensor]:
        arc = self.scores.float()
        arc = arc if self.tau == 1.0 else arc / self.tau
        return {"arc": arc.masked_fill(~self.allowed, NEG_INF)}

    def expected_score(self, marginals: dict[str, Tensor]) -> Tensor:
        """sum_{h, d} m[h, d] arc[h, d] [B] (0 * -inf = 0; m outside the possible arcs ignored)."""
        if "arc" not in marginals:
            raise ValueError(f"{type(self).__name__}.expected_score needs the marginals 'arc'")
        m = marginals["arc"].float().masked_fill(~self.allowed, 0.0)
        return weighted(m, self.parts["arc"]).sum((1, 2))


class DependencyCRF(_Arcs):
    """P(tree) proportional to exp(sum of its arc scores / tau) over the dependency trees of each
    sentence: non-projective (matrix-tree theorem, Chu-Liu-Edmonds, Lawler k-best) or projective
    (Eisner inside, Eisner k-best), with one root child when ``single_root``. Marginals are the
    autograd of log Z (exact); k-best is exact in both cases (non-projective: O(k n^4), mst.py)."""

    kind = "tree"

    def __init__(self, scores: Tensor, lengths: Tensor, projective: bool = False, single_root: bool = True,
                 tau: float = 1.0):
        super().__init__(scores, lengths, tau)
        self.projective, self.single_root = bool(projective), bool(single_root)

    def init_args(self) -> dict:
        return {"scores": self.scores, "lengths": self.word_lengths, "projective": self.projective,
                "single_root": self.single_root, "tau": self.tau}

    def _inside(self, arc: Tensor) -> Tensor:
        algorithm = eisner if self.projective else matrix_tree
        return algorithm.log_partition(arc, self.word_lengths, self.single_root)

    @fp32
    def _log_partition(self) -> Tensor:
        return self._inside(self.parts["arc"])

    @fp32
    def _compute_log_marginals(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        """Matrix-tree marginals come from a float64 inverse and may round to tiny negatives:
        those above -ROUNDING become 0, anything below is an error (never hidden)."""
        marg, log_z = autograd_marginals(self._inside, self.parts["arc"])
        self.__dict__.setdefault("log_partition", log_z)
        if bool((marg < -ROUNDING).any()):
            raise ValueError(f"arc marginal {float(marg.min()):.3g} < 0: the tree inside pass is unstable here")
        marg = torch.where(marg > 0, marg, torch.zeros_like(marg))
        return {"arc": marg.log()}

    def score(self, y: Tensor) -> Tensor:
        """Sum of the arc potentials of heads y ([B, L+1] -> [B], [B, K, L+1] -> [B, K]); -inf
        for heads that are not a tree of this structure (cycle, several root children under
        ``single_root``, crossing arcs under ``projective``)."""
        total = arc_score(self.parts["arc"], self.word_lengths, y)
        flat = y.reshape(-1, y.shape[-1]).long()
        lengths = self.word_lengths.repeat_interleave(flat.shape[0] // len(self.word_lengths))
        ok = mst.is_tree(flat, lengths, self.single_root, self.projective).view(total.shape)
        return torch.where(ok, total, torch.full_like(total, NEG_INF))

    def argmax(self) -> Tensor:
        """The best tree: heads [B, L+1] long (Eisner, or ``mst.best_trees``: the batch's greedy
        heads where they are trees, Chu-Liu-Edmonds in float64 elsewhere; no log Z needed).
        ValueError for a sentence without any tree."""
        if self.projective:
            return self.kbest(1)[0][:, 0]
        heads, found = mst.best_trees(self.parts["arc"], self.word_lengths, self.single_root)
        if not bool(found.all()):
            raise ValueError(f"batch row {int((~found).nonzero()[0])}: no dependency tree has a finite score")
        return heads

    @fp32
    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The exact k best trees [B, k, L+1] and their log-probs [B, k] (-inf, heads 0 for
        surplus rows). ValueError for a sentence without any tree (its arcs rule all out)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        arc = self.parts["arc"].detach()
        if self.projective:
            heads, scores = eisner.kbest(arc, self.word_lengths, k, self.single_root)
        else:
            heads, scores = self._mst_kbest(arc, k)
        if not bool(torch.isfinite(scores[:, 0]).all()):
            row = int((~torch.isfinite(scores[:, 0])).nonzero()[0])
            raise ValueError(f"batch row {row}: no dependency tree has a finite score")
        return heads, scores - self.log_partition.detach().unsqueeze(1)

    def _mst_kbest(self, arc: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if k == 1:
            heads, found = mst.best_trees(arc, self.word_lengths, self.single_root)
            score = arc_score(arc, self.word_lengths, heads).masked_fill(~found, NEG_INF)
            return heads.unsqueeze(1), score.unsqueeze(1)
        size = arc.shape[-1]
        heads = torch.zeros((len(arc), k, size), dtype=torch.long)
        scores = torch.full((len(arc), k), NEG_INF, dtype=torch.float64)
        matrices = arc.double().cpu().numpy()
        for row, n in enumerate(self.word_lengths.tolist()):
            found = mst.kbest_trees(matrices[row, :n + 1, :n + 1], k, self.single_root)
            for rank, (value, tree) in enumerate(found):
                heads[row, rank, :n + 1] = torch.from_numpy(tree)
                scores[row, rank] = value
        return heads.to(arc.device), scores.to(arc.device, arc.dtype)


class HeadSelection(_Arcs):
    """Each word picks its head independently: P(y) = prod_d softmax_h(arc[h, d] / tau)[y_d]
    (the biaffine parser's local factorization, Dozat & Manning 2017); y need not be a tree.
    log Z = sum_d logsumexp_h arc[h, d]; marginals = the per-word softmax."""

    kind = "heads"

    def init_args(self) -> dict:
        return {"scores": self.scores, "lengths": self.word_lengths, "tau": self.tau}

    @cached_property
    def _word_log_z(self) -> Tensor:
        """[B, L+1] logsumexp over heads; -inf at position 0 and padding."""
        return eisner.logsumexp(self.parts["arc"], 1)

    def _log_partition(self) -> Tensor:
        z = self._word_log_z
        return torch.where(torch.isfinite(z), z, torch.zeros_like(z)).sum(1)

    def _compute_log_marginals(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        z = self._word_log_z
        log_p = self.parts["arc"] - torch.where(torch.isfinite(z), z, torch.zeros_like(z)).unsqueeze(1)
        return {"arc": log_p}

    def score(self, y: Tensor) -> Tensor:
        """Sum of arc potentials of heads y, any head vector (-inf for an impossible arc)."""
        return arc_score(self.parts["arc"], self.word_lengths, y)

    def argmax(self) -> Tensor:
        best = self.parts["arc"].argmax(1)
        return best.masked_fill(~self.allowed.any(1), 0)

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The exact k most probable head vectors [B, k, L+1] and their log-probs [B, k]: words
        are merged one at a time, keeping the k best partial products (each word contributes its
        k best heads at most)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        log_p = self.log_marginals()["arc"].detach()
        batch, size, _ = log_p.shape
        take = min(k, size)
        top_p, top_h = log_p.topk(take, 1)                           # [B, take, L+1] per word d
        values = log_p.new_full((batch, k), NEG_INF)
        values[:, 0] = 0.0
        prev, choice = [], []
        real = self.allowed.any(1)                                   # [B, L+1] real words
        for d in range(1, size):
            cand = (values.unsqueeze(2) + top_p[:, None, :, d]).flatten(1)
            best, index = cand.topk(k, 1)                            # k * take >= k candidates
            keep = real[:, d:d + 1]
            values = torch.where(keep, best, values)
            prev.append(torch.where(keep, index // take, torch.arange(k, device=log_p.device).expand(batch, k)))
            choice.append(torch.where(keep, top_h[:, :, d].gather(1, index % take), torch.zeros_like(index)))
        heads = torch.zeros((batch, k, size), dtype=torch.long, device=log_p.device)
        rank = torch.arange(k, device=log_p.device).expand(batch, k)
        for d in range(size - 1, 0, -1):
            heads[:, :, d] = choice[d - 1].gather(1, rank)
            rank = prev[d - 1].gather(1, rank)
        heads = heads.masked_fill(~torch.isfinite(values).unsqueeze(2), 0)
        return heads, values


class ArcLabels:
    """Relation labels per arc: ``scores`` [B, L+1, L+1, R], P(l | h -> d) = softmax_l(scores / tau)
    (the biaffine label classifier). With head marginals P(h | d) [B, L+1, L+1] (any of the arc
    structures' ``marginals()["arc"]``):

        joint(heads)           [B, L+1, L+1, R]  P(h, l | d) = P(h | d) P(l | h -> d)
        label_marginals(heads) [B, L+1, R]       P(l | d) = sum_h P(h, l | d) (row 0 / padding: 0)
        best(y)                labels [B, (K,) L+1] of the most probable relation of each chosen arc
        log_prob(y, labels)    [B, (K)] sum_d log P(labels_d | y_d -> d)
    """

    def __init__(self, scores: Tensor, lengths: Tensor, tau: float = 1.0):
        check_arcs(scores, lengths)
        if scores.dim() != 4:
            raise ValueError(f"label scores must be [B, L+1, L+1, R], got {tuple(scores.shape)}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.scores, self.lengths, self.tau = scores, lengths.long(), float(tau)
        self.allowed = allowed_arcs(self.lengths, scores.shape[1])

    @cached_property
    def log_probs(self) -> Tensor:
        """[B, L+1, L+1, R] log P(l | h -> d); -inf for impossible arcs. The scores of impossible
        arcs are zeroed before the softmax, so inf / NaN padding never reaches a gradient."""
        allowed = self.allowed.unsqueeze(-1)
        x = torch.log_softmax(self.scores.float().masked_fill(~allowed, 0.0) / self.tau, -1)
        return x.masked_fill(~allowed, NEG_INF)

    def joint(self, head_marginals: Tensor) -> Tensor:
        m = head_marginals.float().masked_fill(~self.allowed, 0.0)
        return m.unsqueeze(-1) * self.log_probs.exp()

    def label_marginals(self, head_marginals: Tensor) -> Tensor:
        return self.joint(head_marginals).sum(1)

    def _at(self, y: Tensor) -> Tensor:
        """log P(. | y_d -> d) [B, (K,) L+1, R] (rows of position 0 / padding: arbitrary)."""
        size = self.scores.shape[1]
        y = _check_heads(y, size)
        flat = y if y.dim() == 3 else y.unsqueeze(1)
        index = flat.clamp(0, size - 1)[..., None, None].expand(-1, -1, -1, 1, self.log_probs.shape[-1])
        per_dep = self.log_probs.transpose(1, 2).unsqueeze(1).expand(-1, flat.shape[1], -1, -1, -1)
        out = per_dep.gather(3, index).squeeze(3)
        return out if y.dim() == 3 else out[:, 0]

    def _real(self, y: Tensor) -> Tensor:
        pos = torch.arange(y.shape[-1], device=y.device)
        real = (pos >= 1) & (pos <= self.lengths.unsqueeze(1))
        return real if y.dim() == 2 else real.unsqueeze(1).expand_as(y)

    def best(self, y: Tensor) -> Tensor:
        return self._at(y).argmax(-1).masked_fill(~self._real(y), 0)

    def log_prob(self, y: Tensor, labels: Tensor) -> Tensor:
        real = self._real(y)
        picked = self._at(y).gather(-1, labels.long().masked_fill(~real, 0).unsqueeze(-1)).squeeze(-1)
        return torch.where(real, picked, torch.zeros_like(picked)).sum(-1)


__all__ = ["ArcLabels", "DependencyCRF", "HeadSelection", "allowed_arcs", "arc_score", "autograd_marginals"]
