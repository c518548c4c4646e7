"""`structkd evaluate`: score model folders on labeled corpora, per corpus and language, as JSON,
with each model's decoding throughput measured in the same run."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from pipeline.config import EvaluateConfig
from pipeline.errors import ConfigError
from pipeline.params import load_config
from stages.common import (check_model_folder, check_teacher_source, console, params_file,
                           top_level_methods)


def evaluate_models(cfg: EvaluateConfig, section: str = "evaluate") -> dict:
    """``{model: {"corpus/split": metrics}}`` for every model on every configured corpus split.

    The metrics add ``seconds`` and ``sentences_per_s``: the wall-clock time of labeling the split
    (featurize, forward, decode; batches of ``batch_size`` sorted by length) after one untimed
    warm-up batch per model, so every model is timed the same way in this one process.
    Every model folder and corpus file is checked before anything is loaded; no models, no
    corpora, or a corpus with none of the splits is refused (it would score nothing, silently)."""
    from pipeline.corpus import check_corpora, corpus_splits, read_corpus  # torch: only when run
    from pipeline.hf_teacher import load_any_teacher
    from pipeline.parse_train import parse_sentences
    from pipeline.trainer import predict, resolve_device
    from pipeline.tree_eval import model_tree_kind

    device = resolve_device(cfg.device)
    results: dict[str, dict] = {}
    models = {name: check_teacher_source(folder, f"{section}.models.{name}")
              for name, folder in cfg.models.items()}
    models.update({m: check_model_folder(Path(cfg.runs_dir) / m / "model", f"{section}.methods.{m}")
                   for m in cfg.methods})
    if not models:
        raise ConfigError(f"{section}: no models to score (models: and methods: are empty; "
                          "or give --model NAME=FOLDER)")
    if not cfg.corpora:
        raise ConfigError(f"{section}.corpora: no corpus to score the models on")
    check_corpora(cfg.corpora, f"{section}.corpora")
    for i, corpus in enumerate(cfg.corpora):
        if not set(cfg.splits) & set(corpus_splits(corpus)):
            raise ConfigError(f"{section}.corpora[{i}]: corpus {corpus.name!r} has none of the "
                              f"splits {cfg.splits} (it has {corpus_splits(corpus)})")
    data = [(corpus, split, read_corpus(corpus, split)) for corpus in cfg.corpora  # read once
            for split in cfg.splits if split in corpus_splits(corpus)]
    for name, folder in models.items():
        tagger = load_any_teacher(folder, device)
        tree_kind = model_tree_kind(tagger)
        run = parse_sentences if tree_kind == "parser" else predict
        run(tagger, data[0][2][:cfg.batch_size], batch_size=cfg.batch_size)  # warm-up
        scores: dict[str, dict] = {}
        for corpus, split, sentences in data:
            started = time.perf_counter()
            pred = run(tagger, sentences, batch_size=cfg.batch_size)
            seconds = time.perf_counter() - started
            if tree_kind is not None:
                result = tree_scores(tagger, tree_kind, sentences, pred, f"{section}.corpora: {corpus.name}")
            else:
                result = tag_scores(tagger, corpus, sentences, pred)
            scores[f"{corpus.name}/{split}"] = {
                "lang": corpus.lang, **result, "seconds": seconds,
                "sentences_per_s": len(sentences) / max(seconds, 1e-9)}
        results[name] = scores
        console.print(f"evaluated {name}: " + ", ".join(
            f"{k} {v.get('f1', v.get('accuracy', v.get('las', 0))):.4f} ({v['sentences_per_s']:.0f} sent/s)"
            for k, v in scores.items()))
    return results


def tag_scores(model, corpus, sentences: list, pred: list) -> dict:
    """Entity P/R/F1 (or accuracy) of a tagger's labels, in the tagger's scheme: gold labels in
    another scheme (a BIOES student of a span teacher on an IOB2 corpus) are re-encoded in it first,
    as distill scores them."""
    from pipeline.corpus import effective_scheme
    from pipeline.metrics import evaluate_tags
    from pipeline.schemes import convert, normalize_scheme

    gold = [s.labels for s in sentences]
    if corpus.scheme == "none":
        return evaluate_tags(gold, pred, "none")
    source, scheme = effective_scheme(corpus, sentences), normalize_scheme(model.scheme)
    if "none" not in (source, scheme) and source != scheme:
        gold = [convert(labels, source, scheme) for labels in gold]
    return evaluate_tags(gold, pred, scheme)


def tree_scores(model, kind: str, sentences: list, pred, where: str) -> dict:
    """UAS / LAS of a parser's (heads, relations) or of a head-encoded tagger's decoded labels."""
    from pipeline.attachment import attachment_scores
    from pipeline.tree_eval import decoded_trees

    if any(s.heads is None for s in sentences):
        raise ConfigError(f"{where}: a dependency model is scored on trees; this corpus has none "
                          "(format: conllu with HEAD / DEPREL)")
    heads, rels = decoded_trees(kind, pred, [s.upos for s in sentences])
    return attachment_scores([s.heads for s in sentences], [s.rels for s in sentences], heads, rels)


def main(
    params: Optional[Path] = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    section: str = typer.Option("evaluate", help="Section of params.yaml."),
    model: Optional[list[str]] = typer.Option(
        None, help="NAME=FOLDER: score only these models (not the params' models and runs)."),
    out: Optional[str] = typer.Option(None, help="JSON file to write."),
) -> None:
    """Entity P/R/F1 (seqeval; strict for BIOES) or token accuracy (POS) of each model, and its
    decoding sentences/s."""
    from store.files import atomic_json  # pyarrow, zarr: imported only when the stage runs

    bad = [m for m in model or [] if "=" not in m or not m.split("=", 1)[0]]
    if bad:
        raise ConfigError(f"--model: expected NAME=FOLDER, got {bad[0]!r}")
    models = dict(m.split("=", 1) for m in model) if model else None
    cfg: EvaluateConfig = load_config(
        EvaluateConfig, params_file(params), [section],
        {"models": models, "out": out, "methods": [] if models else top_level_methods(params)})
    atomic_json(Path(cfg.out), evaluate_models(cfg, section))
    console.print(f"wrote {cfg.out}")
