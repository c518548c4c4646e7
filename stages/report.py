"""`structkd report`: one table per corpus of every method against the teacher, plus a chart."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

import typer

from pipeline.config import ReportConfig
from pipeline.errors import DataError
from pipeline.params import load_config
from pipeline.report_stats import gap_closed, mean_or_none, mean_std, method_runs
from stages.common import console, params_file, top_level_methods


def _score(metrics: dict) -> float:
    """The headline figure of one evaluation: entity F1, token accuracy for POS, LAS for trees."""
    if "las" in metrics:
        return float(metrics["las"])
    return float(metrics["f1"] if "f1" in metrics else metrics["accuracy"])


def _read_json(path: Path, made_by: str) -> dict:
    """A JSON object another stage wrote; missing or unreadable is a DataError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist (run `structkd {made_by}` first)") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _speed_up(student: dict, teacher: dict | None) -> float | None:
    """Student sentences/s over the teacher's on the same split (``structkd evaluate``), or None
    when either evaluation has no throughput (one written before evaluate measured it)."""
    rate, base = student.get("sentences_per_s"), (teacher or {}).get("sentences_per_s")
    return rate / base if rate and base else None


def _run_times(cfg: ReportConfig, run: str) -> tuple[float, float]:
    """(median epoch seconds, seconds per 1k training sentences) of one distill run."""
    metrics = _read_json(Path(cfg.runs_dir) / run / "metrics.json", f"distill --run {run}")
    epoch_s = statistics.median(metrics["epoch_seconds"])
    return epoch_s, 1000 * epoch_s / metrics["train_sentences"]


def _check_scored(cfg: ReportConfig, evaluation: dict, groups: list[tuple[str, list[str]]]) -> None:
    """The teacher and every run of every method are scored, and a method's seeds on the same
    splits; else a DataError naming the run and the file."""
    missing = [name for name in dict.fromkeys([cfg.teacher, *cfg.teachers.values(), *cfg.methods])
               if name not in evaluation]
    if missing:
        raise DataError(f"{cfg.evaluate} has no scores of {missing}; it scores {sorted(evaluation)}")
    for method, runs in groups:
        for run in runs:
            if run not in evaluation:
                raise DataError(f"{cfg.evaluate} has no scores of run {run!r} (report.seeds.{method} "
                                f"lists it); it scores {sorted(evaluation)}")
            if set(evaluation[run]) != set(evaluation[runs[0]]):
                raise DataError(f"{cfg.evaluate}: run {run!r} is scored on {sorted(evaluation[run])}, "
                                f"but {runs[0]!r}, a seed of the same method "
                                f"(report.seeds.{method}), on {sorted(evaluation[runs[0]])}")


def build_rows(cfg: ReportConfig, evaluation: dict) -> list[dict]:
    """One row per (method, corpus split): P/R/F1, gap closed, speed-up over the teacher, epoch
    time, KD overhead; over a method's seeds (``report.seeds``) the mean, with the sample standard
    deviation of the score and of the gap closed, and ``n`` the number of seeds.

    A method, a seed run or the teacher missing from the evaluation is refused, not left out of
    the table."""
    groups = method_runs(cfg.methods, cfg.seeds)
    _check_scored(cfg, evaluation, groups)
    times = {run: _run_times(cfg, run) for _, runs in groups for run in runs}
    runs_of = dict(groups)
    base_runs = runs_of.get(cfg.baseline, [cfg.baseline])
    base_time = (mean_or_none([times[run][1] for run in base_runs])
                 if all(run in times for run in base_runs) else None)
    rows = []
    for method, runs in groups:
        epoch_s = statistics.fmean(times[run][0] for run in runs)
        per_k = statistics.fmean(times[run][1] for run in runs)
        for key in evaluation[runs[0]]:
            teacher = evaluation[cfg.teachers.get(key.split("/")[0], cfg.teacher)]
            entries = [evaluation[run][key] for run in runs]
            seed_scores = [_score(metrics) for metrics in entries]
            score, std = mean_std(seed_scores)
            row = {"method": method, "data": key, "n": len(runs), "score": score, "score_std": std,
                   "precision": mean_or_none([m.get("precision") for m in entries]),
                   "recall": mean_or_none([m.get("recall") for m in entries]),
                   "epoch_s": epoch_s, "s_per_1k": per_k,
                   "overhead": per_k / base_time if base_time else None,
                   "speed_up": mean_or_none([_speed_up(m, teacher.get(key)) for m in entries])}
            base = [evaluation[run][key] for run in base_runs
                    if key in evaluation.get(run, {})]
            if key in teacher and base and len(base) == len(base_runs):
                row["teacher"] = _score(teacher[key])
                row["gap_closed"], row["gap_std"] = gap_closed(
                    seed_scores, statistics.fmean(_score(m) for m in base), row["teacher"])
            rows.append(row)
    return rows


