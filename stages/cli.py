"""The `structkd` command line: one sub-command per DVC stage, plus store tools and predict."""
from __future__ import annotations

import warnings

import torch
import typer
from transformers.utils import logging as hf_logging

from pipeline.readers import CorpusWarning
from stages import annotate, distill, evaluate, predict, prepare, report, store_cmd, train_teacher
from stages.common import console

hf_logging.disable_progress_bar()

app = typer.Typer(
    name="structkd",
    help="Distil structured predictors from a big teacher into a small, fast student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command("prepare")(prepare.main)
app.command("train-teacher")(train_teacher.main)
app.command("annotate")(annotate.main)
app.command("distill")(distill.main)
app.command("evaluate")(evaluate.main)
app.command("predict")(predict.main)
app.command("report")(report.main)
app.add_typer(store_cmd.app, name="store", help="Verify, inspect and show a teacher-output store.")


@app.callback()
def main(threads: int = typer.Option(
        None, "--threads", min=1,
        help="torch intra-op CPU threads for every stage (default: torch's, one per core). On a "
             "busy machine 1 is often fastest: several processes' thread pools oversubscribe the "
             "cores.")) -> None:
    """Distil structured predictors from a big teacher into a small, fast student."""
    if threads:
        torch.set_num_threads(threads)
    warnings.showwarning = _show_warning


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Corpus warnings (they name the data file and line) print as one line, not as a Python
    source location; every other warning keeps Python's format."""
    if issubclass(category, CorpusWarning):
        console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)
