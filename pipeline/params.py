"""A stage's typed config from params.yaml sections and command-line flags (stages, benchmarks)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import from_dict, merge, read_section
from pipeline.errors import ConfigError


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
