"""`structkd export`: write a student as an ONNX export folder that ``structkd predict`` and
``pipeline.onnx_decode.OnnxTagger`` run with onnxruntime (no torch needed to predict)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from pipeline.errors import ConfigError, DataError
from stages.common import check_model_folder, console

FORMATS = ("onnx",)
QUANTIZE = ("int8",)


def main(
    model: Path = typer.Argument(..., help="Model folder (a student saved by distill, or any tagger)."),
    format: str = typer.Option("onnx", help="Export format: onnx."),
    out: Path = typer.Option(..., help="Export folder to write (replaced if it is an export)."),
    quantize: Optional[str] = typer.Option(
        None, help="int8: also write a dynamically quantized graph and make it the default."),
) -> None:
    """Export MODEL's graph (featurized inputs -> emissions), decoding factors and featurize files."""
    if format not in FORMATS:
        raise ConfigError(f"--format: must be one of {list(FORMATS)}, got {format!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize: must be one of {list(QUANTIZE)}, got {quantize!r}")
    folder = check_model_folder(model, "MODEL")
    if out.resolve() == folder.resolve():
        raise DataError(f"--out {out}: is the model folder itself; choose another folder")
    started = time.perf_counter()
    from pipeline.export import export_onnx  # torch loads only for the command that needs it
    from pipeline.onnx_decode import read_export
    from pipeline.tagger import Tagger

    written = export_onnx(Tagger.load(folder), out, quantize=quantize)
    meta = read_export(written)
    parity = ", ".join(f"{k} {v:.1e}" for k, v in meta["parity"].items())
    console.print(f"exported {folder} -> {written} (graphs {', '.join(meta['graphs'])}, default "
                  f"{meta['default']}; emission gap vs torch: {parity}) in "
                  f"{time.perf_counter() - started:.1f} s")
