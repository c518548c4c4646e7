"""Stage two end to end on tiny stores: every KD method trains, transformer students, unlabeled rows,
two teachers with per-language metrics, the online-teacher mode, refusals, the CLI and predict."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.config import (DecoderConfig, DistillConfig, EncoderConfig, KDConfig, ModelConfig,
                             OptimConfig)
from store.feed import OnlineTeacher, distill
from pipeline.kd import OBJECTIVES
from store.stream import ALL_FIELDS, StoreStream
from pipeline.tagger import Tagger
from pipeline.trainer import predict
from stages.cli import app
from store import StoreError, open_store
from tests.helpers import write_tiny_bert
from tests.stores import LABELS, SIZES, make_store

METHOD_KD = {"multigrained": {"schedule": "learned"}, "multigrained_posterior": {"schedule": "learned"},
             "token": {"tau": 2.0}}


def bilstm(decoder: str = "crf") -> ModelConfig:
    return ModelConfig(EncoderConfig(kind="bilstm", word_dim=16, hidden=16, char="none", dropout=0.0),
                       DecoderConfig(kind=decoder))


def config(store: str, out: Path, method: str = "posterior", model: ModelConfig | None = None,
           epochs: int = 3, **kd) -> DistillConfig:
    kd_cfg = KDConfig(method=method, k=3, **{**METHOD_KD.get(method, {}), **kd})
    return DistillConfig(store=store, name=method, kd=kd_cfg, model=model or bilstm(),
                         optim=OptimConfig(epochs=epochs, lr=2e-2, warmup=0.0, seed=1),
                         batch_tokens=120, shuffle_buffer=32, out=str(out), device="cpu")


def epochs_csv(out: Path) -> list[dict]:
    with open(out / "epochs.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    en, folders = make_store(root / "en", unlabeled=True)
    return {"en": en, "teacher": folders["en"], "root": root}


@pytest.mark.parametrize("method", list(OBJECTIVES))
def test_every_method_trains_and_its_loss_decreases(stores, tmp_path, method):
    metrics = distill(config(stores["en"], tmp_path, method), progress=False)
    rows = epochs_csv(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert metrics["method"] == method and 0.0 <= metrics["test"]["all"]["f1"] <= 1.0
    unlabeled = 0 if method == "none" else 20
    assert metrics["splits"] == ["train"] + (["unlabeled"] if unlabeled else [])
    assert int(rows[0]["sentences"]) == SIZES["train"] + unlabeled
    for column in ("data_s", "forward_s", "loss_s", "backward_s", "dev_f1"):
        assert float(rows[0][column]) >= 0.0
    assert Tagger.load(tmp_path / "model").labels == LABELS


@pytest.mark.parametrize("decoder", ["crf", "maxent"])
def test_truncated_transformer_student_runs(stores, tmp_path, decoder):
    bert = write_tiny_bert(tmp_path / "bert", layers=2)
    model = ModelConfig(EncoderConfig(kind="transformer", name=str(bert), layers=1),
                        DecoderConfig(kind=decoder))
    cfg = config(stores["en"], tmp_path / "run", "structural", model=model, epochs=1)
    cfg.optim.lr = 1e-3
    metrics = distill(cfg, progress=False)
    assert metrics["student"]["encoder"] == "transformer" and metrics["steps"] > 0
    assert Tagger.load(tmp_path / "run" / "model").encoder.num_layers == 1


def test_two_teachers_one_student_per_language_metrics(tmp_path):
    path, _ = make_store(tmp_path / "store", ("en", "es"))
    assert len(open_store(path).teachers) == 2
    metrics = distill(config(path, tmp_path / "run", "topwk", epochs=2), progress=False)
    for split in ("dev", "test"):
        assert set(metrics[split]) == {"all", "en", "es"}
        assert metrics[split]["en"]["sentences"] == SIZES[split]
    assert metrics["train_sentences"] == 2 * SIZES["train"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test"]["es"]["f1"] == metrics["test"]["es"]["f1"]


def test_store_without_dev_rows_warns_and_keeps_the_last_epoch(tmp_path):
    from io import StringIO

    from rich.console import Console

    from pipeline.distiller import Distiller
    from store.feed import store_data

    path, _ = make_store(tmp_path / "store", splits=("train", "test"))
    out = StringIO()
    cfg = config(path, tmp_path / "run", "none", epochs=2)
    distiller = Distiller(cfg, store_data(cfg), console=Console(file=out, width=200))
    metrics = distiller.run(progress=False)
    assert "has no labeled dev rows" in out.getvalue() and "last epoch" in out.getvalue()
    assert metrics["best_epoch"] == 2 and metrics["test"]["all"]["sentences"] == SIZES["test"]


def test_online_teacher_gives_the_stored_targets(stores, tmp_path):
    cfg = config(stores["en"], tmp_path, "posterior_topwk")
    batch = next(iter(StoreStream(stores["en"], ["train", "unlabeled"], k=cfg.kd.k, seed=2)))
    online = OnlineTeacher(str(stores["teacher"]), open_store(stores["en"]), torch.device("cpu"), ALL_FIELDS,
                           cfg.kd.k, cfg.kd.tau)
    targets, hard = online(batch)
    assert not batch.has_gold.all()
    assert hard.equal(batch.hard)
    for name in ("emissions", "node", "edge", "kbest_logprob", "residual_mass", "transitions", "start",
                 "end"):
        np.testing.assert_allclose(getattr(targets, name).numpy(), getattr(batch.teacher, name).numpy(),
                                   atol=1e-4, err_msg=name)
    assert targets.kbest_paths.equal(batch.teacher.kbest_paths)
    cfg.online_teacher, cfg.optim.epochs = str(stores["teacher"]), 1
    metrics = distill(cfg, progress=False)
    assert metrics["online_teacher"] == str(stores["teacher"])
    assert float(epochs_csv(tmp_path)[0]["teacher_s"]) > 0


def test_online_teacher_with_other_labels_is_refused(stores, tmp_path):
    teacher = Tagger.load(stores["teacher"])
    teacher.labels = LABELS[::-1]
    teacher.save(tmp_path / "other")
    cfg = config(stores["en"], tmp_path / "run")
    cfg.online_teacher = str(tmp_path / "other")
    with pytest.raises(StoreError, match="labels"):
        distill(cfg, progress=False)


def test_store_with_other_labels_than_the_student_config_is_refused(stores, tmp_path):
    cfg = config(stores["en"], tmp_path / "run")
    cfg.labels = LABELS[::-1]
    with pytest.raises(StoreError, match="do not match the student"):
        distill(cfg, progress=False)


def test_store_with_a_corrupted_teacher_is_refused(tmp_path):
    path, _ = make_store(tmp_path)
    teacher_file = next(f for f in next(iter(open_store(path).manifest["teachers"].values()))["files"]
                        if "/transitions/c" in f)
    target = Path(path) / teacher_file
    target.write_bytes(target.read_bytes()[::-1])
    with pytest.raises(StoreError, match="damaged|checksum mismatch"):
        distill(config(path, tmp_path / "run"), progress=False)


def test_cli_run_section_and_predict_round_trip(stores, tmp_path, monkeypatch):
    params = {"distill": {"store": stores["en"], "kd": {"method": "none"}, "batch_tokens": 120,
                          "model": {"encoder": {"kind": "bilstm", "word_dim": 16, "hidden": 16,
                                                "char": "none"}},
                          "optim": {"epochs": 1, "lr": 0.02}},
              "distill_runs": {"topk": {"kd": {"method": "topk", "k": 2}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["distill", "--run", "topk", "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "topk" / "metrics.json").read_text())
    assert metrics["method"] == "topk" and metrics["config"]["kd"]["k"] == 2 and metrics["name"] == "topk"

    model = Tagger.load(tmp_path / "runs" / "topk" / "model")
    sentences = [["John", "Smith", "visited", "Paris", "."], ["the", "Bank", "of", "London"]]
    expected = predict(model, sentences)
    (tmp_path / "in.conll").write_text("".join("".join(f"{w} X\n" for w in s) + "\n" for s in sentences))
    (tmp_path / "in.txt").write_text(" ".join(sentences[0]) + "\n")
    result = runner.invoke(app, ["predict", "in.conll", "--model", "runs/topk/model",
                                 "--output", "out.conll"])
    assert result.exit_code == 0, result.output
    blocks = (tmp_path / "out.conll").read_text().strip().split("\n\n")
    assert [[line.split() for line in b.splitlines()] for b in blocks] == [
        [[w, t] for w, t in zip(s, labels)] for s, labels in zip(sentences, expected)]
    result = runner.invoke(app, ["predict", "in.txt", "--model", "runs/topk/model", "--format", "raw"])
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.stdout.strip().splitlines()] == expected[0]
