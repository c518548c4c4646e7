"""What each configuration field may hold (``RULES``: ranges and valid names, per (class, field))
and the checks of whole sections (``CHECKS``: consistent combinations), applied by
``pipeline.config.from_dict`` to every piece of user input. Types are checked by ``from_dict``
itself. KD method and schedule names come from their registries, imported only when checked
(``pipeline.kd`` imports ``pipeline.config``).
"""
from __future__ import annotations

import typing
from typing import Any

from pipeline.config import (SPLITS, AnnotateConfig, CorpusConfig, DecoderConfig, DistillConfig, EncoderConfig,
                             EvaluateConfig, FitCRFConfig, KDConfig, OptimConfig, PrepareConfig, ReportConfig,
                             TeacherConfig, UnlabeledConfig)
from pipeline.errors import ConfigError
from pipeline.rules import Device, Each, OneOf, Range, Values, dotted


def _schemes() -> list[str]:
    from pipeline.schemes import ALIASES

    return ["auto", *ALIASES]


def _entity_schemes() -> list[str]:
    from pipeline.schemes import ALIASES

    return [name for name, scheme in ALIASES.items() if scheme != "none"]


def _objectives() -> list[str]:
    from pipeline.kd.registry import OBJECTIVES

    return list(OBJECTIVES)


def _schedules() -> list[str]:
    from pipeline.kd.schedules import SCHEDULES

    return list(SCHEDULES)


_AT_LEAST_1, _AT_LEAST_0, _POSITIVE = Range(lo=1), Range(lo=0), Range(lo=0, lo_open=True)
_DEVICE = Device()

