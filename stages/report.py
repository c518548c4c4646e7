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


def build_rows(cfg: ReportConfig) -> list[dict]:
    """One row per (method, corpus split): P/R/F1, gap closed, speed-up over the teacher, epoch
    time, KD overhead.

    A method or the teacher missing from the evaluation is refused, not left out of the table."""
    evaluation = _read_json(Path(cfg.evaluate), "evaluate")
    missing = [name for name in [cfg.teacher, *cfg.methods] if name not in evaluation]
    if missing:
        raise DataError(f"{cfg.evaluate} has no scores of {missing}; it scores {sorted(evaluation)}")
    teacher = evaluation[cfg.teacher]
    epoch_seconds, per_k_sentences = {}, {}
    for method in cfg.methods:
        run = _read_json(Path(cfg.runs_dir) / method / "metrics.json", f"distill --run {method}")
        epoch_seconds[method] = statistics.median(run["epoch_seconds"])
        per_k_sentences[method] = 1000 * epoch_seconds[method] / run["train_sentences"]
    base_time = per_k_sentences.get(cfg.baseline)
    rows = []
    for method in cfg.methods:
        for key, metrics in evaluation[method].items():
            score = _score(metrics)
            row = {"method": method, "data": key, "precision": metrics.get("precision"),
                   "recall": metrics.get("recall"), "score": score,
                   "epoch_s": epoch_seconds[method],
                   "s_per_1k": per_k_sentences[method],
                   "overhead": per_k_sentences[method] / base_time if base_time else None,
                   "speed_up": _speed_up(metrics, teacher.get(key))}
            base = evaluation.get(cfg.baseline, {}).get(key)
            if key in teacher and base is not None:
                gap = _score(teacher[key]) - _score(base)
                row["teacher"] = _score(teacher[key])
                row["gap_closed"] = (score - _score(base)) / gap if abs(gap) > 1e-12 else None
            rows.append(row)
    return rows


def _fmt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def render(rows: list[dict], cfg: ReportConfig) -> str:
    lines = ["# structkd report", "",
             f"Teacher: `{cfg.teacher}`; baseline (no KD): `{cfg.baseline}`. Scores are entity F1 "
             "(seqeval), token accuracy or LAS; gap closed = (method - baseline) / (teacher - baseline); "
             "speed-up = the method's sentences/s over the teacher's, labeling the same split in "
             "the same `structkd evaluate` run (wall clock, same batch size; - when not measured); "
             "epoch s = median training seconds per epoch (dev evaluation excluded); vs none = "
             "training time per sentence relative to the baseline (runs with unlabeled rows see "
             "more sentences per epoch).",
             "", "| method | data | P | R | F1/acc | teacher | gap closed | speed-up | epoch s | "
             "s / 1k sent. | vs none |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['data']} | {_fmt(r['precision'], '.4f')} | "
            f"{_fmt(r['recall'], '.4f')} | {r['score']:.4f} | {_fmt(r.get('teacher'), '.4f')} | "
            f"{_fmt(r.get('gap_closed'), '.1%')} | {_fmt(r['speed_up'], '.1f', 'x')} | "
            f"{r['epoch_s']:.1f} | {r['s_per_1k']:.2f} | {_fmt(r['overhead'], '.2f', 'x')} |")
    lines += ["", f"![scores]({Path(cfg.chart).name})", ""]
    return "\n".join(lines)


def chart(rows: list[dict], cfg: ReportConfig) -> None:
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
        teacher = next((r["teacher"] for r in sub if r.get("teacher") is not None), None)
        if teacher is not None:
            ax.axvline(teacher, color="#c44e52", linestyle="--", label="teacher")
            ax.legend(loc="lower right")
        low = min(r["score"] for r in sub)
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
    rows = build_rows(cfg)
    chart(rows, cfg)
    Path(cfg.out).write_text(render(rows, cfg), encoding="utf-8")
    console.print(f"wrote {cfg.out} and {cfg.chart}")
