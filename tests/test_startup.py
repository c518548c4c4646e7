"""Start-up of the command line (issue 18): importing ``stages.cli``, ``structkd --help`` and every
``structkd COMMAND --help`` load none of the heavy libraries (they load inside the command that
needs them), and ``structkd predict`` with an ONNX export runs without torch. Each check runs in a
fresh interpreter (this one has torch loaded already); nothing is timed (bench/README.md has the
figures)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_sentences, write_conll

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "dvc", "onnxruntime", "pandas", "pyarrow", "zarr", "sklearn",
         "seqeval", "matplotlib", "store")
LOADED = f"sorted(m for m in {HEAVY!r} if m in sys.modules)"

# Runs `structkd ARGS` in-process (as the console script does), then prints its exit code, the
# heavy modules loaded and torch's thread count (None: no torch) as one JSON line on stderr.
RUN_CLI = f"""
import json, sys
from stages.cli import app
try:
    app(prog_name="structkd")
    code = 0
except SystemExit as done:
    code = done.code or 0
threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
print(json.dumps({{"code": code, "loaded": {LOADED}, "threads": threads}}), file=sys.stderr)
"""

# `COMMAND --help` for every command and sub-command of the group, in one interpreter.
EVERY_HELP = f"""
import contextlib, io, json, sys
import typer
from stages.cli import app

def commands(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if hasattr(command, "commands"):  # a group (typer's own click types)
            yield from commands(command, (*prefix, name))

root = typer.main.get_command(app)
helps = {{}}
for path in commands(root):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = root.main(args=[*path, "--help"], prog_name="structkd", standalone_mode=False)
    helps[" ".join(path)] = [code, "Usage" in text.getvalue()]
print(json.dumps({{"helps": helps, "loaded": {LOADED}}}))
"""


def python(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def cli(*args: str, cwd: Path = REPO) -> dict:
    """``{"code", "loaded", "threads"}`` of ``structkd ARGS`` run in a fresh interpreter."""
    done = python(RUN_CLI, *args, cwd=cwd)
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library():
    done = python(f"import json, sys; import stages.cli; print(json.dumps({LOADED}))")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [], "imported at module level by stages/: move into the command"


def test_structkd_help_exits_0_without_heavy_libraries():
    assert cli("--help") == {"code": 0, "loaded": [], "threads": None}


def test_every_command_help_exits_0_without_heavy_libraries():
    done = python(EVERY_HELP)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert {"prepare", "train-teacher", "fit-crf", "annotate", "distill", "evaluate", "predict",
            "export", "report", "store", "store verify", "store inspect", "store show"} <= set(result["helps"])
    assert all(entry == [0, True] for entry in result["helps"].values()), result["helps"]


def test_the_installed_console_script():
    script = Path(sys.executable).with_name("structkd")
    if not script.exists():
        pytest.skip(f"no console script {script} (package not installed with pip install -e)")
    done = subprocess.run([str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "predict" in done.stdout, done.stderr


def test_a_user_error_inside_a_command_is_still_one_line(tmp_path):
    """A stage's user error raised after its lazy imports still ends as one ``error:`` line."""
    done = python(RUN_CLI, "evaluate", "--model", "m=" + str(tmp_path / "missing"), cwd=tmp_path)
    errors = [line for line in done.stdout.splitlines() + done.stderr.splitlines()
              if line.startswith("error: ")]
    assert json.loads(done.stderr.strip().splitlines()[-1])["code"] == 1
    assert len(errors) == 1 and "does not exist" in errors[0] and "Traceback" not in done.stderr


SENTENCES = tiny_sentences(12)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> dict[str, Path]:
    """A tiny random BiLSTM-CRF saved as a model folder ("folder") and exported ("onnx"), and a
    CoNLL file to label ("input")."""
    from pipeline.config import DecoderConfig, EncoderConfig, ModelConfig
    from pipeline.tagger import build_tagger

    root = tmp_path_factory.mktemp("student")
    labels = sorted({tag for _, tags in SENTENCES for tag in tags})
    encoder = EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="cnn", char_dim=4, char_hidden=4)
    tagger = build_tagger(ModelConfig(encoder, DecoderConfig("crf")), labels, "IOB2",
                          [tokens for tokens, _ in SENTENCES]).eval()
    paths = {"folder": tagger.save(root / "model"), "input": write_conll(root / "in.conll", SENTENCES)}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        from pipeline.export import export_onnx

        paths["onnx"] = export_onnx(tagger, root / "onnx")
    return paths


def predicted_words(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_onnx_predict_runs_without_torch_even_with_threads(student, tmp_path):
    if "onnx" not in student:
        pytest.skip("onnx / onnxruntime not installed")
    out = tmp_path / "out.conll"
    result = cli("--threads", "1", "predict", "--model", str(student["onnx"]), "--output", str(out),
                 str(student["input"]), cwd=tmp_path)
    assert result["code"] == 0 and "onnxruntime" in result["loaded"] and result["threads"] is None
    assert predicted_words(out) == [w for tokens, _ in SENTENCES for w in tokens]


def test_predict_with_a_model_folder_sets_torch_threads(student, tmp_path):
    out = tmp_path / "out.conll"
    result = cli("--threads", "2", "predict", "--model", str(student["folder"]), "--output", str(out),
                 str(student["input"]), cwd=tmp_path)
    assert result["code"] == 0 and result["threads"] == 2
    assert predicted_words(out) == [w for tokens, _ in SENTENCES for w in tokens]
