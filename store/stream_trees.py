"""The stream's tree layout (store/stream.py delegates here for a store of dependency teachers).

A tree student gets ``TeacherTargets.arc`` [B, L+1, L+1] (h, d) = P_t(h -> d) and ``rel`` [B, L+1, R]
= P_t(rel_d = l) (both zero at position 0 and padding), k-best head vectors [B, K, L+1], and
``hard`` [B, 2, L+1]: gold heads and relation ids of a labeled sentence, else the teacher's top-1
tree and its relations. Arc marginals of a ``potentials`` store (or at another tau) are recomputed
from the stored arc potentials; relation marginals are always the stored ones (at the store's tau).

With ``head_encoding`` (parsing as sequence labeling, issue 17 case 1b) a tagger student gets
``node`` [B, L, T] over its own labels, ``pipeline.head_encoding.label_targets`` of each sentence's
arc and relation marginals, and ``hard`` [B, L]: the student label of the gold tree (labeled) or
of the teacher's top-1 tree (unlabeled), through the same mapping.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipeline.teaching import stored_arcs
from store.schema import StoreError, TeacherMeta
from store.trees import arc_marginals, pad_arcs, pad_heads, pad_words, to_rows

TENSOR_FIELDS = ("emissions", "node", "edge")  # a chain store's tensors
KBEST_FIELDS = ("kbest_paths", "kbest_logprob", "residual_mass", "log_z")
TREE_FIELDS = ("arc", "rel")
ENCODED_FIELDS = ("node",)  # what a tagger student gets from a tree store (head_encoding)


def teacher_kind(meta: TeacherMeta, head_encoding: str | None = None) -> str:
    """The structure kind of a teacher as its student sees it (``TeacherTargets.kinds``): chain,
    factorized, labeled_heads, labeled_tree; a dependency teacher mapped onto a tagger's labels
    (``head_encoding``) is factorized (one distribution per word)."""
    if meta.is_tree and head_encoding:
        return "factorized"
    if meta.is_tree:
        return "labeled_heads" if meta.decoder == "heads" else "labeled_tree"
    return "chain" if meta.is_crf else "factorized"


def stream_layout(url: str, metas: list[TeacherMeta], fields, head_encoding: str | None,
                  labels: list[str] | None, tau: float) -> tuple[bool, tuple[str, ...]]:
    """(whether the store's teachers are dependency teachers, the fields to deliver: ``fields``, or
    all the layout gives when None). Refused: a store mixing chain and tree teachers, fields its
    layout cannot give, ``head_encoding`` without the student's labels or on a chain store, and
    relation marginals at another tau than the store's (they are stored, not recomputable)."""
    trees = {m.is_tree for m in metas}
    if len(trees) != 1:
        raise StoreError(f"{url}: the store mixes chain and dependency teachers; one student learns "
                         "from one kind")
    tree = trees.pop()
    if not tree and head_encoding is not None:
        raise StoreError(f"{url}: head_encoding maps a dependency teacher's outputs onto a tagger's "
                         "labels; this store's teachers are sequence labelers")
    valid = (ENCODED_FIELDS if head_encoding is not None else TREE_FIELDS + KBEST_FIELDS) if tree \
        else TENSOR_FIELDS + KBEST_FIELDS
    fields = tuple(valid if fields is None else fields)
    wrong = sorted(set(fields) - set(valid))
    if wrong:
        what = ("a tagger student (head_encoding)" if head_encoding else "a tree student") if tree \
            else "a student"
        hint = "; a tagger student needs head_encoding" if tree and not head_encoding else ""
        kind = "dependency" if tree else "sequence-labeling"
        raise StoreError(f"{url}: a {kind}-teacher store gives {what} the fields {list(valid)}, not {wrong}"
                         + hint)
    if head_encoding is not None and labels is None:
        raise ValueError("head_encoding needs the student's labels (labels=)")
    stale = [m.id for m in metas if m.tau != tau]
    if tree and stale and ("rel" in fields or head_encoding is not None):
        raise StoreError(f"{url}: relation marginals are stored at tau = {metas[0].tau} (teacher "
                         f"{stale[0]}) and cannot be recomputed at tau = {tau}: distil at the store's "
                         "tau, or annotate a store at this one")
    return tree, fields


def tree_hard(cols: dict, row: int, sid: str, num_labels: int) -> np.ndarray:
    """[2, L] heads and relation ids: the gold tree of a labeled sentence, else the teacher's top-1."""
    gold, heads = cols["gold_ids"].row(row), cols["gold_heads"].row(row)
    if gold is None:
        return np.stack([cols["viterbi"].row(row), cols["relations"].row(row)]).astype(np.int64)
    if (gold < 0).any() or heads is None or len(heads) != len(gold):
        raise StoreError(f"sentence {sid}: gold relations outside the teacher's {num_labels} relations, or "
                         "gold heads missing")
    return np.stack([heads, gold]).astype(np.int64)


