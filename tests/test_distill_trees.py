"""Distillation from a store of dependency teachers (issue 17): a biaffine student tree -> tree and a
tagger whose labels encode heads (parsing as sequence labeling), each scored by UAS / LAS."""
from __future__ import annotations

import pytest

from pipeline.config import DecoderConfig, DistillConfig, EncoderConfig, KDConfig, ModelConfig, OptimConfig
from pipeline.distiller import Distiller
from store.feed import store_data
from tests.store_fakes import FakeParser, config, with_trees


@pytest.fixture
def tree_store(tmp_path, monkeypatch):
    import store.build as build
    from store.build import build_store

    monkeypatch.setattr(build, "read_corpus", with_trees(build.read_corpus))
    cfg = config(tmp_path / "data", out=tmp_path / "store", sizes={"train": 23, "dev": 7, "test": 5},
                 max_len=5)
    build_store(cfg, teachers={"en": FakeParser("tree")})
    return str(tmp_path / "store")


def distill_cfg(store, out, method, decoder, head_encoding=None) -> DistillConfig:
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none", dropout=0.0),
                        DecoderConfig(kind=decoder, arc_mlp=8, rel_mlp=4))
    return DistillConfig(store=store, name=method, kd=KDConfig(method=method, k=2), model=model,
                         optim=OptimConfig(epochs=2, lr=1e-2, warmup=0.0, seed=1), batch_tokens=40,
                         shuffle_buffer=8, out=str(out), device="cpu", head_encoding=head_encoding)


@pytest.mark.parametrize("method,decoder,encoding", [("structural", "tree", None), ("none", "heads", None),
                                                     ("posterior", "maxent", "rel_offset"),
                                                     ("structural", "maxent", "rel_offset")])
def test_tree_students_train_and_report_attachment_scores(tree_store, tmp_path, method, decoder, encoding):
    cfg = distill_cfg(tree_store, tmp_path / "run", method, decoder, encoding)
    metrics = Distiller(cfg, store_data(cfg)).run(progress=False)
    for split in ("dev", "test"):
        result = metrics[split]["all"]
        assert set(result) == {"uas", "las", "words"} and 0.0 <= result["las"] <= result["uas"] <= 1.0
        assert result["words"] > 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    if encoding:
        assert all("@" in label for label in metrics["labels"])


def test_a_tagger_of_a_tree_store_needs_a_head_encoding(tree_store, tmp_path):
    cfg = distill_cfg(tree_store, tmp_path / "run", "posterior", "maxent")
    with pytest.raises(ValueError, match="head_encoding"):
        Distiller(cfg, store_data(cfg))


def test_evaluate_scores_tree_students_on_a_conllu_corpus(tree_store, tmp_path):
    import json

    from typer.testing import CliRunner

    from stages.cli import app

    models = {}
    for name, (method, decoder, encoding) in {"parser": ("none", "tree", None),
                                              "tagger": ("none", "maxent", "rel_offset")}.items():
        cfg = distill_cfg(tree_store, tmp_path / name, method, decoder, encoding)
        Distiller(cfg, store_data(cfg)).run(progress=False)
        models[name] = str(tmp_path / name / "model")
    lines = ["1\tthe\t_\tDET\t_\t_\t2\tdet\t_\t_", "2\tcat\t_\tNOUN\t_\t_\t3\tnsubj\t_\t_",
             "3\tsat\t_\tVERB\t_\t_\t0\troot\t_\t_", ""]
    (tmp_path / "dev.conllu").write_text("\n".join(lines), encoding="utf-8")
    params = {"evaluate": {"models": models, "splits": ["dev"], "out": str(tmp_path / "eval.json"),
                           "corpora": [{"name": "c", "format": "conllu", "label_col": 3, "scheme": "none",
                                        "files": {"dev": str(tmp_path / "dev.conllu")}}]}}
    (tmp_path / "params.yaml").write_text(json.dumps(params), encoding="utf-8")
    result = CliRunner().invoke(app, ["evaluate", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "eval.json").read_text())
    for name in models:
        assert scores[name]["c/dev"]["words"] == 3 and 0 <= scores[name]["c/dev"]["las"] <= 1