RULES: dict[tuple[type, str], Any] = {
    (CorpusConfig, "format"): OneOf("conll", "tsv", "conllu", "raw"),
    (CorpusConfig, "files"): Each(OneOf(*SPLITS)),
    (CorpusConfig, "scheme"): OneOf(names=_schemes, fold_case=True),
    (CorpusConfig, "convert_to"): OneOf(names=_entity_schemes, fold_case=True),
    (CorpusConfig, "limit"): _AT_LEAST_1,
    (CorpusConfig, "holdout"): _AT_LEAST_1,
    (EncoderConfig, "kind"): OneOf("transformer", "bilstm"),
    (EncoderConfig, "layers"): _AT_LEAST_1,
    (EncoderConfig, "pooling"): OneOf("first", "mean"),
    (EncoderConfig, "max_length"): _AT_LEAST_1,
    (EncoderConfig, "stride"): _AT_LEAST_0,
    (EncoderConfig, "word_dim"): _AT_LEAST_1,
    (EncoderConfig, "hidden"): _AT_LEAST_1,
    (EncoderConfig, "lstm_layers"): _AT_LEAST_1,
    (EncoderConfig, "char"): OneOf("cnn", "lstm", "none"),
    (EncoderConfig, "char_dim"): _AT_LEAST_1,
    (EncoderConfig, "char_hidden"): _AT_LEAST_1,
    (EncoderConfig, "dropout"): Range(0, 1, hi_open=True),
    (EncoderConfig, "min_word_count"): _AT_LEAST_1,
    (DecoderConfig, "kind"): OneOf("crf", "maxent", "heads", "tree", "spans"),
    (DecoderConfig, "arc_mlp"): _AT_LEAST_1,
    (DecoderConfig, "rel_mlp"): _AT_LEAST_1,
    (DecoderConfig, "mean_field_iterations"): _AT_LEAST_1,
    (DecoderConfig, "span_mlp"): _AT_LEAST_1,
    (DecoderConfig, "max_span_width"): _AT_LEAST_1,
    (CorpusConfig, "head_encoding"): OneOf("rel_pos", "rel_offset"),
    (DistillConfig, "head_encoding"): OneOf("rel_pos", "rel_offset"),
    (OptimConfig, "epochs"): _AT_LEAST_1,
    (OptimConfig, "batch_size"): _AT_LEAST_1,
    (OptimConfig, "lr"): _POSITIVE,
    (OptimConfig, "head_lr"): _POSITIVE,
    (OptimConfig, "weight_decay"): _AT_LEAST_0,
    (OptimConfig, "warmup"): Range(0, 1),
    (OptimConfig, "layer_decay"): Range(0, 1, lo_open=True),
    (OptimConfig, "grad_clip"): _AT_LEAST_0,  # 0 = no clipping
    (OptimConfig, "patience"): _AT_LEAST_0,
    (OptimConfig, "seed"): Range(0, 2**32 - 1),  # numpy's seed range
    (OptimConfig, "max_steps"): _AT_LEAST_1,
    (OptimConfig, "min_steps"): _AT_LEAST_1,
    (TeacherConfig, "device"): _DEVICE,
    (AnnotateConfig, "splits"): Each(OneOf(*SPLITS)),
    (AnnotateConfig, "k"): _AT_LEAST_1,
    (AnnotateConfig, "shard_size"): _AT_LEAST_1,
    (AnnotateConfig, "batch_tokens"): _AT_LEAST_1,
    (AnnotateConfig, "dtype"): OneOf("float16", "float32"),
    (AnnotateConfig, "tensors"): OneOf("potentials", "full"),
    (AnnotateConfig, "prune"): Range(0, 0.5, hi_open=True),
    (AnnotateConfig, "tau"): _POSITIVE,
    (AnnotateConfig, "device"): _DEVICE,
    (KDConfig, "method"): OneOf(names=_objectives),
    (KDConfig, "k"): _AT_LEAST_1,
    (KDConfig, "tau"): _POSITIVE,
    (KDConfig, "schedule"): OneOf(names=_schedules),
    (KDConfig, "lam"): Range(0, 1),
    (KDConfig, "anneal_rate"): _AT_LEAST_0,
    (KDConfig, "anneal_percent"): _AT_LEAST_0,
    (KDConfig, "normalize"): OneOf("sentence", "token"),
    (UnlabeledConfig, "lam"): Range(0, 1),
    (UnlabeledConfig, "min_top1"): Range(0, 1),
    (DistillConfig, "labels"): Each(),
    (DistillConfig, "batch_tokens"): _AT_LEAST_1,
    (DistillConfig, "shuffle_buffer"): _AT_LEAST_1,
    (DistillConfig, "workers"): _AT_LEAST_0,
    (DistillConfig, "device"): _DEVICE,
    (DistillConfig, "precision"): OneOf("auto", "fp32", "bf16", "fp16"),
    (AnnotateConfig, "precision"): OneOf("auto", "fp32", "bf16", "fp16"),
    (EvaluateConfig, "methods"): Each(),
    (EvaluateConfig, "splits"): Each(OneOf("train", "dev", "test")),  # labeled splits only
    (EvaluateConfig, "batch_size"): _AT_LEAST_1,
    (EvaluateConfig, "device"): _DEVICE,
    (ReportConfig, "methods"): Each(),
    (ReportConfig, "seeds"): Values(Each()),  # method -> its seed runs, none listed twice
    (FitCRFConfig, "scheme"): OneOf(names=_entity_schemes, fold_case=True),
    (FitCRFConfig, "max_length"): _AT_LEAST_1,
    (FitCRFConfig, "stride"): _AT_LEAST_0,
    (FitCRFConfig, "epochs"): _AT_LEAST_1,
    (FitCRFConfig, "lr"): _POSITIVE,
    (FitCRFConfig, "batch_size"): _AT_LEAST_1,
    (FitCRFConfig, "seed"): Range(0, 2**32 - 1),
    (FitCRFConfig, "device"): _DEVICE,
    (FitCRFConfig, "select"): OneOf("dev", "last"),
}


