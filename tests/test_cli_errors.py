"""User errors through the real `structkd` command line: one line ``error: ...`` on stderr, exit
code 2 (the command or params are wrong) or 1 (a file or folder they name is missing or bad), and
never a traceback. Only refusals that happen before any model is built are driven here, so the
whole file runs in a few seconds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from stages.cli import app
from tests.input_campaign import run_campaign

CONLL = "EU B-ORG\nrejects O\n\nPeter B-PER\n"


def corpus(tmp_path: Path, name: str = "c", text: str = CONLL, **extra) -> dict:
    path = tmp_path / f"{name}.conll"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return {"name": name, "files": {"train": str(path), "dev": str(path)}, **extra}


def run(tmp_path: Path, params: dict | str | None, *args: str):
    """Invoke ``structkd ARGS --params tmp/params.yaml`` (no --params when ``params`` is None)."""
    if params is not None:
        path = tmp_path / "params.yaml"
        path.write_text(params if isinstance(params, str) else yaml.safe_dump(params),
                        encoding="utf-8")
        args = (*args, "--params", str(path))
    return CliRunner().invoke(app, list(args))


def one_line_error(result, code: int, *fragments: str) -> str:
    """Assert exit ``code`` with exactly one ``error:`` line holding every fragment, and no
    traceback; return that line."""
    assert "Traceback" not in result.output and (
        result.exception is None or isinstance(result.exception, (SystemExit, typer.Exit))
    ), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == code and len(errors) == 1, (result.exit_code, result.output)
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.mark.parametrize("stage", ["prepare", "train-teacher", "annotate", "distill", "evaluate",
                                   "report"])
def test_a_named_params_file_that_does_not_exist(tmp_path, stage):
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(app, [stage, "--params", str(missing)])
    one_line_error(result, 2, f"--params {missing}: no such file")


def test_the_default_params_file_may_be_absent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the defaults, which have no corpus to read
    result = CliRunner().invoke(app, ["train-teacher", "--epochs", "0"])
    one_line_error(result, 2, "teachers.en.optim.epochs: must be >= 1, got 0")


@pytest.mark.parametrize("params, fragments", [
    ({"teachers": {"en": {"optim": {"epochs": 0}}}}, ["teachers.en.optim.epochs: must be >= 1"]),
    ({"teachers": {"en": {"optim": {"lr": "fast"}}}},
     ["teachers.en.optim.lr: expected a number, got 'fast'"]),
    ({"teachers": {"en": {"model": {"encoder": {"kind": "lstm"}}}}},
     ["teachers.en.model.encoder.kind: must be one of ['transformer', 'bilstm'], got 'lstm'"]),
    ({"teachers": {"en": {"devise": "cpu"}}}, ["teachers.en.devise: unknown key",
                                               "did you mean 'device'?"]),
    ({"teachers": {"fr": {}}}, ["no section 'teachers.en'"]),
    ({"teachers": {"en": ["a"]}}, ["section 'teachers.en' must be a mapping"]),
    ("teachers:\n  en: {optim: {epochs: 2}\n", ["params.yaml:3: not valid YAML"]),
])
def test_bad_teacher_params(tmp_path, params, fragments):
    one_line_error(run(tmp_path, params, "train-teacher"), 2, *fragments)


def test_bad_distill_and_annotate_params(tmp_path):
    one_line_error(run(tmp_path, {"distill": {"kd": {"method": "postrior", "lam": 0.5}}}, "distill"),
                   2, "distill.kd.method: must be one of", "(did you mean 'posterior'?)")
    one_line_error(run(tmp_path, {"distill": {"kd": {"lam": 2}}}, "distill"), 2,
                   "distill.kd.lam: must be in [0, 1], got 2")
    one_line_error(run(tmp_path, {"annotate": {"batch_tokens": 0}}, "annotate"), 2,
                   "annotate.batch_tokens: must be >= 1, got 0")
    one_line_error(run(tmp_path, {"distill": {}}, "distill", "--workers", "-1"), 2,
                   "distill.workers: must be >= 0, got -1")
    if not torch.cuda.is_available():
        one_line_error(run(tmp_path, {"distill": {"device": "cuda"}}, "distill"), 2,
                       "distill.device: 'cuda' asked for, but torch sees no CUDA GPU(s)")


def test_prepare_refuses_bad_corpora_lists(tmp_path):
    same = {"prepare": {"corpora": [corpus(tmp_path), corpus(tmp_path)]}}
    one_line_error(run(tmp_path, same, "prepare"), 2,
                   "prepare.corpora[1].name: corpus name 'c' is already used by prepare.corpora[0]")
    bad_split = corpus(tmp_path)
    bad_split["files"]["validation"] = bad_split["files"].pop("dev")
    one_line_error(run(tmp_path, {"prepare": {"corpora": [bad_split]}}, "prepare"), 2,
                   "prepare.corpora[0].files.validation: must be one of ['train', 'dev', 'test', "
                   "'unlabeled'], got 'validation'")
    gone = corpus(tmp_path)
    gone["files"]["test"] = str(tmp_path / "gone.conll")
    one_line_error(run(tmp_path, {"prepare": {"corpora": [gone]}}, "prepare"), 1,
                   f"prepare.corpora[0].files.test: {tmp_path / 'gone.conll'} does not exist")


def test_prepare_reads_cr_files_and_refuses_malformed_ones(tmp_path):
    out = tmp_path / "prepare.json"
    cr = corpus(tmp_path, text=CONLL.replace("\n", "\r").encode())
    result = run(tmp_path, {"prepare": {"corpora": [cr], "out": str(out)}}, "prepare")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["c/train"]["sentences"] == 2
    bad = corpus(tmp_path, name="bad", text="EU B-ORG\n\ufeff\nPeter B-PER\n")
    line = one_line_error(run(tmp_path, {"prepare": {"corpora": [bad]}}, "prepare"), 1,
                          "bad.conll:2: line holds only U+FEFF (ZERO WIDTH NO-BREAK SPACE)")
    assert line.startswith(f"error: {tmp_path / 'bad.conll'}:2: ")


def test_prepare_warns_where_a_sentence_was_split(tmp_path):
    split = corpus(tmp_path, text="EU B-ORG\n-DOCSTART- O\nrejects O\n")
    result = run(tmp_path, {"prepare": {"corpora": [split], "out": str(tmp_path / "p.json")}},
                 "prepare")
    assert result.exit_code == 0, result.output
    warned = [x for x in result.output.splitlines() if x.startswith("warning:")]
    assert len(warned) == 1 and f"{tmp_path / 'c.conll'}: 1 sentence(s) split" in warned[0]
    assert "line 2 (-DOCSTART-)" in warned[0]  # train and dev are one file: said once


def test_missing_dev_split_and_model_folders(tmp_path):
    no_dev = corpus(tmp_path)
    del no_dev["files"]["dev"]
    one_line_error(run(tmp_path, {"teachers": {"en": {"corpus": no_dev}}}, "train-teacher"), 2,
                   "corpus 'c' has no split 'dev'", "holdout: N")
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for folder, fragment in [("missing", "does not exist"), ("file", "is a file, not a model folder"),
                             ("empty", "is not a model folder (no config.json)")]:
        params = {"evaluate": {"models": {"t": str(tmp_path / folder)}, "corpora": [corpus(tmp_path)]}}
        one_line_error(run(tmp_path, params, "evaluate"), 1, f"evaluate.models.t: {tmp_path / folder}",
                       fragment)
    one_line_error(run(tmp_path, {"evaluate": {}}, "evaluate", "--model", "teacher"), 2,
                   "--model: expected NAME=FOLDER, got 'teacher'")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "c.conll"), "--model",
                                      str(tmp_path / "empty")])
    one_line_error(result, 1, "--model", "no config.json")


def test_stages_with_nothing_to_do_refuse(tmp_path):
    one_line_error(run(tmp_path, {"prepare": {"corpora": []}}, "prepare"), 2,
                   "prepare.corpora: no corpora to prepare")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    one_line_error(run(tmp_path, {"evaluate": {"corpora": [corpus(tmp_path)]}}, "evaluate"), 2,
                   "evaluate: no models to score")
    one_line_error(run(tmp_path, {"evaluate": {"models": {"m": str(model)}}}, "evaluate"), 2,
                   "evaluate.corpora: no corpus to score the models on")
    params = {"evaluate": {"models": {"m": str(model)}, "corpora": [corpus(tmp_path)]}}
    one_line_error(run(tmp_path, params, "evaluate"), 2, "evaluate.corpora[0]: corpus 'c' has none "
                   "of the splits ['test'] (it has ['dev', 'train'])")


def test_report_without_an_evaluation(tmp_path):
    params = {"report": {"evaluate": str(tmp_path / "eval.json")}, "methods": ["none"]}
    one_line_error(run(tmp_path, params, "report"), 1, f"{tmp_path / 'eval.json'} does not exist",
                   "structkd evaluate")
    (tmp_path / "eval.json").write_text(json.dumps({"teacher-en": {}}))
    one_line_error(run(tmp_path, params, "report"), 1, "has no scores of ['none']")


def test_input_campaign():
    """800 hostile corpora and bad params (tests/input_campaign.py): each one read exactly or
    refused in one clear line; no traceback, nothing silent."""
    table, failures = run_campaign()
    assert not failures, "\n".join(table + failures)
