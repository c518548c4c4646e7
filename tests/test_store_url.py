"""annotate into an fsspec URL (fsspec's ``memory://``): the store a local annotate writes, resume after an
interrupted upload, the lock at the URL, damaged shards redone (store/remote.py)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from dataclasses import replace

import fsspec
import pandas as pd
import pytest

import store.build as build
from store import StoreError, StoreLockedError, open_store, verify_store
from store.build import build_store
from store.checks import check_store
from store.remote import RemoteStoreWriter, writer_type
from store.schema import StoreOptions
from store.writer import StoreWriter
from tests.store_fakes import FakeTeacher, config

MEMORY = fsspec.filesystem("memory")


@pytest.fixture
def url():
    name = f"structkd-test-{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}/store"
    if MEMORY.exists(f"/{name}"):
        MEMORY.rm(f"/{name}", recursive=True)


@pytest.fixture
def annotated(monkeypatch):
    """The shard ids annotate computes (not kept from an earlier run), in order."""
    ids, annotate_shard = [], build.annotate_shard

    def spy(teacher, meta, spec, *args, **kwargs):
        ids.append(spec.id)
        return annotate_shard(teacher, meta, spec, *args, **kwargs)

    monkeypatch.setattr(build, "annotate_shard", spy)
    return ids


def _same_store(a: str, b: str) -> None:
    sa, sb = open_store(a), open_store(b)
    assert sa.manifest == sb.manifest  # every file's sha256 included: byte-identical shards
    pd.testing.assert_frame_equal(sa.frame(), sb.frame())
    for shard in sa.shards():
        arrays_a, arrays_b = sa.read_shard(shard)[1], sb.read_shard(shard)[1]
        assert sorted(arrays_a) == sorted(arrays_b)
        for name in arrays_a:
            assert arrays_a[name][0].tobytes() == arrays_b[name][0].tobytes()


def _local(tmp_path, cfg) -> str:
    """The same annotate into a local folder."""
    local = str(tmp_path / "local")
    build_store(replace(cfg, out=local), teachers={"en": FakeTeacher()})
    return local


def _files(url: str) -> list[str]:
    root = url[len("memory://"):]
    return sorted(p.split(root + "/", 1)[1] for p in MEMORY.find(f"/{root}"))


def test_writer_type_by_protocol(tmp_path):
    assert writer_type(tmp_path) is StoreWriter and writer_type(f"file://{tmp_path}") is StoreWriter
    assert writer_type("memory://b/s") is RemoteStoreWriter and writer_type("s3://b/s") is RemoteStoreWriter


def test_annotate_to_a_url_writes_the_local_store(tmp_path, url):
    cfg = config(tmp_path / "data", out=url, unlabeled=5)
    manifest = build_store(cfg, teachers={"en": FakeTeacher()})
    assert manifest["complete"] and ".lock" not in _files(url)
    _same_store(url, _local(tmp_path, cfg))
    assert verify_store(url) == []
    check_store(open_store(url))  # what distill and the stream call


def test_interrupted_upload_resumes_without_recomputing_uploaded_shards(tmp_path, url, annotated,
                                                                       monkeypatch):
    cfg = config(tmp_path / "data", out=url, unlabeled=5)
    put, uploads = RemoteStoreWriter._put, []

    def failing_put(self, rel, data=None):  # dies in the third shard's upload, after its table file
        uploads.append(rel)
        if sum(r.startswith("table/") for r in uploads) == 3 and rel.startswith("tensors/"):
            raise OSError("connection reset")
        put(self, rel, data)

    monkeypatch.setattr(RemoteStoreWriter, "_put", failing_put)
    with pytest.raises(StoreError, match="connection reset"):
        build_store(cfg, teachers={"en": FakeTeacher()})
    monkeypatch.setattr(RemoteStoreWriter, "_put", put)
    first = list(annotated)
    assert len(first) == 3
    marker = json.loads(MEMORY.cat_file(f"{url[len('memory:/'):]}/shards/{first[2]}.json"))
    assert marker["writing"]  # the interrupted shard's intent marker, never its final one
    with pytest.raises(StoreError, match="incomplete|pending|complete"):
        check_store(open_store(url))
    annotated.clear()
    manifest = build_store(cfg, teachers={"en": FakeTeacher()})
    assert manifest["complete"] and first[2] in annotated and not set(first[:2]) & set(annotated)
    _same_store(url, _local(tmp_path, cfg))
    assert verify_store(url) == []


def test_second_writer_on_a_locked_url_is_refused(tmp_path, url):
    cfg = config(tmp_path / "data", out=url)
    options = StoreOptions(**{f: getattr(cfg, f) for f in StoreOptions.__dataclass_fields__})
    with RemoteStoreWriter(url, options):
        with pytest.raises(StoreLockedError, match="locked by pid"):
            build_store(cfg, teachers={"en": FakeTeacher()})
    assert ".lock" not in _files(url)
    build_store(cfg, teachers={"en": FakeTeacher()})  # released: the next run writes the store
    assert verify_store(url) == []


def test_stale_lock_is_taken_over_and_a_foreign_one_refused(tmp_path, url):
    cfg = config(tmp_path / "data", out=url)
    lock = f"{url[len('memory:/'):]}/.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    MEMORY.pipe_file(lock, json.dumps({"pid": int(dead), "host": socket.gethostname()}).encode())
    build_store(cfg, teachers={"en": FakeTeacher()})
    assert verify_store(url) == [] and ".lock" not in _files(url)
    MEMORY.pipe_file(lock, b"my notes")
    with pytest.raises(StoreError, match="not a structkd lock"):
        build_store(cfg, teachers={"en": FakeTeacher()})
    assert MEMORY.cat_file(lock) == b"my notes"


def test_shard_with_a_missing_or_damaged_file_at_the_url_is_redone(tmp_path, url, annotated):
    cfg = config(tmp_path / "data", out=url, unlabeled=5)
    build_store(cfg, teachers={"en": FakeTeacher()})
    shards = open_store(url).shards()
    root = url[len("memory:/"):]
    damaged, missing = shards[1], shards[3]
    table = f"{root}/table/{damaged}.parquet"
    MEMORY.pipe_file(table, MEMORY.cat_file(table)[:-7])
    MEMORY.rm_file(f"{root}/tensors/{missing}.zarr/offsets/zarr.json")
    assert verify_store(url) != []
    annotated.clear()
    build_store(cfg, teachers={"en": FakeTeacher()})
    assert sorted(annotated) == sorted([damaged, missing])
    _same_store(url, _local(tmp_path, cfg))
    assert verify_store(url) == []


def test_url_holding_other_files_is_refused(tmp_path, url):
    MEMORY.pipe_file(f"{url[len('memory:/'):]}/notes.txt", b"mine")
    with pytest.raises(StoreError, match="not a structkd store"):
        build_store(config(tmp_path / "data", out=url), teachers={"en": FakeTeacher()})
    assert _files(url) == ["notes.txt"]


def test_dropped_shards_are_removed_at_the_url(tmp_path, url):
    local = tmp_path / "local"
    for sizes in ({"train": 20, "dev": 7}, {"train": 10, "dev": 7}):  # train shard 2 is dropped
        cfg = config(tmp_path / "data", out=url, sizes=sizes)
        for out in (url, str(local)):
            build_store(replace(cfg, out=out), teachers={"en": FakeTeacher()})
    assert _files(url) == sorted(p.relative_to(local).as_posix() for p in local.rglob("*")
                                 if p.is_file() and ".tmp" not in p.parts)
    assert not any(".train.00002" in f for f in _files(url))
    _same_store(url, str(local))


def test_shards_of_another_rank_are_uploaded_and_finalized_by_rank_0(tmp_path, url):
    """The torchrun path in one process: rank 0 (holding the lock) and an attached rank 1 that stages
    and uploads every other shard; rank 0 finds them at the URL and finalizes."""
    cfg = config(tmp_path / "data", out=url, unlabeled=5)
    options = StoreOptions(**{f: getattr(cfg, f) for f in StoreOptions.__dataclass_fields__})
    work, teacher = build.read_all(cfg), FakeTeacher()
    meta = build.teacher_meta(teacher, "en", "fake-teacher", work[0][2][0].tokens, options)
    with RemoteStoreWriter(url, options) as main:
        meta.id = main.add_teacher(meta)
        plan = build.plan_shards(work, {"en": meta}, options.shard_size)
        main.begin([spec for spec, _ in plan])
        other = RemoteStoreWriter.attach(url, options, {meta.id: meta})
        for rank, writer in enumerate((main, other)):
            for spec, part in plan[rank::2]:
                writer.write_shard(spec, build.annotate_shard(teacher, meta, spec, part, options,
                                                              cfg.batch_tokens))
        for spec, _ in plan[1::2]:
            assert main.is_complete(spec)
        assert main.finalize([spec for spec, _ in plan])["complete"]
    _same_store(url, _local(tmp_path, cfg))
