"""UAS / LAS of a student of a dependency teacher, per language and overall.

Two kinds of student: a biaffine ``Parser`` (tree -> tree; its ``parse`` gives well-formed trees)
and a tagger whose labels encode heads (``head_encoding``, parsing as sequence labeling; its labels
are decoded by ``pipeline.head_encoding.decode``, so its head vectors need not be trees). The
``rel_pos`` encoding reads the UPOS tags of the evaluated corpus (gold tags: the student predicts
heads relative to them, as in Strzyz et al. 2019's gold-PoS setting). Punctuation is scored (the
CoNLL 2018 convention); ``exclude_punct`` turns on the CoNLL-X rule of ``attachment_scores``.
"""
from __future__ import annotations

from collections import defaultdict

from pipeline.attachment import attachment_scores


def predict_trees(student, rows: list[dict], head_encoding: str | None,
                  batch_size: int = 64) -> tuple[list[list[int]], list[list[str]]]:
    """(heads, relations) of each row (``tokens``, and ``upos`` for ``rel_pos``)."""
    if head_encoding is None:
        from pipeline.parse_train import parse_sentences

        return parse_sentences(student, [r["tokens"] for r in rows], batch_size)
    from pipeline.head_encoding import decode
    from pipeline.trainer import predict

    labels = predict(student, [r["tokens"] for r in rows], batch_size=batch_size)
    heads, rels = [], []
    for row, pred in zip(rows, labels):
        h, r = decode(pred, row.get("upos"), head_encoding)
        heads.append(h)
        rels.append(r)
    return heads, rels


def evaluate_trees(student, rows: list[dict], head_encoding: str | None = None, *,
                   exclude_punct: bool = False, batch_size: int = 64) -> dict:
    """``{"all": {uas, las, words}, lang: {...}}`` over rows with ``tokens``, ``gold`` (relations),
    ``gold_heads``, ``lang`` (and ``upos``)."""
    heads, rels = predict_trees(student, rows, head_encoding, batch_size)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row["lang"]].append(i)

    def score(idx: list[int]) -> dict:
        upos = [rows[i].get("upos") for i in idx]
        tags = upos if exclude_punct and all(u is not None for u in upos) else None
        return attachment_scores([rows[i]["gold_heads"] for i in idx], [rows[i]["gold"] for i in idx],
                                 [heads[i] for i in idx], [rels[i] for i in idx], upos=tags,
                                 exclude_punct=exclude_punct and tags is not None)

    out = {"all": score(list(range(len(rows))))}
    if len(groups) > 1:
        out.update({lang: score(idx) for lang, idx in groups.items()})
    return out
