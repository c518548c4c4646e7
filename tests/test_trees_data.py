"""The tree data layer (issue 17): CoNLL-U trees (pipeline/conllu_reader.py), parsing as sequence
labeling (pipeline/head_encoding.py) and UAS / LAS (pipeline/attachment.py)."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from pipeline.attachment import attachment_scores
from pipeline.config import CorpusConfig
from pipeline.conllu_reader import read_conllu
from pipeline.corpus import read_corpus
from pipeline.errors import ConfigError
from pipeline.head_encoding import KINDS, decode, encode, label_targets
from pipeline.readers import CorpusError

TAGS = ["NOUN", "VERB", "DET", "PUNCT"]


def line(i, form, upos, head, rel):
    return f"{i}\t{form}\t{form.lower()}\t{upos}\t_\t_\t{head}\t{rel}\t_\t_"


def write(tmp_path, text, name="t.conllu"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


DOC = "\n".join(["# sent_id = 1", "# text = He doesn't go.",
                 line(1, "He", "PRON", 4, "nsubj"),
                 "2-3\tdoesn't\t_\t_\t_\t_\t_\t_\t_\t_",
                 line(2, "does", "AUX", 4, "aux"), line(3, "n't", "PART", 4, "advmod"),
                 line(4, "go", "VERB", 0, "root"), "4.1\tgo\tgo\tVERB\t_\t_\t_\t_\t4:conj\t_",
                 line(5, ".", "PUNCT", 4, "punct"), "",
                 line(1, "Yes", "INTJ", 0, "root"), ""])


def test_conllu_trees_skip_multiword_and_empty_nodes(tmp_path):
    got = read_conllu(write(tmp_path, DOC), "c", "train")
    assert [s.tokens for s in got] == [["He", "does", "n't", "go", "."], ["Yes"]]
    assert got[0].heads == [4, 4, 4, 0, 4] and got[0].rels == ["nsubj", "aux", "advmod", "root", "punct"]
    assert got[0].upos == got[0].labels == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert got[1].heads == [0] and got[1].rels == ["root"]


def test_conllu_without_trees_and_tree_errors(tmp_path):
    plain = "\n".join([line(1, "a", "DET", "_", "_"), line(2, "b", "NOUN", "_", "_"), ""])
    got = read_conllu(write(tmp_path, plain), "c", "s")
    assert got[0].heads is None and got[0].rels is None and got[0].upos == ["DET", "NOUN"]
    cases = {
        "cycle": ([line(1, "a", "X", 2, "dep"), line(2, "b", "X", 1, "dep"), line(3, "c", "X", 0, "root")],
                  1, "cycle"),
        "range": ([line(1, "a", "X", 0, "root"), line(2, "b", "X", 3, "dep")], 2, "HEAD 3"),
        "self": ([line(1, "a", "X", 0, "root"), line(2, "b", "X", 2, "dep")], 2, "HEAD 2"),
        "mixed": ([line(1, "a", "X", 0, "root"), line(2, "b", "X", "_", "dep")], 2, "no HEAD"),
        "deprel": ([line(1, "a", "X", 0, "root"), line(2, "b", "X", 1, "_")], 2, "DEPREL"),
        "head": ([line(1, "a", "X", 0, "root"), line(2, "b", "X", "x", "dep")], 2, "head"),
    }
    for name, (lines, at, match) in cases.items():
        path = write(tmp_path, "\n".join(["# c", *lines, ""]), f"{name}.conllu")
        with pytest.raises(CorpusError, match=match) as err:
            read_conllu(path, "c", "s")
        assert err.value.line == at + 1, name


def random_tree(gen: random.Random, n: int) -> list[int]:
    """A random tree over words 1..n (one root child): attach words in a random order."""
    order = list(range(1, n + 1))
    gen.shuffle(order)
    heads = [0] * n
    for i, d in enumerate(order[1:], 1):
        heads[d - 1] = order[gen.randrange(i)]
    return heads


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_round_trip_and_the_rel_pos_definition(kind):
    gen = random.Random(0)
    for _ in range(200):
        n = gen.randint(1, 9)
        heads, rels = random_tree(gen, n), [gen.choice(["a", "b:c"]) for _ in range(n)]
        upos = [gen.choice(TAGS) for _ in range(n)]
        labels = encode(heads, rels, upos, kind)
        assert decode(labels, upos, kind) == (heads, rels)
    #        1 The/DET  2 dog/NOUN  3 saw/VERB  4 a/DET  5 cat/NOUN
    heads, upos = [2, 3, 0, 5, 3], ["DET", "NOUN", "VERB", "DET", "NOUN"]
    rels = ["det", "nsubj", "root", "det", "obj"]
    expected = {"rel_pos": ["+1/NOUN@det", "+1/VERB@nsubj", "-1/ROOT@root", "+1/NOUN@det", "-1/VERB@obj"],
                "rel_offset": ["+1@det", "+1@nsubj", "root@root", "+1@det", "-2@obj"]}[kind]
    assert encode(heads, rels, upos, kind) == expected
    if kind == "rel_pos":  # the first NOUN left of word 5 is word 2; there is no second one
        assert decode(["-1/ROOT@root"] * 4 + ["-1/NOUN@x"], upos, kind)[0][4] == 2
        assert decode(["-1/ROOT@root"] * 4 + ["-2/NOUN@x"], upos, kind)[0][4] == 1


def test_decode_attaches_impossible_heads_to_the_root_child():
    upos = ["DET", "NOUN", "VERB"]
    heads, rels = decode(["+3/NOUN@det", "+1/VERB@nsubj", "-1/ROOT@root"], upos, "rel_pos")
    assert heads == [3, 3, 0] and rels == ["det", "nsubj", "root"]
    assert decode(["junk", "+9@x"], None, "rel_offset") == ([0, 0], ["junk", "x"])
    with pytest.raises(ValueError, match="UPOS"):
        encode([0], ["root"], None, "rel_pos")


@pytest.mark.parametrize("kind", KINDS)
def test_label_targets_against_enumeration_of_every_head_and_relation(kind):
    gen = np.random.default_rng(1)
    rel_names = ["root", "det", "obj"]
    n = 5
    upos = [TAGS[i] for i in gen.integers(0, len(TAGS), n)]
    arc = gen.random((n, n + 1))
    arc[np.arange(n), np.arange(1, n + 1)] = 0.0  # no self loops
    arc /= arc.sum(1, keepdims=True)
    rel = gen.random((n, 3))
    rel /= rel.sum(1, keepdims=True)
    # the student's labels: those of 30 random trees (some (head, rel) pairs have no label)
    rnd = random.Random(2)
    labels = sorted({lab for _ in range(30) for lab in encode(random_tree(rnd, n),
                     [rnd.choice(rel_names) for _ in range(n)], upos, kind)})
    expected = np.zeros((n, len(labels)))
    for d, h, r in itertools.product(range(1, n + 1), range(n + 1), range(3)):
        if h == d:
            continue
        heads = [0 if e != d else h for e in range(1, n + 1)]  # only word d's label is read
        label = encode(heads, [rel_names[r]] * n, upos, kind)[d - 1] if h != d else None
        if label in labels:
            expected[d - 1, labels.index(label)] += arc[d - 1, h] * rel[d - 1, r]
    got = label_targets(arc, rel, upos, labels, rel_names, kind)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert (got.sum(1) <= 1 + 1e-6).all() and got.sum() > 0


def test_attachment_scores_and_punctuation():
    gold_h, gold_r = [[2, 0, 2]], [["nsubj", "root", "punct"]]
    pred_h, pred_r = [[2, 0, 1]], [["obj", "root", "punct"]]
    all_words = attachment_scores(gold_h, gold_r, pred_h, pred_r)
    assert all_words == {"uas": 2 / 3, "las": 1 / 3, "words": 3}
    no_punct = attachment_scores(gold_h, gold_r, pred_h, pred_r, upos=[["PRON", "VERB", "PUNCT"]])
    assert no_punct == {"uas": 1.0, "las": 0.5, "words": 2}
    sub = attachment_scores([[0]], [["nsubj:pass"]], [[0]], [["nsubj"]], universal=True)
    assert sub["las"] == 1.0 and attachment_scores([[0]], [["nsubj:pass"]], [[0]], [["nsubj"]])["las"] == 0
    with pytest.raises(ValueError, match="lengths"):
        attachment_scores([[0, 1]], [["root"]], [[0]], [["root"]])


def test_a_corpus_config_with_head_encoding_labels_words_with_their_heads(tmp_path):
    path = write(tmp_path, DOC)
    cfg = CorpusConfig(name="gum", format="conllu", files={"train": str(path)}, head_encoding="rel_pos")
    got = read_corpus(cfg, "train")
    assert got[0].labels == encode(got[0].heads, got[0].rels, got[0].upos, "rel_pos")
    with pytest.raises(ConfigError, match="head_encoding"):
        read_corpus(CorpusConfig(name="gum", format="conllu", files={"train": str(path)},
                                 head_encoding="rel_pos", scheme="BIOES"), "train")
