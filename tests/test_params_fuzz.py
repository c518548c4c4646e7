"""Every key of every stage config, fed a wrong type and (where it has a range or a list of valid
names) a value outside it, must be refused with a ConfigError naming the dotted key.

The keys are found by walking the stage dataclasses of pipeline/config.py recursively (nested
dataclasses, lists of corpora), so a field added later is fuzzed too; a number without a rule
fails ``test_every_number_has_a_range`` unless it is listed in ``UNBOUNDED`` here.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing

import pytest

from pipeline.config import (RULES, AnnotateConfig, CorpusConfig, DistillConfig, EvaluateConfig,
                             PrepareConfig, ReportConfig, TeacherConfig, from_dict)
from pipeline.errors import ConfigError
from pipeline.rules import Each, Range

CORPUS = {"name": "c", "files": {"train": "train.txt"}}
STAGES = {"teachers.en": (TeacherConfig, {"corpus": CORPUS}),
          "annotate": (AnnotateConfig, {"corpora": [CORPUS]}),
          "distill": (DistillConfig, {}),
          "prepare": (PrepareConfig, {"corpora": [CORPUS]}),
          "evaluate": (EvaluateConfig, {"corpora": [CORPUS]}),
          "report": (ReportConfig, {})}
UNBOUNDED = {(CorpusConfig, "word_col"), (CorpusConfig, "label_col")}  # negative = from the end


@dataclasses.dataclass
class Key:
    section: str
    path: list  # field names and list indices under the section
    owner: type  # the dataclass that declares the field
    name: str
    tp: typing.Any  # the annotation, ``X`` of ``X | None``
    optional: bool

    @property
    def dotted(self) -> str:
        out = self.section
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else f".{part}"
        return out


def _optional(tp):
    """``X`` of ``X | None`` (and ``tp`` itself otherwise)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def walk(cls: type, section: str, path: list) -> list[Key]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _optional(hints[f.name])
        keys.append(Key(section, path + [f.name], cls, f.name, tp, tp is not hints[f.name]))
        if dataclasses.is_dataclass(tp):
            keys += walk(tp, section, path + [f.name])
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            keys += walk(typing.get_args(tp)[0], section, path + [f.name, 0])
    return keys


KEYS = [key for section, (cls, _) in STAGES.items() for key in walk(cls, section, [])]


def wrong_types(key: Key) -> list[tuple[typing.Any, str]]:
    """(value of another type than the key's, as YAML would give it; dotted key the error must
    name). ``null`` is wrong unless the key is optional (or a section: null = defaults)."""
    tp, null = key.tp, [] if key.optional else [None]
    if tp is bool:
        values = ["yes", 1, *null]
    elif tp is int:
        values = ["fast", True, 1.5, *null]
    elif tp is float:
        values = ["fast", True, [1.0], *null]
    elif tp is str:
        values = [12, ["a"], "", *null]
    elif typing.get_origin(tp) is list:
        values = ["a", {"a": 1}, *null]
    elif typing.get_origin(tp) is dict:
        values = ["a", ["a"], *null]
        if typing.get_args(tp)[1] is str:
            return [(v, key.dotted) for v in values] + [({"train": 3}, f"{key.dotted}.train")]
    else:  # a nested section
        values = ["a", ["a"]]
    return [(v, key.dotted) for v in values]


def out_of_range(key: Key) -> list[tuple[typing.Any, str]]:
    """(value, dotted key the error must name) outside the field's rule, if it has one."""
    rule = RULES.get((key.owner, key.name))
    if rule is None:
        return []
    if not isinstance(rule, Each):
        return [(bad, key.dotted) for bad in rule.bad]
    if typing.get_origin(key.tp) is dict:
        return [({bad: "x"}, f"{key.dotted}.{bad}") for bad in rule.bad]
    return [([bad], f"{key.dotted}[0]") for bad in rule.bad]


def refused(key: Key, value, names: str) -> None:
    cls, base = STAGES[key.section]
    data = copy.deepcopy(base)
    node = data
    for part in key.path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[key.path[-1]] = value
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data, key.section)
    assert str(info.value).startswith(f"{names}: "), (value, str(info.value))


