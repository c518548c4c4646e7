"""The import rules of the layout (docs/DESIGN.md), checked from the AST of every file.

stages -> store -> pipeline: ``pipeline/`` imports nothing from ``store/`` or ``stages/``,
``store/`` nothing from ``stages/``. Tests and benchmarks use the library (``pipeline/``,
``store/``); the only part of ``stages/`` they may touch is the CLI entry point ``stages.cli``
(tests of the command line), and a test file never imports another test file (shared helpers
live in non-test modules such as tests/helpers.py).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = {"pipeline": {"store", "stages"}, "store": {"stages"}}


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def violations(folder: str, allowed, root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / folder).rglob("*.py")):
        for line, name in imports(path, root):
            if not allowed(name):
                found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_library_imports_point_one_way(package):
    banned = RULES[package]
    assert violations(package, lambda name: name.split(".")[0] not in banned) == []


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_tests_and_benchmarks_use_the_library_not_the_stages(folder):
    def allowed(name: str) -> bool:
        top = name.split(".")[0]
        if top == "stages":
            return folder == "tests" and name in ("stages", "stages.cli", "stages.cli.app")
        return not (top == "tests" and name.split(".")[-1].startswith("test_"))
    assert violations(folder, allowed) == []


def test_the_checker_sees_a_violation(tmp_path):
    """The rule can fail: planted upward imports (absolute and relative) are reported by line."""
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "probe.py").write_text("import os\nfrom store.reader import Store\n"
                                                     "from ..stages import cli\n", encoding="utf-8")
    found = violations("pipeline", lambda n: n.split(".")[0] not in RULES["pipeline"], tmp_path)
    assert found == ["pipeline/probe.py:2 imports store.reader", "pipeline/probe.py:2 imports store.reader.Store",
                     "pipeline/probe.py:3 imports stages", "pipeline/probe.py:3 imports stages.cli"]