def _fmt(value, spec: str, unit: str = "") -> str:
    if value is None:
        return "-"
    text = format(value, spec)  # a mean that rounds to zero shows as 0.0%, not -0.0%
    return (text[1:] if text.startswith("-") and not any(c in text for c in "123456789")
            else text) + unit


def _header(seeds: bool) -> list[str]:
    score = ["F1/acc", "± std", "seeds"] if seeds else ["F1/acc"]
    gap = ["gap closed", "gap ± std"] if seeds else ["gap closed"]
    return ["method", "data", "P", "R", *score, "teacher", *gap, "speed-up", "epoch s",
            "s / 1k sent.", "vs none"]


def _cells(r: dict, seeds: bool) -> list[str]:
    score = [f"{r['score']:.4f}"]
    if seeds:
        score += [_fmt(r["score_std"], ".4f"), str(r["n"])]
    gap = [_fmt(r.get("gap_closed"), ".1%")] + ([_fmt(r.get("gap_std"), ".1%")] if seeds else [])
    return [r["method"], r["data"], _fmt(r["precision"], ".4f"), _fmt(r["recall"], ".4f"), *score,
            _fmt(r.get("teacher"), ".4f"), *gap, _fmt(r["speed_up"], ".1f", "x"),
            f"{r['epoch_s']:.1f}", f"{r['s_per_1k']:.2f}", _fmt(r["overhead"], ".2f", "x")]


