"""Metrics against hand-computed seqeval cases, and the gold-label training loop on tiny data."""
from __future__ import annotations

import json
import random

import pytest
import torch
from seqeval.metrics import f1_score

from pipeline.config import (CorpusConfig, DecoderConfig, EncoderConfig, ModelConfig, OptimConfig,
                             TeacherConfig)
from pipeline.corpus import Sentence, read_corpus
from pipeline.metrics import evaluate_groups, evaluate_tags, main_score
from pipeline.gold_loop import length_batches, param_groups, warmup_linear
from pipeline.trainer import check_labels, predict, train_tagger
from pipeline.tagger import build_tagger
from tests.helpers import write_tiny_bert, write_tiny_conll


def test_iob2_entity_scores_and_per_type():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG"]]
    r = evaluate_tags(gold, pred, "IOB2")
    assert (r["correct"], r["predicted"], r["support"]) == (2, 3, 3)
    assert r["precision"] == pytest.approx(2 / 3) and r["f1"] == pytest.approx(2 / 3)
    assert r["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_type"]["ORG"]["precision"] == 0.5 and r["per_type"]["ORG"]["recall"] == 1.0
    assert r["accuracy"] == pytest.approx(5 / 6) and main_score(r) == r["f1"]
    assert r["f1"] == pytest.approx(f1_score(gold, pred))


def test_iob2_default_mode_reads_a_leading_i_as_an_entity():
    r = evaluate_tags([["B-PER", "I-PER"]], [["I-PER", "I-PER"]], "IOB2")
    assert r["f1"] == 1.0
    assert evaluate_tags([["B-PER", "I-PER"]], [["I-PER", "I-PER"]], "IOB2", strict=True)["f1"] == 0.0


def test_bioes_is_strict():
    gold = [["B-PER", "E-PER", "O", "S-LOC"]]
    pred = [["B-PER", "I-PER", "O", "S-LOC"]]  # ill-formed PER: not an entity in strict mode
    r = evaluate_tags(gold, pred, "BIOES")
    assert (r["correct"], r["predicted"], r["support"]) == (1, 1, 2)
    assert r["precision"] == 1.0 and r["recall"] == 0.5 and r["f1"] == pytest.approx(2 / 3)
    assert evaluate_tags(gold, pred, "BIOES", strict=False)["f1"] == 1.0


