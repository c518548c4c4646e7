"""Property tests of every corpus reader on generated, partly malformed files.

Each case is a file built line by line from a model (token lines, blank lines, -DOCSTART-,
comments), optionally with corruptions at known lines: wrong column count or a stray tab, an
empty token, a tag outside the label set, a missing language prefix, a bad CoNLL-U id or tag,
bytes that are not UTF-8 (Latin-1, cp1252, truncated sequences, surrogates), a line that holds
only invisible characters (U+FEFF, U+200B, U+00A0, U+3000), a byte-order mark glued to a line.
Valid variations ride along: tabs and spaces mixed, LF, CRLF, CR-only (old Mac) and mixed line
endings, whitespace-only blank lines, '#' as a real token, 20,000-character tokens, 5,000-word
sentences, and whitespace-only or -DOCSTART- lines inside a sentence (which split it). The reader
must either raise a CorpusError naming the file and the first bad line (invalid UTF-8 first: the
file is decoded before it is parsed), or return exactly the modelled sentences (none dropped,
merged or truncated) with one CorpusWarning naming exactly the lines that split a sentence where
no blank line was. Any other exception fails the test. ``-m slow`` runs a 10,000-example campaign
and prints its figures.
"""
from __future__ import annotations

import random
import re
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import CorpusConfig
from pipeline.corpus import read_corpus
from pipeline.conllu_reader import read_conllu
from pipeline.readers import CorpusError, CorpusWarning, read_conll, read_raw, read_tsv
from pipeline.rawtext import sentences as raw_sentences
from pipeline.schemes import detect_scheme, encode, is_valid, normalize_scheme, parse_label, spans

NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
WORDS = ["EU", "rejects", "German", "call", ".", ",", "U.S.", "1,200.50", "O'Brien", "-", "--",
         "naïve", "北京", "a\xa0b", "x\u2028y", "Ωmega", "'s", "(", "\"", "#", "###", "#hash",
         "h" * 20000]
