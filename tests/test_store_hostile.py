"""The store writer and reader against hostile or careless use (issue 14, the store's side).

1. Nothing the store did not write is ever deleted: a non-empty folder that is not a store is refused
   (API and CLI), a store's own folders keep the user's files through resume, rewrite and drop, and
   symbolic links are removed as links, never followed.
2. Two corpora of one name (or the same sentence ids from two inputs) are refused, never merged.
3. A modified manifest (digest), a permuted or renamed label list (teacher files, gold columns) and a
   rewrite under a reader (the writer's live lock) are refused by name.
4. k beyond the store's, and rows that fail the verify invariants at write time, are refused;
   ``check_verified`` refuses a store without records whose shards verify would reject.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.config import DecoderConfig, EncoderConfig, ModelConfig
from pipeline.errors import DataError
from pipeline.tagger import build_tagger
from stages.cli import app
from store import StoreError, StoreLockedError, StoreWriter, open_store, verify_store
from store.build import build_store
from store.checks import check_k, check_store, check_verified, verify_files
from store.files import StoreLock, sha256_file
from store.schema import DIGEST, StoreWarning, manifest_digest
from store.writer import ShardSpec
from tests.store_fakes import LABELS, FakeTeacher, config, write_corpus
from tests.store_kit import snapshot, spec

SIZES = {"train": 20, "dev": 6}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hostile")
    build_store(config(tmp / "data", out=tmp / "store", sizes=SIZES), teachers={"en": FakeTeacher()})
    return tmp / "store"


def copy(store: Path, dest: Path) -> Path:
    shutil.copytree(store, dest)
    return dest


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def annotate(tmp: Path, out: Path, **kw) -> dict:
    return build_store(config(tmp / "data", out=out, sizes=kw.pop("sizes", SIZES), **kw),
                       teachers={"en": kw.pop("teacher", FakeTeacher())})


def edit_manifest(store: Path, edit, *, signed: bool = True) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    if signed:
        manifest[DIGEST] = manifest_digest(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


USER_FOLDERS = {  # a user's own folder that happens to use the store's folder names
    "table/mine.parquet": b"PAR1 user data", "tensors/a.zarr/zarr.json": b"{}", "shards/notes.json": b"[]",
    "teachers/t.zarr/c/0": b"\x00\x01", ".tmp/draft.txt": b"draft", "README": b"my project",
}


def user_folder(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """The files, dated 1970 (a just-created empty ``.lock`` would be another writer starting)."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        os.utime(root / rel, (0, 0))
    return snapshot(root)


@pytest.mark.parametrize("files", [
    USER_FOLDERS, {"notes.txt": b"x"}, {".hidden": b""}, {".tmp/x": b"1"}, {"table/x.parquet": b"y"},
    {".lock": b"my own lock file"}, {".lock": b""}, {".lock": b"", "a/b/c": b"deep"},
    {"manifest.json.bak": b"{}"},
    {"manifest.json": b'{"name": "my web app"}'}, {"manifest.json": b"not json"}, {"manifest.json": b"[1]"},
], ids=lambda f: ",".join(f))
def test_a_folder_that_is_not_a_store_is_refused_and_left_as_it_was(tmp_path, files):
    out = tmp_path / "out"
    before = user_folder(out, files)
    with pytest.raises(StoreError) as err:
        annotate(tmp_path, out)
    message = one_line(err)
    assert str(out) in message and ("not a structkd store" in message or "manifest" in message)
    assert snapshot(out) == before


def test_a_file_as_out_and_a_symlink_to_a_user_folder_are_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    with pytest.raises(StoreError, match="not a folder"):
        annotate(tmp_path, target)
    assert target.read_text() == "keep"
    before = user_folder(tmp_path / "user", USER_FOLDERS)
    os.symlink(tmp_path / "user", tmp_path / "link")
    with pytest.raises(StoreError, match="not a structkd store"):
        annotate(tmp_path, tmp_path / "link")
    assert snapshot(tmp_path / "user") == before


