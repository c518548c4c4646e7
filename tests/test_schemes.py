"""Tag schemes: validity, conversion between every pair, detection, CRF constraints."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crf import Constraints
from pipeline.schemes import (allowed_transitions, complete_labels, convert, detect_scheme,
                              encode, entity_types, first_invalid, is_valid, normalize_scheme,
                              parse_label, sort_labels, spans)

SCHEMES = ["IOB1", "IOB2", "BIOES"]
# One sentence with every pattern that matters: adjacent entities of the same type, of different
# types, single- and multi-token entities, entities at both ends.
EXAMPLE = {
    "spans": [(0, 2, "PER"), (2, 3, "PER"), (3, 4, "LOC"), (5, 8, "ORG"), (8, 9, "ORG")],
    "IOB2": ["B-PER", "I-PER", "B-PER", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG", "B-ORG"],
    "IOB1": ["I-PER", "I-PER", "B-PER", "I-LOC", "O", "I-ORG", "I-ORG", "I-ORG", "B-ORG"],
    "BIOES": ["B-PER", "E-PER", "S-PER", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG", "S-ORG"],
}


def test_parse_and_normalize():
    assert parse_label("O") == ("O", None)
    assert parse_label("B-PER") == ("B", "PER")
    assert parse_label("I-SOME-TYPE") == ("I", "SOME-TYPE")
    assert parse_label("NN") == ("", "NN")
    assert parse_label("-LRB-") == ("", "-LRB-")
    assert normalize_scheme("bio") == "IOB2" and normalize_scheme("IOBES") == "BIOES"
    with pytest.raises(ValueError, match="unknown tag scheme"):
        normalize_scheme("BILOU")


@pytest.mark.parametrize("src", SCHEMES)
@pytest.mark.parametrize("dst", SCHEMES)
def test_convert_every_pair_on_example(src, dst):
    assert is_valid(EXAMPLE[src], src)
    assert spans(EXAMPLE[src]) == EXAMPLE["spans"]
    assert convert(EXAMPLE[src], src, dst) == EXAMPLE[dst]


def test_none_scheme_converts_only_to_itself():
    assert convert(["NN", "VB"], "none", "none") == ["NN", "VB"]
    with pytest.raises(ValueError, match="'none'"):
        convert(["B-PER"], "IOB2", "none")
    with pytest.raises(ValueError, match="'none'"):
        encode([], 2, "none")


def test_strict_convert_rejects_invalid_input_and_lenient_repairs():
    with pytest.raises(ValueError, match="not valid IOB2.*'I-PER' at position 1"):
        convert(["O", "I-PER"], "IOB2", "BIOES")
    assert convert(["O", "I-PER"], "IOB2", "BIOES", strict=False) == ["O", "S-PER"]
    with pytest.raises(ValueError, match="end of the sentence"):
        convert(["B-PER"], "BIOES", "IOB2")
    assert convert(["B-PER", "I-LOC"], "IOB2", "IOB2", strict=False) == ["B-PER", "B-LOC"]
    with pytest.raises(ValueError, match="no B-/I-/E-/S- prefix"):
        convert(["NN"], "IOB2", "IOB2", strict=False)


def test_encode_rejects_overlaps():
    with pytest.raises(ValueError, match="overlaps"):
        encode([(0, 2, "PER"), (1, 3, "LOC")], 3, "IOB2")
    with pytest.raises(ValueError, match="outside"):
        encode([(0, 4, "PER")], 3, "IOB2")


@st.composite
def span_sets(draw):
    """Random non-overlapping spans over a random length, adjacency included."""
    length = draw(st.integers(0, 12))
    out, pos = [], 0
    while pos < length:
        pos += draw(st.integers(0, 2))
        width = draw(st.integers(1, 3))
        if pos + width > length:
            break
        out.append((pos, pos + width, draw(st.sampled_from(["PER", "LOC", "B-X"]))))
        pos += width
    return length, out


@settings(max_examples=200, deadline=None)
@given(span_sets())
def test_round_trips_through_every_scheme(case):
    length, entity_spans = case
    encoded = {s: encode(entity_spans, length, s) for s in SCHEMES}
    for src in SCHEMES:
        assert is_valid(encoded[src], src)
        assert spans(encoded[src]) == entity_spans
        for dst in SCHEMES:
            assert convert(encoded[src], src, dst) == encoded[dst]


def _path_allowed(c: Constraints, path: tuple[int, ...]) -> bool:
    ok = bool(c.start[path[0]]) and bool(c.end[path[-1]])
    return ok and all(bool(c.transitions[a, b]) for a, b in zip(path, path[1:]))


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "BIOES", "none"])
def test_allowed_transitions_agree_with_is_valid_exhaustively(scheme):
    """Every sequence of length 1..4: constraints allow it <=> is_valid <=> it is canonical."""
    labels = (["O", "NN", "B-PER"] if scheme == "none"
              else complete_labels(["B-PER", "B-LOC"], scheme))
    c = allowed_transitions(labels, scheme)
    assert c.transitions.dtype == torch.bool and c.transitions.shape == (len(labels),) * 2
    assert c.start.shape == c.end.shape == (len(labels),)
    counts = [0, 0]
    for n in range(1, 5):
        for path in itertools.product(range(len(labels)), repeat=n):
            tags = [labels[i] for i in path]
            valid = is_valid(tags, scheme)
            assert _path_allowed(c, path) == valid, tags
            if scheme != "none":  # independent definition: decoding then re-encoding is identity
                assert valid == (convert(tags, scheme, scheme, strict=False) == tags), tags
            counts[valid] += 1
    assert counts[1] > 0 and (counts[0] > 0) == (scheme != "none")


def test_first_invalid_positions():
    assert first_invalid(["O", "B-PER", "I-PER"], "IOB2") is None
    assert first_invalid(["O", "I-PER"], "IOB2") == 1
    assert first_invalid(["B-PER"], "IOB1") == 0
    assert first_invalid(["I-PER", "B-PER", "O", "B-PER"], "IOB1") == 3
    assert first_invalid(["B-PER", "I-PER"], "BIOES") == 2
    assert first_invalid(["S-PER"], "IOB2") == 0
    assert first_invalid(["NN", "VB"], "none") is None
    assert is_valid([], "BIOES")


def test_allowed_transitions_rejects_foreign_labels():
    with pytest.raises(ValueError, match="not IOB2 labels"):
        allowed_transitions(["O", "B-PER", "S-PER"], "IOB2")
    with pytest.raises(ValueError, match="not BIOES labels"):
        allowed_transitions(["O", "NN"], "BIOES")
    everything = allowed_transitions(["NN", "VB"], "none")
    assert everything.transitions.all() and everything.start.all() and everything.end.all()


def test_allowed_transitions_iob2_examples():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    c = allowed_transitions(labels, "IOB2")
    assert c.start.tolist() == [True, True, False, True, False]
    assert c.end.all()
    assert c.transitions[labels.index("B-PER"), labels.index("I-PER")]
    assert not c.transitions[labels.index("B-PER"), labels.index("I-LOC")]
    assert not c.transitions[labels.index("O"), labels.index("I-LOC")]


@pytest.mark.parametrize("sequences, expected", [
    ([["B-PER", "I-PER", "O"]], "IOB2"),
    ([["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]], "IOB1"),
    ([["S-PER", "O"], ["B-LOC", "E-LOC"]], "BIOES"),
    ([["NN", "VB", "DT"]], "none"),
    ([["O", "O"]], "IOB2"),
    ([], "none"),
    # one slip (a sentence starting with I-LOC, as in CoNLL-2002) does not outvote IOB2 data
    ([["B-PER", "O"], ["B-LOC", "O"], ["I-LOC", "O"]], "IOB2"),
    ([["I-PER", "O"], ["I-LOC", "O"], ["B-LOC", "O"]], "IOB1"),
])
def test_detect_scheme(sequences, expected):
    assert detect_scheme(sequences) == expected


def test_label_helpers():
    labels = ["I-PER", "B-LOC", "O", "B-PER", "S-LOC", "E-LOC", "I-LOC", "B-PER"]
    assert sort_labels(labels) == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER"]
    assert sort_labels(["VB", "NN", "-LRB-"]) == ["-LRB-", "NN", "VB"]
    assert entity_types(labels + ["NN"]) == ["LOC", "PER"]
    assert complete_labels(["B-PER", "I-LOC"], "BIOES") == [
        "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER", "E-PER", "S-PER"]
    assert complete_labels(["B-PER"], "IOB1") == ["O", "B-PER", "I-PER"]
    assert complete_labels(["NN", "DT"], "none") == ["DT", "NN"]
