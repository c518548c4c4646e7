"""Damaged and mismatched stores: `store verify` names each problem AND `distill` refuses to train.

Corruption (one copy of a clean store per case): a flipped byte, a truncated file, a deleted shard and
a manifest that lies, in train shards (read by the stream) and in dev / test shards (read for
evaluation only). Mismatches, each refused with a clear message: the store's schema version
(distill through the CLI, verify, a resumed annotate), the student's configured labels (CLI), and a
second teacher with another fingerprint (annotate through the CLI with real saved taggers).
Related tests: tests/test_store.py (verify on flips, truncation, deletion, lies), tests/test_stream.py
(stream refusals), tests/test_distill.py (corrupted teacher files, labels through the API),
tests/test_annotate.py (fingerprint through the API).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.config import DecoderConfig, DistillConfig, EncoderConfig, KDConfig, ModelConfig, OptimConfig
from store.feed import distill
from pipeline.tagger import build_tagger
from store.build import build_store
from stages.cli import app
from store import StoreError, open_store, verify_store
from store.schema import DIGEST, manifest_digest
from tests.store_fakes import LABELS, FakeTeacher, config, sentences, write_corpus

STUDENT = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none", dropout=0.0),
                      DecoderConfig(kind="crf"))


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("faults")
    cfg = config(tmp / "data", out=tmp / "store", sizes={"train": 20, "dev": 6, "test": 6}, unlabeled=4)
    build_store(cfg, teachers={"en": FakeTeacher()})
    assert verify_store(tmp / "store") == []
    return tmp / "store"


def said(result) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def distill_cfg(store: Path, out: Path) -> DistillConfig:
    return DistillConfig(store=str(store), kd=KDConfig(method="posterior"), model=STUDENT,
                         optim=OptimConfig(epochs=1, lr=1e-2, warmup=0.0, seed=1), batch_tokens=60,
                         out=str(out), device="cpu")


def _shard(store: Path, split: str) -> str:
    return open_store(store).shards(split)[0]


def _file(store: Path, split: str, kind: str) -> Path:
    """The table file, or the first emissions chunk, of the first shard of ``split``."""
    shard = _shard(store, split)
    if kind == "table":
        return store / f"table/{shard}.parquet"
    return next(p for p in sorted((store / f"tensors/{shard}.zarr/emissions/c").rglob("*")) if p.is_file())


def flip(store: Path, split: str, kind: str) -> None:
    path = _file(store, split, kind)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(store: Path, split: str, kind: str) -> None:
    path = _file(store, split, kind)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def teacher_metadata(store: Path, edit) -> None:
    """Edit the Zarr metadata of the teacher's transitions array (read when the store is opened)."""
    path = min((store / "teachers").glob("*.zarr")) / "transitions" / "zarr.json"
    path.write_text(edit(path.read_text()))


def delete_shard(store: Path, split: str) -> None:
    shard = _shard(store, split)
    (store / f"table/{shard}.parquet").unlink()
    shutil.rmtree(store / f"tensors/{shard}.zarr")
    (store / f"shards/{shard}.json").unlink()


