"""Corpus readers: every format, every error (naming file and line), read_corpus, real data."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pipeline.config import CorpusConfig, PrepareConfig, from_dict
from pipeline.corpus import check_corpora, corpus_splits, effective_scheme, read_corpus
from pipeline.errors import ConfigError, DataError
from pipeline.conllu_reader import read_conllu
from pipeline.readers import (CorpusError, CorpusWarning, Sentence, read_conll, read_raw,
                              read_tsv)

CONLL03 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""
NER = {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}


def write(tmp_path: Path, text: str | bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def raises_at(path: Path, line: int, match: str, call, *args, **kwargs) -> CorpusError:
    """Assert ``call`` raises a CorpusError naming ``path`` and ``line``."""
    with pytest.raises(CorpusError, match=match) as info:
        call(path, *args, **kwargs)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert info.value.line == line and info.value.path == str(path)
    return info.value


def test_conll2003_columns(tmp_path):
    path = write(tmp_path, CONLL03)
    got = read_conll(path, "conll03", "train", "en", labels=NER)
    assert got == [
        Sentence(["EU", "rejects", "German", "call", "."], ["B-ORG", "O", "B-MISC", "O", "O"],
                 "conll03/train/0", "conll03", "train", "en"),
        Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], "conll03/train/1", "conll03",
                 "train", "en"),
    ]
    pos = read_conll(path, "c", "s", label_col=1)
    assert pos[0].labels == ["NNP", "VBZ", "JJ", "NN", "."]
    assert read_conll(path, "c", "s", label_col=None)[1] == Sentence(
        ["Peter", "Blackburn"], None, "c/s/1", "c", "s", "en")


def test_conll_tabs_crlf_bom_and_docstart_inside(tmp_path):
    text = "\ufeffA\tDT  B-NP\r\nb \t NN\tI-NP\r\n-DOCSTART- -X- O\r\nc NN B-NP\r\n \t \r\nd NN O"
    path = write(tmp_path, text)
    with pytest.warns(CorpusWarning, match=rf"{path}: 2 sentence\(s\) split where no blank line "
                      r"was: line 3 \(-DOCSTART-\), line 5 \(whitespace-only line\)"):
        got = read_conll(path, "c", "s")
    assert [s.tokens for s in got] == [["A", "b"], ["c"], ["d"]]
    assert [s.sid for s in got] == ["c/s/0", "c/s/1", "c/s/2"]


@pytest.mark.parametrize("newline", [b"\r", b"\r\n", b"\n"])
def test_every_line_ending_reads_the_same(tmp_path, newline):
    text = b"-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\n"
    got = read_conll(write(tmp_path, text.replace(b"\n", newline)), "c", "s")
    assert [(s.tokens, s.labels) for s in got] == [(["EU", "rejects"], ["B-ORG", "O"]),
                                                   (["Peter"], ["B-PER"])]


def test_mixed_line_endings_and_errors_count_cr_lines(tmp_path):
    path = write(tmp_path, b"a DT O\rb NN O\r\n\nc NN O\rd NN O\ne NN O\r\r")
    assert [s.tokens for s in read_conll(path, "c", "s")] == [["a", "b"], ["c", "d", "e"]]
    raises_at(write(tmp_path, b"a DT O\rb NN O\r\nc\xff NN O\n", "bad.txt"), 3,
              "invalid UTF-8 byte 0xff at column 2", read_conll, "c", "s")
    raises_at(write(tmp_path, b"a DT O\rb NN\r", "cols.txt"), 2, "expected 3 columns",
              read_conll, "c", "s")
    assert [s.tokens for s in read_raw(write(tmp_path, b"One.\rTwo.\r\nThree.", "r.txt"),
                                       "r", "u")] == [["One", "."], ["Two", "."], ["Three", "."]]


def test_break_lines_warn_only_inside_a_sentence(tmp_path):
    quiet = "a DT O\n \n\nb NN O\n\n-DOCSTART- -X- O\n \nc NN O\n  \n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_conll(write(tmp_path, quiet), "c", "s")
    assert [s.tokens for s in got] == [["a"], ["b"], ["c"]]
    path = write(tmp_path, "a DT O\nb NN O\n\t\nc NN O\n-DOCSTART- -X- O\n\nd NN O\n", "w.txt")
    with pytest.warns(CorpusWarning, match=r"2 sentence\(s\) split .*: line 3 \(whitespace-only "
                                           r"line\), line 5 \(-DOCSTART-\)"):
        got = read_conll(path, "c", "s")
    assert [s.tokens for s in got] == [["a", "b"], ["c"], ["d"]]
    conllu = write(tmp_path, "1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n \n1\tb\t_\tX\t_\t_\t_\t_\t_\t_\n", "u")
    with pytest.warns(CorpusWarning, match=r"1 sentence\(s\) split .*: line 2 \(whitespace-only"):
        assert [s.tokens for s in read_conllu(conllu, "c", "s")] == [["a"], ["b"]]


@pytest.mark.parametrize("line, match", [
    ("\ufeff", r"line holds only U\+FEFF \(ZERO WIDTH NO-BREAK SPACE\)"),
    ("\u200b\t", r"line holds only U\+200B \(ZERO WIDTH SPACE\)"),
    ("\xa0 \u3000", r"line holds only U\+00A0 \(NO-BREAK SPACE\), U\+3000 \(IDEOGRAPHIC SPACE\)"),
    ("\ufeffb NN O", r"U\+FEFF \(byte-order mark\) at column 1: only the start of a file"),
    ("b NN O\u200b", r"label 'O\\u200b': it holds U\+200B \(ZERO WIDTH SPACE\)"),
    ("b\xa0NN O", r"expected 3 columns .*found 2 \(the line holds U\+00A0 \(NO-BREAK SPACE\), "
                  r"which does not separate columns\)"),
    ("\u200b NN O", r"empty token '\\u200b' \(no visible character: U\+200B"),
])
def test_invisible_characters_are_named(tmp_path, line, match):
    for fmt in ("conll", "conllu"):
        if fmt == "conllu" and "NN O" in line:
            continue
        text = f"a DT O\n{line}\nc NN O\n" if fmt == "conll" else \
            f"1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n{line}\n"
        reader = read_conll if fmt == "conll" else read_conllu
        raises_at(write(tmp_path, text, fmt), 2, match, reader, "c", "s")


def test_unreadable_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'nope.txt'}: cannot read the corpus file: "
                                        "No such file"):
        read_conll(tmp_path / "nope.txt", "c", "s")
    with pytest.raises(DataError, match="Is a directory"):
        read_raw(tmp_path, "c", "s")


def test_hash_is_a_token_and_comments_only_where_a_sentence_starts(tmp_path):
    text = ("# a comment with words\nthe DT B-NP\n# # I-NP\n2 CD I-NP\n\n"
            "# # B-NP\n1 CD I-NP\n\n#comment\nx NN B-NP\n")
    got = read_conll(write(tmp_path, text), "c", "s")
    assert [s.tokens for s in got] == [["the", "#", "2"], ["#", "1"], ["x"]]
    path = write(tmp_path, "# sent 1\nx NN\n", "off.txt")
    raises_at(path, 2, "expected 3 columns", read_conll, "c", "s", comment=None)


def test_hash_sentence_of_ud_tsv_is_kept(tmp_path):
    got = read_tsv(write(tmp_path, "# text = ###\n###\tSYM\n\nok\tINTJ\n"), "ud", "dev")
    assert [(s.tokens, s.labels) for s in got] == [(["###"], ["SYM"]), (["ok"], ["INTJ"])]


def test_wikiann_prefix(tmp_path):
    path = write(tmp_path, "en:R.H.\tB-ORG\nen::\tO\n\nen:Sioux\tB-LOC\n")
    got = read_tsv(path, "wikiann", "train", "en", strip_lang_prefix=True)
    assert [s.tokens for s in got] == [["R.H.", ":"], ["Sioux"]]
    assert read_conll(path, "w", "t", strip_lang_prefix=True)[0].tokens == ["R.H.", ":"]
    raises_at(path, 1, "language prefix 'en'.*corpus language is 'de'", read_tsv, "w", "t", "de",
              strip_lang_prefix=True)
    bad = write(tmp_path, "en:a\tO\nb\tO\n", "noprefix.txt")
    raises_at(bad, 2, "lacks a language prefix", read_tsv, "w", "t", strip_lang_prefix=True)
    empty = write(tmp_path, "en:a\tO\nen:\tO\n", "emptyprefix.txt")
    raises_at(empty, 2, "empty token", read_tsv, "w", "t", strip_lang_prefix=True)


def test_tsv_inner_spaces_and_stray_tab(tmp_path):
    assert read_tsv(write(tmp_path, "New York \tB-LOC\n"), "c", "s")[0].tokens == ["New York"]
    raises_at(write(tmp_path, "a\tO\nb\tO\t\n", "stray.txt"), 2,
              "expected 2 columns \\(as on line 1\\), found 3", read_tsv, "c", "s")
    raises_at(write(tmp_path, "a\tO\nb\t\n", "nolabel.txt"), 2, "missing or malformed label",
              read_tsv, "c", "s")


@pytest.mark.parametrize("text, line, match", [
    ("a DT B-NP\nb NN\n", 2, "expected 3 columns \\(as on line 1\\), found 2"),
    ("a DT B-NP\n\nb NN I-NP O\n", 3, "expected 3 columns"),
    ("a DT O\n\u200b NN O\n", 2, "empty token"),
    ("a DT O\nb NN B-FOO\n", 2, "'B-FOO' is not in the label set"),
    ("", 1, "no sentences"),
    ("\n\n-DOCSTART- -X- O\n\n# only comments\n", 5, "no sentences"),
])
def test_conll_errors(tmp_path, text, line, match):
    raises_at(write(tmp_path, text), line, match, read_conll, "c", "s",
              labels={"O", "B-NP", "I-NP"})


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path, b"a DT O\n\nb NN O\nc\xff\xfe NN O\n")
    err = raises_at(path, 4, "invalid UTF-8 byte 0xff at column 2", read_conll, "c", "s")
    assert "corpus.txt" in str(err)
    raises_at(path, 4, "invalid UTF-8", read_raw, "c", "s")


@pytest.mark.parametrize("kwargs, match", [
    ({"label_col": 3}, "label column 3 does not exist: the line has 3 column"),
    ({"word_col": -4}, "word column -4 does not exist"),
    ({"word_col": 2, "label_col": -1}, "word and label are the same column \\(2\\)"),
])
def test_column_configuration_errors(tmp_path, kwargs, match):
    raises_at(write(tmp_path, "\n# c\na DT O\n"), 3, match, read_conll, "c", "s", **kwargs)


def test_long_sentence_is_not_truncated(tmp_path):
    path = write(tmp_path, "".join(f"w{i} NN O\n" for i in range(5000)))
    assert len(read_conll(path, "c", "s")[0].tokens) == 5000


CONLLU = """# sent_id = 1
# text = I'm here.
1-2\tI'm\t_\t_\t_\t_\t_\t_\t_\t_
1\tI\tI\tPRON\tPRP\t_\t2\tnsubj\t_\t_
2\t'm\tbe\tAUX\tVBP\t_\t0\troot\t_\t_
2.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t0:root\t_
3\there\there\tADV\tRB\t_\t2\tadvmod\t_\t_

