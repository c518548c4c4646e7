"""Tables of docs/RESULTS.md from `structkd evaluate` output and distill run folders.

Scores: test (or dev) F1 per method, mean +- sample std over its seed runs (``METHOD`` and
``METHOD-seedN`` in the evaluate JSON), share of the teacher-student gap closed
((F1_m - F1_none) / (F1_teacher - F1_none), against the seed-13 baseline and the seed mean):

    python bench/results_table.py scores --evaluate metrics/conll03-evaluate.json \
        --data conll03/test METHOD [METHOD ...]

Times: training seconds per epoch (metrics.json ``epoch_seconds``, dev evaluation excluded) per 1000
training sentences, median over the epochs of the listed run folders, and the ratio to the first
method:

    python bench/results_table.py times none=runs/a/none,runs/b/none token=runs/a/token ...

Runs: dev and test score (F1, or accuracy for POS) of distill run folders from their metrics.json,
overall or per language, with the share of the teacher-student gap closed against the first run;
teacher scores come from an evaluate JSON (GROUP = all or a language):

    python bench/results_table.py runs --evaluate metrics/x-teacher-eval.json \
        --teacher all=teacher-en:conll2000/test none=runs/conll2000/none posterior=runs/conll2000/posterior
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pipeline.metrics import main_score


def seed_runs(evaluation: dict, method: str) -> list[str]:
    suffix = method + "-seed"
    return [name for name in evaluation
            if name == method or (name.startswith(suffix) and name[len(suffix):].isdigit())]


def scores(args: argparse.Namespace) -> None:
    evaluation = json.loads(Path(args.evaluate).read_text())
    teacher = evaluation[args.teacher][args.data]["f1"]

    def f1s(method: str) -> list[float]:
        return [evaluation[name][args.data]["f1"] for name in seed_runs(evaluation, method)]

    base_first = evaluation[args.baseline][args.data]["f1"]
    base_mean = statistics.mean(f1s(args.baseline))
    print(f"teacher {args.data} F1 {teacher:.4f}; baseline '{args.baseline}': seed 13 {base_first:.4f}, "
          f"mean {base_mean:.4f}")
    print("| method | runs | F1 (seed 13) | mean ± std | gap closed (seed 13 vs none seed 13) | "
          "gap closed (mean vs none mean) |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        values = f1s(method)
        if not values:
            print(f"| {method} | not run | | | | |")
            continue
        first, mean = evaluation[method][args.data]["f1"], statistics.mean(values)
        std = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        print(f"| {method} | {len(values)} | {first:.4f} | {mean:.4f}{std} | "
              f"{(first - base_first) / (teacher - base_first):+.1%} | "
              f"{(mean - base_mean) / (teacher - base_mean):+.1%} |")


def times(args: argparse.Namespace) -> None:
    rows = []
    for spec in args.runs:
        method, folders = spec.split("=", 1)
        per_k, raw, sentences = [], [], set()
        for folder in folders.split(","):
            run = json.loads((Path(folder) / "metrics.json").read_text())
            sentences.add(run["train_sentences"])
            raw += run["epoch_seconds"]
            per_k += [1000 * s / run["train_sentences"] for s in run["epoch_seconds"]]
        rows.append((method, len(per_k), sorted(sentences), statistics.median(raw), statistics.median(per_k),
                     min(per_k)))
    base = rows[0][4]
    print(f"| method | epochs timed | train sentences / epoch | epoch s (median) | s / 1k sent. "
          f"(median) | min | vs {rows[0][0]} |")
    print("|---|---|---|---|---|---|---|")
    for method, n, sentences, raw, med, low in rows:
        print(f"| {method} | {n} | {', '.join(map(str, sentences))} | {raw:.1f} | {med:.2f} | {low:.2f} | "
              f"{med / base:.2f}x |")


def runs(args: argparse.Namespace) -> None:
    evaluation = json.loads(Path(args.evaluate).read_text())
    teacher = {}
    for spec in args.teacher:
        group, rest = spec.split("=", 1)
        model, data = rest.split(":", 1)
        teacher[group] = (model, data, main_score(evaluation[model][data]))
    rows = [(spec.split("=", 1)[0], json.loads((Path(spec.split("=", 1)[1]) / "metrics.json").read_text()))
            for spec in args.runs]
    groups = list(teacher)
    base = {g: main_score(rows[0][1]["test"][g]) for g in groups}
    print("teacher: " + ", ".join(f"{g} {m} {d} {v:.4f}" for g, (m, d, v) in teacher.items()))
    print("| method | best epoch | dev | " + " | ".join(f"test {g} | gap closed {g}" for g in groups)
          + " | epoch s (median) |")
    print("|---|---|---|" + "---|---|" * len(groups) + "---|")
    for method, run in rows:
        cells = []
        for g in groups:
            value, top = main_score(run["test"][g]), teacher[g][2]
            cells.append(f"{value:.4f} | {(value - base[g]) / (top - base[g]):+.1%}")
        print(f"| {method} | {run['best_epoch']} | {main_score(run['dev']['all']):.4f} | " + " | ".join(cells)
              + f" | {statistics.median(run['epoch_seconds']):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("scores")
    sc.add_argument("--evaluate", required=True)
    sc.add_argument("--teacher", default="teacher-en")
    sc.add_argument("--baseline", default="none")
    sc.add_argument("--data", default="conll03/test")
    sc.add_argument("methods", nargs="+")
    tm = sub.add_parser("times")
    tm.add_argument("runs", nargs="+", help="METHOD=FOLDER[,FOLDER...]; the first is the reference")
    rn = sub.add_parser("runs")
    rn.add_argument("--evaluate", required=True)
    rn.add_argument("--teacher", action="append", required=True, help="GROUP=MODEL:DATA")
    rn.add_argument("runs", nargs="+", help="METHOD=FOLDER; the first is the baseline")
    args = ap.parse_args()
    {"scores": scores, "times": times, "runs": runs}[args.cmd](args)


if __name__ == "__main__":
    main()
