"""Hostile-input campaign (issue 14, input side): drive the real `structkd` command line with
malformed corpora and bad params, and count what a user sees.

    python -m tests.input_campaign            # about 10 s on a 2-core CPU; prints the table

(``tests/test_cli_errors.py::test_input_campaign`` runs it in the suite and asserts every input
ends ``ok`` or ``clear``.) It lives under tests/ because it drives ``stages.cli``, which only the
tests may import (tests/test_layering.py).

Every input goes through `structkd` (typer's CliRunner, in process: the same command objects as
the entry point, without starting a Python per case). Outcomes:

- ``ok``: exit 0, and the corpus summary has exactly the sentences and tokens the case modelled,
  with a warning naming exactly the lines where a sentence was split without a blank line;
- ``clear``: exit 2 (usage) or 1 (data), one line ``error: ...`` naming what the case expects (the
  file and line, or the dotted key or flag), no traceback;
- ``unclear``: refused, but not in one line, or with another exit code, or not naming the file /
  line / key;
- ``traceback``: an exception escaped the command;
- ``silent``: exit 0 with other sentences than modelled, or without the warning the split needs
  (a corpus case), or a bad param accepted (a params case).
"""
from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import torch
import typer
import yaml
from typer.testing import CliRunner

from stages.cli import app
from tests.params_walk import KEYS, out_of_range, with_value, wrong_types

SENTENCES = [[("EU", "B-ORG"), ("rejects", "O"), ("German", "B-MISC"), ("call", "O"), (".", "O")],
             [("Peter", "B-PER"), ("Blackburn", "I-PER")],
             [("BRUSSELS", "B-LOC"), ("1996-08-22", "O")]]
COMMANDS = {"teachers.en": "train-teacher", "annotate": "annotate", "distill": "distill",
            "prepare": "prepare", "evaluate": "evaluate", "report": "report"}


def lines_of(sentences=SENTENCES) -> list[str]:
    """CoNLL lines ``word label``, a blank line between sentences."""
    out: list[str] = []
    for i, sentence in enumerate(sentences):
        out += [""] * bool(i) + [f"{w} {t}" for w, t in sentence]
    return out


def join(lines: list[str], newline: str = "\n") -> bytes:
    return (newline.join(lines) + newline).encode("utf-8")


def with_line(index: int, line: str, replace: bool = False) -> list[str]:
    """The base lines with ``line`` inserted before (or replacing) 0-based line ``index``."""
    base = lines_of()
    return base[:index] + [line] + base[index + replace:]


