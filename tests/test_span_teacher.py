"""The span NER teacher (pipeline/span_model.py, pipeline/span_train.py): a biaffine span scorer
(Yu et al. 2020) under the exact span-set NLL, on a tiny BiLSTM and a tiny random 2-layer BERT."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.config import (CorpusConfig, DecoderConfig, EncoderConfig, ModelConfig, OptimConfig,
                             TeacherConfig)
from pipeline.hf_teacher import load_any_teacher, teacher_kind
from pipeline.parser import build_parser
from pipeline.schemes import complete_labels, is_valid, spans
from pipeline.span_model import SpanTagger, build_span_tagger
from pipeline.span_train import check_widths, span_losses, train_span_tagger
from pipeline.tagger import build_tagger
from stages.cli import app
from tests import enumerated as E
from tests.helpers import tiny_sentences, write_tiny_bert, write_tiny_conll

TYPES = ["LOC", "ORG", "PER"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(write_tiny_bert(tmp_path_factory.mktemp("bert")))


def encoder_cfg(kind: str, bert: str) -> EncoderConfig:
    if kind == "transformer":
        return EncoderConfig(name=bert, dropout=0.1)
    return EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="cnn", char_dim=4, char_hidden=4, dropout=0.1)


def sentences(n: int, scheme: str = "IOB2", seed: int = 0) -> list[SimpleNamespace]:
    return [SimpleNamespace(tokens=t, labels=y, sid=f"t/train/{i}")
            for i, (t, y) in enumerate(tiny_sentences(n, seed=seed, scheme=scheme))]


def make(kind: str, bert: str, scheme: str = "IOB2", width: int | None = None, seed: int = 0,
         randomize: bool = True) -> SpanTagger:
    """A span tagger in eval mode over PER / LOC / ORG; ``randomize``: every weight random (the
    biaffine scorer starts at zero)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(encoder_cfg(kind, bert), DecoderConfig(kind="spans", span_mlp=6, max_span_width=width))
    labels = complete_labels([f"B-{t}" for t in TYPES], scheme)
    model = build_span_tagger(cfg, labels, scheme, [s.tokens for s in sentences(20)]).eval()
    if randomize:
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, 0.5)
            for module in model.modules():  # padding embeddings stay zero, as trained ones do
                if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx] = 0.0
    return model


KINDS = ["bilstm", "transformer"]


