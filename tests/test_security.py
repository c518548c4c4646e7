"""Security: no unsafe deserialization or eval in the code base, and nothing in a store (manifest
entries, teacher ids, sids, symbolic links) can make the reader, verify, distill or the writer touch
files outside the store. Model folders hold safetensors only: tests/test_models.py
(test_tagger_interface_and_save_load). Also covered there: tests/test_store.py
(test_manifest_paths_cannot_escape: '..' shard ids and file entries; test_round_trip: get('../etc/passwd')).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest

from store.build import build_store, teacher_id
from store import StoreError, open_store, verify_store
from store.schema import check_relpath
from tests.store_fakes import FakeTeacher, config

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".dvc", ".hypothesis", ".pytest_cache"}
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
SAFE_YAML = {"safe_load", "safe_load_all", "safe_dump", "safe_dump_all", "dump", "YAMLError"}


def python_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py")
                  if not SKIP_DIRS & set(p.relative_to(ROOT).parts[:-1])
                  and not any(part.endswith(".egg-info") for part in p.parts))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def unsafe_uses(source: str) -> list[str]:
    """Unsafe deserialization / code execution in ``source``: pickle-like modules (imports, names,
    ``allow_pickle=True``, ``read_pickle``), builtin eval / exec, torch.load without
    ``weights_only=True``, and any yaml loader but safe_load (``yaml.load`` with SafeLoader is accepted)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            names = {a.name for a in node.names}
            if module in UNSAFE_MODULES or (module == "torch" and "load" in names) \
                    or (module == "yaml" and names - SAFE_YAML - {"SafeLoader", "CSafeLoader"}):
                found.append(f"{line}: from {node.module} import {sorted(names)}")
        elif isinstance(node, (ast.Name, ast.Attribute)) and "pickle" in _dotted(node).lower():
            found.append(f"{line}: {_dotted(node)}")
        elif isinstance(node, ast.keyword) and node.arg and "pickle" in node.arg and \
                not (isinstance(node.value, ast.Constant) and node.value.value is False):
            found.append(f"{line}: {node.arg}=")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("eval", "exec"):
                found.append(f"{line}: {name}(")
            elif name.endswith("torch.load") or name == "torch.load":
                if not _true(node, "weights_only"):
                    found.append(f"{line}: torch.load( without weights_only=True")
            elif name.startswith("yaml.") and name[5:] not in SAFE_YAML:
                loader = next((_dotted(k.value) for k in node.keywords if k.arg == "Loader"), "")
                if not (name == "yaml.load" and loader.endswith(("SafeLoader", "CSafeLoader"))):
                    found.append(f"{line}: {name}(")
    return found


def test_the_checker_catches_every_pattern_and_spares_safe_code():
    bad = ["import pickle", "from cloudpickle import dumps", "x = pd.read_pickle(p)",
           "np.load(p, allow_pickle=True)", "eval('1')", "exec(code)", "torch.load(p)",
           "torch.load(p, weights_only=False)", "from torch import load", "yaml.load(fh)",
           "yaml.unsafe_load(fh)", "yaml.full_load(fh)", "yaml.load(fh, Loader=yaml.FullLoader)",
           "from yaml import load"]
    for snippet in bad:
        assert unsafe_uses(snippet), snippet
    safe = ["model.eval()", "tagger.train().eval()", "torch.load(p, weights_only=True)",
            "yaml.safe_load(fh)", "yaml.load(fh, Loader=yaml.SafeLoader)", "yaml.safe_dump(x)",
            "np.load(p, allow_pickle=False)", "s = 'pickle eval( exec('  # a string is not code"]
    for snippet in safe:
        assert not unsafe_uses(snippet), snippet


def test_no_pickle_eval_exec_unsafe_torch_or_yaml_load_in_the_repo():
    files = python_files()
    assert len(files) > 40 and ROOT / "store" / "reader.py" in files
    found = {str(p.relative_to(ROOT)): hits for p in files
             if (hits := unsafe_uses(p.read_text(encoding="utf-8")))}
    assert not found


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("security")
    cfg = config(tmp / "data", out=tmp / "store", sizes={"train": 20, "dev": 6})
    build_store(cfg, teachers={"en": FakeTeacher()})
    return tmp / "store"


