"""Distillation from a store of span NER teachers (issue 17, case 4): a BIOES MaxEnt / CRF tagger
over the teacher's BIOES labels, gold-only and structural (node targets = the teacher's BIOES
marginals), scored by entity F1; other students and methods refused by name."""
from __future__ import annotations

import csv

import pytest
import torch

from pipeline.config import (AnnotateConfig, CorpusConfig, DecoderConfig, DistillConfig, EncoderConfig, KDConfig,
                             ModelConfig, OptimConfig)
from pipeline.distiller import Distiller, build_kd_objective
from pipeline.schemes import complete_labels
from pipeline.span_model import build_span_tagger
from pipeline.structs import Spans
from pipeline.tagger import build_tagger
from store import StoreError, open_store
from store.build import build_store
from store.feed import store_data, stream_fields, vocab_sentences
from store.stream import StoreStream
from tests.helpers import tiny_sentences, write_tiny_conll

TYPES = ["LOC", "ORG", "PER"]
BIOES = ["O"] + [f"{p}-{t}" for t in TYPES for p in "BIES"]


@pytest.fixture(scope="module")
def span_store(tmp_path_factory):
    """(store path, teacher): a random-weight BiLSTM span tagger (spans of at most 3 words) over a
    tiny IOB2 corpus, float32 potentials."""
    root = tmp_path_factory.mktemp("spans")
    files = write_tiny_conll(root / "corpus", sizes={"train": 20, "dev": 6, "test": 6})
    torch.manual_seed(0)
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none", dropout=0.0),
                        DecoderConfig(kind="spans", span_mlp=6, max_span_width=3))
    labels = complete_labels([f"B-{t}" for t in TYPES], "IOB2")
    teacher = build_span_tagger(model, labels, "IOB2", [t for t, _ in tiny_sentences(20)]).eval()
    with torch.no_grad():
        for param in teacher.parameters():
            param.normal_(0.0, 0.5)
    corpus = CorpusConfig(name="tiny", lang="en", scheme="IOB2", files={s: str(p) for s, p in files.items()})
    cfg = AnnotateConfig(teachers={"en": str(teacher.save(root / "teacher"))}, corpora=[corpus],
                         out=str(root / "store"), k=3, shard_size=8, dtype="float32",
                         splits=["train", "dev", "test"])
    build_store(cfg, teachers={"en": teacher})
    return root / "store", teacher


def distill_cfg(store, out, method, decoder="maxent", epochs=4) -> DistillConfig:
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none", dropout=0.0),
                        DecoderConfig(kind=decoder))
    return DistillConfig(store=str(store), name=method, kd=KDConfig(method=method, k=2), model=model,
                         optim=OptimConfig(epochs=epochs, lr=1e-2, warmup=0.0, seed=1), batch_tokens=40,
                         shuffle_buffer=8, out=str(out), device="cpu")


@pytest.mark.parametrize("method,decoder", [("none", "maxent"), ("structural", "maxent"), ("posterior", "crf"),
                                            ("none", "crf")])
def test_bioes_students_train_and_report_entity_f1(span_store, tmp_path, method, decoder):
    cfg = distill_cfg(span_store[0], tmp_path / "run", method, decoder)
    metrics = Distiller(cfg, store_data(cfg)).run(progress=False)
    assert metrics["labels"] == BIOES and metrics["scheme"] == "BIOES"
    for split in ("dev", "test"):
        result = metrics[split]["all"]
        assert 0.0 <= result["f1"] <= 1.0 and result["support"] > 0
    with open(tmp_path / "run" / "epochs.csv", encoding="utf-8") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("method,decoder,needs", [("structural", "crf", "edge"),
                                                  ("token", "maxent", "emissions")])
def test_methods_a_span_store_cannot_feed_are_refused_by_name(span_store, tmp_path, method, decoder, needs):
    cfg = distill_cfg(span_store[0], tmp_path / "run", method, decoder)
    with pytest.raises(StoreError, match=f"KD objective '{method}' needs \\['{needs}'\\]"):
        Distiller(cfg, store_data(cfg))


def test_other_student_kinds_are_refused(span_store, tmp_path):
    cfg = distill_cfg(span_store[0], tmp_path / "run", "structural", "tree")
    with pytest.raises(StoreError, match="decoder maxent or crf"):
        store_data(cfg)


def test_structural_loss_is_the_cross_entropy_with_the_teachers_bioes_marginals(span_store):
    """Case 4 on one batch: tau^2 * sum_j -sum_a P_t(y_j = a) log q_s(y_j = a), with P_t the BIOES
    marginals of the teacher's Spans recomputed from its own span scores."""
    path, teacher = span_store
    store = open_store(path)
    cfg = distill_cfg(path, "unused", "structural")
    torch.manual_seed(0)
    student = build_tagger(cfg.model, BIOES, "BIOES", vocab_sentences(store, ["train"]))
    objective = build_kd_objective(cfg.kd)
    fields = objective.needs_for("factorized", frozenset({"spans"}))
    assert fields == ("node",)
    batch = next(iter(StoreStream(store, ["train"], fields=stream_fields(fields), batch_tokens=60,
                                  shuffle_buffer=4, labels=BIOES)))
    structure = student.structure(batch.tokens)
    loss = objective.loss(structure, batch.teacher, batch.hard)
    with torch.no_grad():
        for b, tokens in enumerate(batch.tokens):
            n = len(tokens)
            scores = teacher.structure([tokens]).scores
            target = Spans(scores, torch.tensor([n]), BIOES).bioes_marginals()[0]
            log_q = structure.emissions[b, :n].float().log_softmax(-1)
            expected = -(target * log_q).sum()
            assert float(loss[b]) == pytest.approx(float(expected), rel=1e-4, abs=1e-4)


def test_evaluate_scores_a_bioes_student_on_the_iob2_corpus_as_distill_does(span_store, tmp_path):
    """`structkd evaluate` re-encodes the corpus's IOB2 gold in the student's BIOES scheme: the same
    support, predictions and F1 as distill's own test metrics (before, IOB2 gold read as strict
    BIOES had no entities and every student scored 0)."""
    import json

    import yaml
    from typer.testing import CliRunner

    from stages.cli import app

    cfg = distill_cfg(span_store[0], tmp_path / "run", "none", "crf")
    metrics = Distiller(cfg, store_data(cfg)).run(progress=False)
    corpus_files = {s: str(span_store[0].parent / "corpus" / f"{s}.conll") for s in ("train", "dev", "test")}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {
        "corpora": [{"name": "tiny", "lang": "en", "scheme": "IOB2", "files": corpus_files}],
        "splits": ["test"], "out": str(tmp_path / "eval.json"), "device": "cpu"}}), encoding="utf-8")
    result = CliRunner().invoke(app, ["evaluate", "--params", str(params), "--model",
                                      f"student={tmp_path / 'run' / 'model'}"])
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "eval.json").read_text())["student"]["tiny/test"]
    want = metrics["test"]["all"]
    assert got["support"] == want["support"] > 0 and got["predicted"] == want["predicted"]
    assert got["f1"] == pytest.approx(want["f1"])