def test_the_bases_are_valid():
    for cls, base in STAGES.values():
        from_dict(cls, copy.deepcopy(base), "x")


@pytest.mark.parametrize("key", KEYS, ids=[k.dotted for k in KEYS])
def test_wrong_type_names_the_key(key):
    for value, names in wrong_types(key):
        refused(key, value, names)


CASES = [(key, value, names) for key in KEYS for value, names in out_of_range(key)]


@pytest.mark.parametrize("key, value, names", CASES,
                         ids=[f"{k.dotted}={v!r}" for k, v, _ in CASES])
def test_out_of_range_names_the_key(key, value, names):
    refused(key, value, names)


def test_every_number_has_a_range():
    numbers = {(k.owner, k.name) for k in KEYS if k.tp in (int, float)}
    missing = sorted(f"{owner.__name__}.{name}" for owner, name in numbers - set(RULES) - UNBOUNDED)
    assert not missing, f"add a Range to pipeline.config.RULES (or UNBOUNDED here): {missing}"
    assert len(KEYS) > 100 and len(CASES) > 50


@pytest.mark.parametrize("section, message", [
    ({"kd": {"lam": 2}}, "distill.kd.lam: must be in [0, 1], got 2.0"),
    ({"batch_tokens": 0}, "distill.batch_tokens: must be >= 1, got 0"),
    ({"workers": -1}, "distill.workers: must be >= 0, got -1"),
    ({"optim": {"epochs": 0}}, "distill.optim.epochs: must be >= 1, got 0"),
    ({"optim": {"lr": "fast"}}, "distill.optim.lr: expected a number, got 'fast'"),
    ({"kd": {"method": "postrior"}}, "(did you mean 'posterior'?)"),
    ({"kd": {"schedule": "anneel"}}, "(did you mean 'anneal'?)"),
    ({"kd": {"lamda": 0.1}}, "distill.kd.lamda: unknown key (did you mean 'lam'?)"),
    ({"kd": {"method": "topk", "options": {"kk": 2}}},
     "distill.kd.options: unknown option(s) ['kk'] of KD method 'topk'; valid: ['k']"),
    ({"labels": ["O", "B-X", "O"]}, "distill.labels: 'O' is listed twice"),
    ({"model": {"encoder": {"dropout": 1.0}}}, "distill.model.encoder.dropout: must be in [0, 1)"),
    ({"optim": {"lr": float("nan")}}, "distill.optim.lr: expected a finite number, got nan"),
])
def test_the_issue_examples(section, message):
    with pytest.raises(ConfigError) as info:
        from_dict(DistillConfig, section, "distill")
    assert message in str(info.value)


def test_valid_spellings_are_accepted():
    cfg = from_dict(DistillConfig, {"optim": {"lr": "1e-3", "epochs": 1}, "kd": None,
                                    "model": {"encoder": {"kind": "bilstm"}}}, "distill")
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float) and cfg.kd.method == "posterior"
    corpus = from_dict(CorpusConfig, {**CORPUS, "scheme": "bio", "convert_to": "bioes"}, "c")
    assert (corpus.scheme, corpus.convert_to) == ("bio", "bioes")


def test_cuda_without_a_gpu_is_one_clear_line():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"^annotate.device: 'cuda' asked for, but torch sees no "
                                          r"CUDA GPU\(s\) on this machine; use auto or cpu$"):
        from_dict(AnnotateConfig, {"device": "cuda"}, "annotate")


def test_range_checks_and_rule_examples_agree():
    """Each Range's ``bad`` values lie outside it and its bounds inside (so the fuzz above feeds
    values that must be refused, and nothing valid is refused)."""
    for rule in {id(r): r for r in RULES.values() if isinstance(r, Range)}.values():
        for bound, open_ in ((rule.lo, rule.lo_open), (rule.hi, rule.hi_open)):
            if bound is not None and not open_:
                rule.check(bound, "k")
        for bad in rule.bad:
            with pytest.raises(ConfigError, match=r"^k: must be "):
                rule.check(bad, "k")
