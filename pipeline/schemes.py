"""Tag schemes of span labelling: IOB1, IOB2 (BIO), BIOES, and ``none`` (plain tags such as POS).

A label is ``O``, ``P-TYPE`` with a one-letter prefix P (B, I, E, S) and a non-empty TYPE (which
may itself contain ``-``), or, in the ``none`` scheme, any string.

Validity (``is_valid``) is first-order, so a CRF can enforce it exactly (``allowed_transitions``):
- IOB2: ``I-X`` only after ``B-X`` or ``I-X``.
- IOB1: ``I-X`` may start an entity; ``B-X`` only after ``B-X`` or ``I-X`` (it separates two
  adjacent entities of the same type), so never at the start or after ``O`` or another type.
- BIOES: ``B-X`` and ``I-X`` are followed by ``I-X`` or ``E-X``; ``I-X`` and ``E-X`` follow
  ``B-X`` or ``I-X``; ``S-X`` is a one-token entity; a sentence neither starts with I/E nor ends
  with B/I.
Spans are read with conlleval's chunk rules, which decode a valid sequence of any scheme to its
intended entities and any invalid one leniently (``convert(..., strict=False)``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from pipeline.crf import Constraints

SCHEMES = ("IOB1", "IOB2", "BIOES", "none")
# the names a config may use for each scheme (any case)
ALIASES = {"iob1": "IOB1", "iob2": "IOB2", "bio": "IOB2", "bioes": "BIOES", "iobes": "BIOES",
            "none": "none"}
_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "BIOES": "BIES"}
_RANK = {"B": 1, "I": 2, "E": 3, "S": 4}

Parsed = tuple[str, str | None]  # (prefix, type): ("O", None), ("B", "PER"), ("", "NN") unprefixed
Span = tuple[int, int, str]  # [start, end) and type


def normalize_scheme(name: str) -> str:
    """Canonical scheme name (``IOB1``, ``IOB2``, ``BIOES``, ``none``); BIO, IOBES are aliases."""
    key = str(name).lower()
    if key not in ALIASES:
        raise ValueError(f"unknown tag scheme {name!r}; known: {', '.join(SCHEMES)}")
    return ALIASES[key]


def parse_label(label: str) -> Parsed:
    """``"O"`` -> ("O", None); ``"B-PER"`` -> ("B", "PER"); anything else -> ("", label)."""
    if label == "O":
        return "O", None
    if len(label) >= 3 and label[1] == "-" and label[0] in "BIES":
        return label[0], label[2:]
    return "", label


def _label_ok(p: str, scheme: str) -> bool:
    return scheme == "none" or p == "O" or (p != "" and p in _PREFIXES[scheme])


def _start_ok(p: str, scheme: str) -> bool:
    if scheme == "IOB2":
        return p != "I"
    if scheme == "IOB1":
        return p != "B"
    if scheme == "BIOES":
        return p not in ("I", "E")
    return True


def _end_ok(p: str, scheme: str) -> bool:
    return not (scheme == "BIOES" and p in ("B", "I"))


def _trans_ok(a: Parsed, c: Parsed, scheme: str) -> bool:
    (p1, t1), (p2, t2) = a, c
    inside = p1 in ("B", "I") and t1 == t2
    if scheme == "IOB2":
        return p2 != "I" or inside
    if scheme == "IOB1":
        return p2 != "B" or inside
    if scheme == "BIOES":
        if p1 in ("B", "I"):
            return p2 in ("I", "E") and t1 == t2
        return p2 in ("O", "B", "S")
    return True


def first_invalid(tags: Sequence[str], scheme: str) -> int | None:
    """Index of the first tag breaking ``scheme`` (``len(tags)`` if only the end does), or None."""
    scheme = normalize_scheme(scheme)
    prev: Parsed | None = None
    for i, tag in enumerate(tags):
        cur = parse_label(tag)
        if not _label_ok(cur[0], scheme):
            return i
        if prev is None:
            if not _start_ok(cur[0], scheme):
                return i
        elif not _trans_ok(prev, cur, scheme):
            return i
        prev = cur
    if prev is not None and not _end_ok(prev[0], scheme):
        return len(tags)
    return None


def is_valid(tags: Sequence[str], scheme: str) -> bool:
    """True if ``tags`` is a well-formed sequence of ``scheme`` (every sequence is, under none)."""
    return first_invalid(tags, scheme) is None


def _ends_chunk(p1: str, p2: str, t1: str | None, t2: str | None) -> bool:
    if p1 in ("E", "S"):
        return True
    if p1 in ("B", "I") and p2 in ("B", "S", "O"):
        return True
    return p1 != "O" and t1 != t2


def _starts_chunk(p1: str, p2: str, t1: str | None, t2: str | None) -> bool:
    if p2 in ("B", "S"):
        return True
    if p1 in ("E", "S", "O") and p2 in ("E", "I"):
        return True
    return p2 != "O" and t1 != t2


def spans(tags: Sequence[str]) -> list[Span]:
    """Entity spans ``(start, end, type)`` under conlleval's chunk rules (any prefixed scheme)."""
    out: list[Span] = []
    start: int | None = None
    prev_p, prev_t = "O", None
    for i, tag in enumerate(tags):
        p, t = parse_label(tag)
        if p == "":
            raise ValueError(f"label {tag!r} at position {i} is not O and has no B-/I-/E-/S- "
                             "prefix")
        if start is not None and _ends_chunk(prev_p, p, prev_t, t):
            out.append((start, i, prev_t))
            start = None
        if _starts_chunk(prev_p, p, prev_t, t):
            start = i
        prev_p, prev_t = p, t
    if start is not None:
        out.append((start, len(tags), prev_t))
    return out