1\tOk\tok\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def test_conllu(tmp_path):
    path = write(tmp_path, CONLLU)
    got = read_conllu(path, "ewt", "test")
    assert [(s.tokens, s.labels) for s in got] == [
        (["I", "'m", "here"], ["PRON", "AUX", "ADV"]), (["Ok"], ["INTJ"])]
    assert read_conllu(path, "ewt", "test", tag="xpos")[0].labels == ["PRP", "VBP", "RB"]
    assert len(read_conllu(path, "ewt", "test", limit=1)) == 1
    with pytest.raises(ValueError, match="'upos' or 'xpos'"):
        read_conllu(path, "ewt", "test", tag="deprel")


@pytest.mark.parametrize("line, bad, match", [
    (4, "1\tI\tI\tPRON\tPRP\t_\t2\tnsubj\t_", "expected 10 tab-separated"),
    (5, "3\t'm\tbe\tAUX\tVBP\t_\t0\troot\t_\t_", "token id '3', expected 2"),
    (4, "1\tI\tI\t_\tPRP\t_\t2\tnsubj\t_\t_", "missing or malformed label '_'"),
    (4, "1\t\tI\tPRON\tPRP\t_\t2\tnsubj\t_\t_", "empty token"),
])
def test_conllu_errors(tmp_path, line, bad, match):
    lines = CONLLU.split("\n")
    lines[line - 1] = bad
    raises_at(write(tmp_path, "\n".join(lines)), line, match, read_conllu, "c", "s")


