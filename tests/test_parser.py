"""The biaffine parser (pipeline/parser.py, pipeline/biaffine.py) and its gold training
(pipeline/parse_train.py) on tiny BiLSTM and tiny random 2-layer BERT encoders."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from pipeline.biaffine import SiblingScorer
from pipeline.config import DecoderConfig, EncoderConfig, ModelConfig, OptimConfig, TeacherConfig
from pipeline.parse_train import check_gold, gold_losses, parse_sentences
from pipeline.parser import Parser, build_parser
from pipeline.structs import mean_field_heads, mst
from pipeline.structs.tree import allowed_arcs
from pipeline.tagger import Tagger, build_tagger
from tests import enumerated as E
from tests.helpers import write_tiny_bert

RELS = ["det", "nsubj", "obj", "punct", "root"]
SENTS = [["the", "cat", "sat", "down", "."], ["john", "visited", "paris"], ["hi"]]
DECODERS = {"heads": DecoderConfig(kind="heads", arc_mlp=12, rel_mlp=6),
            "tree": DecoderConfig(kind="tree", arc_mlp=12, rel_mlp=6),
            "projective": DecoderConfig(kind="tree", projective=True, arc_mlp=12, rel_mlp=6),
            "second_order": DecoderConfig(kind="heads", second_order=True, arc_mlp=12, rel_mlp=6)}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(write_tiny_bert(tmp_path_factory.mktemp("bert")))


def encoder_cfg(kind: str, bert: str, dropout: float = 0.1) -> EncoderConfig:
    if kind == "transformer":
        return EncoderConfig(name=bert, dropout=dropout)
    return EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="cnn", char_dim=4, char_hidden=4,
                         dropout=dropout)


def random_parser(kind: str, decoder: str, bert: str, seed: int = 0) -> Parser:
    """A parser in eval mode whose every weight is random (the biaffine scorers start at zero)."""
    torch.manual_seed(seed)
    parser = build_parser(ModelConfig(encoder_cfg(kind, bert), DECODERS[decoder]), RELS, SENTS).eval()
    with torch.no_grad():
        for param in parser.parameters():
            param.normal_(0.0, 0.5)
        for module in parser.modules():  # padding embeddings stay zero, as trained ones do
            if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx] = 0.0
    return parser


def sentence(tokens, heads, rels, sid="t/train/0", upos=None):
    return SimpleNamespace(tokens=tokens, heads=heads, rels=rels, sid=sid, upos=upos)


CASES = [(kind, dec) for kind in ("bilstm", "transformer") for dec in DECODERS]


@pytest.mark.parametrize("kind,decoder", CASES)
def test_shapes_masks_and_padding(bert, kind, decoder):
    parser = random_parser(kind, decoder, bert)
    features = parser.featurize(SENTS)  # featurize | forward: forward needs tensors only
    assert all(isinstance(v, torch.Tensor) for v in features.values())
    structure = parser(features)
    arcs = structure.arcs
    assert structure.kind == ("labeled_tree" if DECODERS[decoder].kind == "tree" else "labeled_heads")
    assert arcs.scores.shape == (3, 6, 6) and arcs.scores.dtype == torch.float32
    assert structure.labels.scores.shape == (3, 6, 6, len(RELS))
    assert arcs.word_lengths.tolist() == [5, 3, 1]
    assert getattr(arcs, "projective", False) == DECODERS[decoder].projective
    allowed = allowed_arcs(arcs.word_lengths, 6)
    part = structure.parts["arc"]
    assert torch.isinf(part[~allowed]).all() and torch.isfinite(part[allowed]).all()
    marg = structure.marginals()
    columns = marg["arc"].sum(1)
    real = allowed.any(1)
    assert torch.allclose(columns[real], torch.ones(int(real.sum())), atol=1e-5)
    assert (columns[~real] == 0).all() and (marg["arc"][~allowed] == 0).all()
    assert torch.allclose(marg["rel"].sum(-1)[real], torch.ones(int(real.sum())), atol=1e-5)
    # a padded row scores as the same sentence alone
    for b, tokens in enumerate(SENTS):
        alone = parser.structure([tokens])
        n = len(tokens) + 1
        assert torch.allclose(alone.arcs.scores[0], arcs.scores[b, :n, :n], atol=1e-4)
        assert torch.allclose(alone.labels.scores[0], structure.labels.scores[b, :n, :n], atol=1e-4)


@pytest.mark.parametrize("kind,decoder", CASES)
def test_parse_gives_the_best_tree(bert, kind, decoder):
    parser = random_parser(kind, decoder, bert, seed=1)
    heads, rels = parser.parse(SENTS)
    assert [len(h) for h in heads] == [len(r) for r in rels] == [len(s) for s in SENTS]
    assert all(r in RELS for row in rels for r in row)
    structure = parser.structure(SENTS)
    projective = DECODERS[decoder].projective
    y = torch.zeros(3, 6, dtype=torch.long)
    for b, h in enumerate(heads):
        y[b, 1:len(h) + 1] = torch.tensor(h)
    assert mst.is_tree(y, torch.tensor([5, 3, 1]), True, projective).all()
    for b, tokens in enumerate(SENTS):  # the enumerated best single-root tree under the arc scores
        n = len(tokens)
        best = E.trees(structure.arcs.scores[b, :n + 1, :n + 1], projective=projective).argmax()
        assert best[1:].tolist() == heads[b]
        label_scores = structure.labels.scores[b]
        assert rels[b] == [RELS[int(label_scores[h, d + 1].argmax())] for d, h in enumerate(heads[b])]


def test_head_selection_parse_is_a_tree_where_its_argmax_is_not(bert):
    parser = random_parser("bilstm", "heads", bert, seed=0)
    structure = parser.structure(SENTS * 4)
    greedy = structure.arcs.argmax()
    lengths = structure.arcs.word_lengths
    assert not mst.is_tree(greedy, lengths, True, False).all()  # the seed makes some greedy heads cyclic
    assert mst.is_tree(parser.trees(structure), lengths, True, False).all()


@pytest.mark.parametrize("kind", ["bilstm", "transformer"])
def test_save_load_round_trip(bert, tmp_path, monkeypatch, kind):
    parser = random_parser(kind, "second_order", bert, seed=2)
    before = parser.structure(SENTS)
    folder = parser.save(tmp_path / "parser")
    parser.save(folder)  # overwrite in place, atomically
    meta = json.loads((folder / "config.json").read_text())
    assert meta["architecture"] == "biaffine" and meta["labels"] == RELS and meta["decoder"] == "heads"
    assert (folder / ("encoder/tokenizer.json" if kind == "transformer" else "vocab.json")).exists()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".txt"}

    def unsafe(*args, **kwargs):
        raise AssertionError("Parser.load used a pickle-based loader")

    for target in ("torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler"):
        monkeypatch.setattr(target, unsafe)
    loaded = Parser.load(folder)
    assert not loaded.training and loaded.labels == RELS
    after = loaded.structure(SENTS)
    assert torch.equal(before.arcs.scores, after.arcs.scores)
    assert torch.equal(before.labels.scores, after.labels.scores)
    assert loaded.parse(SENTS) == parser.parse(SENTS)
    assert loaded.fingerprint() == parser.fingerprint()
    with torch.no_grad():
        loaded.root[0] += 1e-3
    assert loaded.fingerprint() != parser.fingerprint()


def test_folders_refuse_the_other_loader(bert, tmp_path):
    parser_dir = random_parser("bilstm", "tree", bert).save(tmp_path / "parser")
    cfg = ModelConfig(encoder_cfg("bilstm", bert), DecoderConfig(kind="maxent"))
    tagger_dir = build_tagger(cfg, ["O", "B-X", "I-X"], "IOB2", SENTS).save(tmp_path / "tagger")
    with pytest.raises(ValueError, match="not a biaffine parser folder.*Tagger.load"):
        Parser.load(tagger_dir)
    with pytest.raises(ValueError):
        Tagger.load(parser_dir)


def test_bad_configurations_are_refused(bert):
    enc = encoder_cfg("bilstm", bert)
    with pytest.raises(ValueError, match="decoder.kind must be one of"):
        build_parser(ModelConfig(enc, DecoderConfig(kind="crf")), RELS, SENTS)
    with pytest.raises(ValueError, match="second_order.*'heads'"):
        build_parser(ModelConfig(enc, DecoderConfig(kind="tree", second_order=True)), RELS, SENTS)
    with pytest.raises(ValueError, match="distinct"):
        build_parser(ModelConfig(enc, DECODERS["heads"]), ["a", "a"], SENTS)
    with pytest.raises(ValueError, match="vocab_sentences"):
        build_parser(ModelConfig(enc, DECODERS["heads"]), RELS)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_second_order_marginals_are_the_mean_field(bert, iterations):
    torch.manual_seed(3)
    dec = DecoderConfig(kind="heads", second_order=True, mean_field_iterations=iterations, arc_mlp=12, rel_mlp=6)
    parser = build_parser(ModelConfig(encoder_cfg("bilstm", bert, 0.0), dec), RELS, SENTS)
    with torch.no_grad():
        for param in parser.parameters():
            param.normal_()
    structure = parser.structure(SENTS)
    q = structure.marginals()["arc"]
    real = allowed_arcs(structure.arcs.word_lengths, 6).any(1)
    assert torch.allclose(q.sum(1)[real], torch.ones(int(real.sum())), atol=1e-5)
    assert (q.sum(1)[~real] == 0).all()
    # the same Q from the mean field run from the parser's first-order and sibling scores
    vectors, mask = parser.encoder.encode(SENTS)
    x = torch.cat([parser.root.expand(3, 1, -1), vectors], 1)
    arc = parser.arc_attn(parser.arc_dep(x), parser.arc_head(x))[..., 0]
    sib = parser.siblings(x)
    expected = mean_field_heads(arc, sib, mask, iterations)
    assert torch.allclose(q, expected, atol=1e-6)
    assert not torch.allclose(q, mean_field_heads(arc, None, mask, 0), atol=1e-3)  # siblings matter
    # log-probs in log space: finite for every possible arc even where Q underflows in float32
    assert torch.isfinite(structure.log_marginals()["arc"][allowed_arcs(structure.arcs.word_lengths, 6)]).all()


def test_sibling_scores_are_the_symmetrized_decomposed_trilinear():
    torch.manual_seed(4)
    scorer = SiblingScorer(in_dim=5, dim=3, rank=4, dropout=0.0)
    with torch.no_grad():
        scorer.project.normal_()
    x = torch.randn(2, 4, 5)
    sib = scorer(x)
    one = torch.ones(2, 4, 1)
    p, q, r = (torch.cat([mlp(x), one], -1) @ w for mlp, w in zip((scorer.head, scorer.dep, scorer.sib), scorer.project))
    for b, h, d, s in [(0, 1, 2, 3), (1, 0, 3, 1), (1, 2, 2, 2), (0, 3, 0, 1)]:
        f = lambda a, c: float((p[b, h] * q[b, a] * r[b, c]).sum())  # noqa: E731
        want = 0.0 if d == s else f(d, s) + f(s, d)
        assert sib[b, h, d, s].item() == pytest.approx(want, abs=1e-5)
    fresh = SiblingScorer(in_dim=5, dim=3, rank=4, dropout=0.0)
    assert (fresh(x) == 0).all()  # starts at zero like the biaffine scorers


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_gold_losses_are_the_enumerated_nll(bert, decoder):
    parser = random_parser("bilstm", decoder, bert, seed=5)
    gold = [sentence(["the", "cat", "sat", "."], [2, 3, 0, 3], ["det", "nsubj", "root", "punct"]),
            sentence(["hi"], [0], ["root"])]
    arc, rel = gold_losses(parser, gold)
    structure = parser.structure([s.tokens for s in gold])
    tree = DECODERS[decoder].kind == "tree"
    for b, s in enumerate(gold):
        n = len(s.tokens)
        scores = structure.arcs.scores[b, :n + 1, :n + 1]
        oracle = E.trees(scores, projective=DECODERS[decoder].projective) if tree else E.head_selections(scores)
        assert arc[b].item() == pytest.approx(-oracle.log_prob(torch.tensor([0] + s.heads)), abs=1e-4)
        logits = structure.labels.scores[b]
        want = -sum(torch.log_softmax(logits[h, d + 1], -1)[RELS.index(r)].item()
                    for d, (h, r) in enumerate(zip(s.heads, s.rels)))
        assert rel[b].item() == pytest.approx(want, abs=1e-4)


def test_check_gold_names_the_bad_sentence():
    tree, proj = DecoderConfig(kind="tree"), DecoderConfig(kind="tree", projective=True)
    heads = DecoderConfig(kind="heads")
    nonprojective = sentence(["a", "b", "c", "d"], [3, 4, 0, 3], ["x"] * 4, sid="ud/train/7")
    check_gold([nonprojective], tree)
    with pytest.raises(ValueError, match="ud/train/7.*not projective"):
        check_gold([nonprojective], proj)
    two_roots = sentence(["a", "b"], [0, 0], ["x", "x"], sid="s2")
    check_gold([two_roots], heads)
    with pytest.raises(ValueError, match="s2.*2 root children"):
        check_gold([two_roots], tree)
    with pytest.raises(ValueError, match="s3.*cycle"):
        check_gold([sentence(["a", "b", "c"], [0, 3, 2], ["x"] * 3, sid="s3")], tree)
    with pytest.raises(ValueError, match="s4: word 2 has head 2"):
        check_gold([sentence(["a", "b"], [0, 2], ["x", "x"], sid="s4")], heads)
    with pytest.raises(ValueError, match="s5: word 1 has head 3"):
        check_gold([sentence(["a", "b"], [3, 0], ["x", "x"], sid="s5")], heads)
    with pytest.raises(ValueError, match="s6: 2 words but 1 heads"):
        check_gold([sentence(["a", "b"], [0], ["x", "x"], sid="s6")], heads)
    with pytest.raises(ValueError, match="s7 has no gold heads"):
        check_gold([sentence(["a"], None, None, sid="s7")], heads)


def test_parse_sentences_keeps_order_and_skips_empty(bert):
    parser = random_parser("bilstm", "tree", bert).train()
    batch = [SENTS[0], [], SENTS[2], SENTS[1]]
    heads, rels = parse_sentences(parser, batch, batch_size=2)
    assert parser.training  # mode restored
    parser.eval()
    alone = [parser.parse([s]) if s else ([[]], [[]]) for s in batch]
    assert heads == [a[0][0] for a in alone] and rels == [a[1][0] for a in alone]
