"""The sentence type and the file readers: CoNLL columns, word<TAB>tag, CoNLL-U, raw text.

Every reader reads the whole file as bytes and decodes it itself, so every problem is a
``CorpusError`` whose message starts ``path:line:`` (1-based line). Nothing is skipped silently:
only blank lines, ``-DOCSTART-`` lines, comment lines and (CoNLL-U) multiword-token and empty-node
lines are not tokens, and no sentence is truncated (encoders window long sentences).

Lines end at ``\r\n``, ``\r`` (old Mac files) or ``\n``, in any mix; a BOM is dropped at the start
of the file only. Sentence breaks, as CoNLL tools read them: a blank or whitespace-only line ends a
sentence, and so does a ``-DOCSTART-`` line. Where such a line interrupts a sentence (a
whitespace-only line with a token line right after it, or a ``-DOCSTART-`` line right after a token
line, with no blank line between), the sentence is still split there, and one ``CorpusWarning``
per file names each such line: the split is visible, never silent. Errors, each naming the line:
a line that holds only invisible characters (``U+FEFF``, ``U+200B``, ``U+00A0``, ...: it is
neither blank nor a token line), a ``U+FEFF`` (byte-order mark) anywhere but at the start of the
file (files concatenated with their BOMs), labels holding invisible or non-printable characters.

Comment lines (``comment="#"``) in the column formats: ``#`` is also a real token (CoNLL-2000
``# # B-NP``, UD ``###<TAB>SYM``), so a line starting with the comment prefix is a comment only
where a sentence may start (after a blank line or at the top) and when its field count differs
from the file's column count (taken from the first line not starting with the prefix); any
other line is a token line and is validated like one. ``comment=None`` turns comments off.
"""
from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import rawtext
from pipeline.errors import DataError

DOCSTART = "-DOCSTART-"
_ASCII_SPACE = " \t\r\x0b\x0c"
_COLUMN_SEP = re.compile(r"[ \t\r\x0b\x0c]+")
_LANG_PREFIX = re.compile(r"([A-Za-z]{2,3}):")
_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
BOM = "\ufeff"


@dataclass
class Sentence:
    """One sentence of a corpus; ``labels`` is None for unlabeled text."""

    tokens: list[str]
    labels: list[str] | None
    sid: str  # f"{corpus}/{split}/{index}", index = 0-based sentence index in the file
    corpus: str
    split: str
    lang: str
    heads: list[int] | None = None  # CoNLL-U HEAD of words 1..n (0 = the root)
    rels: list[str] | None = None  # CoNLL-U DEPREL of words 1..n
    upos: list[str] | None = None  # CoNLL-U UPOS of words 1..n


class CorpusError(DataError, ValueError):
    """A malformed corpus file; the message starts with ``path:line:``."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        super().__init__(f"{path}:{line}: {message}")


class CorpusWarning(UserWarning):
    """Labels were repaired, or a sentence was split at a whitespace-only or ``-DOCSTART-`` line
    inside it; the message names the file and the lines."""


@dataclass
class Located:
    """A sentence being read, with the 1-based file line of each token."""

    tokens: list[str]
    labels: list[str] | None
    lines: Sequence[int]


def _read_lines(path: str | Path) -> list[str]:
    """The file's lines, split at ``\\r\\n``, ``\\r`` and ``\\n``; a leading BOM removed."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the corpus file: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        breaks = list(_LINE_BREAK_BYTES.finditer(data, 0, err.start))
        line_start = breaks[-1].end() if breaks else 0
        raise CorpusError(path, len(breaks) + 1, f"invalid UTF-8 byte {data[err.start]:#04x} at "
                          f"column {err.start - line_start + 1}") from None
    lines = _LINE_BREAK.split(text.removeprefix(BOM))
    if lines[-1] == "":
        lines.pop()
    return lines


def describe(chars: Iterable[str]) -> str:
    """``U+FEFF (ZERO WIDTH NO-BREAK SPACE)``, ...: each distinct character once, in order
    (characters without a name, such as controls, show their category: ``U+0000 (Cc)``)."""
    return ", ".join(f"U+{ord(ch):04X} ({unicodedata.name(ch, '') or unicodedata.category(ch)})"
                     for ch in dict.fromkeys(chars))


def _invisible(text: str) -> list[str]:
    """The characters of ``text`` that show no glyph (other than ASCII space and tab)."""
    return [ch for ch in text if ch not in _ASCII_SPACE and unicodedata.category(ch) in _INVISIBLE]


def _check_line(path: str | Path, lineno: int, line: str) -> None:
    """A non-blank line must show something, and a BOM belongs only at the start of the file."""
    if not _visible(line.strip(_ASCII_SPACE)):
        raise CorpusError(path, lineno, f"line holds only {describe(_invisible(line))}: it is "
                          "neither a blank line nor a token line")
    if BOM in line:
        raise CorpusError(path, lineno, f"U+FEFF (byte-order mark) at column "
                          f"{line.index(BOM) + 1}: only the start of a file may hold one "
                          "(files concatenated with their BOMs?)")