def test_raw(tmp_path):
    path = write(tmp_path, "Mr. Smith went to Washington. He met the U.S. envoy.\n\nIt rained.\n")
    got = read_raw(path, "reuters", "unlabeled")
    assert [s.tokens for s in got] == [
        ["Mr.", "Smith", "went", "to", "Washington", "."],
        ["He", "met", "the", "U.S.", "envoy", "."], ["It", "rained", "."]]
    assert all(s.labels is None for s in got)
    assert [s.sid for s in got] == [f"reuters/unlabeled/{i}" for i in range(3)]
    assert len(read_raw(path, "r", "u", limit=1)) == 1
    raises_at(write(tmp_path, "\n \n", "blank.txt"), 2, "no sentences", read_raw, "r", "u")
    raises_at(write(tmp_path, "ok\n\U000e0001\n", "tag.txt"), 2, "empty token", read_raw, "r", "u")
    with pytest.raises(ValueError, match="positive"):
        read_raw(path, "r", "u", limit=0)


def _cfg(tmp_path: Path, text: str, **kwargs) -> CorpusConfig:
    return CorpusConfig(name="c", files={"train": str(write(tmp_path, text))}, **kwargs)


def test_read_corpus_dispatch_limit_and_convert(tmp_path):
    cfg = _cfg(tmp_path, CONLL03, convert_to="BIOES", limit=1)
    got = read_corpus(cfg, "train")
    assert len(got) == 1 and got[0].labels == ["S-ORG", "O", "S-MISC", "O", "O"]
    for fmt, text in [("tsv", "a\tNN\n"), ("conllu", CONLLU), ("raw", "Hi there.\n")]:
        cfg = CorpusConfig(name=fmt, format=fmt, scheme="none",
                           files={"x": str(write(tmp_path, text, fmt))})
        assert read_corpus(cfg, "x")[0].sid == f"{fmt}/x/0"
    xpos = CorpusConfig(format="conllu", label_col=4, files={"x": str(tmp_path / "conllu")})
    assert read_corpus(xpos, "x")[0].labels == ["PRP", "VBP", "RB"]
    with pytest.raises(ValueError, match="CoNLL-U label_col"):
        read_corpus(CorpusConfig(format="conllu", label_col=2, files=xpos.files), "x")
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        read_corpus(CorpusConfig(format="xml", files=xpos.files), "x")
    with pytest.raises(ValueError, match="no split 'dev'"):
        read_corpus(cfg, "dev")


