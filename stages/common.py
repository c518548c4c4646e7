"""Shared plumbing of the stage commands: typed config from params.yaml + flag overrides, device."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from pipeline.config import from_dict, merge, read_section, to_dict

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


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def config_dict(cfg: Any) -> dict[str, Any]:
    return to_dict(cfg)


def top_level_methods(params: Path | None) -> list[str] | None:
    """The distill methods listed once at the top of params.yaml (``methods:``), if any."""
    if params is None or not Path(params).exists():
        return None
    try:
        methods = read_section(params, "methods")
    except KeyError:
        return None
    return list(methods)