@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_the_loss(kind, bert):
    model = make(kind, bert, randomize=False).train()
    batch = sentences(8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(12):
        loss = span_losses(model, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("kind, width", [("bilstm", None), ("bilstm", 2), ("transformer", None)])
def test_the_loss_is_the_enumerated_span_set_nll(kind, width, bert):
    """-log P(gold set) of a 4-word sentence (padded beside a longer one) = -log of its probability
    among every set of non-overlapping typed spans, enumerated over the model's own scores."""
    model = make(kind, bert, width=width)
    short = SimpleNamespace(tokens=["John", "Smith", "visited", "Paris"], labels=["B-PER", "I-PER", "O", "B-LOC"])
    long = SimpleNamespace(tokens=["the", "Bank", "of", "New", "York", "."],
                           labels=["O", "B-ORG", "O", "B-LOC", "I-LOC", "O"])
    with torch.no_grad():
        losses = span_losses(model, [short, long])
        scores, lengths = model.span_scores(model.featurize([short.tokens, long.tokens]))
    assert lengths.tolist() == [4, 6]
    oracle = E.span_sets(scores[0, :4, :4].double())
    gold = [E.bioes("B", 2), E.bioes("E", 2), 0, E.bioes("S", 0)]
    row = (oracle.outputs == torch.tensor(gold)).all(1).nonzero().item()
    assert losses[0].item() == pytest.approx(-oracle.log_probs[row].item(), rel=1e-5, abs=1e-5)
    allowed = [all(b - a <= (width or 4) for a, b, _ in spans([model.labels_bioes[i] for i in y]))
               for y in oracle.outputs.tolist()]
    assert torch.isfinite(oracle.scores).tolist() == allowed  # the width mask is the only -inf


def test_the_oracle_enumerates_every_span_set():
    """Sets of non-overlapping typed spans of n words: c_n = c_{n-1} + E * sum_{w=1..n} c_{n-w},
    c_0 = 1; with E = 3 words 1..4 give 4, 19, 91, 436, all distinct."""
    outputs = E.span_sets(torch.zeros(4, 4, 3)).outputs
    assert len(outputs) == 436 and len({tuple(y) for y in outputs.tolist()}) == 436


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, bert, tmp_path):
    model = make(kind, bert, width=3)
    batch = [s.tokens for s in sentences(5)]
    folder = model.save(tmp_path / "spans")
    loaded = SpanTagger.load(folder)
    assert json.loads((folder / "config.json").read_text())["architecture"] == "span_tagger"
    with torch.no_grad():
        assert torch.equal(model.span_scores(model.featurize(batch))[0],
                           loaded.span_scores(loaded.featurize(batch))[0])
    assert loaded.fingerprint() == model.fingerprint()
    assert loaded.decode(batch) == model.decode(batch)
    assert (loaded.labels, loaded.scheme, loaded.cfg.decoder.max_span_width) == (model.labels, "IOB2", 3)


@pytest.mark.parametrize("scheme", ["IOB2", "BIOES", "IOB1"])
def test_decode_gives_valid_tags_in_the_corpus_scheme(scheme, bert):
    model = make("bilstm", bert, scheme=scheme, seed=3)
    batch = [s.tokens for s in sentences(12, scheme=scheme)]
    tags = model.decode(batch)
    best = model.structure(batch).argmax().tolist()
    found = 0
    for tokens, row, ids in zip(batch, tags, best):
        assert len(row) == len(tokens) and is_valid(row, scheme), row
        assert set(row) <= set(model.labels)
        assert spans(row) == spans([model.labels_bioes[i] for i in ids[:len(tokens)]])
        found += len(spans(row))
    assert found > 0  # random weights predict entities, so the conversion is exercised


def test_gold_ids_read_any_scheme(bert):
    model = make("bilstm", bert, randomize=False)
    ids = model.gold([["B-PER", "I-PER", "O", "B-LOC"], ["S-ORG", "B-LOC", "I-LOC", "E-LOC", "O"]])
    assert ids.tolist() == [[E.bioes("B", 2), E.bioes("E", 2), 0, E.bioes("S", 0), 0],
                            [E.bioes("S", 1), E.bioes("B", 0), E.bioes("I", 0), E.bioes("E", 0), 0]]
    with pytest.raises(KeyError, match="MISC"):
        model.gold([["B-MISC"]])


def test_max_span_width_masks(bert):
    model = make("bilstm", bert, width=2, seed=1)
    batch = [s.tokens for s in sentences(12)]
    scores, _ = model.span_scores(model.featurize(batch))
    pos = torch.arange(scores.shape[1])
    wide = (pos[None, :] - pos[:, None] + 1 > 2)[None, :, :, None].expand_as(scores)
    assert torch.isneginf(scores[wide]).all() and torch.isfinite(scores[~wide]).all()
    assert all(end - start <= 2 for row in model.decode(batch) for start, end, _ in spans(row))
    wide_gold = SimpleNamespace(tokens=["a", "b", "c"], labels=["B-PER", "I-PER", "I-PER"], sid="c/train/7")
    with pytest.raises(ValueError, match=r"c/train/7.*wider than decoder.max_span_width 2"):
        check_widths([wide_gold], 2)
    check_widths([wide_gold], None)


def test_needs_an_entity_scheme_and_its_kind(bert):
    enc = encoder_cfg("bilstm", bert)
    with pytest.raises(ValueError, match="entity tag scheme"):
        build_span_tagger(ModelConfig(enc, DecoderConfig(kind="spans")), ["NN", "VB"], "none", [["a"]])
    with pytest.raises(ValueError, match="decoder.kind must be 'spans'"):
        build_span_tagger(ModelConfig(enc, DecoderConfig(kind="crf")), ["O", "B-PER", "I-PER"], "IOB2", [["a"]])


def test_load_any_teacher_and_other_folders_refused(bert, tmp_path):
    model = make("bilstm", bert, scheme="BIOES")
    folder = model.save(tmp_path / "spans")
    assert teacher_kind(folder) == "spans"
    loaded = load_any_teacher(folder)
    assert isinstance(loaded, SpanTagger) and not loaded.training and loaded.scheme == "BIOES"
    enc = ModelConfig(encoder_cfg("bilstm", bert), DecoderConfig(kind="heads", arc_mlp=4, rel_mlp=4))
    parser = build_parser(enc, ["nsubj", "root"], [["a", "b"]]).save(tmp_path / "parser")
    tagger = build_tagger(ModelConfig(encoder_cfg("bilstm", bert)), ["O", "B-PER", "I-PER"], "IOB2",
                          [["a"]]).save(tmp_path / "tagger")
    with pytest.raises(ValueError, match=r"not a span tagger folder \(architecture 'biaffine'\)"):
        SpanTagger.load(parser)
    with pytest.raises(ValueError, match=r"not a span tagger folder \(architecture 'tagger'\)"):
        SpanTagger.load(tagger)


def test_train_span_tagger_history(bert, tmp_path):
    files = write_tiny_conll(tmp_path / "corpus", sizes={"train": 16, "dev": 6}, scheme="BIOES")
    corpus = CorpusConfig(name="tiny", files={k: str(v) for k, v in files.items()}, scheme="BIOES")
    cfg = TeacherConfig(corpus=corpus, model=ModelConfig(encoder_cfg("bilstm", bert), DecoderConfig(kind="spans")),
                        optim=OptimConfig(epochs=2, batch_size=8, lr=1e-2, warmup=0.0), device="cpu")
    from pipeline.corpus import read_corpus

    model, history = train_span_tagger(cfg, read_corpus(corpus, "train"), read_corpus(corpus, "dev"), progress=False)
    assert isinstance(model, SpanTagger) and model.scheme == "BIOES" and model.types == TYPES
    assert {"labels", "scheme", "steps", "best_epoch", "best_dev_score", "epochs"} <= set(history)
    assert history["steps"] == 4 and len(history["epochs"]) == 2
    assert 0.0 <= history["best_dev_score"] <= 1.0 and "f1" in history["epochs"][0]["dev"]
    assert history["epochs"][1]["train_loss"] < history["epochs"][0]["train_loss"]


def test_train_teacher_and_evaluate_cli(tmp_path, monkeypatch):
    files = write_tiny_conll(tmp_path / "corpus", sizes={"train": 16, "dev": 6, "test": 6})
    corpus = {"name": "tiny", "lang": "en", "format": "conll", "files": {k: str(v) for k, v in files.items()},
              "scheme": "IOB2"}
    model = {"encoder": {"kind": "bilstm", "word_dim": 8, "hidden": 8, "char": "cnn", "char_dim": 4,
                         "char_hidden": 4},
             "decoder": {"kind": "spans", "span_mlp": 8, "max_span_width": 4}}
    params = {"teachers": {"en": {"name": "spans-en", "corpus": corpus, "model": model, "out": "models/spans",
                                  "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-2}, "device": "cpu"}},
              "evaluate": {"models": {"spans": "models/spans"}, "corpora": [corpus], "splits": ["test"],
                           "out": "metrics/evaluate.json", "device": "cpu"}}
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    for stage in ("train-teacher", "evaluate"):
        result = CliRunner().invoke(app, [stage], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    meta = json.loads(Path("models/spans/config.json").read_text())
    assert meta["architecture"] == "span_tagger" and meta["decoder"] == "spans" and meta["scheme"] == "IOB2"
    assert json.loads(Path("models/spans/metrics.json").read_text())["history"]["steps"] == 2
    scores = json.loads(Path("metrics/evaluate.json").read_text())["spans"]["tiny/test"]
    assert 0.0 <= scores["f1"] <= 1.0 and scores["sentences"] == 6
