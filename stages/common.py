"""Shared plumbing of the stage commands: typed config from params.yaml + flag overrides, and the
checks of the paths a stage is given (params file, model folders) that turn a missing path into one
clear line instead of a traceback deep in a loader."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pipeline.params import read_params
from pipeline.errors import ConfigError, DataError

console = Console(stderr=True)
DEFAULT_PARAMS = Path("params.yaml")


def params_file(params: Path | None, given: bool = False) -> Path | None:
    """The params file a stage reads, or None to run on the dataclass defaults and the flags.

    Only the default ``params.yaml`` may be absent; a ``--params`` file the user named (``given``:
    on the command line, or any path other than the default) must exist."""
    if params is None or params.exists():
        return params
    if given or params != DEFAULT_PARAMS:
        raise ConfigError(f"--params {params}: no such file")
    return None


def top_level_methods(params: Path | None) -> list[str] | None:
    """The distill methods listed once at the top of params.yaml (``methods:``), if any."""
    if params is None or not Path(params).exists():
        return None
    methods = read_params(params).get("methods")
    if methods is None:
        return None
    if not isinstance(methods, list) or not all(isinstance(m, str) and m for m in methods):
        raise ConfigError(f"{params}: methods: expected a list of run names, got {methods!r}")
    return methods


def check_model_folder(folder: str | Path, key: str) -> Path:
    """``folder`` as a Path if it is a saved model folder; else a DataError naming ``key`` (the
    params key or flag that named it) and the folder."""
    path = Path(folder)
    if not path.exists():
        raise DataError(f"{key}: {folder} does not exist (expected a model folder)")
    if not path.is_dir():
        raise DataError(f"{key}: {folder} is a file, not a model folder")
    if not (path / "config.json").is_file() and not (path / "crf.json").is_file():
        raise DataError(f"{key}: {folder} is not a model folder (no config.json)")
    return path


def check_teacher_source(source: str, key: str) -> str:
    """``source`` if a stage can load it as a teacher: a model folder (``check_model_folder``: ours,
    a Hugging Face checkpoint, a fit-crf folder with crf.json) or a hub name ``owner/name`` that is
    no path here (``pipeline.hf_teacher.looks_like_hub_name``)."""
    from pipeline.hf_teacher import looks_like_hub_name  # torch: imported only when a stage runs

    if not Path(source).exists() and looks_like_hub_name(source):
        return source
    check_model_folder(source, key)
    return source
