"""Dependency parsing as sequence labeling: a tree as one label per word (issue 17, case 1b).

Two encodings of word d's head h (Strzyz, Vilares & Gomez-Rodriguez 2019, "Viable Dependency
Parsing as Sequence Labeling", section 3), each joined to the relation as ``{head}@{relation}``:

  - ``rel_offset`` (their "naive positional"): ``h - d`` signed (``+2``, ``-1``), ``root`` for h = 0.
  - ``rel_pos`` (their "relative PoS-based", the best of their encodings): ``{o}/{P}`` with P the
    UPOS tag of the head and o the signed rank of the head among the words tagged P in that
    direction: ``+1/VERB`` = the first VERB to the right, ``-2/NOUN`` = the second NOUN to the left.
    The root is a dummy word 0 tagged ``ROOT``, so h = 0 is ``-1/ROOT``, as in their code.

``decode`` inverts a label sequence; a label whose head does not exist (``+3/NOUN`` with two nouns
to the right) or that cannot be parsed attaches its word to the first word labelled as the root's
child (the word itself when none is: then heads[d] = 0), Strzyz et al.'s post-processing; cycles
are left as predicted (the labeler's UAS is measured on its own head vector).

``label_targets`` maps a dependency teacher's factorized posterior onto a tagger's labels:
P_t(label(h, l) | d) = P_t(h | d) P_t(l | d) (the slides' case 1b). Mass on (head, relation) pairs
whose label the student does not have is dropped (the rows then sum to less than 1): that part of
the teacher's distribution is outside the student's output space.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

KINDS = ("rel_offset", "rel_pos")
ROOT_TAG = "ROOT"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"head encoding must be one of {list(KINDS)}, got {kind!r}")


def _tags(upos: Sequence[str] | None, n: int, kind: str) -> list[str] | None:
    """[ROOT, tag_1 .. tag_n] for rel_pos (ValueError without tags), None for rel_offset."""
    if kind != "rel_pos":
        return None
    if upos is None or len(upos) != n:
        raise ValueError(f"the rel_pos head encoding needs one UPOS tag per word "
                         f"({n} words, {None if upos is None else len(upos)} tags)")
    return [ROOT_TAG, *upos]


def head_part(d: int, h: int, tags: list[str] | None) -> str:
    """The head half of word d's label (words 1..n, 0 = root) under the encoding of ``tags``."""
    if tags is None:
        return "root" if h == 0 else f"{h - d:+d}"
    tag = tags[h]
    if h > d:
        rank = sum(1 for j in range(d + 1, h + 1) if tags[j] == tag)
        return f"+{rank}/{tag}"
    rank = sum(1 for j in range(h, d) if tags[j] == tag)
    return f"-{rank}/{tag}"


def head_parts(n: int, upos: Sequence[str] | None, kind: str) -> list[list[str]]:
    """``parts[d-1][h]`` = ``head_part(d, h)`` for every word d and candidate head h in 0..n;
    O(n^2) by running ranks in each direction."""
    _check_kind(kind)
    tags = _tags(upos, n, kind)
    if tags is None:
        return [["root"] + [f"{h - d:+d}" for h in range(1, n + 1)] for d in range(1, n + 1)]
    out = []
    for d in range(1, n + 1):
        row = [""] * (n + 1)
        seen: dict[str, int] = {}
        for h in range(d - 1, -1, -1):
            seen[tags[h]] = seen.get(tags[h], 0) + 1
            row[h] = f"-{seen[tags[h]]}/{tags[h]}"
        seen = {}
        for h in range(d + 1, n + 1):
            seen[tags[h]] = seen.get(tags[h], 0) + 1
            row[h] = f"+{seen[tags[h]]}/{tags[h]}"
        row[d] = "self"  # never a head: no label
        out.append(row)
    return out


def encode(heads: Sequence[int], rels: Sequence[str], upos: Sequence[str] | None,
           kind: str) -> list[str]:
    """One label per word of the tree ``heads`` (per word 1..n its head, 0 = root) / ``rels``."""
    _check_kind(kind)
    n = len(heads)
    if len(rels) != n:
        raise ValueError(f"{n} heads but {len(rels)} relations")
    tags = _tags(upos, n, kind)
    labels = []
    for d, (h, rel) in enumerate(zip(heads, rels), 1):
        if not 0 <= h <= n or h == d:
            raise ValueError(f"word {d}: head {h} is not a word of this {n}-word sentence or the root")
        if "@" in rel:
            raise ValueError(f"word {d}: relation {rel!r} contains '@', the encoding's separator")
        labels.append(f"{head_part(d, h, tags)}@{rel}")
    return labels