def corpus_cases() -> list[tuple]:
    """(name, file bytes, corpus options, expected): expected is ("ok", sentences, tokens,
    warned lines) or ("error", exit code, text the error line must hold; {path} = the file)."""
    n, tokens = len(SENTENCES), sum(map(len, SENTENCES))
    ok = ("ok", n, tokens, [])
    mixed = b"".join(line.encode() + end for line, end in zip(lines_of(), [b"\r", b"\r\n", b"\n"] * 9))
    cases = [(f"endings {name}", join(lines_of(), nl), {}, ok)
             for name, nl in [("LF", "\n"), ("CRLF", "\r\n"), ("CR", "\r")]]
    cases += [("endings mixed", mixed, {}, ok),
              ("BOM at the start", b"\xef\xbb\xbf" + join(lines_of()), {}, ok),
              ("comment line first", join(["# doc 1", *lines_of()]), {}, ok),
              ("'#' as a token", join(with_line(1, "# O")), {}, ("ok", n, tokens + 1, [])),
              ("20,000-character token", join(with_line(1, "x" * 20000 + " O")), {},
               ("ok", n, tokens + 1, [])),
              ("3,000-word sentence", join([f"w{i} O" for i in range(3000)]), {}, ("ok", 1, 3000, [])),
              ("IOB1 start in IOB2", join(with_line(6, "Peter I-PER", True)), {"scheme": "IOB2"}, ok)]
    for name, line in [("space", " "), ("tab", "\t"), ("form feed", "\x0c"), ("-DOCSTART-", "-DOCSTART- O")]:
        cases.append((f"{name} line inside a sentence", join(with_line(2, line)), {},
                      ("ok", n + 1, tokens, [3])))
    cases.append(("-DOCSTART- right after a sentence", join(with_line(5, "-DOCSTART- O")), {},
                  ("ok", n, tokens, [6])))
    cases.append(("whitespace-only line between sentences", join(with_line(5, " ", True)), {},
                  ("ok", n, tokens, [6])))
    for ch in "\ufeff\u200b\xa0\u3000\u2060\u200e\x00\U000e0001":
        cases.append((f"line of only U+{ord(ch):04X}", join(with_line(2, ch)), {},
                      ("error", 1, "{path}:3: line holds only U+")))
    cases += [("BOM glued to a line", join(with_line(2, "\ufeffcall O", True)), {},
               ("error", 1, "{path}:3: U+FEFF (byte-order mark)")),
              ("empty token (U+200B)", join(with_line(2, "\u200b O", True)), {},
               ("error", 1, "{path}:3: empty token")),
              ("label with U+200B", join(with_line(2, "call O\u200b", True)), {},
               ("error", 1, "{path}:3: missing or malformed label")),
              ("NBSP as column separator", join(with_line(2, "call\xa0O", True)), {},
               ("error", 1, "{path}:3: expected 2 columns (as on line 1), found 1 (the line holds U+00A0")),
              ("lone CR inside a line", join(with_line(2, "call\rO", True)), {},
               ("error", 1, "{path}:3: expected 2 columns")),
              ("extra column", join(with_line(2, "call NN O", True)), {},
               ("error", 1, "{path}:3: expected 2 columns")),
              ("missing label column", join(with_line(2, "call", True)), {},
               ("error", 1, "{path}:3: expected 2 columns")),
              ("foreign label in IOB2", join(with_line(2, "call S-PER", True)), {"scheme": "IOB2"},
               ("error", 1, "{path}:3: label 'S-PER' is not a label of the configured scheme")),
              ("empty file", b"", {}, ("error", 1, "{path}:1: no sentences")),
              ("only -DOCSTART- and blanks", b"-DOCSTART- O\n\n\n", {}, ("error", 1, "{path}:3: no sentences")),
              ("UTF-16 file", "EU B-ORG\n".encode("utf-16"), {}, ("error", 1, "{path}:1: invalid UTF-8")),
              ("cp1252 quotes", join(lines_of()).replace(b"German", b"\x93German\x94"), {},
               ("error", 1, "{path}:3: invalid UTF-8 byte 0x93"))]
    for i, bad in enumerate([b"caf\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf8x"]):
        cases.append((f"invalid UTF-8 #{i}", join(lines_of()).replace(b"German", bad), {},
                      ("error", 1, "{path}:3: invalid UTF-8 byte")))
    conllu = "1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n2\tb\t_\tY\t_\t_\t_\t_\t_\t_\n"
    cases += [("CoNLL-U, CR endings", (conllu + "\n" + conllu).replace("\n", "\r").encode(),
               {"format": "conllu", "scheme": "none"}, ("ok", 2, 4, [])),
              ("CoNLL-U, whitespace line between sentences", (conllu + " \n" + conllu).encode(),
               {"format": "conllu", "scheme": "none"}, ("ok", 2, 4, [3])),
              ("CoNLL-U, id gap", conllu.replace("2\tb", "3\tb").encode(),
               {"format": "conllu", "scheme": "none"}, ("error", 1, "{path}:2: token id '3', expected 2")),
              ("TSV stray tab", b"a\tO\nb\tO\t\n", {"format": "tsv"}, ("error", 1, "{path}:2: expected 2 columns")),
              ("raw text, CR endings", b"One here.\rTwo here.\r", {"format": "raw", "scheme": "none",
                                                                   "split": "unlabeled"}, ("ok", 2, 6, [])),
              ("raw text, invisible-only line", b"One here.\n\xe2\x80\x8b\nTwo here.\n",
               {"format": "raw", "scheme": "none", "split": "unlabeled"}, ("ok", 2, 6, []))]
    return cases


def classify_corpus(result, expected, path: Path, summary: Path) -> str:
    if result.exception is not None and not isinstance(result.exception, (SystemExit, typer.Exit)):
        return "traceback"
    output = result.output
    if expected[0] == "ok":
        if result.exit_code != 0:
            return "unclear"
        got = json.loads(summary.read_text())
        split = next(iter(got.values()))
        warned = [x for x in output.splitlines() if x.startswith("warning:") and "split where" in x]
        lines = [int(n) for n in re.findall(r"line (\d+) \(", "".join(warned))]
        same = (split["sentences"], split["tokens"]) == expected[1:3] and lines == expected[3]
        return "ok" if same else "silent"
    return _clear(result, expected[1], expected[2].format(path=path))


