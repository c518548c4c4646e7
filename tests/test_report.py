"""`structkd evaluate` records each model's decoding throughput, and `structkd report` shows, per
method and split, F1, gap closed and the speed-up over the teacher (student sentences/s over the
teacher's); an evaluation written before throughput was measured still renders ("-")."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.config import DecoderConfig, EncoderConfig, ModelConfig
from pipeline.tagger import build_tagger
from stages.cli import app
from tests.helpers import tiny_sentences, write_tiny_conll


def invoke(root: Path, params: dict, *args: str) -> None:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    result = CliRunner().invoke(app, [*args, "--params", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def write_run(root: Path, method: str, epoch_seconds: float = 2.0) -> None:
    """The metrics.json of a distill run, as far as the report reads it."""
    folder = root / "runs" / method
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"epoch_seconds": [epoch_seconds], "train_sentences": 100}), encoding="utf-8")


def report_params(root: Path, methods: list[str]) -> dict:
    return {"methods": methods,
            "report": {"evaluate": str(root / "eval.json"), "runs_dir": str(root / "runs"),
                       "teacher": "teacher", "baseline": "none", "out": str(root / "report.md"),
                       "chart": str(root / "report.png")}}


def table(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The report's rows as ``{(method, data): {column: cell}}``."""
    lines = [line for line in (root / "report.md").read_text(encoding="utf-8").splitlines()
             if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[1:]]
    return {(row["method"], row["data"]): row for row in rows}


def scores(f1: float, rate: float | None = None) -> dict:
    """One evaluation entry; ``rate`` None: as written before evaluate measured throughput."""
    entry = {"lang": "en", "precision": f1, "recall": f1, "f1": f1}
    return entry if rate is None else {**entry, "seconds": 100 / rate, "sentences_per_s": rate}


def test_speed_up_is_student_over_teacher_sentences_per_second(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({
        "teacher": {"c/test": scores(0.9, 40.0), "c/dev": scores(0.8, 50.0)},
        "none": {"c/test": scores(0.7, 100.0), "c/dev": scores(0.6, 125.0)},
        "topk": {"c/test": scores(0.8, 1000.0), "c/dev": scores(0.7)},
    }), encoding="utf-8")
    for method in ("none", "topk"):
        write_run(tmp_path, method)
    invoke(tmp_path, report_params(tmp_path, ["none", "topk"]), "report")
    rows = table(tmp_path)
    assert rows["none", "c/test"]["speed-up"] == "2.5x" and rows["none", "c/dev"]["speed-up"] == "2.5x"
    assert rows["topk", "c/test"]["speed-up"] == "25.0x"
    assert rows["topk", "c/dev"]["speed-up"] == "-"  # this student's split has no throughput
    assert rows["topk", "c/test"]["F1/acc"] == "0.8000" and rows["topk", "c/test"]["gap closed"] == "50.0%"
    assert "speed-up = the method's sentences/s over the teacher's" in (tmp_path / "report.md").read_text()


def test_an_evaluation_without_throughput_still_renders(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({
        "teacher": {"c/test": scores(0.9)}, "none": {"c/test": scores(0.7)},
        "posterior": {"c/test": scores(0.75, 90.0), "c/other": scores(0.5, 80.0)}}), encoding="utf-8")
    for method in ("none", "posterior"):
        write_run(tmp_path, method)
    invoke(tmp_path, report_params(tmp_path, ["none", "posterior"]), "report")
    rows = table(tmp_path)
    assert [rows[key]["speed-up"] for key in sorted(rows)] == ["-", "-", "-"]
    assert rows["posterior", "c/test"]["gap closed"] == "25.0%" and rows["none", "c/test"]["vs none"] == "1.00x"
    assert rows["posterior", "c/other"]["teacher"] == "-"  # no teacher score on that split


def save_tagger(folder: Path, sentences, hidden: int) -> str:
    labels = sorted({tag for _, tags in sentences for tag in tags})
    encoder = EncoderConfig(kind="bilstm", word_dim=8, hidden=hidden, char="none")
    tagger = build_tagger(ModelConfig(encoder, DecoderConfig("crf")), labels, "IOB2",
                          [tokens for tokens, _ in sentences])
    tagger.save(folder)
    return str(folder)


def test_evaluate_measures_throughput_and_the_report_divides_it(tmp_path):
    files = write_tiny_conll(tmp_path / "corpus", sizes={"dev": 12, "test": 20})
    train = tiny_sentences(30)
    models = {"teacher": save_tagger(tmp_path / "big", train, 64),
              "none": save_tagger(tmp_path / "small", train, 4)}
    corpus = {"name": "c", "files": {k: str(v) for k, v in files.items()}, "scheme": "IOB2"}
    params = {**report_params(tmp_path, ["none"]),
              "evaluate": {"corpora": [corpus], "splits": ["dev", "test"], "batch_size": 8,
                           "device": "cpu", "out": str(tmp_path / "eval.json")}}
    invoke(tmp_path, params, "evaluate", *(arg for name, folder in models.items()
                                           for arg in ("--model", f"{name}={folder}")))
    evaluation = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    for name in models:
        for key, size in (("c/dev", 12), ("c/test", 20)):
            entry = evaluation[name][key]
            assert entry["sentences"] == size and entry["seconds"] > 0
            assert entry["sentences_per_s"] == pytest.approx(size / entry["seconds"])
    write_run(tmp_path, "none")
    invoke(tmp_path, params, "report")
    for key in ("c/dev", "c/test"):
        expected = (evaluation["none"][key]["sentences_per_s"]
                    / evaluation["teacher"][key]["sentences_per_s"])
        assert table(tmp_path)["none", key]["speed-up"] == f"{expected:.1f}x"
