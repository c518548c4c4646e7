"""params.yaml: reading it, its sections, and a stage's typed config from sections + command-line flags."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.config import from_dict
from pipeline.errors import ConfigError
from pipeline.rules import show


def load_config(cls: type, params: Path | None, sections: list[str], flags: dict[str, Any]) -> Any:
    """Config of ``cls`` from the given params.yaml sections (later ones win), then the flags.

    ``flags`` maps dotted field names (``kd.method``) to values; ``None`` means "not given".
    Without a params file the dataclass defaults are the base. Every problem is a ConfigError
    naming the key, prefixed with the first section (``distill.optim.lr``).
    """
    data: dict[str, Any] = {}
    if params is not None:
        for section in sections:
            part = read_section(params, section)
            if part is not None and not isinstance(part, dict):
                raise ConfigError(f"{params}: section '{section}' must be a mapping of keys, "
                                  f"got {type(part).__name__}")
            data = merge(data, part or {})
    for dotted, value in flags.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(cls, data, sections[0] if sections else "")


def read_params(path: str | Path) -> dict[str, Any]:
    """The whole params.yaml as plain data; an unreadable or malformed file is a ConfigError with
    its line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the params file: "
                          f"{getattr(err, 'strerror', None) or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {show(data)}")
    return data


def read_section(path: str | Path, section: str) -> dict[str, Any]:
    """The plain data of ``section`` (dotted path for nesting) of a params.yaml file."""
    data: Any = read_params(path)
    for part in section.split("."):
        if not isinstance(data, dict) or part not in data:
            raise ConfigError(f"{path}: no section '{section}'")
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
