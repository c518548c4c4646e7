"""`structkd predict`: label a CoNLL file or raw text with a saved model folder (batched, CPU), or
with an ONNX export of one (`structkd export`; run by onnxruntime, decoded in numpy, no torch)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from pipeline.errors import ConfigError
from pipeline.readers import read_conll, read_raw
from pipeline.rules import check_device
from stages.common import check_model_folder, console

FORMATS = ("conll", "raw")


def check_format(fmt: str) -> None:
    """``--format`` must name a reader of this command."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: must be one of {list(FORMATS)}, got {fmt!r}")


def load_model(model: Path, device: str, threads: int | None):
    """An ``OnnxTagger`` for an export folder, else the ``Tagger`` of a model folder on
    ``device``; only the runtime it needs is imported, and ``threads`` (``structkd --threads``;
    None: the runtime's default) set for it."""
    from pipeline.onnx_decode import OnnxTagger, is_export

    if is_export(model):  # onnxruntime on CPU: --device does not apply
        return OnnxTagger.load(model, threads=threads)
    import torch

    from pipeline.tagger import Tagger
    from pipeline.trainer import resolve_device

    if threads:
        torch.set_num_threads(threads)
    return Tagger.load(check_model_folder(model, "--model"), device=resolve_device(device))


def label_file(model, path: Path, fmt: str, word_col: int = 0,
               batch_size: int = 64) -> tuple[str, int]:
    """(CoNLL text, sentence count) of ``path`` labeled by ``model`` (``load_model``): ``word
    label`` lines, a blank line after each sentence."""
    from pipeline.onnx_decode import OnnxTagger

    check_format(fmt)
    if fmt == "conll":
        sentences = read_conll(path, "input", "test", word_col=word_col, label_col=None)
    else:
        sentences = read_raw(path, "input", "test")
    if isinstance(model, OnnxTagger):
        pred = model.predict(sentences, batch_size=batch_size)
    else:
        from pipeline.trainer import predict as predict_labels

        pred = predict_labels(model, sentences, batch_size=batch_size)
    text = "".join("".join(f"{w} {t}\n" for w, t in zip(s.tokens, labels)) + "\n"
                   for s, labels in zip(sentences, pred))
    return text, len(sentences)


def main(
    ctx: typer.Context,
    input: Path = typer.Argument(..., exists=True, dir_okay=False, help="CoNLL file or raw text."),
    model: Path = typer.Option(..., exists=True, file_okay=False,
                               help="Model folder (teacher or student), or an ONNX export of one."),
    format: str = typer.Option("conll", help="conll (words in --word-col) | raw (one document a line)."),
    output: Optional[Path] = typer.Option(None, help="File to write (default: stdout)."),
    word_col: int = typer.Option(0, help="CoNLL: column of the words."),
    batch_size: int = typer.Option(64, help="Sentences per batch (sorted by length)."),
    device: str = typer.Option("cpu", help="auto | cpu | cuda[:n]."),
) -> None:
    """Write ``word label`` lines (CoNLL) with the model's predicted labels."""
    started = time.perf_counter()
    check_format(format)
    check_device(device, "--device")
    tagger = load_model(model, device, ctx.find_root().params.get("threads"))
    loaded = time.perf_counter()
    text, count = label_file(tagger, input, format, word_col, batch_size)
    labeled = time.perf_counter()
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    console.print(f"loaded the model in {loaded - started:.2f} s; labeled {count} sentences in "
                  f"{labeled - loaded:.2f} s ({count / max(labeled - loaded, 1e-9):.0f} sent/s)"
                  + (f" -> {output}" if output else ""))
