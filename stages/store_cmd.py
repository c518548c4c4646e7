"""`structkd store verify|inspect|show`: check, summarise and look into a teacher-output store.

The store modules (numpy, zarr, pyarrow, torch) are imported inside each command."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from stages.common import console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)


def _open(store: str):
    from store.reader import open_store
    from store.schema import StoreError

    try:
        return open_store(store)
    except StoreError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(1) from None


@app.command()
def verify(
    store: str = typer.Argument(..., help="Store path or fsspec URL."),
    invariants: bool = typer.Option(True, help="Also recompute every sentence's invariants."),
) -> None:
    """Checksums, layout and per-sentence invariants; exit code 1 when anything is wrong."""
    from store.verify import verify_store

    problems = verify_store(store, invariants=invariants)
    for problem in problems:
        console.print(f"[red]FAIL[/] {problem}", highlight=False)
    if problems:
        console.print(f"[red]{len(problems)} problem(s)[/] in {store}")
        raise typer.Exit(1)
    console.print(f"[green]OK[/] {store}")


@app.command()
def inspect(store: str = typer.Argument(..., help="Store path or fsspec URL.")) -> None:
    """Teachers, options, and sentences / tokens / bytes per token by split."""
    from store.schema import SPLITS

    s = _open(store)
    teachers = Table(title=f"{store}: teachers")
    for col in ("id", "lang", "decoder", "labels", "k", "tau", "fingerprint"):
        teachers.add_column(col)
    for t in s.teachers.values():
        teachers.add_row(t.id, t.lang, t.decoder, str(len(t.labels)), str(t.k), f"{t.tau:g}",
                         t.fingerprint[:16])
    console.print(teachers)
    splits = Table(title="splits")
    for col in ("split", "shards", "sentences", "tokens", "bytes", "bytes/token"):
        splits.add_column(col, justify="right" if col != "split" else "left")
    rows = {split: [0, 0, 0, 0] for split in SPLITS}
    for entry in s.manifest["shards"].values():
        acc = rows[entry["split"]]
        for i, value in enumerate((1, entry["rows"], entry["tokens"], entry["bytes"])):
            acc[i] += value
    rows["all"] = [sum(column) for column in zip(*rows.values())]
    for split, (shards, sents, tokens, size) in rows.items():
        if shards or split == "all":
            splits.add_row(split, str(shards), str(sents), str(tokens), str(size),
                           f"{size / max(tokens, 1):.1f}")
    console.print(splits)
    options = ", ".join(f"{k}={v}" for k, v in s.manifest["options"].items())
    pending = len(s.manifest["pending"])
    state = "complete" if s.complete else f"[yellow]incomplete[/]: {pending} shard(s) pending"
    console.print(f"options: {options}\nstate: {state}")


@app.command()
def show(
    store: str = typer.Argument(..., help="Store path or fsspec URL."),
    sid: str = typer.Argument(..., help="Sentence id corpus/split/index."),
    teacher: Optional[str] = typer.Option(None, help="Teacher id, when several annotated the sentence."),
) -> None:
    """One sentence: tokens, gold, Viterbi, and the k-best paths as labels with their probabilities."""
    import numpy as np

    from store.schema import StoreError

    s = _open(store)
    try:
        sent = s.get(sid, teacher)
    except (KeyError, StoreError) as err:
        console.print(f"[red]{err.args[0] if err.args else err}[/]")
        raise typer.Exit(1) from None
    labels = s.teachers[sent["teacher"]].labels
    table = Table(title=f"{sid} ({sent['teacher']}, shard {sent['shard']})")
    table.add_column("token")
    if sent["gold"] is not None:
        table.add_column("gold")
    table.add_column("viterbi")
    real = np.isfinite(sent["kbest_logprob"])
    for rank, lp in enumerate(sent["kbest_logprob"][real], 1):
        table.add_column(f"#{rank} p={np.exp(lp):.4f}")
    for i, token in enumerate(sent["tokens"]):
        cells = [str(token)] + ([str(sent["gold"][i])] if sent["gold"] is not None else [])
        cells.append(labels[sent["viterbi"][i]])
        cells += [labels[path[i]] for path in sent["kbest_paths"][real]]
        table.add_row(*cells)
    console.print(table)
    console.print(f"log Z {float(sent['log_z']):.4f}; residual mass {float(sent['residual_mass']):.4g} "
                  f"(probability of every path outside the {int(real.sum())} shown)")
