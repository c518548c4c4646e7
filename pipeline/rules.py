"""Value rules of the typed config (``pipeline.config``): the type of a YAML scalar, ranges, valid
names, list items, devices. Each rule's ``check(value, key)`` raises a ``ConfigError`` naming the
dotted key and the value; ``bad`` holds values the rule refuses (error examples and tests).
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.errors import ConfigError

_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def dotted(key: str, name: Any) -> str:
    """The dotted key of field ``name`` under ``key`` (``key`` empty: the name alone)."""
    return f"{key}.{name}" if key else str(name)


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, cut short."""
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def type_error(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {show(value)}")


def check_scalar(tp: Any, value: Any, key: str) -> Any:
    """A YAML scalar checked against ``tp``: bool is not an int, an int is not a string, a string
    is not a number (except a float written without a dot, ``1e-3``, which PyYAML reads as a
    string); numbers must be finite and strings non-empty."""
    if tp is bool:
        if not isinstance(value, bool):
            raise type_error(key, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise type_error(key, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise type_error(key, "a number", value)
        if not math.isfinite(value):
            raise type_error(key, "a finite number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value.strip():
            raise type_error(key, "a non-empty string", value)
        return value
    raise TypeError(f"{key}: unsupported config annotation {tp!r}")


class Range:
    """A number in an interval: ``Range(lo=1)`` is ``>= 1``, ``Range(0, 1, hi_open=True)`` is
    ``in [0, 1)``. ``bad`` holds values just outside it (for tests and error examples)."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.bad = tuple(([lo if lo_open else lo - 1] if lo is not None else [])
                         + ([hi if hi_open else hi + 1] if hi is not None else []))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"

    def check(self, value: float, key: str) -> None:
        low = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        high = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        if not (low and high):
            raise ConfigError(f"{key}: must be {self}, got {show(value)}")


class OneOf:
    """A name from a fixed list, or from ``names()`` (a registry, imported only when checked)."""

    bad = ("no-such-name",)

    def __init__(self, *values: str, names: Callable[[], Iterable[str]] | None = None,
                 fold_case: bool = False) -> None:
        self.values, self.names, self.fold_case = values, names, fold_case

    def choices(self) -> list[str]:
        return list(self.names()) if self.names else list(self.values)

    def check(self, value: str, key: str) -> None:
        choices = self.choices()
        folded = [c.lower() for c in choices] if self.fold_case else choices
        if (value.lower() if self.fold_case else value) not in folded:
            hint = difflib.get_close_matches(value, choices, n=1)
            raise ConfigError(f"{key}: must be one of {choices}"
                              + (" (any case)" if self.fold_case else "") + f", got {show(value)}"
                              + (f" (did you mean '{hint[0]}'?)" if hint else ""))


class Each:
    """Every item of a list, or every key of a mapping, obeys ``rule``; a list has no repeats.
    ``bad`` holds items (or keys) it refuses."""

    def __init__(self, rule: Any = None) -> None:
        self.rule = rule
        self.bad = getattr(rule, "bad", ())

    def check(self, value: list | dict, key: str) -> None:
        if isinstance(value, list):
            seen = [v for i, v in enumerate(value) if v in value[:i]]
            if seen:
                raise ConfigError(f"{key}: {show(seen[0])} is listed twice")
        for i, item in enumerate(value):
            if self.rule is not None:
                self.rule.check(item, f"{key}[{i}]" if isinstance(value, list) else f"{key}.{item}")


class Values:
    """Every value of a mapping obeys ``rule`` (``Values(Each())``: each value is a list without
    repeats), checked under ``key.NAME``. ``bad`` is empty: a bad value is a bad list."""

    bad = ()

    def __init__(self, rule: Any) -> None:
        self.rule = rule

    def check(self, value: dict, key: str) -> None:
        for name, item in value.items():
            self.rule.check(item, f"{key}.{name}")


class Device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist on this machine."""

    bad = ("gpu", "cuda:x")

    def check(self, value: str, key: str) -> None:
        check_device(value, key)


def check_device(name: str, key: str) -> None:
    """Refuse a device name torch does not know, or a CUDA device this machine does not have."""
    match = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", name)
    if match is None:
        raise ConfigError(f"{key}: must be auto, cpu, cuda or cuda:N, got {show(name)}")
    if name.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(match.group(1) or 0)
        if index >= count:
            raise ConfigError(f"{key}: {name!r} asked for, but torch sees "
                              f"{count or 'no'} CUDA GPU(s) on this machine; use auto or cpu")