def _warn_breaks(path: str | Path, breaks: list[tuple[int, str]]) -> None:
    """One warning naming every line that split a sentence without a blank line."""
    if breaks:
        shown = ", ".join(f"line {n} ({what})" for n, what in breaks[:10])
        warnings.warn(CorpusWarning(
            f"{path}: {len(breaks)} sentence(s) split where no blank line was: {shown}"
            f"{', ...' if len(breaks) > 10 else ''}; make such a line blank to keep the split, "
            "or delete it to join the halves"), stacklevel=3)


def _visible(token: str) -> bool:
    if not token:
        return False
    if token.isprintable() and not token.isspace():
        return True
    return any(unicodedata.category(ch) not in _INVISIBLE for ch in token)


def _check_word(path: str | Path, lineno: int, word: str) -> str:
    if not _visible(word):
        raise CorpusError(path, lineno, f"empty token {word!r}" + (
            f" (no visible character: {describe(word)})" if word else ""))
    return word


def _check_label(path: str | Path, lineno: int, label: str, label_set: frozenset[str] | None,
                 missing: tuple[str, ...] = ("",)) -> str:
    if label in missing or any(ch.isspace() for ch in label):
        raise CorpusError(path, lineno, f"missing or malformed label {label!r}")
    if not label.isprintable():
        raise CorpusError(path, lineno, f"missing or malformed label {label!r}: it holds "
                          f"{describe(ch for ch in label if not ch.isprintable())}")
    if label_set is not None and label not in label_set:
        raise CorpusError(path, lineno, f"label {label!r} is not in the label set "
                          f"{sorted(label_set)}")
    return label


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of sentences, got {limit}")


def _finish(path: str | Path, located: list[Located], n_lines: int, corpus: str, split: str,
            lang: str) -> tuple[list[Sentence], list[Located]]:
    if not located:
        raise CorpusError(path, max(n_lines, 1), f"no sentences in the file ({n_lines} lines)")
    return [Sentence(s.tokens, s.labels, f"{corpus}/{split}/{i}", corpus, split, lang)
            for i, s in enumerate(located)], located


def _split_tabs(line: str) -> list[str]:
    return [field.strip(_ASCII_SPACE) for field in line.split("\t")]


def _split_space(line: str) -> list[str]:
    return _COLUMN_SEP.split(line.strip(_ASCII_SPACE))


class _Columns:
    """Line parser of the column formats: column count, word and label columns, checks."""

    def __init__(self, path: str | Path, word_col: int, label_col: int | None,
                 strip_lang_prefix: bool, lang: str, labels: Iterable[str] | None) -> None:
        self.path, self.word_col, self.label_col = path, word_col, label_col
        self.strip_lang_prefix, self.lang = strip_lang_prefix, lang
        self.labels = None if labels is None else frozenset(labels)
        self.ncols = self.ncols_line = 0
        self.cols: tuple[int, int | None] = (0, None)

    def _column(self, index: int, what: str, lineno: int) -> int:
        if not -self.ncols <= index < self.ncols:
            raise CorpusError(self.path, lineno, f"{what} column {index} does not exist: the "
                              f"line has {self.ncols} column(s)")
        return index % self.ncols

    def _set_columns(self, ncols: int, lineno: int) -> None:
        self.ncols, self.ncols_line = ncols, lineno
        word = self._column(self.word_col, "word", lineno)
        label = None if self.label_col is None else self._column(self.label_col, "label", lineno)
        if word == label:
            raise CorpusError(self.path, lineno, f"word and label are the same column ({word}) "
                              f"of a {ncols}-column line")
        self.cols = (word, label)

    def token(self, fields: list[str], lineno: int) -> tuple[str, str | None]:
        if not self.ncols:
            self._set_columns(len(fields), lineno)
        if len(fields) != self.ncols:
            spaces = [ch for ch in _invisible("".join(fields)) if unicodedata.category(ch) == "Zs"]
            raise CorpusError(self.path, lineno, f"expected {self.ncols} columns (as on line "
                              f"{self.ncols_line}), found {len(fields)}" + (
                                  f" (the line holds {describe(spaces)}, which does not separate "
                                  "columns)" if spaces else ""))
        word = fields[self.cols[0]]
        if self.strip_lang_prefix:
            prefix = _LANG_PREFIX.match(word)
            if prefix is None:
                raise CorpusError(self.path, lineno, f"token {word!r} lacks a language prefix "
                                  f"such as '{self.lang}:'")
            if prefix.group(1) != self.lang:
                raise CorpusError(self.path, lineno, f"token {word!r} has language prefix "
                                  f"{prefix.group(1)!r}, the corpus language is {self.lang!r}")
            word = word[prefix.end():]
        _check_word(self.path, lineno, word)
        if self.cols[1] is None:
            return word, None
        return word, _check_label(self.path, lineno, fields[self.cols[1]], self.labels)


