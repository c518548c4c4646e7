"""Attachment scores of dependency trees: UAS and LAS (CoNLL convention, optional punctuation rule).

    UAS = words whose predicted head is the gold head / words scored
    LAS = words whose predicted head and relation are both gold / words scored

Relations are compared on their universal part only when ``universal`` (``nsubj:pass`` ->
``nsubj``, as the CoNLL 2018 shared-task evaluation does for LAS); by default the full label.
With ``upos`` given, words tagged ``PUNCT`` (UD) or whose gold relation is ``punct`` are not
scored: the CoNLL-X convention of excluding punctuation, for the papers that report it. Without
``upos`` (and ``punct`` relation) every word is scored, as the CoNLL 2018 evaluation script does.
"""
from __future__ import annotations

from collections.abc import Sequence

PUNCT_TAGS = frozenset({"PUNCT"})
PUNCT_RELS = frozenset({"punct"})


def _scored(gold_rel: str, tag: str | None, exclude_punct: bool) -> bool:
    if not exclude_punct:
        return True
    return tag not in PUNCT_TAGS and gold_rel.split(":")[0] not in PUNCT_RELS


def attachment_scores(gold_heads: Sequence[Sequence[int]], gold_rels: Sequence[Sequence[str]],
                      heads: Sequence[Sequence[int]], rels: Sequence[Sequence[str]], *,
                      upos: Sequence[Sequence[str]] | None = None, exclude_punct: bool | None = None,
                      universal: bool = False) -> dict:
    """``{"uas", "las", "words"}`` over sentences of words 1..n (heads 0 = root; per sentence
    lists of n items; a leading root entry, as in a [L+1] head vector, is not accepted: lengths
    must match the relations). ``exclude_punct`` defaults to ``upos is not None``. ValueError for
    sentences whose lengths differ; ``uas``/``las`` are 0.0 when no word is scored."""
    exclude = upos is not None if exclude_punct is None else exclude_punct
    if not (len(gold_heads) == len(gold_rels) == len(heads) == len(rels)):
        raise ValueError(f"attachment_scores: {len(gold_heads)} gold trees, {len(heads)} predicted")
    if upos is not None and len(upos) != len(gold_heads):
        raise ValueError(f"attachment_scores: {len(upos)} tag sequences for {len(gold_heads)} trees")
    words = unlabeled = labeled = 0
    for i, (gh, gr, ph, pr) in enumerate(zip(gold_heads, gold_rels, heads, rels)):
        tags = upos[i] if upos is not None else [None] * len(gh)
        if not (len(gh) == len(gr) == len(ph) == len(pr) == len(tags)):
            raise ValueError(f"attachment_scores: sentence {i}: lengths {len(gh)} (gold heads), "
                             f"{len(gr)} (gold relations), {len(ph)} (heads), {len(pr)} (relations)")
        for g_head, g_rel, p_head, p_rel, tag in zip(gh, gr, ph, pr, tags):
            if not _scored(g_rel, tag, exclude):
                continue
            words += 1
            if int(g_head) == int(p_head):
                unlabeled += 1
                same = (g_rel.split(":")[0] == p_rel.split(":")[0]) if universal else g_rel == p_rel
                labeled += same
    return {"uas": unlabeled / words if words else 0.0, "las": labeled / words if words else 0.0,
            "words": words}
