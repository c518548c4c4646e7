"""Shared plumbing of the stage commands: typed config from params.yaml + flag overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.config import from_dict, merge, read_section

console = Console(stderr=True)


def load_config(cls: type, params: Path | None, sections: list[str], flags: dict[str, Any]) -> Any:
    """Config of ``cls`` from the given params.yaml sections (later ones win), then the flags.

    ``flags`` maps dotted field names (``kd.method``) to values; ``None`` means "not given".
    Without a params file the dataclass defaults are the base.
    """
    data: dict[str, Any] = {}
    if params is not None:
        for section in sections:
            data = merge(data, read_section(params, section))
    for dotted, value in flags.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(cls, data)


def top_level_methods(params: Path | None) -> list[str] | None:
    """The distill methods listed once at the top of params.yaml (``methods:``), if any."""
    if params is None or not Path(params).exists():
        return None
    try:
        methods = read_section(params, "methods")
    except KeyError:
        return None
    return list(methods)