def _head_of(d: int, part: str, tags: list[str] | None, n: int) -> int | None:
    """The head the part names for word d, or None when it names no word."""
    try:
        if tags is None:
            h = 0 if part == "root" else d + int(part)
            return h if 0 <= h <= n and h != d and (part == "root" or part[0] in "+-") else None
        rank_text, tag = part.split("/", 1)
        rank, step = int(rank_text[1:]), (1 if rank_text[0] == "+" else -1)
    except ValueError:
        return None
    if rank_text[0] not in "+-" or rank < 1:
        return None
    h, found = d, 0
    while 0 <= h + step <= n:
        h += step
        found += tags[h] == tag
        if found == rank:
            return h
    return None


def decode(labels: Sequence[str], upos: Sequence[str] | None, kind: str) -> tuple[list[int], list[str]]:
    """(heads, relations) of a label sequence (see the module docstring for invalid labels)."""
    _check_kind(kind)
    n = len(labels)
    tags = _tags(upos, n, kind)
    heads: list[int | None] = []
    rels = []
    for d, label in enumerate(labels, 1):
        part, _, rel = label.rpartition("@")
        heads.append(_head_of(d, part, tags, n) if part else None)
        rels.append(rel if part else label)
    root_child = next((d for d, h in enumerate(heads, 1) if h == 0), None)
    return [(0 if root_child in (None, d) else root_child) if h is None else h
            for d, h in enumerate(heads, 1)], rels


def label_table(labels: Sequence[str], rel_names: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    """(head part -> row, table [parts, R] of student label ids, -1 where the student lacks it)."""
    index = {label: i for i, label in enumerate(labels)}
    parts: dict[str, int] = {}
    for label in labels:
        part = label.rpartition("@")[0]
        if part and part not in parts:
            parts[part] = len(parts)
    table = np.full((len(parts), len(rel_names)), -1, dtype=np.int64)
    for part, row in parts.items():
        for r, rel in enumerate(rel_names):
            table[row, r] = index.get(f"{part}@{rel}", -1)
    return parts, table


def label_targets(arc: np.ndarray, rel: np.ndarray, upos: Sequence[str] | None,
                  labels: Sequence[str], rel_names: Sequence[str], kind: str) -> np.ndarray:
    """[n, T] P_t(label | d) = sum over (h, l) encoding to the label of arc[d-1, h] * rel[d-1, l].

    arc [n, n+1]: arc[d-1, h] = P_t(head(d) = h); rel [n, R]: P_t(l | d) over ``rel_names``;
    ``labels``: the student's T labels. float32."""
    arc, rel = np.asarray(arc, dtype=np.float64), np.asarray(rel, dtype=np.float64)
    n = arc.shape[0]
    if arc.shape != (n, n + 1) or rel.shape != (n, len(rel_names)):
        raise ValueError(f"arc {arc.shape} / rel {rel.shape}: expected ({n}, {n + 1}) / ({n}, {len(rel_names)})")
    parts, table = label_table(labels, rel_names)
    rows = np.array([[parts.get(p, -1) for p in row] for row in head_parts(n, upos, kind)],
                    dtype=np.int64).reshape(n, n + 1)
    ids = np.where(rows[..., None] >= 0, table[np.maximum(rows, 0)], -1)  # [n, n+1, R]
    mass = arc[:, :, None] * rel[:, None, :]
    keep = ids >= 0
    flat = (np.arange(n)[:, None, None] * len(labels) + ids)[keep]
    out = np.bincount(flat, weights=mass[keep], minlength=n * len(labels))
    return out.reshape(n, len(labels)).astype(np.float32)


def infer_kind(labels: Sequence[str]) -> str | None:
    """The encoding a tagger's label set was written in (``rel_pos`` labels name a tag after the
    rank, ``rel_offset`` ones do not), or None when its labels are not head encodings."""
    parts = [label.rpartition("@")[0] for label in labels]
    if not parts or not all(parts):
        return None
    if all(re.fullmatch(r"[+-]\d+/\S+", p) for p in parts):
        return "rel_pos"
    if all(p == "root" or re.fullmatch(r"[+-]\d+", p) for p in parts):
        return "rel_offset"
    return None