def test_effective_scheme(tmp_path):
    cfg = _cfg(tmp_path, "a NN I-PER\nb NN B-PER\n")
    got = read_corpus(cfg, "train")
    assert effective_scheme(cfg, got) == "IOB1"
    cfg.convert_to = "bioes"
    assert effective_scheme(cfg, got) == "BIOES"
    assert effective_scheme(CorpusConfig(scheme="bio"), got) == "IOB2"


def test_read_corpus_repairs_invalid_sequences_with_a_warning(tmp_path):
    text = "a NN B-PER\nb NN I-PER\n\nc NN B-LOC\n\nd NN O\ne NN I-LOC\n"
    cfg = _cfg(tmp_path, text)
    with pytest.warns(CorpusWarning, match=r"corpus.txt: 1 sentence\(s\) not valid IOB2 "
                                           r"\(detected scheme\).*line\(s\) 7"):
        got = read_corpus(cfg, "train")
    assert got[2].labels == ["O", "B-LOC"]
    iob1 = _cfg(tmp_path, "a NN I-PER\nb NN B-PER\nc NN O\n", scheme="IOB1", convert_to="IOB2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_corpus(iob1, "train")[0].labels == ["B-PER", "B-PER", "O"]


def test_read_corpus_scheme_errors(tmp_path):
    cfg = _cfg(tmp_path, "a NN B-PER\nb NN S-PER\n", scheme="IOB2")
    raises_at(Path(cfg.files["train"]), 2, "'S-PER' is not a label of the configured scheme IOB2",
              lambda _p: read_corpus(cfg, "train"))
    pos = _cfg(tmp_path, "a NN\nb VB\n", convert_to="IOB2")
    assert read_corpus(CorpusConfig(files=pos.files), "train")[0].labels == ["NN", "VB"]
    with pytest.raises(ValueError, match="cannot convert labels from 'none' to 'IOB2'"):
        read_corpus(pos, "train")


SHARED = Path(os.environ.get("STRUCTKD_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))
# (folder, file, format, options, sentences, tokens): figures counted on the files themselves.
# The data README gives 12,542 sentences for UD train and 211,691 / 47,366 tokens for CoNLL-2000:
# counts that dropped the lines starting with '#', which are real tokens there (see corpus.py).
REAL = [
    ("conll2003_en", "train.txt", "conll", {}, 14041, 203621),
    ("conll2003_en", "valid.txt", "conll", {}, 3250, 51362),
    ("conll2003_en", "test.txt", "conll", {}, 3453, 46435),
    ("conll2000", "test.txt", "conll", {"label_col": 1, "scheme": "none"}, 2012, 47377),
    ("conll2002", "esp.testb", "conll", {"lang": "es"}, 1517, 51533),
    ("wikiann/en", "dev", "tsv", {"strip_lang_prefix": True}, 10000, 80536),
    ("ud_en_ewt_v2.1_tsv", "en-ud-train.upos.tsv", "tsv", {"scheme": "none"}, 12543, 204607),
    ("ud_en_ewt_v2.1_tsv", "en-ud-dev.ppos.tsv", "tsv", {"scheme": "none"}, 2002, 25150),
]


@pytest.mark.parametrize("folder, name, fmt, options, n_sentences, n_tokens", REAL,
                         ids=[f"{r[0]}/{r[1]}" for r in REAL])
def test_real_corpora(folder, name, fmt, options, n_sentences, n_tokens):
    path = SHARED / folder / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    cfg = CorpusConfig(name=folder, format=fmt, files={"x": str(path)}, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorpusWarning)  # CoNLL-2002: one I-MISC sentence start
        got = read_corpus(cfg, "x")
    assert (len(got), sum(len(s.tokens) for s in got)) == (n_sentences, n_tokens)


def test_real_reuters_prefix():
    path = SHARED / "reuters21578" / "reuters21578_bodies.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    got = read_corpus(CorpusConfig(name="reuters", format="raw", scheme="none",
                                   files={"unlabeled": str(path)}, limit=300), "unlabeled")
    assert len(got) == 300 and all(s.tokens and s.labels is None for s in got)
    assert got[0].tokens[:4] == ["Showers", "continued", "throughout", "the"]


DEMO = Path(__file__).parents[1] / "data" / "demo"


def test_demo_corpus_is_committed_readable_and_reproducible(tmp_path):
    """data/demo: the generator rewrites the committed files byte for byte; they read cleanly."""
    script = DEMO / "make_demo.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True)
    for name, n_sentences in [("train.conll", 900), ("dev.conll", 200), ("test.conll", 250)]:
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name
        assert (DEMO / name).stat().st_size < 200_000
        cfg = CorpusConfig(name="demo", files={"x": str(DEMO / name)}, scheme="IOB2")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = read_corpus(cfg, "x")
        assert len(got) == n_sentences
        assert {t for s in got for t in s.labels} == NER
    assert (tmp_path / "unlabeled.txt").read_bytes() == (DEMO / "unlabeled.txt").read_bytes()
    raw = read_raw(DEMO / "unlabeled.txt", "demo-raw", "unlabeled")
    assert len((DEMO / "unlabeled.txt").read_text().splitlines()) == 600 and len(raw) >= 1200


def test_holdout_makes_dev_from_the_end_of_train(tmp_path):
    lines = [f"w{i} B-PER\nx{i} O\n" for i in range(10)]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    cfg = CorpusConfig(name="c", files={"train": str(path)}, holdout=3, scheme="IOB2")
    train, dev = read_corpus(cfg, "train"), read_corpus(cfg, "dev")
    assert [s.tokens[0] for s in train] == [f"w{i}" for i in range(7)]
    assert [s.tokens[0] for s in dev] == ["w7", "w8", "w9"]
    assert {s.split for s in dev} == {"dev"} and {s.split for s in train} == {"train"}
    assert [s.sid for s in dev] == ["c/dev/0", "c/dev/1", "c/dev/2"] and train[6].sid == "c/train/6"
    with pytest.raises(DataError, match="holdout 10 leaves no training sentence"):
        read_corpus(CorpusConfig(name="c", files={"train": str(path)}, holdout=10), "dev")
    assert corpus_splits(cfg) == ["train", "dev"]
    for files in ({"train": str(path), "dev": str(path)}, {"test": str(path)}):
        with pytest.raises(ConfigError, match="c.holdout: cuts dev from the train file"):
            from_dict(CorpusConfig, {"name": "c", "files": files, "holdout": 3}, "c")


def test_a_missing_split_names_what_the_corpus_has(tmp_path):
    cfg = CorpusConfig(name="c", files={"train": str(write(tmp_path, "a O\n"))})
    with pytest.raises(ConfigError, match=r"corpus 'c' has no split 'dev'; it has \['train'\] "
                                          r"\(give files.dev, or holdout: N"):
        read_corpus(cfg, "dev")


def test_check_corpora_refuses_duplicate_names_bad_split_keys_and_missing_files(tmp_path):
    path = str(write(tmp_path, "a O\n"))
    same = [{"name": "c", "files": {"train": path}}, {"name": "d", "files": {"test": path}},
            {"name": "c", "files": {"test": path}}]
    with pytest.raises(ConfigError, match=r"prepare.corpora\[2\].name: corpus name 'c' is already "
                                          r"used by prepare.corpora\[0\]"):
        from_dict(PrepareConfig, {"corpora": same}, "prepare")
    with pytest.raises(ConfigError, match=r"corpora\[2\].name: corpus name 'c'"):
        check_corpora([CorpusConfig(**c) for c in same])
    with pytest.raises(ConfigError, match=r"prepare.corpora\[0\].files.valid: must be one of "
                                          r"\['train', 'dev', 'test', 'unlabeled'\], got 'valid'"):
        from_dict(PrepareConfig, {"corpora": [{"name": "c", "files": {"valid": path}}]}, "prepare")
    missing = CorpusConfig(name="c", files={"train": path, "test": str(tmp_path / "gone.txt")})
    with pytest.raises(DataError, match=rf"corpora\[0\].files.test: {tmp_path / 'gone.txt'} does "
                                        r"not exist \(corpus 'c'\)"):
        check_corpora([missing])
    with pytest.raises(DataError, match="is not a file"):
        check_corpora([CorpusConfig(name="c", files={"train": str(tmp_path)})])
    check_corpora([CorpusConfig(name="c", files={"train": path})])


def test_label_col_null_reads_a_labeled_file_as_tokens_only(tmp_path):
    """Labeled text used as unlabeled (zero-shot: a language's train file without its labels)."""
    cfg = CorpusConfig(name="es", lang="es", label_col=None, scheme="none",
                       files={"unlabeled": str(write(tmp_path, CONLL03))})
    got = read_corpus(cfg, "unlabeled")
    assert [s.tokens for s in got] == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"]]
    assert all(s.labels is None for s in got)
    check_corpora([cfg], "prepare.corpora")
    with pytest.raises(ConfigError, match=r"corpora\[0\].label_col: null reads tokens only.*'train'"):
        from_dict(PrepareConfig, {"corpora": [{"name": "c", "label_col": None,
                                               "files": {"train": cfg.files["unlabeled"]}}]})