TSV_WORDS = WORDS + ["New York", "a b c"]
RAW_WORDS = WORDS + ["Mr.", "Inc.", "He", "!", "?", "..."]
EXTRA = ["NNP", "B-NP", "I-NP", "-X-", "O", "#", "_"]
UPOS = ["NOUN", "VERB", "PROPN", "PUNCT", "ADJ"]
BAD_BYTES = [b"caf\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x93quoted\x94", b"\xf8x"]
INVISIBLE = ["\ufeff", "\u200b", "\xa0", " \u3000\t"]  # a line of only these is an error
LINE_BREAK = re.compile(rb"\r\n|\r|\n")
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Case:
    """A generated file: lines (bytes), the expected sentences, and the first bad line."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.sentences: list[tuple[list[str], list[str] | None]] = []
        self.token_lines: list[int] = []  # 1-based lines that hold a token
        self.bad: dict[int, str] = {}  # line -> corruption kind
        self.splits: list[int] = []  # lines that split a sentence without a blank line (warned)

    def add(self, line: str | bytes, token: bool = False) -> int:
        self.lines.append(line.encode("utf-8") if isinstance(line, str) else line)
        if token:
            self.token_lines.append(len(self.lines))
        return len(self.lines)

    def corrupt(self, draw, kinds: dict[str, object], protect: int | None = None) -> None:
        """Apply 0-2 corruptions; ``kinds`` maps kind -> function(line bytes) -> bytes."""
        for _ in range(draw(st.integers(0, 2)) if self.token_lines else 0):
            kind = draw(st.sampled_from(sorted(kinds)))
            line = draw(st.sampled_from(self.token_lines))
            if line in self.bad or kind == "columns" and (
                    line == protect or self.lines[line - 1].startswith(b"#")) or (
                    kind in ("invisible", "bom") and line == 1):  # a BOM on line 1 is the file's
                continue
            self.lines[line - 1] = kinds[kind](self.lines[line - 1])
            self.bad[line] = kind

    def write(self, draw, folder: Path) -> Path:
        """Line endings: LF, CRLF or CR (old Mac) throughout, or any mix of the three."""
        mode = draw(st.sampled_from([b"\n", b"\r\n", b"\r", b"mixed"]))
        rng = _rng(draw)
        endings = [rng.choice([b"\n", b"\r\n", b"\r"]) if mode == b"mixed" else mode
                   for _ in self.lines]
        if endings:
            endings[-1] = draw(st.sampled_from([b"\n", b"\r\n", b"\r", b""]))
        for i in range(len(endings) - 1):  # CR, then an empty line ended by LF, would read as CRLF
            if endings[i] == b"\r" and not self.lines[i + 1] and endings[i + 1].startswith(b"\n"):
                endings[i + 1] = b"\r"
        path = folder / "case.txt"
        path.write_bytes(b"".join(line + end for line, end in zip(self.lines, endings)))
        return path

    def expected_error_line(self, data: bytes) -> int | None:
        utf8 = [line for line, kind in self.bad.items() if kind == "utf8"]
        if utf8 or self.bad:
            return min(utf8 or self.bad)
        if not self.sentences:
            lines = len(LINE_BREAK.findall(data))
            return max(1, lines + (0 if not data or data.endswith((b"\n", b"\r")) else 1))
        return None


def _rng(draw) -> random.Random:
    """Fine-grained choices (words, tags, separators) come from a seeded generator: fast, and
    the failing file is still reproduced from the drawn seed."""
    return random.Random(draw(st.integers(0, 2**32 - 1)))


def _utf8(line: bytes) -> bytes:
    return line[:1] + BAD_BYTES[len(line) % len(BAD_BYTES)] + line[1:]


def _invisible(line: bytes) -> bytes:
    return INVISIBLE[len(line) % len(INVISIBLE)].encode("utf-8")


def _bom(line: bytes) -> bytes:
    return "\ufeff".encode("utf-8") + line


def _columns(line: bytes, tab_only: bool) -> bytes:
    """One column too many (a stray tab in word<TAB>tag files) or, for CoNLL, one too few."""
    if tab_only:
        return line + b"\t" if len(line) % 2 else line.replace(b"\t", b"\t\t", 1)
    if len(line) % 2:
        return line + b" extra"
    return line[:re.search(rb"[^ \t]*$", line).start()].rstrip(b" \t")


@st.composite
def column_cases(draw, tab_only: bool):
    """A CoNLL (whitespace columns) or word<TAB>tag file; returns (case, reader kwargs)."""
    case, ncols, rng = Case(), 2 if tab_only else draw(st.integers(2, 5)), _rng(draw)
    prefix = tab_only and draw(st.booleans())
    words = TSV_WORDS if tab_only else WORDS
    seps = [" \t", "\t ", "\t"] if tab_only else [" ", "\t", "  ", " \t "]
    if draw(st.booleans()):
        case.add(seps[-1].join(["-DOCSTART-"] + ["-X-"] * (ncols - 2) + ["O"]))
    for k in range(draw(st.integers(0, 6))):
        separators = [rng.choice(["", " ", "\t", " \t "])
                      for _ in range(draw(st.integers(1 if k else 0, 2)))]
        for line in separators:
            case.add(line)
        if k and separators[-1] and not separators[:-1]:  # one whitespace-only line: warned
            case.splits.append(len(case.lines))
        if draw(st.integers(0, 4)) == 0:
            case.add("#" + (" c" if tab_only else " c" * (ncols + 1)))
        long = draw(st.integers(0, 99)) == 0
        n = 5000 if long else draw(st.integers(1, 6))
        split_at = draw(st.integers(1, n - 1)) if n > 1 and draw(st.integers(0, 5)) == 0 else None
        tokens, labels = [], []
        for i in range(n):
            if i == split_at:  # a whitespace-only or -DOCSTART- line inside the sentence splits it
                docstart = seps[-1].join(["-DOCSTART-"] + ["-X-"] * (ncols - 2) + ["O"])
                case.splits.append(case.add(rng.choice([" ", "\t", docstart])))
                case.sentences.append((tokens, labels))
                tokens, labels = [], []
            word = f"w{i}" if long or (k == 0 and i == 0) else rng.choice(words)
            label = rng.choice(NER)
            fields = [("en:" if prefix else "") + word]
            fields += [rng.choice(EXTRA) for _ in range(ncols - 2)] + [label]
            line = fields[0]
            for field in fields[1:]:
                line += rng.choice(seps) + field
            case.add(line, token=True)
            tokens.append(word)
            labels.append(label)
        case.sentences.append((tokens, labels))
    first = rb"[^\t]*" if tab_only else rb"[^ \t]*"
    kinds = {"columns": lambda b: _columns(b, tab_only),
             "empty": lambda b: (b"en:" if prefix else b"\x00"[:not tab_only])
             + b[re.match(first, b).end():],
             "label": lambda b: b[:re.search(rb"[^ \t]*$", b).start()] + b"B-FOO", "utf8": _utf8,
             "invisible": _invisible, "bom": _bom}
    if prefix:
        kinds["prefix"] = lambda b: b[3:]
    case.corrupt(draw, kinds, protect=case.token_lines[0] if case.token_lines else None)
    return case, {"labels": NER, "strip_lang_prefix": prefix}


@st.composite
def conllu_cases(draw):
    """A CoNLL-U file with comments, multiword tokens and empty nodes."""
    case, rng = Case(), _rng(draw)
    for k in range(draw(st.integers(0, 5))):
        comment = draw(st.booleans())
        if k:
            separator = rng.choice(["", "", " ", "\t"])
            case.add(separator)
            if separator and not comment:  # whitespace-only, then a token line: warned
                case.splits.append(len(case.lines))
        if comment:
            case.add(f"# sent_id = {k}")
        n = 5000 if draw(st.integers(0, 99)) == 0 else draw(st.integers(1, 6))
        tokens, tags = [], []
        for i in range(1, n + 1):
            if n < 100 and i < n and rng.random() < 0.2:
                case.add(f"{i}-{i + 1}\tdon't" + "\t_" * 8)
            word = f"w{i}" if n >= 100 else rng.choice(TSV_WORDS)
            tag = rng.choice(UPOS)
            case.add(f"{i}\t{word}\t_\t{tag}\tNN\t_\t0\troot\t_\t_", token=True)
            if n < 100 and rng.random() < 0.2:
                case.add(f"{i}.1\tgone\t_\tVERB\tVBN\t_\t_\t_\t{i}:dep\t_")
            tokens.append(word)
            tags.append(tag)
        case.sentences.append((tokens, tags))
    kinds = {"columns": lambda b: b.rsplit(b"\t", 1)[0] if len(b) % 2 else b + b"\t_",
             "id": lambda b: b"9999" + b[b.index(b"\t"):],
             "tag": lambda b: b"\t".join(b.split(b"\t")[:3] + [b"_"] + b.split(b"\t")[4:]),
             "empty": lambda b: b"\t".join(b.split(b"\t")[:1] + [b""] + b.split(b"\t")[2:]),
             "utf8": lambda b: b.replace(b"\t", b"\t" + BAD_BYTES[len(b) % len(BAD_BYTES)], 1),
             "invisible": _invisible, "bom": _bom}
    case.corrupt(draw, kinds)
    return case, {"tag": "upos"}


@st.composite
def raw_cases(draw):
    """A raw-text file, one document per line; blank lines are empty documents."""
    case, rng = Case(), _rng(draw)
    for _ in range(draw(st.integers(0, 6))):
        if rng.random() < 0.25:
            case.add(rng.choice(["", "  ", "\t"]))
            continue
        text = " ".join(rng.choices(RAW_WORDS, k=rng.randint(1, 30)))
        line = case.add(text, token=True)
        case.sentences.extend((tokens, None) for tokens in raw_sentences(text))
        assert case.lines[line - 1] == text.encode()
    kinds = {"utf8": _utf8, "invisible": lambda b: b + b" \xf3\xa0\x80\x81"}
    case.corrupt(draw, kinds)
    return case, {}


READERS = {"conll": (read_conll, column_cases(False)), "tsv": (read_tsv, column_cases(True)),
           "conllu": (read_conllu, conllu_cases()), "raw": (read_raw, raw_cases())}
KIND = [("columns", "columns"), ("UTF-8", "invalid-utf8"), ("empty token", "empty-token"),
        ("not in the label set", "label-set"), ("no sentences", "no-sentences"),
        ("language prefix", "lang-prefix"), ("token id", "conllu-id"),
        ("missing or malformed label", "malformed-label"), ("not a label of", "scheme-label"),
        ("line holds only", "invisible-line"), ("byte-order mark", "bom-in-line")]


def error_kind(err: CorpusError) -> str:
    return next(kind for text, kind in KIND if text in err.reason)


def _groups(data: bytes, fmt: str, token_lines: list[int]) -> int:
    """Sentences a reader must return at least: blank-separated groups (raw: non-blank lines)
    that hold a token line; -DOCSTART- separates groups too."""
    group, group_of = 0, {}
    for lineno, line in enumerate(LINE_BREAK.split(data), 1):
        if fmt == "raw" or not line.strip(b" \t") or line.startswith(b"-DOCSTART-"):
            group += 1
        group_of[lineno] = group
    return len({group_of[line] for line in token_lines})


def check_reader(fmt: str, draw) -> tuple[str, int]:
    """Run one generated case through a reader; return the outcome (ok or the error kind) and the
    number of sentences checked against the model (0 for an error)."""
    reader, strategy = READERS[fmt]
    case, kwargs = draw(strategy)
    with tempfile.TemporaryDirectory() as folder:
        path = case.write(draw, Path(folder))
        data = path.read_bytes()
        expected_line = case.expected_error_line(data)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = reader(path, "fz", "train", "en", **kwargs)
        except CorpusError as err:
            assert expected_line is not None, f"unexpected {err!r}"
            assert str(err).startswith(f"{path}:{expected_line}: "), (str(err), case.bad)
            return error_kind(err), 0
    assert expected_line is None, f"no error, expected one at line {expected_line}: {case.bad}"
    said = [str(w.message) for w in caught if w.category is CorpusWarning]
    if case.splits:
        assert len(said) == 1 and said[0].startswith(f"{path}: {len(case.splits)} sentence(s) "
                                                     "split where no blank line was: "), said
    else:
        assert not said, said
    assert [int(n) for n in re.findall(r"line (\d+) \(", "".join(said))] == case.splits[:10], said
    assert len(got) == len(case.sentences) and len(got) >= _groups(data, fmt, case.token_lines)
    assert [(s.tokens, s.labels) for s in got] == case.sentences
    assert [s.sid for s in got] == [f"fz/train/{i}" for i in range(len(got))]
    return "ok", len(got)


@st.composite
def iob_cases(draw):
    """A CoNLL file with arbitrary (often invalid, sometimes foreign) label sequences."""
    pool = draw(st.sampled_from([NER, NER + ["E-PER", "S-LOC"], ["O", "I-PER", "B-PER"],
                                 NER + ["NN"], ["NN", "VB"]]))
    sentences = draw(st.lists(st.lists(st.sampled_from(pool), min_size=1, max_size=5),
                              min_size=1, max_size=5))
    scheme = draw(st.sampled_from(["auto", "IOB1", "IOB2", "BIOES", "none"]))
    target = draw(st.sampled_from([None, "IOB1", "IOB2", "BIOES"]))
    return sentences, scheme, target


def check_iob(draw) -> tuple[str, int]:
    """read_corpus: foreign labels are errors at their line; invalid sequences are repaired to
    their conlleval reading (same entities), with a warning. Returns (outcome, sentences checked)."""
    sentences, scheme, target = draw(iob_cases())
    text = "\n\n".join("\n".join(f"w{i} {tag}" for i, tag in enumerate(s)) for s in sentences)
    lines = [tag for s in sentences for tag in [*s, None]]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "iob.txt"
        path.write_text(text + "\n", encoding="utf-8")
        cfg = CorpusConfig(name="fz", files={"train": str(path)}, scheme=scheme,
                           convert_to=target)
        real = detect_scheme(sentences) if scheme == "auto" else normalize_scheme(scheme)
        allowed = {"BIOES": "OBIES", "none": ""}.get(real, "OBI")
        foreign = [i + 1 for i, tag in enumerate(lines) if tag and real != "none"
                   and parse_label(tag)[0] not in tuple(allowed)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = read_corpus(cfg, "train")
            except CorpusError as err:
                assert foreign and str(err).startswith(f"{path}:{foreign[0]}: "), str(err)
                return error_kind(err), 0
            except ValueError as err:
                assert real == "none" and target, err
                return "config-error", 0
    assert not foreign and len(got) == len(sentences)
    out = normalize_scheme(target) if target else real
    invalid = real != "none" and any(not is_valid(s, real) for s in sentences)
    assert any(w.category is CorpusWarning for w in caught) == invalid
    for sentence, labels in zip(got, sentences):
        if out == "none":
            assert sentence.labels == labels
        else:
            assert is_valid(sentence.labels, out)
            assert sentence.labels == encode(spans(labels), len(labels), out)
    return ("ok-repaired" if invalid else "ok"), len(got)


@pytest.mark.parametrize("fmt", sorted(READERS))
@SETTINGS
@given(data=st.data())
def test_reader_fuzz(fmt, data):
    check_reader(fmt, data.draw)


@SETTINGS
@given(data=st.data())
def test_read_corpus_label_fuzz(data):
    check_iob(data.draw)


@pytest.mark.slow
def test_fuzz_campaign():
    """10,000 generated files over all readers and read_corpus; prints the outcome figures (every
    sentence of an accepted file was compared with the model: none dropped, merged or truncated)."""
    outcomes: Counter[str] = Counter()
    checked: Counter[str] = Counter()
    families = sorted(READERS) + ["read_corpus"]

    @settings(SETTINGS, max_examples=10_000)
    @given(data=st.data())
    def run(data):
        family = data.draw(st.sampled_from(families))
        outcome, sentences = check_iob(data.draw) if family == "read_corpus" else \
            check_reader(family, data.draw)
        outcomes[f"{family}:{outcome}"] += 1
        checked[family] += sentences

    run()
    print(f"\nfuzz campaign: {sum(outcomes.values())} inputs, uncaught exceptions: 0, sentences "
          f"checked {sum(checked.values())} ({dict(sorted(checked.items()))}), dropped: 0")
    for key, count in sorted(outcomes.items()):
        print(f"  {key}: {count}")
    assert sum(outcomes.values()) >= 10_000