def check_corpus_names(corpora: list[CorpusConfig], key: str = "corpora") -> None:
    """Corpus names must be unique: sentence ids are ``corpus/split/index``, so a second corpus of
    the same name would overwrite the first one's sentences."""
    for i, corpus in enumerate(corpora):
        first = next(j for j, other in enumerate(corpora) if other.name == corpus.name)
        if first != i:
            raise ConfigError(f"{key}[{i}].name: corpus name {corpus.name!r} is already used by "
                              f"{key}[{first}]; corpus names must be unique")


def _check_corpus(cfg: CorpusConfig, key: str) -> None:
    if not cfg.files:
        raise ConfigError(f"{dotted(key, 'files')}: no files; give at least one of {list(SPLITS)}")
    if cfg.holdout is not None and ("train" not in cfg.files or "dev" in cfg.files):
        raise ConfigError(f"{dotted(key, 'holdout')}: cuts dev from the train file, so it needs a "
                          f"train file and no dev file; files has {sorted(cfg.files)}")
    if cfg.label_col is None and cfg.files.keys() - {"unlabeled"}:
        raise ConfigError(f"{dotted(key, 'label_col')}: null reads tokens only, which only the unlabeled "
                          f"split may be; files has {sorted(cfg.files)}")
    if cfg.format == "conllu" and cfg.label_col not in (-1, 3, 4):
        raise ConfigError(f"{dotted(key, 'label_col')}: CoNLL-U labels are column 3 (UPOS, also -1) "
                          f"or 4 (XPOS), got {cfg.label_col}")
    if cfg.convert_to and cfg.scheme.lower() == "none":
        raise ConfigError(f"{dotted(key, 'convert_to')}: scheme 'none' has no entities to convert")


def _check_kd(cfg: KDConfig, key: str) -> None:
    from pipeline.kd.registry import objective_options

    valid = objective_options(cfg.method)
    unknown = sorted(set(cfg.options) - set(valid))
    if unknown:
        raise ConfigError(f"{dotted(key, 'options')}: unknown option(s) {unknown} of KD method "
                          f"{cfg.method!r}; valid: {valid}")


def _check_report(cfg: ReportConfig, key: str) -> None:
    """Each seeds list is non-empty and a run belongs to at most one method: a run under two
    methods, or a method named as another method's seed, would be counted twice."""
    owner: dict[str, str] = {}
    for method, runs in cfg.seeds.items():
        where = f"{dotted(key, 'seeds')}.{method}"
        if not runs:
            raise ConfigError(f"{where}: no runs; list the run names of the method's seeds")
        for run in runs:
            if run in owner:
                raise ConfigError(f"{where}: run {run!r} is already a seed of "
                                  f"{dotted(key, 'seeds')}.{owner[run]}; a run belongs to one method")
            owner[run] = method
    for method in cfg.seeds:
        if owner.get(method, method) != method:
            raise ConfigError(f"{dotted(key, 'seeds')}.{method}: {method!r} is also a seed run of "
                              f"{dotted(key, 'seeds')}.{owner[method]}; a run belongs to one method")


def _check_distill(cfg: DistillConfig, key: str) -> None:
    """``unlabeled.lam`` splits lambda by row; the ``learned`` schedule has no lambda to split (the
    multigrained objective weighs its own hard part, on every row)."""
    if cfg.unlabeled.lam is not None and cfg.kd.schedule == "learned":
        raise ConfigError(f"{dotted(key, 'unlabeled.lam')}: the 'learned' schedule weighs the hard loss "
                          "inside the multigrained objective, on every row; drop unlabeled.lam or use "
                          "another schedule")


CHECKS: dict[type, typing.Callable[[Any, str], None]] = {
    DistillConfig: _check_distill,
    CorpusConfig: _check_corpus,
    KDConfig: _check_kd,
    AnnotateConfig: lambda cfg, key: check_corpus_names(cfg.corpora, dotted(key, "corpora")),
    PrepareConfig: lambda cfg, key: check_corpus_names(cfg.corpora, dotted(key, "corpora")),
    EvaluateConfig: lambda cfg, key: check_corpus_names(cfg.corpora, dotted(key, "corpora")),
    ReportConfig: _check_report,
}