def _copy(store: Path, dest: Path) -> Path:
    shutil.copytree(store, dest)
    return dest


def _edit_manifest(store: Path, edit) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("sid", ["../../etc/passwd", "/etc/passwd", "tiny/train/../../../etc/passwd",
                                 "tiny/../train/1", "tiny/train/1/../../x", "tiny/train/-1", "", "..",
                                 "tiny\\train\\1", "tiny/train/1\x00"])
def test_hostile_sids_are_refused(clean_store, sid):
    with pytest.raises(StoreError, match="invalid sid|corpus name|split"):
        open_store(clean_store).get(sid)


@pytest.mark.parametrize("rel", ["/etc/passwd", "../x", "table/../../x", "table//x", "./table/x",
                                 "table/x/", "C:\\x", "table/\x00x", "~/x"])
def test_unsafe_relative_paths_are_refused(rel):
    with pytest.raises(StoreError, match="unsafe path"):
        check_relpath(rel)


def test_teacher_entries_cannot_escape(clean_store, tmp_path):
    store = _copy(clean_store, tmp_path / "id")
    _edit_manifest(store, lambda m: m.update(teachers={"../../evil": next(iter(m["teachers"].values()))}))
    with pytest.raises(StoreError, match="teacher name"):
        open_store(store)
    assert verify_store(store)
    store = _copy(clean_store, tmp_path / "files")
    _edit_manifest(store, lambda m: next(iter(m["teachers"].values()))["files"].update(
        {"/etc/passwd": "0" * 64}))
    assert any("foreign file /etc/passwd" in p for p in verify_store(store))
    assert teacher_id("../../etc/passwd", "ab" * 32) == "passwd-abababab"  # ids from folder names
    assert teacher_id("..", "ab" * 32) == "teacher-abababab"


def _symlink_out(store: Path, rel: str, outside: Path) -> None:
    """Move ``rel`` (file or folder) out of the store and leave a symbolic link to it: same bytes, so
    every checksum still matches; only the location escapes."""
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / Path(rel).name
    shutil.move(store / rel, target)
    os.symlink(target, store / rel)


@pytest.mark.parametrize("what", ["table file", "tensor folder", "teacher folder", "manifest"])
def test_symbolic_links_out_of_the_store_are_refused(clean_store, tmp_path, what):
    from store.stream import StoreStream

    store = _copy(clean_store, tmp_path / "store")
    s = open_store(store)
    shard = s.shards("train")[0]
    rel = {"table file": f"table/{shard}.parquet", "tensor folder": f"tensors/{shard}.zarr",
           "teacher folder": f"teachers/{next(iter(s.teachers))}.zarr", "manifest": "manifest.json"}[what]
    _symlink_out(store, rel, tmp_path / "outside")
    problems = verify_store(store)
    assert problems and all("symbolic link out of the store" in p for p in problems), problems
    with pytest.raises(StoreError, match="symbolic link out of the store"):
        list(StoreStream(str(store), ["train"]))
    if what in ("table file", "tensor folder"):
        with pytest.raises(StoreError, match="symbolic link out of the store"):
            open_store(store).get("tiny/train/0")


def test_writer_refuses_a_store_folder_linked_elsewhere(clean_store, tmp_path):
    """The writer removes files of its folders: through a linked folder they would be someone else's."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    store = _copy(clean_store, tmp_path / "store")
    shutil.rmtree(store / "table")
    os.symlink(victim, store / "table")
    cfg = config(tmp_path / "data", out=store, sizes={"train": 4})
    with pytest.raises(StoreError, match="symbolic links"):
        build_store(cfg, teachers={"en": FakeTeacher()})
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert not (store / ".lock").exists()


@pytest.mark.parametrize("name", ["../evil", "/abs", "a/b", "..", ".hidden", "x" * 101, "tab\tname"])
def test_corpus_names_cannot_make_paths(tmp_path, name):
    cfg = config(tmp_path / "data", out=tmp_path / "store", sizes={"train": 3})
    cfg.corpora[0].name = name
    with pytest.raises(StoreError, match="corpus name"):
        build_store(cfg, teachers={"en": FakeTeacher()})
    assert not any((tmp_path / "store" / "table").glob("*")) and not (tmp_path / "evil").exists()
