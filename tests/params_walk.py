"""The keys of every stage config, walked from the dataclasses of pipeline/config.py (nested
dataclasses, lists of corpora), with values of the wrong type and values outside each key's rule:
the inputs of tests/test_params_fuzz.py and of the input campaign (tests/input_campaign.py)."""
from __future__ import annotations

import copy
import dataclasses
import types
import typing

from pipeline.config import (AnnotateConfig, DistillConfig, EvaluateConfig, PrepareConfig, ReportConfig,
                             TeacherConfig)
from pipeline.config_rules import RULES
from pipeline.rules import Each

CORPUS = {"name": "c", "files": {"train": "train.txt"}}
STAGES = {"teachers.en": (TeacherConfig, {"corpus": CORPUS}),
          "annotate": (AnnotateConfig, {"corpora": [CORPUS]}),
          "distill": (DistillConfig, {}),
          "prepare": (PrepareConfig, {"corpora": [CORPUS]}),
          "evaluate": (EvaluateConfig, {"corpora": [CORPUS]}),
          "report": (ReportConfig, {})}


@dataclasses.dataclass
class Key:
    """One key of a stage config: where it is (section + path) and what it holds."""

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
    """Every key of dataclass ``cls`` under ``path``, nested keys included."""
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


def with_value(key: Key, value: typing.Any) -> dict:
    """The stage's valid base data with ``value`` at ``key``."""
    data = copy.deepcopy(STAGES[key.section][1])
    node = data
    for part in key.path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[key.path[-1]] = value
    return data
