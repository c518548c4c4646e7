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


def model_tree_kind(model) -> str | None:
    """``parser`` (a biaffine parser), a head encoding (a tagger whose labels encode heads) or None."""
    from pipeline.head_encoding import infer_kind

    if hasattr(model, "parse"):
        return "parser"
    return infer_kind(getattr(model, "labels", []))


def decoded_trees(kind: str, pred, upos: list) -> tuple[list[list[int]], list[list[str]]]:
    """(heads, relations) from a parser's own (heads, relations) (``kind`` parser) or from a
    head-encoded tagger's labels (``kind`` its encoding; ``upos`` per sentence, for ``rel_pos``)."""
    if kind == "parser":
        return pred
    from pipeline.head_encoding import decode

    pairs = [decode(labels, tags, kind) for labels, tags in zip(pred, upos)]
    return [h for h, _ in pairs], [r for _, r in pairs]


def predict_trees(student, rows: list[dict], head_encoding: str | None,
                  batch_size: int = 64) -> tuple[list[list[int]], list[list[str]]]:
    """(heads, relations) of each row (``tokens``, and ``upos`` for ``rel_pos``)."""
    tokens = [r["tokens"] for r in rows]
    if head_encoding is None:
        from pipeline.parse_train import parse_sentences

        return parse_sentences(student, tokens, batch_size)
    from pipeline.trainer import predict

    labels = predict(student, tokens, batch_size=batch_size)
    return decoded_trees(head_encoding, labels, [r.get("upos") for r in rows])


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
