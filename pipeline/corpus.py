"""Corpora as configured: the splits of a ``CorpusConfig`` (``holdout`` dev included), read with
``pipeline.readers``, their labels checked against the tag scheme and converted.

The file formats, the ``Sentence`` type and ``CorpusError`` / ``CorpusWarning`` live in
``pipeline.readers``; they are imported here for the callers that read corpora by config.
``check_corpora`` is what a stage calls first on its list of corpora: unique names, every file
present, so nothing is read (or written) before a config that cannot work is refused.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import CorpusConfig
from pipeline.config_rules import check_corpus_names
from pipeline.errors import ConfigError, DataError
from pipeline.conllu_reader import read_conllu_located
from pipeline.readers import CorpusError, CorpusWarning, Located, Sentence, read_columns_located, read_raw_located
from pipeline.schemes import convert, detect_scheme, first_invalid, normalize_scheme, parse_label

__all__ = ["CorpusError", "CorpusWarning", "Sentence", "check_corpora", "corpus_splits",
           "effective_scheme", "read_corpus"]


_CONLLU_TAG = {-1: "upos", 3: "upos", 4: "xpos"}


def corpus_splits(cfg: CorpusConfig) -> list[str]:
    """The splits ``read_corpus`` can read: one per file, plus ``dev`` cut from train by ``holdout``."""
    splits = list(cfg.files)
    if cfg.holdout and "dev" not in cfg.files and "train" in cfg.files:
        splits.insert(splits.index("train") + 1, "dev")
    return splits


def check_corpora(corpora: Sequence[CorpusConfig], key: str = "corpora") -> None:
    """Refuse corpora that cannot be read as configured: two with the same name (their sentence
    ids ``corpus/split/index`` would collide: a ConfigError), or a split file that is missing or
    not a file (a DataError naming the corpus, the split and the path)."""
    check_corpus_names(list(corpora), key)
    for i, cfg in enumerate(corpora):
        for split, path in cfg.files.items():
            if not Path(path).is_file():
                what = "is not a file" if Path(path).exists() else "does not exist"
                raise DataError(f"{key}[{i}].files.{split}: {path} {what} (corpus {cfg.name!r})")


def _read_located(cfg: CorpusConfig, split: str) -> tuple[str, list[Sentence], list[Located]]:
    if cfg.holdout and "dev" not in cfg.files and split in ("train", "dev"):
        return _read_holdout(cfg, split)
    if split not in cfg.files:
        hint = " (give files.dev, or holdout: N to cut it from train)" if split == "dev" else ""
        raise ConfigError(f"corpus {cfg.name!r} has no split {split!r}; it has "
                          f"{corpus_splits(cfg)}{hint}")
    path = cfg.files[split]
    where = (path, cfg.name, split, cfg.lang)
    if cfg.format in ("conll", "tsv"):
        return path, *read_columns_located(*where, tab_only=cfg.format == "tsv", word_col=cfg.word_col,
                                    label_col=cfg.label_col,
                                    strip_lang_prefix=cfg.strip_lang_prefix, labels=None,
                                    comment="#", limit=cfg.limit)
    if cfg.format == "conllu":
        if cfg.label_col not in _CONLLU_TAG:
            raise ConfigError(f"corpus {cfg.name!r}: CoNLL-U label_col must be 3 (UPOS, also -1) "
                             f"or 4 (XPOS), got {cfg.label_col}")
        return path, *read_conllu_located(*where, tag=_CONLLU_TAG[cfg.label_col], labels=None,
                                   limit=cfg.limit)
    if cfg.format == "raw":
        return path, *read_raw_located(*where, limit=cfg.limit)
    raise ConfigError(f"corpus {cfg.name!r}: unknown format {cfg.format!r} "
                     "(conll, tsv, conllu, raw)")


def _read_holdout(cfg: CorpusConfig, split: str) -> tuple[str, list[Sentence], list[Located]]:
    """A corpus without a dev file: dev = the last ``cfg.holdout`` train sentences, train = the
    rest; ``limit`` applies afterwards. Dev sids are ``corpus/dev/i`` like any split's (the
    store keys rows by them); errors still name the train file and its lines."""
    full = dataclasses.replace(cfg, holdout=None, limit=None)
    path, sentences, located = _read_located(full, "train")
    if cfg.holdout >= len(sentences):
        raise DataError(f"corpus {cfg.name!r}: holdout {cfg.holdout} leaves no training sentence "
                        f"({len(sentences)} in {path})")
    cut = len(sentences) - cfg.holdout
    part = slice(cut, None) if split == "dev" else slice(0, cut)
    sentences, located = sentences[part][: cfg.limit], located[part][: cfg.limit]
    for index, sentence in enumerate(sentences):
        sentence.split, sentence.sid = split, f"{cfg.name}/{split}/{index}"
    return path, sentences, located


def _check_labels(path: str, scheme: str, how: str, sentence: Sentence, loc: Located) -> None:
    """Labels foreign to ``scheme`` (``NN`` or ``S-PER`` in IOB2) are errors, not repairable."""
    allowed = {"O", "B", "I", "E", "S"} if scheme == "BIOES" else {"O", "B", "I"}
    for i, tag in enumerate(sentence.labels or []):
        if parse_label(tag)[0] not in allowed:
            raise CorpusError(path, loc.lines[min(i, len(loc.lines) - 1)],
                              f"label {tag!r} is not a label of the {how} scheme {scheme}")


def read_corpus(cfg: CorpusConfig, split: str) -> list[Sentence]:
    """Read split ``split`` of ``cfg`` (format, columns, ``limit``), check and convert labels.

    The scheme is ``cfg.scheme`` (``auto``: detected on this split; ``none``: labels are kept as
    read). A label foreign to the scheme is a ``CorpusError``. A sentence that breaks the scheme
    (CoNLL-2002 has a sentence starting with ``I-LOC``) is re-encoded as conlleval and seqeval
    read it (``I-LOC`` starts an entity), with a ``CorpusWarning`` naming its line, so every gold
    path is allowed by the scheme's CRF constraints. With ``cfg.convert_to`` the labels are
    re-encoded in that scheme. Unlabeled text is returned as read.
    """
    path, sentences, located = _read_located(cfg, split)
    if sentences[0].labels is None:
        return sentences
    if cfg.head_encoding is not None:
        return _encode_trees(cfg, path, sentences, located)
    how = "detected" if cfg.scheme == "auto" else "configured"
    scheme = (detect_scheme(s.labels for s in sentences if s.labels is not None)
              if cfg.scheme == "auto" else normalize_scheme(cfg.scheme))
    target = normalize_scheme(cfg.convert_to) if cfg.convert_to else scheme
    if "none" in (scheme, target):
        if scheme != target:
            raise ConfigError(f"corpus {cfg.name!r}: cannot convert labels from {scheme!r} "
                              f"to {target!r}")
        return sentences
    repaired: list[int] = []
    for sentence, loc in zip(sentences, located):
        labels = sentence.labels or []
        bad = first_invalid(labels, scheme)
        if bad is not None:
            _check_labels(path, scheme, how, sentence, loc)
            repaired.append(loc.lines[min(bad, len(loc.lines) - 1)])
        if bad is not None or target != scheme:
            sentence.labels = convert(labels, scheme, target, strict=False)
    if repaired:
        lines = ", ".join(map(str, repaired[:10])) + (", ..." if len(repaired) > 10 else "")
        warnings.warn(CorpusWarning(
            f"{path}: {len(repaired)} sentence(s) not valid {scheme} ({how} scheme) re-encoded "
            f"as conlleval reads them; first invalid label at line(s) {lines}"), stacklevel=2)
    return sentences


def _encode_trees(cfg: CorpusConfig, path: str, sentences: list[Sentence],
                  located: list[Located]) -> list[Sentence]:
    """Labels = each word's head and relation under ``cfg.head_encoding`` (parsing as sequence
    labeling, ``pipeline.head_encoding``); the tags stay in ``upos``."""
    from pipeline.head_encoding import encode

    if cfg.format != "conllu" or cfg.scheme not in ("auto", "none") or cfg.convert_to:
        raise ConfigError(f"corpus {cfg.name!r}: head_encoding reads the trees of a CoNLL-U file "
                          "(format: conllu, scheme: none or auto, no convert_to)")
    for sentence, loc in zip(sentences, located):
        if sentence.heads is None:
            raise CorpusError(path, loc.lines[0], f"head_encoding {cfg.head_encoding}: the file has no "
                              "dependency trees (HEAD is _)")
        if cfg.head_encoding == "rel_pos" and sentence.upos is None:
            raise CorpusError(path, loc.lines[0], "head_encoding rel_pos: the file has no UPOS tags")
        sentence.labels = encode(sentence.heads, sentence.rels, sentence.upos, cfg.head_encoding)
    return sentences


def effective_scheme(cfg: CorpusConfig, sentences: Sequence[Sentence]) -> str:
    """The tag scheme of sentences returned by ``read_corpus(cfg, ...)``: ``cfg.convert_to`` if
    set, else ``cfg.scheme``, else (``auto``) the scheme detected on ``sentences``."""
    if cfg.convert_to:
        return normalize_scheme(cfg.convert_to)
    if cfg.head_encoding is not None:
        return "none"
    if cfg.scheme != "auto":
        return normalize_scheme(cfg.scheme)
    return detect_scheme(s.labels for s in sentences if s.labels is not None)
