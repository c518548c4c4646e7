"""Rule-based sentence splitting and tokenization in CoNLL-2003 style."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from pipeline.rawtext import sentences, tokenize

DEMO = Path(__file__).parents[1] / "data" / "demo" / "make_demo.py"


@pytest.mark.parametrize("text, tokens", [
    ("The U.S. said it would buy 1,200.50 tonnes.",
     "The U.S. said it would buy 1,200.50 tonnes ."),
    ("Germany's ministers' plan, O'Brien said.", "Germany 's ministers ' plan , O'Brien said ."),
    ("I don't know, can't say; they're sure I'm right.",
     "I do n't know , ca n't say ; they 're sure I 'm right ."),
    ('"Yes," he said (quietly).', '" Yes , " he said ( quietly ) .'),
    ("It cost $5.5 million, up 3.5%.", "It cost $ 5.5 million , up 3.5 % ."),
    ("A right-wing, U.S.-led, year-on-year 6-4 win on 1996-08-22.",
     "A right-wing , U.S.-led , year-on-year 6-4 win on 1996-08-22 ."),
    ("Wait... what?! -- nothing", "Wait ... what ? ! -- nothing"),
    ("Acme Corp.'s shares at 10:30 a.m. rose 1/2 point",
     "Acme Corp. 's shares at 10:30 a.m. rose 1/2 point"),
    ("<BHAM.L> said: ok", "< BHAM.L > said : ok"),
    ("the '90s, 'quoted' word", "the '90s , ' quoted ' word"),
    ("soft\xadhyphen and zero\u200bwidth", "softhyphen and zero width"),
    ("", ""),
])
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens.split()


@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith went to Washington. He met J. Doe there.",
     ["Mr. Smith went to Washington .", "He met J. Doe there ."]),
    # a sentence ending on an abbreviation gets its own period, as in CoNLL-2003 ("Inc .")
    ("He joined Acme Inc. The deal closed.", ["He joined Acme Inc .", "The deal closed ."]),
    ("Talks in the U.S. The end.", ["Talks in the U.S. .", "The end ."]),
    ("Talks in the U.S. ended.", ["Talks in the U.S. ended ."]),
    ("The U.K. And West Germany agreed.", ["The U.K. And West Germany agreed ."]),
    ('"Why?" he asked. "Because." Then silence!',
     ['" Why ? " he asked .', '" Because . "', "Then silence !"]),
    ("Prices rose 5.93 pct. 1987 was worse... Really.",
     ["Prices rose 5.93 pct .", "1987 was worse ...", "Really ."]),
    ("He said... and left. it was odd", ["He said ... and left . it was odd"]),
    ("No final period", ["No final period"]),
    ("1. Michael Schumacher (Germany) 1:22.6.", ["1. Michael Schumacher ( Germany ) 1:22.6 ."]),
    ("Ends with Dr.", ["Ends with Dr ."]),
    ("   ", []),
])
def test_sentences(text, expected):
    assert sentences(text) == [s.split() for s in expected]


def test_round_trip_of_demo_sentences():
    """Detokenized demo sentences and documents tokenize back to their CoNLL tokens."""
    spec = importlib.util.spec_from_file_location("make_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    rng = random.Random(0)
    for _ in range(100):
        doc = [[row[0] for row in demo.sentence(rng)] for _ in range(3)]
        text = " ".join(demo.detokenize(tokens) for tokens in doc)
        assert sentences(text) == doc, text


@pytest.mark.parametrize("text, expected", [
    # spaCy's Spanish rules: abbreviations (Sr., EE.UU.) kept whole, hyphens inside words and dates
    # not split, opening marks (" ¿) start the next sentence
    ('Lo dijo el Sr. López en EE.UU. ayer. "Es así", dijo (EFE). ¿Qué pasa?',
     ['Lo dijo el Sr. López en EE.UU. ayer .', '" Es así " , dijo ( EFE ) .', "¿ Qué pasa ?"]),
    ("Un acuerdo árabe-israelí del 1996-08-22 . Otro", ["Un acuerdo árabe-israelí del 1996-08-22 .",
                                                        "Otro"]),
    ("   ", []),
])
def test_sentences_spanish(text, expected):
    assert sentences(text, "es") == [s.split() for s in expected]
    assert tokenize(text, "es") == " ".join(expected).split()


def test_unsupported_language():
    with pytest.raises(ValueError, match="language 'zz'"):
        sentences("Hola.", "zz")