def _clear(result, code: int, fragment: str) -> str:
    if result.exception is not None and not isinstance(result.exception, (SystemExit, typer.Exit)):
        return "traceback"
    if result.exit_code == 0:
        return "silent"
    errors = [x for x in result.output.splitlines() if x.startswith("error: ")]
    if not errors and "Usage:" in result.output:  # typer's own usage error (a box, exit 2)
        errors = [" ".join(result.output.split())]
    one_line = len(errors) == 1 and "Traceback" not in result.output
    return "clear" if one_line and result.exit_code == code and fragment in errors[0] else "unclear"


def run_corpora(folder: Path, outcomes: Counter, failures: list) -> None:
    runner = CliRunner()
    cases = corpus_cases()
    for i, (name, data, options, expected) in enumerate(cases):
        options = dict(options)
        split = options.pop("split", "train")
        path = folder / f"case{i}.txt"
        path.write_bytes(data)
        summary = folder / f"case{i}.json"
        params = {"prepare": {"corpora": [{"name": "c", "files": {split: str(path)}, **options}],
                              "out": str(summary)}}
        (folder / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
        result = runner.invoke(app, ["prepare", "--params", str(folder / "params.yaml")])
        outcome = classify_corpus(result, expected, path, summary)
        outcomes[f"corpus:{outcome}"] += 1
        if outcome not in ("ok", "clear"):
            failures.append(f"corpus {name}: {outcome}: {result.output.strip()[:300]}")
    for name, corpora, code, fragment in [
            ("duplicate corpus names", [{"name": "c", "files": {"train": "x"}}] * 2, 2,
             "prepare.corpora[1].name: corpus name 'c' is already used"),
            ("split key 'valid'", [{"name": "c", "files": {"valid": "x"}}], 2,
             "prepare.corpora[0].files.valid: must be one of"),
            ("missing file", [{"name": "c", "files": {"train": str(folder / "gone")}}], 1,
             f"prepare.corpora[0].files.train: {folder / 'gone'} does not exist"),
            ("folder as a file", [{"name": "c", "files": {"train": str(folder)}}], 1, "is not a file")]:
        (folder / "params.yaml").write_text(yaml.safe_dump({"prepare": {"corpora": corpora}}))
        outcome = _clear(runner.invoke(app, ["prepare", "--params", str(folder / "params.yaml")]),
                         code, fragment)
        outcomes[f"corpus:{outcome}"] += 1
        if outcome != "clear":
            failures.append(f"corpus {name}: {outcome}")


def params_cases(folder: Path) -> list[tuple]:
    """(name, params data or YAML text or None, CLI args, exit code, fragment of the error)."""
    cases = []
    for key in KEYS:
        for value, names in [*wrong_types(key), *out_of_range(key)]:
            data = with_value(key, value)
            section: dict = {}
            top = section
            parts = key.section.split(".")
            for part in parts[:-1]:
                top = top.setdefault(part, {})
            top[parts[-1]] = data
            cases.append((f"{key.dotted} = {value!r}", section, [COMMANDS[key.section]], 2, f"{names}: "))
    empty, afile, model = folder / "empty-model", folder / "train.conll", folder / "model"
    empty.mkdir(exist_ok=True)
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    afile.write_text("EU B-ORG\n", encoding="utf-8")
    corpus = {"name": "c", "files": {"train": str(afile)}}
    cases += [(f"--params missing ({cmd})", None, [cmd, "--params", str(folder / "nope.yaml")], 2,
               "no such file") for cmd in COMMANDS.values()]
    cases += [("YAML syntax error", "teachers:\n  en: {optim: {epochs: 2}\n", ["train-teacher"], 2,
               "not valid YAML"),
              ("params is a list", "- a\n- b\n", ["distill"], 2, "expected a mapping of sections"),
              ("section is a list", {"distill": [1, 2]}, ["distill"], 2, "section 'distill' must be a mapping"),
              ("unknown teacher key", {"teachers": {"en": {}}}, ["train-teacher", "--teacher", "fr"], 2,
               "no section 'teachers.fr'"),
              ("--epochs 0 (teacher)", {"teachers": {"en": {"corpus": corpus}}},
               ["train-teacher", "--epochs", "0"], 2, "teachers.en.optim.epochs: must be >= 1"),
              ("--epochs 0 (distill)", {"distill": {}}, ["distill", "--epochs", "0"], 2,
               "distill.optim.epochs: must be >= 1"),
              ("--k 0", {"distill": {}}, ["distill", "--k", "0"], 2, "distill.kd.k: must be >= 1"),
              ("--workers -1", {"distill": {}}, ["distill", "--workers", "-1"], 2,
               "distill.workers: must be >= 0"),
              ("--max-steps 0", {"distill": {}}, ["distill", "--max-steps", "0"], 2,
               "distill.optim.max_steps: must be >= 1"),
              ("KD option typo", {"distill": {"kd": {"method": "topk", "options": {"kk": 1}}}},
               ["distill"], 2, "distill.kd.options: unknown option(s) ['kk']"),
              ("teacher without a dev split", {"teachers": {"en": {"corpus": corpus}}}, ["train-teacher"],
               2, "has no split 'dev'"),
              ("--model without '='", {"evaluate": {}}, ["evaluate", "--model", "t"], 2,
               "--model: expected NAME=FOLDER"),
              ("report without an evaluation", {"report": {"evaluate": str(folder / "e.json")}},
               ["report"], 1, "does not exist"),
              ("prepare without corpora", {"prepare": {"corpora": []}}, ["prepare"], 2,
               "prepare.corpora: no corpora"),
              ("evaluate without models", {"evaluate": {"corpora": [corpus]}}, ["evaluate"], 2,
               "evaluate: no models to score"),
              ("evaluate a corpus without a test split",
               {"evaluate": {"models": {"t": str(model)}, "corpora": [corpus]}}, ["evaluate"], 2,
               "evaluate.corpora[0]: corpus 'c' has none of the splits ['test']")]
    for name, folder_path, fragment in [("missing", folder / "no-model", "does not exist"),
                                        ("a file", afile, "is a file"),
                                        ("no config.json", empty, "no config.json")]:
        cases.append((f"evaluate model folder {name}",
                      {"evaluate": {"models": {"t": str(folder_path)}, "corpora": [corpus]}},
                      ["evaluate"], 1, f"evaluate.models.t: {folder_path}"))
        cases.append((f"predict model folder {name}", None,
                      ["predict", str(afile), "--model", str(folder_path)],
                      1 if folder_path == empty else 2, fragment if folder_path == empty else "--model"))
    if not torch.cuda.is_available():
        for section, cmd, key in [({"teachers": {"en": {"device": "cuda", "corpus": corpus}}},
                                   "train-teacher", "teachers.en.device"),
                                  ({"annotate": {"device": "cuda"}}, "annotate", "annotate.device"),
                                  ({"distill": {"device": "cuda:0"}}, "distill", "distill.device"),
                                  ({"evaluate": {"device": "cuda"}}, "evaluate", "evaluate.device")]:
            cases.append((f"{key}: cuda without a GPU", section, [cmd], 2, f"{key}: 'cuda"))
        cases.append(("predict --device cuda", None, ["predict", str(afile), "--model", str(empty),
                                                      "--device", "cuda"], 2, "--device: 'cuda'"))
    return cases


def run_params(folder: Path, outcomes: Counter, failures: list) -> None:
    runner = CliRunner()
    for name, params, args, code, fragment in params_cases(folder):
        args = list(args)
        if params is not None:
            path = folder / "params.yaml"
            path.write_text(params if isinstance(params, str) else yaml.safe_dump(params))
            args += ["--params", str(path)]
        outcome = _clear(runner.invoke(app, args), code, fragment)
        outcomes[f"params:{outcome}"] += 1
        if outcome != "clear":
            failures.append(f"params {name}: {outcome}")


def run_campaign() -> tuple[list[str], list[str]]:
    """(the table as markdown lines, one line per input that ended neither ok nor clear)."""
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_corpora(Path(tmp), outcomes, failures)
        run_params(Path(tmp), outcomes, failures)
    table = ["| inputs | tried | accepted, exact | clear one-line errors | unclear | tracebacks | "
             "silent |", "|---|---|---|---|---|---|---|"]
    for family in ("corpus", "params"):
        row = {k.split(":")[1]: v for k, v in outcomes.items() if k.startswith(family + ":")}
        table.append(f"| {family} | {sum(row.values())} | {row.get('ok', 0)} | {row.get('clear', 0)} "
                     f"| {row.get('unclear', 0)} | {row.get('traceback', 0)} | {row.get('silent', 0)} |")
    return table, failures


if __name__ == "__main__":
    table, failures = run_campaign()
    print("\n".join(table + ["  " + failure for failure in failures]))