def encode(entity_spans: Iterable[Span], length: int, scheme: str) -> list[str]:
    """Tags of ``length`` tokens encoding non-overlapping ``entity_spans`` in ``scheme``."""
    scheme = normalize_scheme(scheme)
    if scheme == "none":
        raise ValueError("spans cannot be encoded in the 'none' scheme")
    tags = ["O"] * length
    prev_end, prev_type = -1, None
    for start, end, etype in sorted(entity_spans):
        if not 0 <= start < end <= length or start < prev_end:
            raise ValueError(f"span {(start, end, etype)} overlaps or lies outside 0..{length}")
        if scheme == "BIOES" and end - start == 1:
            tags[start] = f"S-{etype}"
        else:
            tags[start:end] = [f"I-{etype}"] * (end - start)
            if scheme == "BIOES":
                tags[start], tags[end - 1] = f"B-{etype}", f"E-{etype}"
            elif scheme == "IOB2" or (prev_end == start and prev_type == etype):
                tags[start] = f"B-{etype}"
        prev_end, prev_type = end, etype
    return tags


def convert(tags: Sequence[str], src: str, dst: str, *, strict: bool = True) -> list[str]:
    """Re-encode ``tags`` from scheme ``src`` to ``dst`` (any pair of IOB1, IOB2, BIOES).

    ``strict`` (default): ``tags`` must be valid in ``src`` (ValueError naming the position);
    otherwise invalid input is decoded leniently by conlleval's rules. ``none`` converts only to
    itself.
    """
    src, dst = normalize_scheme(src), normalize_scheme(dst)
    if "none" in (src, dst):
        if src != dst:
            raise ValueError(f"cannot convert between {src!r} and {dst!r}: 'none' has no spans")
        return list(tags)
    if strict:
        bad = first_invalid(tags, src)
        if bad is not None:
            where = repr(tags[bad]) if bad < len(tags) else "the end of the sentence"
            raise ValueError(f"tags are not valid {src}: {where} at position {bad} in {list(tags)}")
    return encode(spans(tags), len(tags), dst)


def detect_scheme(label_sequences: Iterable[Sequence[str]]) -> str:
    """Guess the scheme of labelled sentences.

    - ``none``: no label has a B-/I-/E-/S- prefix and some label is not ``O`` (POS tags), or
      there are no labels at all;
    - ``BIOES``: some label has an E- or S- prefix;
    - ``IOB1`` or ``IOB2`` by a vote over entity starts (an entity starts at a B/I label that
      does not continue a B/I label of its type): ``I-X`` starts vote IOB1 (IOB2 forbids them),
      ``B-X`` starts vote IOB2 (IOB1 forbids them); IOB1 wins only with more votes, so all-``O``
      data (where the two coincide) is IOB2, and a few annotation slips (CoNLL-2002 has one
      sentence starting with ``I-LOC`` per file) do not flip an IOB2 corpus to IOB1.
    Detection does not validate: check the sentences with ``is_valid`` under the detected scheme.
    """
    prefixes: set[str] = set()
    votes = {"B": 0, "I": 0}
    for tags in label_sequences:
        prev: Parsed = ("O", None)
        for tag in tags:
            cur = parse_label(tag)
            prefixes.add(cur[0])
            if cur[0] in votes and not (prev[0] in votes and prev[1] == cur[1]):
                votes[cur[0]] += 1
            prev = cur
    if not prefixes & set("BIES"):
        return "IOB2" if prefixes == {"O"} else "none"
    if prefixes & {"E", "S"}:
        return "BIOES"
    return "IOB1" if votes["I"] > votes["B"] else "IOB2"


def entity_types(labels: Iterable[str]) -> list[str]:
    """Sorted entity types of the prefixed labels (``B-PER``, ``I-LOC`` -> ``["LOC", "PER"]``)."""
    return sorted({t for p, t in map(parse_label, labels) if p in _RANK})


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Unique labels in a deterministic order: ``O`` first, then by type, then prefix B, I, E, S."""
    def key(label: str) -> tuple[int, str, int]:
        p, t = parse_label(label)
        return (0, "", 0) if p == "O" else (1, t or "", _RANK.get(p, 0))
    return sorted(set(labels), key=key)


def complete_labels(labels: Iterable[str], scheme: str) -> list[str]:
    """All labels of ``scheme`` for the entity types in ``labels``, sorted (``none``: as given)."""
    scheme = normalize_scheme(scheme)
    if scheme == "none":
        return sort_labels(labels)
    types = entity_types(labels)
    return sort_labels(["O"] + [f"{p}-{t}" for t in types for p in _PREFIXES[scheme]])


def allowed_transitions(labels: Sequence[str], scheme: str) -> Constraints:
    """Constraints (True = allowed) under which a path is allowed iff ``is_valid`` accepts it.

    ``transitions[a, c]``: label ``labels[a]`` may be followed by ``labels[c]``; ``start`` and
    ``end``: the label may begin / end a sentence. ``none`` allows everything.
    """
    scheme = normalize_scheme(scheme)
    parsed = [parse_label(label) for label in labels]
    bad = [label for label, (p, _) in zip(labels, parsed) if not _label_ok(p, scheme)]
    if bad:
        raise ValueError(f"labels {bad} are not {scheme} labels")
    n = len(parsed)
    transitions = torch.tensor(
        [[_trans_ok(a, c, scheme) for c in parsed] for a in parsed], dtype=torch.bool
    ).reshape(n, n)
    start = torch.tensor([_start_ok(p, scheme) for p, _ in parsed], dtype=torch.bool)
    end = torch.tensor([_end_ok(p, scheme) for p, _ in parsed], dtype=torch.bool)
    return Constraints(transitions=transitions, start=start, end=end)
