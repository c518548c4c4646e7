"""The `structkd` command line: one sub-command per DVC stage, plus store tools and predict.

User errors never end in a traceback: a ``pipeline.errors.UserError`` raised by any sub-command
(a bad key or value in params.yaml, a malformed corpus, a missing model folder, a damaged store)
prints one line ``error: <message>`` to stderr and exits with its code (2 usage, 1 data); typer's
own usage errors exit 2 as usual. Any other exception is a bug and keeps its traceback.

Start-up: this module and every ``stages/*.py`` import only typer, rich and the light part of
``pipeline/`` at module level; torch, transformers, pandas, pyarrow, zarr, onnxruntime and the
store load inside the command that needs them, so ``structkd --help`` and ``structkd COMMAND
--help`` stay fast (tests/test_startup.py).
"""
from __future__ import annotations

import os
import warnings

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from pipeline.errors import UserError
from pipeline.readers import CorpusWarning
from stages import (annotate, distill, evaluate, export, fit_crf, predict, prepare, report, store_cmd,
                    train_teacher)
from stages.common import console, params_file

# No Hugging Face progress bars (read when transformers / huggingface_hub first load, inside a
# command); a user's own HF_HUB_DISABLE_PROGRESS_BARS=0 wins.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class _Commands(TyperGroup):
    """The top-level group: every sub-command runs inside it, so its user errors end here."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except UserError as err:
            message = " ".join(str(err).splitlines())
            console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None


class _Stage(TyperCommand):
    """A stage command: a ``--params`` file named explicitly must exist (only the default
    params.yaml may be absent), whatever the stage does with it afterwards."""

    def invoke(self, ctx: typer.Context):
        source = ctx.get_parameter_source("params")
        params_file(ctx.params.get("params"), given=source is not None and source.name != "DEFAULT")
        return super().invoke(ctx)


app = typer.Typer(
    name="structkd",
    help="Distil structured predictors from a big teacher into a small, fast student.",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
for _name, _stage in [("prepare", prepare), ("train-teacher", train_teacher), ("fit-crf", fit_crf),
                      ("annotate", annotate), ("distill", distill), ("evaluate", evaluate),
                      ("predict", predict), ("export", export), ("report", report)]:
    app.command(_name, cls=_Stage)(_stage.main)
app.add_typer(store_cmd.app, name="store", help="Verify, inspect and show a teacher-output store.")


@app.callback()
def main(ctx: typer.Context, threads: int = typer.Option(
        None, "--threads", min=1,
        help="torch intra-op CPU threads for every stage, and onnxruntime's for an ONNX predict "
             "(default: theirs, one per core). On a busy machine 1 is often fastest: several "
             "processes' thread pools oversubscribe the cores.")) -> None:
    """Distil structured predictors from a big teacher into a small, fast student."""
    if threads and ctx.invoked_subcommand != "predict":  # predict: for the runtime it loads
        import torch  # only when asked: commands that need no torch start without it

        torch.set_num_threads(threads)
    warnings.showwarning = _show_warning


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Corpus warnings (they name the data file and line) print as one line, not as a Python
    source location; every other warning keeps Python's format."""
    if issubclass(category, CorpusWarning):
        console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False,
                      soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)
