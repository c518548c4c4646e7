"""`structkd distill`: stream the teacher-output store into student training (the teacher never runs,
except with ``--online-teacher``, a comparison mode that recomputes the targets on every batch)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.config import DistillConfig
from pipeline.params import read_section
from pipeline.params import load_config
from stages.common import check_model_folder, console, params_file


def _run_defaults(params: Path | None, run: str | None) -> dict:
    """``--run NAME`` writes to runs/NAME under the name NAME unless distill_runs.NAME says otherwise."""
    if run is None:
        return {}
    overrides = read_section(params, f"distill_runs.{run}") if params is not None else {}
    return {key: value for key, value in (("out", f"runs/{run}"), ("name", run)) if key not in overrides}


def main(
    params: Optional[Path] = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    section: str = typer.Option("distill", help="Section of params.yaml (e.g. distill_runs.topk)."),
    run: Optional[str] = typer.Option(None, help="Merge distill_runs.RUN over the section; output "
                                                 "defaults to runs/RUN."),
    store: Optional[str] = typer.Option(None, help="Teacher-output store (path or fsspec URL)."),
    method: Optional[str] = typer.Option(None, help="KD objective (none = gold-only baseline)."),
    k: Optional[int] = typer.Option(None, help="k-best paths used (default: all stored)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    out: Optional[str] = typer.Option(None, help="Run folder: model/, metrics.json, epochs.csv."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes."),
    online_teacher: Optional[str] = typer.Option(None, help="Comparison only: compute the KD targets "
                                                            "by running this teacher folder."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:n]."),
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
) -> None:
    """Distil a student from the store with one KD method; writes the model and metrics."""
    from store import StoreError  # torch, zarr, pyarrow: imported only when the stage runs
    from store.feed import distill

    params = params_file(params)
    sections = [section] if params is not None else []
    if run is not None and params is not None:
        sections.append(f"distill_runs.{run}")
    flags = {"store": store, "kd.method": method, "kd.k": k, "optim.epochs": epochs,
             "optim.max_steps": max_steps, "out": out, "optim.seed": seed, "workers": workers,
             "online_teacher": online_teacher, "device": device}
    for key, value in _run_defaults(params, run).items():
        flags[key] = value if flags.get(key) is None else flags[key]
    cfg: DistillConfig = load_config(DistillConfig, params, sections, flags)
    if cfg.online_teacher:
        check_model_folder(cfg.online_teacher, "distill.online_teacher")
    try:
        metrics = distill(cfg, progress=progress)
    except StoreError as err:
        console.print(f"[red]distill refused the store:[/] {err}")
        raise typer.Exit(1) from None
    test = (metrics["test"] or {}).get("all", {})
    score = " ".join(f"{key} {test[key]:.4f}" for key in ("f1", "accuracy", "uas", "las") if key in test)
    console.print(f"{cfg.name} ({cfg.kd.method}): best dev epoch {metrics['best_epoch']}, test "
                  f"{score or 'not scored'}; wrote {cfg.out}")
