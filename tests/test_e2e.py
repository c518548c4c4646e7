"""End to end: every CLI stage on tiny fixtures, then the DVC pipeline's caching behaviour."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.cli import app
from tests.helpers import write_tiny_bert, write_tiny_conll

REPO = Path(__file__).resolve().parents[1]
METHODS = ["none", "structural", "multigrained"]


def tiny_params(root: Path) -> dict:
    """A params.yaml like the demo's, on a tiny random BERT teacher and a tiny corpus."""
    bert = write_tiny_bert(root / "bert")
    files = write_tiny_conll(root / "corpus", sizes={"train": 24, "dev": 8, "test": 8})
    raw = root / "corpus" / "raw.txt"
    raw.write_text("Anna Smith visited Paris on Monday. She met Bob there.\n"
                   "Acme Corp opened an office in Berlin.\n", encoding="utf-8")
    corpus = {"name": "tiny", "lang": "en", "format": "conll",
              "files": {k: str(v) for k, v in files.items()}, "scheme": "IOB2"}
    unlabeled = {"name": "tiny-raw", "lang": "en", "format": "raw",
                 "files": {"unlabeled": str(raw)}, "scheme": "none"}
    bilstm = {"encoder": {"kind": "bilstm", "word_dim": 16, "hidden": 16, "char": "cnn",
                          "char_dim": 8, "char_hidden": 8},
              "decoder": {"kind": "crf"}}
    return {
        "methods": METHODS,
        "teacher_keys": ["en"],
        "prepare": {"corpora": [corpus, unlabeled], "out": "metrics/prepare.json"},
        "teachers": {"en": {"name": "teacher-en", "corpus": corpus, "out": "models/teachers/en",
                            "model": {"encoder": {"kind": "transformer", "name": str(bert)},
                                      "decoder": {"kind": "crf"}},
                            "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-3}}},
        "annotate": {"teachers": {"en": "models/teachers/en"}, "corpora": [corpus, unlabeled],
                     "out": "stores/tiny", "k": 3, "shard_size": 16},
        "distill": {"store": "stores/tiny", "model": bilstm,
                    "optim": {"epochs": 2, "lr": 1e-2, "warmup": 0.0}, "batch_tokens": 200},
        "distill_runs": {"none": {"kd": {"method": "none", "lam": 0.0}},
                         "structural": {"kd": {"method": "structural"}},
                         "multigrained": {"kd": {"method": "multigrained", "k": 2,
                                                 "schedule": "learned"}}},
        "evaluate": {"models": {"teacher-en": "models/teachers/en"}, "corpora": [corpus],
                     "out": "metrics/evaluate.json"},
        "report": {"teacher": "teacher-en", "baseline": "none"},
    }


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_stage_through_the_cli(tmp_path, monkeypatch):
    params = tiny_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")

    invoke("prepare")
    summary = json.loads(Path("metrics/prepare.json").read_text())
    assert summary["tiny/train"]["sentences"] == 24 and summary["tiny-raw/unlabeled"]["sentences"] == 3

    invoke("train-teacher", "--teacher", "en", "--metrics", "metrics/teacher-en.json")
    assert (tmp_path / "models/teachers/en/model.safetensors").exists()

    invoke("annotate", "--no-progress")
    invoke("store", "verify", "stores/tiny")
    assert "tiny/unlabeled" not in invoke("store", "inspect", "stores/tiny")
    assert "tiny/train/0" in invoke("store", "show", "stores/tiny", "tiny/train/0")

    for method in METHODS:
        invoke("distill", "--run", method, "--no-progress")
        run = json.loads(Path(f"runs/{method}/metrics.json").read_text())
        assert run["method"] == method and "test" in run
    invoke("evaluate")
    scores = json.loads(Path("metrics/evaluate.json").read_text())
    assert set(scores) == {"teacher-en", *METHODS}
    invoke("report")
    report = Path("report.md").read_text()
    assert all(f"| {m} |" in report for m in METHODS) and Path("report.png").stat().st_size > 0

    test_file = Path(params["teachers"]["en"]["corpus"]["files"]["test"])
    invoke("predict", "--model", "runs/structural/model", "--output", "pred.txt", str(test_file))
    predicted = [line.split() for line in Path("pred.txt").read_text().splitlines() if line.strip()]
    gold = [line.split() for line in test_file.read_text().splitlines() if line.strip()]
    assert [p[0] for p in predicted] == [g[0] for g in gold]
    assert all(len(p) == 2 for p in predicted)


def _dvc(cwd: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git")
def test_dvc_repro_caches_and_reruns_only_what_a_param_touches(tmp_path):
    """The repo's dvc.yaml on tiny params: a second repro is a no-op, and changing one run's
    parameter makes exactly that distill run (and what reads its output) stale."""
    work = tmp_path / "work"
    work.mkdir()
    params = tiny_params(tmp_path)
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    for code in ("pipeline", "stages", "store"):
        shutil.copytree(REPO / code, work / code, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "data").mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    for cmd in (["init", "-q"], ["config", "user.email", "t@example.org"],
                ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=work, check=True)
    _dvc(work, "init", "-q")
    _dvc(work, "config", "core.autostage", "false")
    _dvc(work, "repro")
    assert "up to date" in _dvc(work, "status").lower()

    params["distill_runs"]["structural"]["kd"]["tau"] = 2.0
    (work / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    stale = _dvc(work, "status")
    changed = {line.rstrip(":").strip() for line in stale.splitlines()
               if line and not line.startswith((" ", "\t"))}
    assert changed == {"distill@structural"}, stale


def test_threads_option_sets_torch_threads_for_the_stage(tmp_path, monkeypatch):
    import torch

    files = write_tiny_conll(tmp_path / "corpus", sizes={"train": 4})
    corpus = {"name": "tiny", "lang": "en", "format": "conll", "scheme": "IOB2",
              "files": {k: str(v) for k, v in files.items()}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"prepare": {"corpora": [corpus], "out": "prepare.json"}}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    try:
        invoke("--threads", "3", "prepare")
        assert torch.get_num_threads() == 3 and Path("prepare.json").exists()
    finally:
        torch.set_num_threads(before)
    result = CliRunner().invoke(app, ["--threads", "0", "prepare"])
    assert result.exit_code != 0 and "--threads" in result.output


def test_corpus_warnings_print_as_one_line(tmp_path, monkeypatch):
    import warnings

    path = tmp_path / "train.txt"
    path.write_text("a I-PER\nb O\n", encoding="utf-8")  # IOB1 in an IOB2 corpus: re-encoded, warned
    corpus = {"name": "c", "lang": "en", "format": "conll", "scheme": "IOB2", "files": {"train": str(path)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"prepare": {"corpora": [corpus], "out": "prepare.json"}}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    before = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            result = CliRunner().invoke(app, ["prepare"], catch_exceptions=False)
    finally:
        warnings.showwarning = before
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("warning:"))
    assert f"{path}: 1 sentence(s) not valid IOB2" in line and "line(s) 1" in line
    assert "read_corpus(" not in result.output  # no Python source line
