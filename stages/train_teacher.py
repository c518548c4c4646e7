"""`structkd train-teacher`: fine-tune one teacher on its corpus: a tagger (encoder + CRF/MaxEnt
decoder), a biaffine dependency parser when ``model.decoder.kind`` is ``heads`` or ``tree``, or a
biaffine span NER teacher (pipeline.span_model) when it is ``spans``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from pipeline.config import TeacherConfig, to_dict
from pipeline.errors import DataError
from pipeline.params import load_config
from stages.common import console, params_file


def main(
    teacher: str = typer.Option("en", help="Key of the teacher under `teachers:` in params.yaml."),
    params: Optional[Path] = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    out: Optional[str] = typer.Option(None, help="Model folder to write (overrides params)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:n]."),
    metrics: Optional[Path] = typer.Option(None, help="Also write the training metrics here (DVC)."),
) -> None:
    """Fine-tune a teacher and save it as a self-contained model folder."""
    from pipeline.corpus import read_corpus  # torch, transformers: imported only when the stage runs
    from pipeline.parser import KINDS as PARSER_KINDS
    from pipeline.span_model import KIND as SPAN_KIND
    from pipeline.trainer import train_tagger
    from store.files import atomic_json

    cfg: TeacherConfig = load_config(
        TeacherConfig,
        params_file(params),
        [f"teachers.{teacher}"],
        {"out": out, "optim.epochs": epochs, "optim.max_steps": max_steps, "optim.seed": seed,
         "device": device},
    )
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise DataError(f"teachers.{teacher}.out: {cfg.out} is a file, not a model folder")
    train = read_corpus(cfg.corpus, "train")
    dev = read_corpus(cfg.corpus, "dev")
    console.print(f"[bold]train-teacher[/] {cfg.name}: {len(train)} train / {len(dev)} dev sentences")
    started = time.perf_counter()
    if cfg.model.decoder.kind in PARSER_KINDS:
        from pipeline.parse_train import train_parser

        try:
            model, history = train_parser(cfg, train, dev)
        except ValueError as err:  # gold trees the decoder cannot represent
            raise DataError(f"teachers.{teacher}: {err}") from None
    elif cfg.model.decoder.kind == SPAN_KIND:
        from pipeline.span_train import train_span_tagger

        try:
            model, history = train_span_tagger(cfg, train, dev)
        except ValueError as err:  # gold entities the scheme or max_span_width cannot represent
            raise DataError(f"teachers.{teacher}: {err}") from None
    else:
        model, history = train_tagger(cfg, train, dev)
    seconds = time.perf_counter() - started
    model.save(cfg.out)
    summary = {
        "teacher": cfg.name,
        "train_sentences": len(train),
        "train_seconds": round(seconds, 1),
        "history": history,
        "config": to_dict(cfg),
    }
    atomic_json(Path(cfg.out) / "metrics.json", summary)
    if metrics is not None:
        atomic_json(metrics, summary)
    console.print(f"saved {cfg.out} in {seconds:.0f} s")