def lie(store: Path, edit, *, signed: bool = False) -> None:
    """Edit the manifest; ``signed`` recomputes its digest, as a careful liar would: the deeper
    checks (row counts, offsets, checksums of the listed files) must then catch the lie."""
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    if signed:
        manifest[DIGEST] = manifest_digest(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


def _shard_entry(manifest: dict, split: str) -> dict:
    return next(e for e in manifest["shards"].values() if e["split"] == split)


def _wrong_checksum(manifest: dict, split: str) -> None:
    files = _shard_entry(manifest, split)["files"]
    files[next(iter(files))] = "0" * 64


MODIFIED = "manifest.json was modified after annotate wrote it"
CASES = {  # name -> (damage, what verify says, what distill says)
    "flipped byte, train tensor chunk": (lambda s: flip(s, "train", "chunk"), "checksum mismatch",
                                         "checksum mismatch"),
    "flipped byte, dev table": (lambda s: flip(s, "dev", "table"), "checksum mismatch", "checksum mismatch"),
    "flipped byte, unlabeled table": (lambda s: flip(s, "unlabeled", "table"), "checksum mismatch",
                                      "checksum mismatch"),
    "truncated train table": (lambda s: truncate(s, "train", "table"), "truncated",
                              "checksum mismatch|unreadable"),
    "truncated test tensor chunk": (lambda s: truncate(s, "test", "chunk"), "truncated", "checksum mismatch"),
    "deleted train shard": (lambda s: delete_shard(s, "train"), "missing file", "missing|unreadable"),
    "deleted dev shard": (lambda s: delete_shard(s, "dev"), "missing file", "missing|unreadable"),
    "manifest lies: rows": (lambda s: lie(s, lambda m: _shard_entry(m, "train").update(rows=9)), "rows",
                            MODIFIED),
    "manifest lies, re-signed: rows": (
        lambda s: lie(s, lambda m: _shard_entry(m, "train").update(rows=9), signed=True), "rows",
        "manifest says 9"),
    "manifest lies: tokens": (lambda s: lie(s, lambda m: _shard_entry(m, "train").update(tokens=1)),
                              "offsets do not match", MODIFIED),
    "manifest lies, re-signed: tokens": (
        lambda s: lie(s, lambda m: _shard_entry(m, "train").update(tokens=1), signed=True),
        "offsets do not match", "offsets do not match"),
    "manifest lies: checksum of a test file": (lambda s: lie(s, lambda m: _wrong_checksum(m, "test")),
                                               "checksum mismatch", MODIFIED),
    "manifest lies, re-signed: checksum of a test file": (
        lambda s: lie(s, lambda m: _wrong_checksum(m, "test"), signed=True), "checksum mismatch",
        "checksum mismatch"),
    "manifest lies: complete with pending shards": (
        lambda s: lie(s, lambda m: m.update(pending=[_shard(s, "train")])), "incomplete", "incomplete"),
    "truncated teacher array metadata": (lambda s: teacher_metadata(s, lambda t: t[:40]),
                                         "cannot open the store", "cannot open the store"),
    "flipped byte in a teacher metadata key": (
        lambda s: teacher_metadata(s, lambda t: t.replace("chunk_shape", "chuok_shape")),
        "cannot open the store", "cannot open the store"),
    "manifest lies: shard of an unknown teacher": (
        lambda s: lie(s, lambda m: _shard_entry(m, "train").update(teacher="t-0000000")), "unknown teacher",
        MODIFIED),
    "manifest lies, re-signed: shard of an unknown teacher": (
        lambda s: lie(s, lambda m: _shard_entry(m, "train").update(teacher="t-0000000"), signed=True),
        "unknown teacher", "unknown teacher"),
    "manifest lies: an input checksum (read by annotate only)": (
        lambda s: lie(s, lambda m: _shard_entry(m, "dev").update(input_sha256="0" * 64)), MODIFIED,
        MODIFIED),
    "manifest truncated": (lambda s: (s / "manifest.json").write_text(
        (s / "manifest.json").read_text()[:200]), "unreadable", "unreadable"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_verify_names_and_distill_refuses_a_damaged_store(clean_store, tmp_path, case):
    damage, verify_says, distill_says = CASES[case]
    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    damage(store)
    problems = verify_store(store)
    assert problems and any(verify_says in p for p in problems), problems
    with pytest.raises(StoreError, match=distill_says):
        distill(distill_cfg(store, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "model").exists()


def test_other_schema_version_is_refused_by_distill_verify_and_annotate(clean_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    lie(store, lambda m: m.update(schema_version=2))
    assert any("schema version 1" in p for p in verify_store(store))
    (tmp_path / "empty.yaml").write_text("distill: {}\n")
    result = CliRunner().invoke(app, ["distill", "--params", str(tmp_path / "empty.yaml"), "--store",
                                      str(store), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 1 and "refused the store" in said(result) and "schema version" in said(result)
    cfg = config(tmp_path / "data", out=store, sizes={"train": 20, "dev": 6, "test": 6}, unlabeled=4)
    with pytest.raises(StoreError, match="schema version"):
        build_store(cfg, teachers={"en": FakeTeacher()})
    assert not (store / ".lock").exists()


def test_student_labels_other_than_the_stores_are_refused_by_the_cli(clean_store, tmp_path):
    params = {"distill": {"store": str(clean_store), "labels": LABELS[::-1], "out": str(tmp_path / "run")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["distill", "--params", str(tmp_path / "params.yaml"), "--no-progress"])
    assert result.exit_code == 1 and "do not match the student" in said(result)


def test_second_teacher_with_another_fingerprint_is_refused_by_the_cli(tmp_path):
    vocab = [words for words, _ in sentences(20, seed=0)]
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none", dropout=0.0),
                        DecoderConfig(kind="crf"))
    for seed in (0, 1):
        torch.manual_seed(seed)
        build_tagger(model, LABELS, "IOB2", vocab).save(tmp_path / f"teacher-{seed}")
    files = write_corpus(tmp_path / "corpus", {"train": 12, "dev": 5})
    params = {"annotate": {"corpora": [{"name": "tiny", "lang": "en", "format": "conll", "files": files}],
                           "out": str(tmp_path / "store"), "k": 3, "shard_size": 5, "device": "cpu"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    args = ["annotate", "--params", str(tmp_path / "params.yaml"), "--no-progress", "--teacher"]
    assert runner.invoke(app, args + [f"en={tmp_path / 'teacher-0'}"]).exit_code == 0
    before = json.loads((tmp_path / "store" / "manifest.json").read_text())
    result = runner.invoke(app, args + [f"en={tmp_path / 'teacher-1'}"])
    assert result.exit_code == 1 and "annotate failed" in said(result) and "mix_teachers" in said(result)
    assert json.loads((tmp_path / "store" / "manifest.json").read_text()) == before
    assert verify_store(tmp_path / "store") == []
