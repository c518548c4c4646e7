"""Evaluation: seqeval entity precision / recall / F1 (micro, and per type) or POS token accuracy.

Entities are extracted by seqeval: BIOES in strict mode with seqeval's ``IOBES`` scheme (an entity
counts only if well formed), IOB1 and IOB2 in the default conlleval-compatible mode (``strict=True``
switches IOB2 to seqeval's strict ``IOB2``). Scheme ``none`` (POS) gives token accuracy only.
"""
from __future__ import annotations

from collections import Counter, defaultdict

STRICT_SCHEMES = ("BIOES", "IOB2")


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _entities(seqs: list[list[str]], scheme: str, strict: bool) -> list[set[tuple[str, int, int]]]:
    """Per sentence, the set of (type, start, end inclusive) entities. seqeval is imported here:
    it pulls scikit-learn and pandas (0.75 s measured), which `structkd predict` never needs."""
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import IOB2, IOBES, Entities

    if strict:
        found = Entities(seqs, {"BIOES": IOBES, "IOB2": IOB2}[scheme]).entities
        return [{(e.tag, e.start, e.end - 1) for e in sent} for sent in found]
    return [set(get_entities(list(seq))) for seq in seqs]


def _check(gold: list[list[str]], pred: list[list[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold labels but {len(p)} predicted")


def evaluate_tags(gold: list[list[str]], pred: list[list[str]], scheme: str,
                  strict: bool | None = None) -> dict:
    """Scores of ``pred`` against ``gold`` (same shapes).

    Entity schemes -> ``precision``, ``recall``, ``f1`` (micro over entities), ``support`` (gold
    entities), ``predicted``, ``correct``, ``per_type`` {type: precision/recall/f1/support},
    ``accuracy`` (token), ``sentences``, ``tokens``. Scheme ``none`` -> ``accuracy``, ``sentences``,
    ``tokens``. ``strict`` defaults to True for BIOES and False for IOB1/IOB2.
    """
    _check(gold, pred)
    tokens = sum(len(g) for g in gold)
    same = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    out = {"accuracy": same / tokens if tokens else 0.0, "sentences": len(gold), "tokens": tokens}
    if scheme == "none":
        return out
    if scheme not in ("IOB1", "IOB2", "BIOES"):
        raise ValueError(f"unknown tag scheme {scheme!r} (IOB1, IOB2, BIOES or none)")
    strict = scheme == "BIOES" if strict is None else strict
    if strict and scheme not in STRICT_SCHEMES:
        raise ValueError(f"strict evaluation is not available for {scheme}")
    tp, n_pred, n_gold = Counter(), Counter(), Counter()
    for g, p in zip(_entities(gold, scheme, strict), _entities(pred, scheme, strict)):
        n_gold.update(e[0] for e in g)
        n_pred.update(e[0] for e in p)
        tp.update(e[0] for e in g & p)
    per_type = {t: {**_prf(tp[t], n_pred[t], n_gold[t]), "support": n_gold[t]}
                for t in sorted(set(n_gold) | set(n_pred))}
    total_tp, total_pred, total_gold = sum(tp.values()), sum(n_pred.values()), sum(n_gold.values())
    return {**_prf(total_tp, total_pred, total_gold), "support": total_gold, "predicted": total_pred,
            "correct": total_tp, "per_type": per_type, **out}


def main_score(result: dict) -> float:
    """The headline number of an ``evaluate_tags`` result: entity F1, or accuracy for POS; LAS
    of an attachment-score result (``pipeline.tree_eval``)."""
    if "las" in result:
        return result["las"]
    return result["f1"] if "f1" in result else result["accuracy"]


def evaluate_groups(gold: list[list[str]], pred: list[list[str]], groups: list[str],
                    scheme: str | dict[str, str]) -> dict[str, dict]:
    """``evaluate_tags`` per group (e.g. each sentence's corpus or language), plus ``"all"``.

    ``scheme`` is one scheme for every group or ``{group: scheme}``; ``"all"`` is only computed
    when every group shares one scheme.
    """
    _check(gold, pred)
    if len(groups) != len(gold):
        raise ValueError(f"{len(groups)} group keys for {len(gold)} sentences")
    members: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(groups):
        members[key].append(i)
    schemes = scheme if isinstance(scheme, dict) else {key: scheme for key in members}
    out = {key: evaluate_tags([gold[i] for i in idx], [pred[i] for i in idx], schemes[key])
           for key, idx in sorted(members.items())}
    used = {schemes[key] for key in members}
    if len(used) == 1:
        out["all"] = evaluate_tags(gold, pred, used.pop())
    return out
