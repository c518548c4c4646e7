"""`structkd prepare`: read and validate every corpus once; record sizes, label sets and schemes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.config import PrepareConfig
from pipeline.errors import ConfigError
from pipeline.params import load_config
from stages.common import console, params_file


def summarize(cfg: PrepareConfig, section: str = "prepare") -> dict:
    """Per corpus and split: sentences, tokens, labels and the detected tag scheme.

    Reading is the validation: corpus names must be unique and every file present
    (``check_corpora``), and a malformed file raises an error naming the file and line.
    """
    from pipeline.corpus import check_corpora, corpus_splits, read_corpus  # torch: only when run
    from pipeline.schemes import detect_scheme

    if not cfg.corpora:
        raise ConfigError(f"{section}.corpora: no corpora to prepare")
    check_corpora(cfg.corpora, f"{section}.corpora")
    summary: dict[str, dict] = {}
    for corpus in cfg.corpora:
        for split in corpus_splits(corpus):
            sentences = read_corpus(corpus, split)
            labeled = [s.labels for s in sentences if s.labels is not None]
            labels = sorted({tag for tags in labeled for tag in tags})
            summary[f"{corpus.name}/{split}"] = {
                "lang": corpus.lang,
                "sentences": len(sentences),
                "tokens": sum(len(s.tokens) for s in sentences),
                "max_length": max(len(s.tokens) for s in sentences),
                "labels": labels,
                "scheme": detect_scheme(labeled) if labeled else None,
            }
            console.print(f"{corpus.name}/{split}: {len(sentences)} sentences")
    return summary


def main(
    params: Optional[Path] = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    section: str = typer.Option("prepare", help="Section of params.yaml."),
    out: Optional[str] = typer.Option(None, help="JSON summary to write."),
) -> None:
    """Validate the corpora of params.yaml and summarise them."""
    from store.files import atomic_json

    cfg: PrepareConfig = load_config(
        PrepareConfig, params_file(params), [section], {"out": out})
    atomic_json(Path(cfg.out), summarize(cfg, section))
    console.print(f"wrote {cfg.out}")
