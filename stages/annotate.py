"""`structkd annotate`: run every teacher once over the corpora and write the teacher-output store.

Flags -> AnnotateConfig -> ``store.build.build_store`` (plan, resume, annotate, commit, finalize).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.config import AnnotateConfig, CorpusConfig, from_dict
from pipeline.params import load_config
from stages.common import check_teacher_source, console, params_file


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]annotate[/]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                    disable=not enabled)


def run_annotate(cfg: AnnotateConfig, progress: bool = True) -> dict:
    """``build_store`` with a rich progress bar (sentences/s and words/s)."""
    from store.build import build_store  # torch, zarr, pyarrow: imported only when the stage runs

    with _progress(progress) as bar:
        task = bar.add_task("annotate", total=None, rate="")
        started, done = time.perf_counter(), [0, 0]

        def on_batch(sentences: int, words: int) -> None:
            done[0] += sentences
            done[1] += words
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=sentences,
                       rate=f"{done[0] / elapsed:.0f} sent/s {done[1] / elapsed:.0f} tok/s")

        return build_store(cfg, on_batch=on_batch, on_plan=lambda total: bar.update(task, total=total),
                           on_skip=lambda rows: bar.update(task, advance=rows))


def _parse_corpus(text: str) -> CorpusConfig:
    """``name=X,lang=en,format=conll,train=PATH,dev=PATH`` -> CorpusConfig (split keys go to files)."""
    from store.schema import SPLITS

    data: dict[str, Any] = {"files": {}}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--corpus item {item!r} is not KEY=VALUE")
        if key in SPLITS:
            data["files"][key] = value
        elif key == "label_col" and value.lower() in ("none", "null"):
            data[key] = None
        elif key in ("word_col", "label_col", "limit"):
            try:
                data[key] = int(value)
            except ValueError:
                raise typer.BadParameter(f"--corpus {key}={value!r} is not an integer") from None
        else:
            data[key] = value
    return from_dict(CorpusConfig, data)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise typer.BadParameter(f"{what} {item!r} is not LANG=FOLDER")
        out[key] = value
    return out


def main(
    params: Optional[Path] = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    section: str = typer.Option("annotate", help="Section of params.yaml."),
    teacher: Optional[list[str]] = typer.Option(None, help="LANG=FOLDER, replaces the params' teachers."),
    corpus: Optional[list[str]] = typer.Option(
        None, help="name=X,lang=en,format=conll,train=PATH,... (replaces the params' corpora)."),
    split: Optional[list[str]] = typer.Option(None, help="Splits to annotate (train dev test unlabeled)."),
    out: Optional[str] = typer.Option(None, help="Store to write: local path or fsspec URL (s3://...: staged locally, uploaded per shard)."),
    k: Optional[int] = typer.Option(None, help="k-best paths stored per sentence."),
    shard_size: Optional[int] = typer.Option(None, help="Sentences per shard."),
    batch_tokens: Optional[int] = typer.Option(None, help="Word budget of one teacher batch."),
    dtype: Optional[str] = typer.Option(None, help="float16 | float32 storage of emissions/marginals."),
    tau: Optional[float] = typer.Option(None, help="Temperature of the stored distributions."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:n]."),
    mix_teachers: Optional[bool] = typer.Option(None, help="Allow a new teacher in an existing store."),
    tensors: Optional[str] = typer.Option(None, help="potentials (emissions; node/edge recomputed "
                                                     "on read) | full (also node and edge marginals)."),
    prune: Optional[float] = typer.Option(None, help="tensors=full: zero stored probabilities below this."),
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
) -> None:
    """Run the teachers over the corpora and write (or resume) the teacher-output store."""
    from store.schema import StoreError

    flags = {"teachers": _pairs(teacher, "--teacher") if teacher else None,
             "corpora": [vars(_parse_corpus(c)) for c in corpus] if corpus else None,
             "splits": split or None, "out": out, "k": k, "shard_size": shard_size,
             "batch_tokens": batch_tokens, "dtype": dtype, "tau": tau, "device": device,
             "mix_teachers": mix_teachers, "tensors": tensors, "prune": prune}
    cfg: AnnotateConfig = load_config(AnnotateConfig, params_file(params), [section], flags)
    for lang, folder in cfg.teachers.items():
        check_teacher_source(folder, f"{section}.teachers.{lang}")
    try:
        manifest = run_annotate(cfg, progress)
    except StoreError as err:
        console.print(f"[red]annotate failed:[/] {err}")
        raise typer.Exit(1) from None
    totals = manifest["totals"]
    console.print(f"store {cfg.out}: {totals['rows']} sentences, {totals['tokens']} tokens, "
                  f"{totals['bytes'] / max(totals['tokens'], 1):.1f} B/token"
                  + ("" if manifest["complete"] else f", {len(manifest['pending'])} shards pending"))