def test_cli_annotate_into_a_user_folder_exits_1_with_one_line(tmp_path):
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none"),
                        DecoderConfig(kind="crf"))
    build_tagger(model, LABELS, "IOB2", [["john"]]).save(tmp_path / "teacher")
    files = write_corpus(tmp_path / "corpus", {"train": 5})
    params = {"annotate": {"corpora": [{"name": "tiny", "lang": "en", "format": "conll", "files": files}],
                           "teachers": {"en": str(tmp_path / "teacher")}, "k": 3, "device": "cpu"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = user_folder(tmp_path / "out", USER_FOLDERS)
    result = CliRunner().invoke(app, ["annotate", "--params", str(tmp_path / "params.yaml"), "--no-progress",
                                      "--out", str(tmp_path / "out")])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "not a structkd store" in said and "Traceback" not in result.output
    assert issubclass(StoreError, DataError) and StoreError.exit_code == 1
    assert snapshot(tmp_path / "out") == before


def test_user_files_inside_a_store_survive_resume_rewrite_and_drop(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    first = open_store(store).shards("train")[0]
    planted = {"notes.txt": b"n", "table/mine.csv": b"a,b", f"table/{first}.parquet.bak": b"old",
               "tensors/mine.zarr/zarr.json": b"{}", "shards/mine.json": b'{"spec": 1}',
               f"shards/{first[:-5]}99999.json": b"not json", "teachers/notes.md": b"#",
               ".tmp/draft.txt": b"draft", ".tmp/sub/x": b"x", ".tmp/mine.zarr/x": b"z",
               "shards/.notes.json.tmp-1": b"t"}
    for rel, data in planted.items():
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_bytes(data)
    annotate(tmp_path, store)                                   # resume: every shard kept
    annotate(tmp_path / "other", store, sizes={"train": 9})     # rewrite: other input, train shards dropped
    assert len(open_store(store).shards("train")) == 2
    annotate(tmp_path, store)                                   # and back
    assert {rel: (store / rel).read_bytes() for rel in planted} == planted
    problems = verify_store(store)
    assert problems and all("stray file" in p for p in problems)
    assert sorted(p.split()[2].rstrip(":") for p in problems) == sorted(
        r for r in planted if r.split("/")[0] in ("table", "tensors", "shards", "teachers"))


def test_a_user_file_where_a_shard_goes_is_refused_not_deleted(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    shard = open_store(store).shards("dev")[0]
    (store / f"table/{shard}.parquet").write_bytes(b"damaged")  # the shard must be redone
    (store / f"tensors/{shard}.zarr/mine.txt").write_text("mine")
    with pytest.raises(StoreError) as err:
        annotate(tmp_path, store)
    assert f"tensors/{shard}.zarr/mine.txt is not named by this store's records" in one_line(err)
    assert (store / f"tensors/{shard}.zarr/mine.txt").read_text() == "mine"
    (store / f"tensors/{shard}.zarr/mine.txt").unlink()
    annotate(tmp_path, store)
    assert verify_store(store) == []


def test_symbolic_links_in_a_store_are_removed_as_links_never_followed(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    shards = open_store(store).shards()
    before = user_folder(tmp_path / "user", {"a.parquet": b"user table", "dir/c/0": b"user chunk"})
    os.unlink(store / f"table/{shards[0]}.parquet")
    os.symlink(tmp_path / "user/a.parquet", store / f"table/{shards[0]}.parquet")
    shutil.rmtree(store / f".tmp", ignore_errors=True)
    (store / ".tmp").mkdir()
    os.symlink(tmp_path / "user/dir", store / f".tmp/{shards[1]}")         # scratch name linked out
    annotate(tmp_path, store)                                              # links replaced by real files
    assert verify_store(store) == [] and snapshot(tmp_path / "user") == before
    shutil.rmtree(store / f"tensors/{shards[2]}.zarr")
    os.symlink(tmp_path / "user/dir", store / f"tensors/{shards[2]}.zarr")  # a shard group linked out
    with pytest.raises(StoreError, match="not named by this store's records"):
        annotate(tmp_path, store)
    assert snapshot(tmp_path / "user") == before


def test_a_foreign_lock_file_is_refused_and_a_stale_lock_race_keeps_the_winner(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    (store / ".lock").write_text("my notes, not a lock")
    os.utime(store / ".lock", (0, 0))  # old: an empty lock this old would be taken over
    with pytest.raises(StoreError, match="not a structkd lock file"):
        annotate(tmp_path, store)
    assert (store / ".lock").read_text() == "my notes, not a lock"
    (store / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    StoreLock(store)._break(b'{"pid": 999999999}')  # judged stale, but a live writer took it meanwhile
    assert json.loads((store / ".lock").read_text())["pid"] == os.getpid()
    assert not list(store.glob(".lock.stale-*"))
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / ".lock").touch()  # another writer has just created its lock: not a user folder
    with pytest.raises(StoreLockedError, match="still starting"):
        annotate(tmp_path, tmp_path / "new")


def test_two_corpora_of_one_name_are_refused_by_the_writer(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    tid = next(iter(open_store(store).teachers))
    bad_plans = [
        ("planned twice", [spec(tid, "news", "train", 0, "a"), spec(tid, "news", "train", 0, "b")]),
        ("planned twice", [spec(tid, "news", "train", 0, "a"), spec("other-1", "news", "train", 0, "a")]),
        ("is not chunk", [ShardSpec(f"{tid}.news.train.00001", tid, "news", "train", "en", 0, 8, "a")]),
    ]
    for why, plan in bad_plans:
        with StoreWriter(store, open_store(store).options) as writer:
            with pytest.raises(StoreError) as err:
                writer.begin(plan)
        assert why in one_line(err) and "news" in str(err.value)
    assert verify_store(store) == []


def test_a_corpus_name_reused_for_other_sentences_by_a_second_teacher_is_refused(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    cfg = config(tmp_path / "data", out=store, sizes=SIZES, mix_teachers=True)
    build_store(cfg, teachers={"en": FakeTeacher(seed=1)})  # same sentences, second teacher: mixed
    assert len(open_store(store).teachers) == 2
    cfg.corpora[0].files = write_corpus(tmp_path / "other", SIZES, seed=5)
    with pytest.raises(StoreError) as err:
        build_store(cfg, teachers={"en": FakeTeacher(seed=2)})
    assert "corpus 'tiny'" in one_line(err) and "two different inputs" in str(err.value)
    frame = open_store(store).frame()
    assert len(frame) == 2 * sum(SIZES.values()) and frame["sid"].value_counts().max() == 2  # nothing lost


def test_a_modified_manifest_is_reported_and_refused(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    edit_manifest(store, lambda m: next(iter(m["teachers"].values()))["labels"].reverse(), signed=False)
    with pytest.warns(StoreWarning, match="manifest.json was modified"):
        s = open_store(store)
    with pytest.raises(StoreError, match="manifest.json was modified after annotate wrote it"):
        check_store(s)
    assert any("manifest.json was modified" in p for p in verify_store(store))


@pytest.mark.parametrize("how", ["permuted", "renamed"])
def test_a_changed_label_list_is_refused_by_name_even_when_re_signed(clean, tmp_path, how):
    def change(labels):
        labels[:] = labels[::-1] if how == "permuted" else [f"{x}X" if x != "O" else x for x in labels]

    store = copy(clean, tmp_path / "store")
    edit_manifest(store, lambda m: change(next(iter(m["teachers"].values()))["labels"]))
    tid = next(iter(open_store(store).teachers))
    with pytest.raises(StoreError, match=f"teacher {tid}: the manifest says labels"):
        check_store(open_store(store))
    with pytest.raises(StoreError, match="the manifest says labels"):  # annotate does not resume it either
        annotate(tmp_path, store)
    # a store older than the teacher's copy of its entry: the gold columns still tell
    meta = store / f"teachers/{tid}.zarr/zarr.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "attributes": {}}))
    edit_manifest(store, lambda m: m["teachers"][tid]["files"].update(
        {f"teachers/{tid}.zarr/zarr.json": sha256_file(meta)}))
    with pytest.raises(StoreError) as err:
        check_store(open_store(store))
    assert f"teacher {tid}: its label list" in one_line(err)
    assert "does not match the gold labels" in str(err.value)


def test_a_manifest_without_digest_loads_with_a_warning(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    edit_manifest(store, lambda m: m.pop(DIGEST), signed=False)
    with pytest.warns(StoreWarning, match="no digest"):
        assert check_store(open_store(store))[0] == LABELS
    assert verify_store(store) == []


def test_a_rewrite_under_a_reader_is_named_as_such(clean, tmp_path):
    store = copy(clean, tmp_path / "store")
    s = open_store(store)
    shard = s.shards("train")[0]
    (store / f"table/{shard}.parquet").unlink()
    files = s.shard_info(shard)["files"]
    with pytest.raises(StoreError, match="is missing; the store is damaged"):
        verify_files(s, files, f"shard {shard}")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (store / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(StoreLockedError) as err:
            verify_files(s, files, f"shard {shard}")
        assert f"another annotate is writing this store (pid {holder.pid}" in one_line(err)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(StoreError, match="is missing; the store is damaged"):  # its pid is dead now
        verify_files(s, files, f"shard {shard}")


def test_check_k_refuses_more_paths_than_the_store_holds(clean):
    s = open_store(clean)
    for k in (None, 1, 4):
        check_k(s, k)
    for k in (5, 10, 0):
        with pytest.raises(StoreError) as err:
            check_k(s, k)
        assert f"k = {k}" in one_line(err) and "k = 4" in str(err.value)


def test_rows_that_fail_verification_are_never_committed(clean, tmp_path, monkeypatch):
    store = copy(clean, tmp_path / "store")
    shard = open_store(store).shards("dev")[0]
    (store / f"table/{shard}.parquet").write_bytes(b"damaged")  # the shard must be redone
    before = (store / f"shards/{shard}.json").read_bytes()
    write = StoreWriter.write_shard

    def tampered(self, shard_spec, rows):
        if shard_spec.split == "dev":
            rows[3] = {**rows[3], "log_z": rows[3]["log_z"] + 0.25}
        return write(self, shard_spec, rows)

    monkeypatch.setattr(StoreWriter, "write_shard", tampered)
    with pytest.raises(StoreError) as err:
        annotate(tmp_path, store)
    assert f"shard {shard}, sentence tiny/dev/3: log Z" in one_line(err) and "did not write" in str(err.value)
    assert (store / f"shards/{shard}.json").read_bytes() == before  # old marker kept, nothing committed
    assert not open_store(store).complete
    monkeypatch.setattr(StoreWriter, "write_shard", write)
    annotate(tmp_path, store)
    assert verify_store(store) == []
    assert all(e["verified"] for e in open_store(store).manifest["shards"].values())


def test_check_verified_recomputes_stores_without_records(clean, tmp_path):
    check_verified(open_store(clean))
    store = copy(clean, tmp_path / "store")
    shard = open_store(store).shards("train")[1]
    path = store / f"table/{shard}.parquet"
    table = pq.read_table(path)
    log_z = table.column("log_z").to_numpy().copy()
    log_z[2] -= 1.0
    pq.write_table(table.set_column(table.column_names.index("log_z"), "log_z", pa.array(log_z)), path)
    edit_manifest(store, lambda m: m["shards"][shard]["files"].update(
        {f"table/{shard}.parquet": sha256_file(path)}))
    check_verified(open_store(store))  # a consistent lie: the record vouches for it (verify does not)
    edit_manifest(store, lambda m: [e.pop("verified") for e in m["shards"].values()])
    with pytest.raises(StoreError) as err:
        check_verified(open_store(store))
    assert f"shard {shard}, sentence tiny/train/10: log Z" in one_line(err)


def test_verify_reports_a_damaged_teacher_and_a_refused_recomputation_without_raising(clean, tmp_path,
                                                                                       monkeypatch):
    store = copy(clean, tmp_path / "store")
    chunk = next(p for p in sorted((store / "teachers").rglob("*")) if "/transitions/c/" in p.as_posix()
                 and p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:len(chunk.read_bytes()) // 2])
    problems = verify_store(store)  # the shards are not checked against damaged factors
    assert len(problems) == 1 and "checksum mismatch" in problems[0] and "transitions" in problems[0]

    def refuse(*args, **kwargs):
        raise ValueError("k-best probabilities sum to 6.02 > 1")

    monkeypatch.setattr("store.verify.recompute", refuse)
    problems = verify_store(clean)
    assert problems and all("cannot be recomputed from its stored potentials: k-best" in p for p in problems)
