"""`structkd fit-crf`: give a Hugging Face token-classification teacher a CRF (transitions, start,
end fitted on the labeled corpus; the checkpoint frozen) and save it as a teacher folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.errors import DataError
from pipeline.params import load_config
from stages.common import console, params_file


def main(
    teacher: str = typer.Option("en", help="Key of the teacher under `fit_crf:` in params.yaml."),
    params: Optional[Path] = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    checkpoint: Optional[str] = typer.Option(None, help="HF token-classification folder or hub name."),
    train: Optional[str] = typer.Option(None, help="Labeled train file (overrides corpus.files.train)."),
    dev: Optional[str] = typer.Option(None, help="Labeled dev file (overrides corpus.files.dev)."),
    out: Optional[str] = typer.Option(None, help="Teacher folder to write (crf.json, crf.safetensors)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs of Adam over the CRF factors."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    seed: Optional[int] = typer.Option(None, help="Random seed (batch order)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:n] for the checkpoint."),
    select: Optional[str] = typer.Option(None, help="dev: keep the best dev epoch (0 = no fit); last."),
    metrics: Optional[Path] = typer.Option(None, help="Also write the fit metrics here (DVC)."),
) -> None:
    """Fit a CRF over a frozen HF teacher; report the time and the dev F1 before / after."""
    from pipeline.fit_crf import FitCRFConfig, fit_crf  # torch / transformers / zarr: only when run
    from store.files import atomic_json

    cfg = load_config(
        FitCRFConfig, params_file(params), [f"fit_crf.{teacher}"],
        {"checkpoint": checkpoint, "corpus.files.train": train, "corpus.files.dev": dev, "out": out,
         "epochs": epochs, "lr": lr, "seed": seed, "device": device, "select": select})
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise DataError(f"fit_crf.{teacher}.out: {cfg.out} is a file, not a folder")
    crf_teacher, summary = fit_crf(cfg)
    crf_teacher.save(cfg.out)
    atomic_json(Path(cfg.out) / "metrics.json", summary)
    if metrics is not None:
        atomic_json(metrics, summary)
    before, after = summary["dev_f1_before"], summary["dev_f1_after"]
    scores = "no dev split" if before is None else f"dev {before:.4f} -> {after:.4f}"
    if summary["dev_f1_per_epoch"]:
        scores += f" (best epoch {summary['best_epoch']} of 0..{summary['epochs']})"
    console.print(f"fit-crf {cfg.checkpoint}: {summary['train_sentences']} train sentences, emissions "
                  f"{summary['emission_seconds']:.1f} s, fit {summary['fit_seconds']:.1f} s, {scores}; "
                  f"saved {cfg.out}")
