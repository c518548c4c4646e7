"""The stream's span layout (store/stream.py delegates here for a store of span NER teachers).

A span teacher's student is a tagger over the teacher's BIOES labels (structural KD case 4): it
gets ``TeacherTargets.node`` [B, L, 1 + 4E] = the teacher's BIOES marginals (``Spans.bioes_marginals``,
zero at padding), k-best BIOES paths [B, K, L] with their log-probs, and ``hard`` [B, L]: the gold
BIOES labels of a labeled sentence, else the teacher's best span set (both made by the chain
path of store/stream.py). Marginals of a ``potentials`` store (or at another tau) are recomputed
from the stored span potentials; ``kinds`` = {``spans``}.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from store.schema import SPAN_OFFSETS, TOKEN_OFFSETS, StoreError, TeacherMeta
from store.spans import num_types, pad_spans
from store.stream_trees import KBEST_FIELDS
from store.stream_trees import teacher_kind as tree_or_chain_kind

SPAN_FIELDS = ("node",) + KBEST_FIELDS  # what a tagger student gets from a span store


def teacher_kind(meta: TeacherMeta, head_encoding: str | None = None) -> str:
    """``store.stream_trees.teacher_kind``, and ``spans`` for a span teacher."""
    return "spans" if meta.is_span else tree_or_chain_kind(meta, head_encoding)


def span_layout(url: str, metas: list[TeacherMeta], fields, head_encoding: str | None) -> tuple[str, ...] | None:
    """The fields a span store delivers (``fields``, or SPAN_FIELDS when None); None for a store
    without span teachers. Refused: a store mixing span and other teachers, head_encoding, and
    fields a span store cannot give (a span teacher has no emissions and no BIOES edge marginals)."""
    spans = {m.is_span for m in metas}
    if spans == {False}:
        return None
    if len(spans) != 1:
        raise StoreError(f"{url}: the store mixes span and other teachers; one student learns from one kind")
    if head_encoding is not None:
        raise StoreError(f"{url}: head_encoding maps a dependency teacher's outputs; this store's teachers "
                         "are span NER teachers")
    fields = tuple(SPAN_FIELDS if fields is None else fields)
    wrong = sorted(set(fields) - set(SPAN_FIELDS))
    if wrong:
        raise StoreError(f"{url}: a span-teacher store gives a BIOES tagger student the fields "
                         f"{list(SPAN_FIELDS)}, not {wrong}")
    return fields


class SpanCollate:
    """Targets of a batch of span-shard items (see the module docstring)."""

    def __init__(self, metas: list[TeacherMeta], fields: tuple[str, ...], tau: float):
        self.metas, self.fields, self.tau = metas, fields, tau

    def stored_names(self, full: bool) -> list[str]:
        """The stored arrays a shard's items need (``full``: the store keeps BIOES marginals)."""
        if "node" not in self.fields:
            return []
        return ["node"] if full and all(m.tau == self.tau for m in self.metas) else ["span_scores"]

    @staticmethod
    def offsets(name: str, stored: dict[str, np.ndarray]) -> np.ndarray:
        """The offsets of stored array ``name``."""
        return stored[SPAN_OFFSETS] if name == "span_scores" else stored[TOKEN_OFFSETS]

    def __call__(self, items: list[dict], teacher_idx: Tensor) -> dict[str, Tensor]:
        """TeacherTargets fields (node, kbest_paths) of one batch."""
        lengths = [it["length"] for it in items]
        longest = max(lengths)
        out = {}
        if "node" in self.fields:
            out["node"] = self._node(items, lengths, teacher_idx)
        if "kbest_paths" in self.fields:
            paths = np.zeros((len(items), len(items[0]["kbest_paths"]), longest), dtype=np.int64)
            for b, it in enumerate(items):
                paths[b, :, :it["length"]] = it["kbest_paths"]
            out["kbest_paths"] = torch.from_numpy(paths)
        return out

    def _node(self, items: list[dict], lengths: list[int], teacher_idx: Tensor) -> Tensor:
        """[B, L, 1 + 4E] BIOES marginals: stored, or recomputed teacher by teacher at the stream's tau."""
        from pipeline.structs import Spans

        longest, size = max(lengths), len(self.metas[0].labels)
        node = torch.zeros(len(items), longest, size)
        if "node" in items[0]:
            for b, it in enumerate(items):
                node[b, :it["length"]] = torch.from_numpy(it["node"].astype(np.float32))
            return node
        for t in teacher_idx.unique().tolist():
            rows = (teacher_idx == t).nonzero().flatten().tolist()
            sub = [lengths[i] for i in rows]
            meta = self.metas[t]
            scores = pad_spans([items[i]["span_scores"] for i in rows], sub, num_types(meta))
            with torch.no_grad():
                marg = Spans(scores, torch.tensor(sub), meta.labels, self.tau).bioes_marginals()
            node[rows, :max(sub)] = marg
        return node