def test_iob1_default_mode():
    gold = [["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]]  # PER, LOC, LOC
    assert evaluate_tags(gold, gold, "IOB1")["support"] == 3
    r = evaluate_tags(gold, [["I-PER", "I-PER", "O", "I-LOC", "I-LOC"]], "IOB1")
    assert (r["correct"], r["predicted"], r["support"]) == (1, 2, 3)
    assert r["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_pos_accuracy_and_errors():
    r = evaluate_tags([["DT", "NN"], ["VB", "."]], [["DT", "VB"], ["VB", "."]], "none")
    assert r == {"accuracy": 0.75, "sentences": 2, "tokens": 4} and main_score(r) == 0.75
    with pytest.raises(ValueError, match="predicted"):
        evaluate_tags([["O"]], [["O", "O"]], "IOB2")
    with pytest.raises(ValueError, match="scheme"):
        evaluate_tags([["O"]], [["O"]], "BILOU")


def test_evaluate_groups():
    gold = [["B-PER"], ["B-LOC"], ["O"]]
    pred = [["B-PER"], ["O"], ["O"]]
    r = evaluate_groups(gold, pred, ["en", "de", "en"], "IOB2")
    assert r["en"]["f1"] == 1.0 and r["de"]["recall"] == 0.0 and r["all"]["recall"] == 0.5
    mixed = evaluate_groups(gold, pred, ["ner", "ner", "pos"], {"ner": "IOB2", "pos": "none"})
    assert "all" not in mixed and mixed["pos"]["accuracy"] == 1.0


def test_length_batches_and_schedule():
    lengths = [random.Random(0).randint(1, 30) for _ in range(103)]
    a = length_batches(lengths, 8, random.Random(3))
    assert sorted(i for b in a for i in b) == list(range(103)) and max(map(len, a)) == 8
    assert a == length_batches(lengths, 8, random.Random(3))
    f = warmup_linear(10, 0.2)
    assert [round(f(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


def test_check_labels_rejects_invalid_sentences():
    bad = Sentence(["a", "b"], ["O", "I-PER"], "c/train/0", "c", "train", "en")
    with pytest.raises(ValueError, match="c/train/0"):
        check_labels([bad], "IOB2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    files = write_tiny_conll(root / "corpus", sizes={"train": 48, "dev": 12})
    corpus = CorpusConfig(name="tiny", files={k: str(v) for k, v in files.items()})
    return {"corpus": corpus, "bert": str(write_tiny_bert(root / "bert")),
            "train": read_corpus(corpus, "train"), "dev": read_corpus(corpus, "dev")}


def bilstm_cfg(data, **optim) -> TeacherConfig:
    enc = EncoderConfig(kind="bilstm", word_dim=16, hidden=32, char="cnn", char_dim=8,
                        char_hidden=8, dropout=0.1)
    options = {"epochs": 4, "batch_size": 8, "lr": 0.02, "warmup": 0.0, **optim}
    return TeacherConfig(name="tiny", corpus=data["corpus"], device="cpu",
                         model=ModelConfig(encoder=enc, decoder=DecoderConfig(kind="crf")),
                         optim=OptimConfig(**options))


def test_training_lowers_the_loss_and_scores_dev(data):
    tagger, history = train_tagger(bilstm_cfg(data), data["train"], data["dev"], progress=False)
    epochs = history["epochs"]
    assert history["scheme"] == "IOB2" and history["labels"][0] == "O" and "I-ORG" in history["labels"]
    assert len(epochs) == 4 and epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    assert all(0.0 <= e["dev"]["f1"] <= 1.0 for e in epochs) and history["best_dev_score"] > 0.5
    dev_pred = predict(tagger, data["dev"], batch_size=5)
    again = evaluate_tags([s.labels for s in data["dev"]], dev_pred, "IOB2")
    assert again["f1"] == history["best_dev_score"]  # the best epoch's weights are kept
    json.dumps(history)


def test_early_stopping_keeps_the_best_weights(data):
    cfg = bilstm_cfg(data, lr=0.0, epochs=6, patience=2)
    tagger, history = train_tagger(cfg, data["train"], data["dev"], progress=False)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3] and history["best_epoch"] == 1


def test_transformer_smoke_run_with_layer_decay(data):
    cfg = TeacherConfig(name="tiny-bert", corpus=data["corpus"], device="cpu",
                        model=ModelConfig(encoder=EncoderConfig(name=data["bert"], dropout=0.1)),
                        optim=OptimConfig(epochs=2, batch_size=8, lr=1e-3, head_lr=1e-2,
                                          layer_decay=0.5, max_steps=4))
    tagger, history = train_tagger(cfg, data["train"], data["dev"], progress=True)
    assert history["steps"] == 4 and len(history["epochs"]) == 1 and "f1" in history["epochs"][0]["dev"]
    lrs = {name: g["lr"] for g in param_groups(tagger, cfg.optim) for name, p in tagger.named_parameters()
           if any(p is q for q in g["params"])}
    assert lrs["encoder.model.encoder.layer.1.output.dense.weight"] == pytest.approx(1e-3)
    assert lrs["encoder.model.encoder.layer.0.output.dense.weight"] == pytest.approx(5e-4)
    assert lrs["encoder.model.embeddings.word_embeddings.weight"] == pytest.approx(2.5e-4)
    assert lrs["decoder.transitions"] == lrs["head.weight"] == pytest.approx(1e-2)


def test_predict_restores_order_mode_and_handles_empty_sentences(data):
    tagger = build_tagger(bilstm_cfg(data).model, ["O", "B-PER", "I-PER"], "IOB2",
                          [s.tokens for s in data["train"]])
    tagger.train()
    sentences = [["John", "Smith", "visited"], [], ["Mary"], ["a", "b", "c", "d", "e"]]
    torch.manual_seed(0)
    pred = predict(tagger, sentences, batch_size=2)
    assert [len(p) for p in pred] == [3, 0, 1, 5] and tagger.training
    tagger.eval()
    assert pred[3] == tagger.decode([sentences[3]])[0]