class TreeCollate:
    """Targets and hard outputs of a batch of tree-shard items (see the module docstring)."""

    def __init__(self, metas: list[TeacherMeta], fields: tuple[str, ...], tau: float,
                 head_encoding: str | None = None, labels: list[str] | None = None):
        self.metas, self.fields, self.tau = metas, fields, tau
        self.head_encoding, self.student_labels = head_encoding, labels
        self.needs_arc = "arc" in fields or head_encoding is not None

    def stored_names(self, full: bool) -> list[str]:
        """The stored arrays a shard's items need (``full``: the store keeps arc marginals)."""
        names = ["rel"] if "rel" in self.fields or self.head_encoding else []
        if self.needs_arc:
            fresh = full and all(m.tau == self.tau for m in self.metas)
            names.append("arc" if fresh else "arc_scores")
        return names

    def __call__(self, items: list[dict], teacher_idx: Tensor) -> tuple[dict, Tensor]:
        """(TeacherTargets fields, hard) of one batch."""
        lengths = [it["length"] for it in items]
        longest = max(lengths)
        out = {}
        arc = self._arcs(items, lengths, teacher_idx) if self.needs_arc else None
        rel = pad_words([it["rel"] for it in items], lengths) if "rel" in items[0] else None
        hard = pad_heads([it["hard"] for it in items], longest)
        if self.head_encoding is not None:
            node, hard = self._encoded(items, lengths, arc, rel, hard)
            return {"node": node}, hard
        if "arc" in self.fields:
            out["arc"] = arc
        if "rel" in self.fields:
            out["rel"] = rel
        if "kbest_paths" in items[0]:
            out["kbest_paths"] = pad_heads([it["kbest_paths"] for it in items], longest)
        return out, hard

    def _arcs(self, items: list[dict], lengths: list[int], teacher_idx: Tensor) -> Tensor:
        """[B, L+1, L+1] arc marginals: stored, or recomputed teacher by teacher at the stream's tau."""
        if "arc" in items[0]:
            return pad_arcs([it["arc"] for it in items], lengths)
        size = max(lengths) + 1
        arc = torch.zeros(len(items), size, size)
        for t in teacher_idx.unique().tolist():
            rows = (teacher_idx == t).nonzero().flatten().tolist()
            sub = [lengths[i] for i in rows]
            scores = pad_arcs([items[i]["arc_scores"] for i in rows], sub)
            structure = stored_arcs(self.metas[t].decoder, scores, torch.tensor(sub), self.tau)
            width = max(sub) + 1
            arc[rows, :width, :width] = arc_marginals(structure).float()
        return arc

    def _encoded(self, items: list[dict], lengths: list[int], arc: Tensor, rel: Tensor,
                 hard: Tensor) -> tuple[Tensor, Tensor]:
        """Node targets [B, L, T] over the student's labels and its hard labels [B, L]."""
        from pipeline.head_encoding import label_targets

        longest, num = max(lengths), len(self.student_labels)
        node = torch.zeros(len(items), longest, num)
        labels = torch.zeros(len(items), longest, dtype=torch.long)
        for b, (it, n) in enumerate(zip(items, lengths)):
            names = self.metas[it["teacher"]].labels
            upos = it.get("upos")
            try:
                node[b, :n] = torch.as_tensor(np.asarray(label_targets(
                    to_rows(arc[b].numpy(), n), rel[b, 1:n + 1].numpy(), upos, self.student_labels, names,
                    self.head_encoding), dtype=np.float32))
                one = label_targets(*_one_hot(hard[b].numpy(), n, len(names)), upos, self.student_labels,
                                    names, self.head_encoding)
            except (ValueError, KeyError) as err:
                raise StoreError(f"sentence {it['sid']}: cannot map its tree onto the student's labels "
                                 f"({self.head_encoding}): {err}") from None
            one = np.asarray(one)
            if (one.max(1) < 0.5).any():
                word = int(np.argmax(one.max(1) < 0.5)) + 1
                raise StoreError(f"sentence {it['sid']}: the {'gold' if it['has_gold'] else 'teacher'} tree "
                                 f"of word {word} encodes to no label of the student ({self.head_encoding})")
            labels[b, :n] = torch.from_numpy(one.argmax(1))
        return node, labels


def _one_hot(tree: np.ndarray, n: int, num_rels: int) -> tuple[np.ndarray, np.ndarray]:
    """A tree [2, L+1] (heads, relations) as one-hot arc [n, n+1] and relation [n, R] marginals."""
    words = np.arange(n)
    arc = np.zeros((n, n + 1), dtype=np.float32)
    arc[words, tree[0, 1:n + 1]] = 1
    rel = np.zeros((n, num_rels), dtype=np.float32)
    rel[words, tree[1, 1:n + 1]] = 1
    return arc, rel
