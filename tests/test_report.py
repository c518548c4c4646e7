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
    text = (root / "report.md").read_text(encoding="utf-8").split("\n### ")[0]  # the main table
    lines = [line for line in text.splitlines() if line.startswith("| ")]
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


# Seeds (report.seeds): a method's row is the mean over its seed runs, with the sample standard
# deviation of the score and of the gap closed, and the number of seeds.

SEEDS = {"none": ["none", "none-s14", "none-s15"],
         "posterior": ["posterior", "posterior-s14", "posterior-s15"]}


def failed(root: Path, params: dict, *args: str):
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    result = CliRunner().invoke(app, [*args, "--params", str(path)], catch_exceptions=False)
    assert result.exit_code != 0, result.output
    return result


def seeded(root: Path, methods: list[str], seeds: dict) -> dict:
    """Teacher 0.90 on c/test (50 sentences/s); none 0.70/0.72/0.74 (mean 0.72, sd 0.02);
    posterior 0.80/0.83/0.86 (mean 0.83, sd 0.03) at 100/200/300 sentences/s and 2/4/6 s per
    epoch; topk one run at 0.81."""
    evaluation = {"teacher": {"c/test": scores(0.9, 50.0)}, "topk": {"c/test": scores(0.81)}}
    for i, (f1, rate, seconds) in enumerate(((0.80, 100.0, 2.0), (0.83, 200.0, 4.0),
                                             (0.86, 300.0, 6.0))):
        evaluation[SEEDS["posterior"][i]] = {"c/test": scores(f1, rate)}
        write_run(root, SEEDS["posterior"][i], seconds)
    for run, f1 in zip(SEEDS["none"], (0.70, 0.72, 0.74)):
        evaluation[run] = {"c/test": scores(f1)}
        write_run(root, run)
    write_run(root, "topk")
    (root / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    params = report_params(root, methods)
    params["report"]["seeds"] = seeds
    return params


def test_seeds_give_the_mean_the_sample_std_and_the_gap_closed_with_its_std(tmp_path):
    # none-s14 is also a distill run in `methods`: it is folded into none, no row of its own
    invoke(tmp_path, seeded(tmp_path, ["none", "none-s14", "posterior", "topk"], SEEDS), "report")
    rows = table(tmp_path)
    assert sorted(rows) == [("none", "c/test"), ("posterior", "c/test"), ("topk", "c/test")]
    post, none, topk = rows["posterior", "c/test"], rows["none", "c/test"], rows["topk", "c/test"]
    assert (post["F1/acc"], post["± std"], post["seeds"]) == ("0.8300", "0.0300", "3")  # n - 1
    assert (none["F1/acc"], none["± std"], none["seeds"]) == ("0.7200", "0.0200", "3")
    # gap closed: (0.83 - 0.72) / (0.90 - 0.72) = 61.1%; its sd: 0.03 / 0.18 = 16.7%
    assert (post["gap closed"], post["gap ± std"]) == ("61.1%", "16.7%")
    assert (none["gap closed"], none["gap ± std"]) == ("0.0%", "11.1%")
    assert (topk["F1/acc"], topk["± std"], topk["seeds"]) == ("0.8100", "-", "1")
    assert (topk["gap closed"], topk["gap ± std"]) == ("50.0%", "-")  # against the baseline's mean
    assert (post["P"], post["R"], post["speed-up"]) == ("0.8300", "0.8300", "4.0x")  # means
    assert (post["epoch s"], post["s / 1k sent."], post["vs none"]) == ("4.0", "40.00", "2.00x")
    assert topk["speed-up"] == "-"  # not measured for topk
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "sample standard deviation (n - 1)" in text and "(seed score - mean baseline)" in text


def test_without_seeds_the_table_has_no_seed_columns(tmp_path):
    invoke(tmp_path, seeded(tmp_path, ["none", "posterior", "topk"], {}), "report")
    rows = table(tmp_path)
    assert "± std" not in rows["posterior", "c/test"] and "seeds" not in rows["posterior", "c/test"]
    assert rows["posterior", "c/test"]["F1/acc"] == "0.8000"  # the run named posterior alone
    assert rows["posterior", "c/test"]["gap closed"] == "50.0%"  # (0.80 - 0.70) / (0.90 - 0.70)
    assert "report.seeds" not in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_the_chart_has_error_bars_where_a_method_has_seeds(tmp_path, monkeypatch):
    import matplotlib.axes

    calls = []
    errorbar = matplotlib.axes.Axes.errorbar

    def record(self, x, y, *args, **kwargs):
        calls.append((list(y), list(x), list(kwargs["xerr"])))
        return errorbar(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", record)
    invoke(tmp_path, seeded(tmp_path, ["none", "posterior", "topk"], SEEDS), "report")
    assert (tmp_path / "report.png").stat().st_size > 0
    assert len(calls) == 1  # one split; topk (one seed) has no error bar
    methods, means, stds = calls[0]
    assert methods == ["none", "posterior"]
    assert means == pytest.approx([0.72, 0.83]) and stds == pytest.approx([0.02, 0.03])
    calls.clear()
    invoke(tmp_path, seeded(tmp_path, ["none", "posterior", "topk"], {}), "report")
    assert calls == [] and (tmp_path / "report.png").exists()


def test_a_run_under_two_methods_is_refused(tmp_path):
    seeds = {**SEEDS, "posterior": ["posterior", "none-s14"]}
    result = failed(tmp_path, seeded(tmp_path, ["none", "posterior"], seeds), "report")
    assert result.exit_code == 2
    assert ("report.seeds.posterior: run 'none-s14' is already a seed of report.seeds.none"
            in result.output)
    seeds = {"none": ["none", "posterior"], "posterior": ["posterior-s14"]}
    result = failed(tmp_path, seeded(tmp_path, ["none", "posterior"], seeds), "report")
    assert "report.seeds.posterior: 'posterior' is also a seed run of report.seeds.none" in result.output
    result = failed(tmp_path, seeded(tmp_path, ["none"], {"none": ["none", "none"]}), "report")
    assert "report.seeds.none: 'none' is listed twice" in result.output


def test_a_seed_run_missing_from_the_evaluation_is_refused(tmp_path):
    seeds = {**SEEDS, "posterior": ["posterior", "posterior-s99"]}
    result = failed(tmp_path, seeded(tmp_path, ["none", "posterior"], seeds), "report")
    assert result.exit_code == 1
    assert (f"{tmp_path / 'eval.json'} has no scores of run 'posterior-s99' "
            "(report.seeds.posterior lists it)") in result.output


@pytest.mark.parametrize("value, message", [
    ("none-s14", "report.seeds.none: expected a list, got 'none-s14'"),
    ([], "report.seeds.none: no runs"),
    (["none", 3], "report.seeds.none[1]: expected a non-empty string, got 3"),
])
def test_a_bad_seeds_entry_names_its_key(tmp_path, value, message):
    result = failed(tmp_path, seeded(tmp_path, ["none"], {"none": value}), "report")
    assert result.exit_code == 2 and message in result.output


def test_each_corpus_is_measured_against_its_own_teacher(tmp_path):
    """``report.teachers`` (multilingual: one teacher per language); an unscored one is refused."""
    (tmp_path / "eval.json").write_text(json.dumps({
        "teacher": {"en/test": scores(0.9), "es/test": scores(0.5)},
        "teacher-es": {"en/test": scores(0.3), "es/test": scores(0.8)},
        "none": {"en/test": scores(0.7), "es/test": scores(0.6)},
        "kd": {"en/test": scores(0.8), "es/test": scores(0.7)},
    }), encoding="utf-8")
    for method in ("none", "kd"):
        write_run(tmp_path, method)
    params = report_params(tmp_path, ["none", "kd"])
    params["report"]["teachers"] = {"es": "teacher-es"}
    invoke(tmp_path, params, "report")
    rows = table(tmp_path)
    assert rows["kd", "en/test"]["teacher"] == "0.9000" and rows["kd", "en/test"]["gap closed"] == "50.0%"
    assert rows["kd", "es/test"]["teacher"] == "0.8000" and rows["kd", "es/test"]["gap closed"] == "50.0%"
    assert "`teacher-es` for es" in (tmp_path / "report.md").read_text()
    params["report"]["teachers"] = {"es": "teacher-de"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = CliRunner().invoke(app, ["report", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code != 0 and "no scores of ['teacher-de']" in result.output


def typed(f1: float, per_type: dict[str, float]) -> dict:
    """An evaluation entry with entity F1 by type (support 10 each)."""
    return {**scores(f1), "per_type": {t: {"precision": v, "recall": v, "f1": v, "support": 10}
                                       for t, v in per_type.items()}}


def test_report_has_f1_per_type_averaged_over_seeds(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({
        "teacher": {"c/test": typed(0.9, {"PER": 0.95, "ORG": 0.85})},
        "none": {"c/test": typed(0.7, {"PER": 0.8, "ORG": 0.6})},
        "kd": {"c/test": typed(0.8, {"PER": 0.9, "ORG": 0.7})},
        "kd-s2": {"c/test": typed(0.8, {"PER": 0.8, "ORG": 0.5})},
    }), encoding="utf-8")
    for run in ("none", "kd", "kd-s2"):
        write_run(tmp_path, run)
    params = report_params(tmp_path, ["none", "kd"])
    params["report"]["seeds"] = {"kd": ["kd", "kd-s2"]}
    invoke(tmp_path, params, "report")
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    typed_table = text.split("### F1 per type: c/test")[1].strip().splitlines()
    assert typed_table[0] == "| model | ORG (10) | PER (10) |"
    assert typed_table[2:5] == ["| teacher (teacher) | 0.8500 | 0.9500 |", "| none | 0.6000 | 0.8000 |",
                                "| kd | 0.6000 | 0.8500 |"]
    assert table(tmp_path)["kd", "c/test"]["F1/acc"] == "0.8000"  # the main table is unchanged


def test_report_without_per_type_scores_has_no_per_type_table(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({
        "teacher": {"c/test": scores(0.9)}, "none": {"c/test": scores(0.7)}}), encoding="utf-8")
    write_run(tmp_path, "none")
    invoke(tmp_path, report_params(tmp_path, ["none"]), "report")
    assert "F1 per type" not in (tmp_path / "report.md").read_text(encoding="utf-8")