def per_type_tables(cfg: ReportConfig, evaluation: dict) -> list[str]:
    """Markdown lines: for every split whose scores have ``per_type`` (entity F1 by type), one
    table of the split's teacher and every method (the mean over its seeds), one column per type
    with its gold support; nothing when no split has them (POS, trees)."""
    groups = method_runs(cfg.methods, cfg.seeds)
    lines: list[str] = []
    for key in dict.fromkeys(key for _, runs in groups for key in evaluation[runs[0]]):
        teacher = cfg.teachers.get(key.split("/")[0], cfg.teacher)
        named = [(f"teacher ({teacher})", [teacher])] + groups
        scored = [(name, [evaluation[run][key]["per_type"] for run in runs]) for name, runs in named
                  if all("per_type" in evaluation.get(run, {}).get(key, {}) for run in runs)]
        if not scored:
            continue
        types = sorted({t for _, entries in scored for entry in entries for t in entry})
        support = {t: next(e[t]["support"] for _, entries in scored for e in entries if t in e)
                   for t in types}
        lines += ["", f"### F1 per type: {key}", "",
                  "| model | " + " | ".join(f"{t} ({support[t]})" for t in types) + " |",
                  "|" + "---|" * (len(types) + 1)]
        for name, entries in scored:
            cells = [_fmt(mean_or_none([e[t]["f1"] for e in entries])
                          if all(t in e for e in entries) else None, ".4f") for t in types]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render(rows: list[dict], cfg: ReportConfig, per_type: list[str]) -> str:
    """The markdown report; with ``report.seeds`` the table also has the sample standard
    deviation of the score and of the gap closed, and the number of seeds; ``per_type`` (the
    lines of `per_type_tables`) follows the chart."""
    seeds = bool(cfg.seeds)
    named = "".join(f", `{t}` for {c}" for c, t in cfg.teachers.items())
    text = (f"Teacher: `{cfg.teacher}`{named}; baseline (no KD): `{cfg.baseline}`. Scores are entity F1 "
            "(seqeval), token accuracy or LAS; gap closed = (method - baseline) / (teacher - baseline); "
            "speed-up = the method's sentences/s over the teacher's, labeling the same split in "
            "the same `structkd evaluate` run (wall clock, same batch size; - when not measured); "
            "epoch s = median training seconds per epoch (dev evaluation excluded); vs none = "
            "training time per sentence relative to the baseline (runs with unlabeled rows see "
            "more sentences per epoch).")
    if seeds:
        text += (" Over a method's seeds (`report.seeds`; seeds = their number n) every figure is "
                 "the mean; ± std = the sample standard deviation (n - 1) of the score over seeds "
                 "(- for one seed); gap closed = (mean method - mean baseline) / (teacher - mean "
                 "baseline), and gap ± std = the sample standard deviation over seeds of "
                 "(seed score - mean baseline) / (teacher - mean baseline).")
    header = _header(seeds)
    lines = ["# structkd report", "", text, "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(r, seeds)) + " |" for r in rows]
    lines += ["", f"![scores]({Path(cfg.chart).name})"] + per_type + [""]
    return "\n".join(lines)


def chart(rows: list[dict], cfg: ReportConfig) -> None:
    """One horizontal bar chart per split: each method's (mean) score, an error bar of one
    standard deviation where it has more than one seed, the teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({r["data"] for r in rows})
    most = max(sum(r["data"] == key for r in rows) for key in keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), max(3.5, 0.3 * most + 1.0)),
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
        sub = [r for r in rows if r["data"] == key]
        ax.barh([r["method"] for r in sub], [r["score"] for r in sub], color="#4878a8")
        spread = [r for r in sub if r.get("score_std") is not None]
        if spread:
            ax.errorbar([r["score"] for r in spread], [r["method"] for r in spread],
                        xerr=[r["score_std"] for r in spread], fmt="none", ecolor="black",
                        capsize=3, label="± std over seeds")
        teacher = next((r["teacher"] for r in sub if r.get("teacher") is not None), None)
        if teacher is not None:
            ax.axvline(teacher, color="#c44e52", linestyle="--", label="teacher")
        if teacher is not None or spread:
            ax.legend(loc="lower right")
        low = min(r["score"] - (r.get("score_std") or 0.0) for r in sub)
        ax.set_xlim(max(0.0, low - 0.05), 1.0)
        ax.set_title(key)
        ax.set_xlabel("F1 / accuracy / LAS")
    fig.tight_layout()
    fig.savefig(cfg.chart, dpi=110)
    plt.close(fig)


def main(
    params: Optional[Path] = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    section: str = typer.Option("report", help="Section of params.yaml."),
    out: Optional[str] = typer.Option(None, help="Markdown report to write."),
) -> None:
    """Write report.md (per method: P/R/F1, gap closed, speed-up over the teacher, epoch time, KD
    overhead) and a PNG chart."""
    cfg: ReportConfig = load_config(
        ReportConfig, params_file(params), [section],
        {"out": out, "methods": top_level_methods(params)})
    evaluation = _read_json(Path(cfg.evaluate), "evaluate")
    rows = build_rows(cfg, evaluation)
    chart(rows, cfg)
    Path(cfg.out).write_text(render(rows, cfg, per_type_tables(cfg, evaluation)), encoding="utf-8")
    console.print(f"wrote {cfg.out} and {cfg.chart}")
