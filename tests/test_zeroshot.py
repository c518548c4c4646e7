"""Zero-shot transfer (structural KD slides, scenario 3): a MaxEnt teacher trained on one language
annotates another language's text, read from a labeled file without its labels (``label_col:
null``); a CRF student learns that language from the teacher alone and is scored on its labels."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from stages.cli import app
from store import open_store
from tests.helpers import write_tiny_bert, write_tiny_conll


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_maxent_teacher_of_one_language_teaches_a_crf_student_another(tmp_path, monkeypatch):
    bert = write_tiny_bert(tmp_path / "bert")
    en = {"name": "en", "lang": "en", "format": "conll", "scheme": "IOB2",
          "files": {k: str(v) for k, v in write_tiny_conll(tmp_path / "en", sizes={
              "train": 24, "dev": 8, "test": 8}).items()}}
    es_files = write_tiny_conll(tmp_path / "es", sizes={"train": 12, "dev": 6, "test": 6}, seed=5)
    es_text = {"name": "es-text", "lang": "es", "format": "conll", "scheme": "none", "label_col": None,
               "files": {"unlabeled": str(es_files["train"])}}
    es = {"name": "es", "lang": "es", "format": "conll", "scheme": "IOB2",
          "files": {"dev": str(es_files["dev"]), "test": str(es_files["test"])}}
    params = {
        "teachers": {"en": {"name": "teacher-en", "corpus": en, "out": "models/en-maxent",
                            "model": {"encoder": {"kind": "transformer", "name": str(bert)},
                                      "decoder": {"kind": "maxent"}},
                            "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-3}}},
        "annotate": {"teachers": {"en": "models/en-maxent", "es": "models/en-maxent"},
                     "corpora": [en, es_text], "out": "stores/zs", "k": 3, "shard_size": 16},
        "distill": {"store": "stores/zs", "use_unlabeled": True, "kd": {"method": "structural"},
                    "model": {"encoder": {"kind": "bilstm", "word_dim": 16, "hidden": 16, "char": "none"},
                              "decoder": {"kind": "crf"}},
                    "optim": {"epochs": 1, "lr": 1e-2, "warmup": 0.0}, "batch_tokens": 200,
                    "out": "runs/zs"},
        "evaluate": {"models": {"teacher-en": "models/en-maxent"}, "corpora": [es], "splits": ["test"],
                     "out": "metrics/evaluate.json"},
    }
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    invoke("train-teacher", "--teacher", "en")
    invoke("annotate", "--no-progress")
    store = open_store("stores/zs")
    assert len(store.teachers) == 1  # one teacher folder serves both languages
    table = store.frame()
    text = table[table.split == "unlabeled"]
    assert len(text) == 12 and set(text.lang) == {"es"} and text.gold_ids.isna().all()
    invoke("distill", "--no-progress")
    metrics = json.loads(Path("runs/zs/metrics.json").read_text())
    assert metrics["train_sentences"] == 24 + 12, metrics
    invoke("evaluate", "--model", "teacher-en=models/en-maxent", "--model", "zs=runs/zs/model")
    scores = json.loads(Path("metrics/evaluate.json").read_text())
    assert set(scores) == {"teacher-en", "zs"} and all("es/test" in s for s in scores.values()), scores
