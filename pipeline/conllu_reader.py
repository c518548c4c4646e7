"""CoNLL-U files read with the ``conllu`` library: words, tags, and the basic dependency tree.

Each token line is parsed by ``conllu.parser.parse_line`` (its ID, HEAD and field rules); the
line-level checks of ``pipeline.readers`` (encoding, invisible characters, sentence breaks) come
first, so every problem is a ``CorpusError`` naming the file and the line.

What a sentence is made of, as the UD tools read it (the CoNLL 2018 shared-task evaluation scores
syntactic words): multiword-token lines (``1-2 don't``) are skipped and their words (``1 do``,
``2 n't``) kept; empty nodes (``8.1``) exist only in the enhanced graph (DEPS) and are skipped,
because no basic HEAD points at them. Word ids must run 1, 2, 3, ... within a sentence.

Per sentence: ``labels`` the UPOS (``tag="upos"``) or XPOS tags, ``upos`` the UPOS tags (None when
the column is ``_`` throughout the file), ``heads`` / ``rels`` the HEAD / DEPREL columns (None when
HEAD is ``_`` throughout the file: a tagging-only file). A file with trees must have them for
every word, a head must be 0 or a word of the sentence, and following heads from any word must
reach the root (no cycle); a single root child is not required here (UD asks for it; a
single-root parser's training refuses other trees, ``pipeline.parse_train.check_gold``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from conllu.exceptions import ParseException
from conllu.parser import DEFAULT_FIELDS, parse_line

from pipeline.readers import (CorpusError, Located, Sentence, _ASCII_SPACE, _check_label, _check_limit,
                              _check_line, _check_word, _finish, _read_lines, _token_follows,
                              _warn_breaks)

_TAGS = ("upos", "xpos")


class _Tree:
    """The HEAD / DEPREL / UPOS columns of the sentence being read, with their lines."""

    def __init__(self) -> None:
        self.heads: list[int | None] = []
        self.rels: list[str] = []
        self.upos: list[str] = []


def _parse(path: str | Path, lineno: int, line: str) -> dict:
    fields = line.split("\t")
    if len(fields) != 10:
        raise CorpusError(path, lineno, f"expected 10 tab-separated CoNLL-U columns, found {len(fields)}")
    try:
        return parse_line(line, DEFAULT_FIELDS)
    except ParseException as err:
        raise CorpusError(path, lineno, f"CoNLL-U: {err}") from None


def _check_tree(path: str | Path, loc: Located, tree: _Tree) -> None:
    n = len(loc.tokens)
    for d, h in enumerate(tree.heads, 1):
        if h is None or not 0 <= h <= n or h == d:
            what = "no HEAD (_) in a file with trees" if h is None else \
                f"HEAD {h} is not 0 or another word of this {n}-word sentence"
            raise CorpusError(path, loc.lines[d - 1], what)
    for d in range(1, n + 1):
        seen, h = set(), d
        while h != 0:
            if h in seen:
                raise CorpusError(path, loc.lines[d - 1], f"word {d}: its heads form a cycle "
                                  f"({' -> '.join(map(str, sorted(seen)))}) and never reach the root")
            seen.add(h)
            h = tree.heads[h - 1]


def read_conllu(path: str | Path, corpus: str, split: str, lang: str = "en", *,
                tag: str = "upos", labels: Iterable[str] | None = None,
                limit: int | None = None) -> list[Sentence]:
    """The sentences of a CoNLL-U file (see the module docstring); a ``_`` tag is an error."""
    return read_conllu_located(path, corpus, split, lang, tag=tag, labels=labels, limit=limit)[0]


def read_conllu_located(path: str | Path, corpus: str, split: str, lang: str, *, tag: str,
                        labels: Iterable[str] | None,
                        limit: int | None) -> tuple[list[Sentence], list[Located]]:
    _check_limit(limit)
    if tag not in _TAGS:
        raise ValueError(f"tag must be 'upos' or 'xpos', got {tag!r}")
    label_set = None if labels is None else frozenset(labels)
    lines = _read_lines(path)
    located: list[Located] = []
    trees: list[_Tree] = []
    breaks: list[tuple[int, str]] = []
    current, tree = Located([], [], []), _Tree()
    for lineno, line in enumerate(lines, 1):
        if limit is not None and len(located) >= limit:
            break
        if not line.strip(_ASCII_SPACE):
            if current.tokens:
                if line and _token_follows(lines, lineno, "#"):
                    breaks.append((lineno, "whitespace-only line"))
                located.append(current)
                trees.append(tree)
                current, tree = Located([], [], []), _Tree()
            continue
        _check_line(path, lineno, line)
        if line.startswith("#"):
            continue
        token = _parse(path, lineno, line)
        if not isinstance(token["id"], int):  # a multiword range or an empty node
            continue
        if token["id"] != len(current.tokens) + 1:
            raise CorpusError(path, lineno, f"token id {line.split(chr(9))[0]!r}, expected "
                              f"{len(current.tokens) + 1}")
        raw = line.split("\t")  # the word and tag as written: conllu turns '' and '_' into None
        current.tokens.append(_check_word(path, lineno, raw[1]))
        current.labels.append(_check_label(path, lineno, raw[3 if tag == "upos" else 4], label_set, ("", "_")))
        current.lines.append(lineno)
        tree.heads.append(token["head"])
        tree.rels.append(token["deprel"] or "_")
        tree.upos.append(token["upos"] or "_")
    if current.tokens and (limit is None or len(located) < limit):
        located.append(current)
        trees.append(tree)
    _warn_breaks(path, breaks)
    sentences, located = _finish(path, located, len(lines), corpus, split, lang)
    has_trees = any(h is not None for t in trees for h in t.heads)
    has_upos = any(u != "_" for t in trees for u in t.upos)
    for sentence, loc, t in zip(sentences, located, trees):
        if has_trees:
            _check_tree(path, loc, t)
            bad = next((i for i, r in enumerate(t.rels) if r == "_" or re.search(r"\s|@", r)), None)
            if bad is not None:
                raise CorpusError(path, loc.lines[bad], f"DEPREL {t.rels[bad]!r}: a file with trees "
                                  "needs a relation for every word (no '_', spaces or '@')")
            sentence.heads, sentence.rels = [int(h) for h in t.heads], list(t.rels)
        if has_upos:
            sentence.upos = list(t.upos)
    return sentences, located