def read_columns_located(path: str | Path, corpus: str, split: str, lang: str, *, tab_only: bool,
                  word_col: int, label_col: int | None, strip_lang_prefix: bool,
                  labels: Iterable[str] | None, comment: str | None,
                  limit: int | None) -> tuple[list[Sentence], list[Located]]:
    _check_limit(limit)
    split_fields = _split_tabs if tab_only else _split_space
    lines = _read_lines(path)
    parser = _Columns(path, word_col, label_col, strip_lang_prefix, lang, labels)
    candidates = (split_fields(line) for line in lines if line.strip(_ASCII_SPACE)
                  and not (comment and line.startswith(comment)))
    # the file's column count, from its first real token line (an invisible-only line is an error
    # at its own line and must not set the count that tells comments from "#" tokens)
    hint = next((len(fields) for fields in candidates
                 if fields[0] != DOCSTART and any(map(_visible, fields))), None)
    located: list[Located] = []
    breaks: list[tuple[int, str]] = []  # lines that split a sentence without a blank line
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    for lineno, line in enumerate([*lines, ""], 1):
        if limit is not None and len(located) >= limit:
            break
        content = line.strip(_ASCII_SPACE)
        if content:
            _check_line(path, lineno, line)
        fields = split_fields(line) if content else [DOCSTART]
        if fields[0] == DOCSTART:  # blank, whitespace-only and -DOCSTART- lines end a sentence
            if tokens:
                if content:
                    breaks.append((lineno, DOCSTART))
                elif line and _token_follows(lines, lineno):
                    breaks.append((lineno, "whitespace-only line"))
                located.append(Located(tokens, None if label_col is None else tags,
                                        range(first, first + len(tokens))))
                tokens, tags = [], []
            continue
        if comment and not tokens and line.startswith(comment) and len(fields) != hint:
            continue
        word, label = parser.token(fields, lineno)
        if not tokens:
            first = lineno
        tokens.append(word)
        tags.append(label or "")
    _warn_breaks(path, breaks)
    return _finish(path, located, len(lines), corpus, split, lang)


def _token_follows(lines: list[str], lineno: int, comment: str | None = None) -> bool:
    """Is the line after 1-based line ``lineno`` one that continues a sentence (not blank, not
    ``-DOCSTART-``, not a ``comment`` line)?"""
    if lineno >= len(lines):
        return False
    following = lines[lineno].strip(_ASCII_SPACE)
    return bool(following) and not following.startswith(DOCSTART) and not (
        comment and following.startswith(comment))


def read_conll(path: str | Path, corpus: str, split: str, lang: str = "en", *, word_col: int = 0,
               label_col: int | None = -1, strip_lang_prefix: bool = False,
               labels: Iterable[str] | None = None, comment: str | None = "#",
               limit: int | None = None) -> list[Sentence]:
    """CoNLL column files: whitespace-separated columns (spaces or tabs), one token per line.

    CoNLL-2003 ``word POS chunk NER`` (label = last column), CoNLL-2000 ``word POS chunk``
    (``label_col=1`` for POS), CoNLL-2002, WikiANN (``strip_lang_prefix=True`` strips ``en:``
    after checking it equals ``lang``). Blank lines end sentences; ``-DOCSTART-`` lines end
    sentences and are skipped. ``label_col=None`` reads tokens only. ``labels``: a fixed label set (others are
    errors). Errors: inconsistent column count, empty token, label outside ``labels``, invalid
    UTF-8, no sentences.
    """
    return read_columns_located(path, corpus, split, lang, tab_only=False, word_col=word_col,
                         label_col=label_col, strip_lang_prefix=strip_lang_prefix, labels=labels,
                         comment=comment, limit=limit)[0]


def read_tsv(path: str | Path, corpus: str, split: str, lang: str = "en", *,
             strip_lang_prefix: bool = False, labels: Iterable[str] | None = None,
             comment: str | None = "#", limit: int | None = None) -> list[Sentence]:
    """``word<TAB>tag`` files (UD-EWT tsv, WikiANN): exactly two tab-separated fields per line.

    Fields are stripped of surrounding ASCII whitespace; a word may contain inner spaces. A stray
    tab is a column-count error. Otherwise as ``read_conll``.
    """
    return read_columns_located(path, corpus, split, lang, tab_only=True, word_col=0, label_col=1,
                         strip_lang_prefix=strip_lang_prefix, labels=labels, comment=comment,
                         limit=limit)[0]


def read_raw(path: str | Path, corpus: str, split: str, lang: str = "en", *,
             limit: int | None = None) -> list[Sentence]:
    """Unlabeled raw text, one document per line, split into tokenized sentences by
    ``pipeline.rawtext`` in language ``lang`` (labels None); blank lines are empty documents. A
    language without a splitter is a DataError naming the file."""
    return read_raw_located(path, corpus, split, lang, limit=limit)[0]


def read_raw_located(path: str | Path, corpus: str, split: str, lang: str, *,
              limit: int | None) -> tuple[list[Sentence], list[Located]]:
    _check_limit(limit)
    lines = _read_lines(path)
    located: list[Located] = []
    try:
        rawtext.sentences("", lang)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    for lineno, line in enumerate(lines, 1):
        if limit is not None and len(located) >= limit:
            break
        located.extend(Located([_check_word(path, lineno, t) for t in tokens], None, (lineno,))
                       for tokens in rawtext.sentences(line, lang))
    return _finish(path, located[:limit], len(lines), corpus, split, lang)
