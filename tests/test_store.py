"""The teacher-output store: brute-force correctness, round trips, fsspec reading, verify, validation."""
from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from pipeline.structs import Factorized, residual_mass
from pipeline.teaching import teacher_targets
from store.build import build_store
from stages.cli import app
from store import StoreError, StoreLockedError, StoreOptions, StoreWriter, open_store, verify_store
from store.files import StoreLock, sha256_file
from store.reader import Store
from store.schema import DIGEST, manifest_digest
from tests.store_fakes import FakeTeacher, config

GET_KEYS = {"tokens", "emissions", "transitions", "start", "end", "node", "edge", "kbest_paths",
            "kbest_logprob", "log_z", "residual_mass", "viterbi", "gold"}
FRAME_COLUMNS = {"sid", "corpus", "split", "lang", "teacher", "tokens", "gold", "length", "viterbi",
                 "kbest_paths", "kbest_logprob", "residual_mass", "log_z"}


def build(tmp: Path, name: str = "store", *, is_crf=True, constraints=True, tensors="potentials",
          prune=0.0, dtype="float32", max_len=6, k=4, **kw) -> Path:
    cfg = config(tmp / f"{name}-data", out=tmp / name, unlabeled=4, dtype=dtype, k=k, max_len=max_len, **kw)
    cfg.tensors, cfg.prune = tensors, prune
    build_store(cfg, teachers={"en": FakeTeacher(is_crf=is_crf, constraints=constraints)})
    return tmp / name


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("store"))


def _brute(s: dict, teacher) -> dict:
    """Every label sequence of the sentence enumerated: log Z, node, edge, all path log-probs."""
    em = s["emissions"].astype(np.float64) / teacher.tau
    L, T = em.shape
    seqs = np.array(list(itertools.product(range(T), repeat=L)))
    pos = np.arange(L)
    a = teacher.arrays
    allowed = a["allowed_start"][seqs[:, 0]] & a["allowed_end"][seqs[:, -1]]
    allowed &= a["allowed_transitions"][seqs[:, :-1], seqs[:, 1:]].all(1)
    if teacher.is_crf:
        with np.errstate(invalid="ignore"):
            score = em[pos, seqs].sum(1) + a["start"][seqs[:, 0]] + a["end"][seqs[:, -1]]
            score += a["transitions"][seqs[:, :-1], seqs[:, 1:]].sum(1)
        log_z = np.logaddexp.reduce(score)
        logp = score - log_z
        ranked = logp
    else:
        log_soft = em - np.logaddexp.reduce(em, axis=1, keepdims=True)
        logp = log_soft[pos, seqs].sum(1)
        log_z = np.logaddexp.reduce(em, axis=1).sum()
        ranked = np.where(allowed, logp, -np.inf)  # k-best / Viterbi only over allowed paths
    p = np.exp(logp)
    node = np.zeros((L, T))
    edge = np.zeros((max(L - 1, 0), T, T))
    for i in range(L):
        np.add.at(node[i], seqs[:, i], p)
    for i in range(L - 1):
        np.add.at(edge[i], (seqs[:, i], seqs[:, i + 1]), p)
    order = np.argsort(-ranked, kind="stable")
    return {"log_z": log_z, "node": node, "edge": edge, "seqs": seqs, "ranked": ranked, "order": order}


@pytest.mark.parametrize("is_crf,constraints,tensors,dtype", [
    (True, True, "potentials", "float32"), (True, False, "full", "float16"),
    (False, True, "potentials", "float16"), (False, False, "full", "float32")])
def test_brute_force_marginals_and_kbest(tmp_path, is_crf, constraints, tensors, dtype):
    s = open_store(build(tmp_path, is_crf=is_crf, constraints=constraints, tensors=tensors, dtype=dtype,
                         max_len=4, k=6))
    tol = 2e-3 if (dtype == "float16" and tensors == "full") else 1e-4
    for sid in s.frame(columns=["sid"])["sid"]:
        got = s.get(sid)
        ref = _brute(got, s.teachers[got["teacher"]])
        assert got["log_z"] == pytest.approx(ref["log_z"], abs=1e-4)
        np.testing.assert_allclose(got["node"], ref["node"], atol=tol)
        np.testing.assert_allclose(got["edge"], ref["edge"], atol=tol)
        k = len(got["kbest_logprob"])
        best = np.full(k, -np.inf)
        best[:min(k, len(ref["order"]))] = ref["ranked"][ref["order"][:k]]
        np.testing.assert_allclose(got["kbest_logprob"], best.astype(np.float32), atol=1e-4)
        for path, lp in zip(got["kbest_paths"], got["kbest_logprob"]):
            if np.isfinite(lp):  # the stored path's own log-prob (ties may reorder equal paths)
                idx = int(np.ravel_multi_index(tuple(path), (len(FakeTeacher().labels),) * len(path)))
                assert ref["ranked"][idx] == pytest.approx(lp, abs=1e-4)
            else:
                assert not path.any()
        np.testing.assert_array_equal(got["viterbi"], ref["seqs"][ref["order"][0]])
        finite = best[np.isfinite(best)]
        assert got["residual_mass"] == pytest.approx(max(0.0, 1 - np.exp(finite).sum()), abs=1e-5)


def test_round_trip_frame_get_read_shard_parquet(store_path):
    s = open_store(store_path)
    frame = s.frame()
    assert FRAME_COLUMNS <= set(frame.columns) and len(frame) == 34 and frame["sid"].is_unique
    assert frame.loc[frame["split"] == "unlabeled", "gold"].isna().all()
    direct = pd.read_parquet(store_path / "table")
    assert sorted(direct["sid"]) == sorted(frame["sid"]) and list(direct.columns) == list(frame.columns)
    assert s.complete and s.labels == FakeTeacher().labels and len(s.teachers) == 1
    assert s.shards("dev") == [sh for sh in s.shards() if ".dev." in sh]
    for shard in s.shards():
        table, arrays = s.read_shard(shard)
        lengths = table.column("length").to_numpy()
        for name, (flat, offsets) in arrays.items():
            assert offsets[-1] == len(flat) and len(offsets) == table.num_rows + 1
            edge = name == "edge"
            assert np.array_equal(np.diff(offsets), lengths - 1 if edge else lengths)
        for sent in s.iter_shard(shard):
            got = s.get(sent["sid"])
            assert GET_KEYS <= set(got)
            for key in GET_KEYS - {"gold"}:
                np.testing.assert_array_equal(got[key], sent[key])
            rec = frame.set_index("sid").loc[sent["sid"]]
            assert list(rec["tokens"]) == list(got["tokens"]) and rec["length"] == len(got["tokens"])
            assert got["edge"].shape == (rec["length"] - 1, 5, 5)
            assert got["kbest_paths"].shape == (4, rec["length"])
            np.testing.assert_allclose(got["node"].sum(1), 1, atol=1e-5)
    with pytest.raises(KeyError):
        s.get("tiny/train/999")
    with pytest.raises(StoreError):
        s.get("../etc/passwd")


def test_reads_through_fsspec_urls(store_path):
    local = open_store(store_path)
    mem = fsspec.filesystem("memory")
    mem.put(str(store_path), "/copies/store", recursive=True)
    for url in (f"file://{store_path}", "memory://copies/store"):
        remote = open_store(url)
        pd.testing.assert_frame_equal(remote.frame(), local.frame())
        sid = "tiny/dev/3"
        for key, value in remote.get(sid).items():
            np.testing.assert_array_equal(value, local.get(sid)[key])
        assert verify_store(url) == []


def _fresh(store_path: Path, tmp: Path) -> Path:
    copy = tmp / "copy"
    shutil.copytree(store_path, copy)
    return copy


def test_verify_names_flipped_byte_truncation_deletion_and_lies(store_path, tmp_path):
    assert verify_store(store_path) == []
    s = open_store(store_path)
    shard = s.shards("train")[1]
    chunk = next(f for f in s.shard_info(shard)["files"] if "/emissions/c/" in f)

    store = _fresh(store_path, tmp_path / "flip")
    raw = bytearray((store / chunk).read_bytes())
    raw[len(raw) // 2] ^= 0x40
    (store / chunk).write_bytes(bytes(raw))
    problems = verify_store(store)
    assert problems and all(shard in p for p in problems) and "checksum mismatch" in problems[0]
    result = CliRunner().invoke(app, ["store", "verify", str(store)])
    assert result.exit_code == 1 and shard in result.output

    store = _fresh(store_path, tmp_path / "trunc")
    table = store / f"table/{shard}.parquet"
    table.write_bytes(table.read_bytes()[:100])
    assert any(shard in p and "truncated" in p for p in verify_store(store))

    store = _fresh(store_path, tmp_path / "gone")
    (store / f"table/{shard}.parquet").unlink()
    shutil.rmtree(store / f"tensors/{shard}.zarr")
    assert any(shard in p and "missing file" in p for p in verify_store(store))

    store = _fresh(store_path, tmp_path / "lie")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][shard]["rows"] += 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert any(shard in p and "rows" in p for p in verify_store(store))
    other = s.shards("dev")[0]
    manifest["shards"][shard]["rows"] -= 1
    first = next(iter(manifest["shards"][other]["files"]))
    manifest["shards"][other]["files"][first] = "0" * 64
    manifest["pending"] = ["x.tiny.train.00009"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    (store / "table" / "stray.parquet").write_bytes(b"x")
    problems = verify_store(store)
    assert any(other in p and "checksum" in p for p in problems)
    assert any("stray file table/stray.parquet" in p for p in problems)
    assert any("incomplete" in p for p in problems)


def test_verify_recomputes_invariants(store_path, tmp_path):
    """A consistent-looking but wrong stored value (valid checksums) is caught by the recomputation."""
    store = _fresh(store_path, tmp_path / "wrong")
    s = open_store(store)
    shard = s.shards("train")[0]
    path = store / f"table/{shard}.parquet"
    table = pq.read_table(path)
    log_z = table.column("log_z").to_numpy().copy()
    log_z[2] += 0.5
    pq.write_table(table.set_column(table.column_names.index("log_z"), "log_z", pa.array(log_z)), path)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][shard]["files"][f"table/{shard}.parquet"] = sha256_file(path)
    manifest[DIGEST] = manifest_digest(manifest)  # re-signed: only the recomputation can tell
    (store / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_store(store)
    assert len(problems) == 1 and f"{shard}, sentence tiny/train/2: log Z" in problems[0]


def test_manifest_paths_cannot_escape(store_path, tmp_path):
    for key, value in (("shard", "../../evil.tiny.train.00000"), ("file", "../../etc/passwd")):
        store = _fresh(store_path, tmp_path / key)
        manifest = json.loads((store / "manifest.json").read_text())
        shard, entry = next(iter(manifest["shards"].items()))
        if key == "shard":
            manifest["shards"] = {value: entry}
        else:
            entry["files"][value] = "0" * 64
        (store / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(StoreError, match="invalid shard id|unsafe path"):
            open_store(store)
        assert verify_store(store)


def test_lock_refuses_live_holder_and_breaks_stale(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock = tmp_path / "store" / ".lock"
        lock.parent.mkdir()
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "now"}))
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            with StoreWriter(tmp_path / "store", StoreOptions()):
                pass
    finally:
        holder.kill()
        holder.wait()
    with StoreWriter(tmp_path / "store", StoreOptions()) as writer:  # dead pid: stale, taken over
        assert json.loads(lock.read_text())["pid"] != holder.pid
        with pytest.raises(StoreLockedError):
            StoreLock(writer.root).acquire()
    assert not lock.exists()


def test_residual_mass_clamps_rounding_only():
    lz = torch.tensor([10.0, 10.0])
    lengths = torch.tensor([5, 5])
    lp = torch.tensor([[1e-6, -30.0], [0.01, -0.01]])  # row 0: a rounding negative; row 1: a bug
    with pytest.raises(ValueError, match="batch row 1"):
        residual_mass(lp, lz, lengths)
    assert residual_mass(lp[:1], lz[:1], lengths[:1]).item() == 0.0
    tiny = torch.tensor([[np.log(0.25), np.log(0.75 - 1e-9)]])
    assert residual_mass(tiny, lz[:1], lengths[:1]).item() == pytest.approx(1e-9, rel=1e-3)


def test_teacher_outputs_shapes_and_surplus_rows():
    teacher = FakeTeacher()
    structure = teacher.structure([["john"], ["new", "york", "in", "paris"]])
    mask = structure.mask
    out = teacher_targets(structure, 8, tau=2.0)
    assert out["kbest_paths"].shape == (2, 8, 4) and out["edge"].shape == (2, 3, 5, 5)
    # one word, IOB2: 3 allowed labels (O, B-PER, B-LOC); surplus rows are -inf with zero paths
    assert torch.isinf(out["kbest_logprob"][0, 3:]).all() and not out["kbest_paths"][0, 3:].any()
    assert out["residual_mass"][0] < 1e-5
    maxent = teacher_targets(Factorized(structure.emissions, mask), 3)
    assert torch.allclose(maxent["node"].sum(-1), mask.float(), atol=1e-6)


def test_store_classes_reject_bad_options(tmp_path):
    with pytest.raises(StoreError):
        StoreOptions(tensors="potentials", prune=1e-4)
    with pytest.raises(StoreError):
        StoreOptions(dtype="bfloat16")
    with pytest.raises(StoreError, match="local path"):
        StoreWriter("memory://x", StoreOptions())
    with pytest.raises(StoreError, match="no manifest"):
        Store(str(tmp_path))


def test_deal_shards_balances_the_ranks_work_deterministically():
    from store.build import deal_shards
    from pipeline.readers import Sentence

    def part(n: int, length: int) -> list:
        return [Sentence(["w"] * length, None, f"c/train/{i}", "c", "train", "en") for i in range(n)]

    plan = [(None, part(100, 10)), (None, part(100, 10)), (None, part(100, 10)), (None, part(7, 10)),
            (None, part(100, 12)), (None, part(3, 10))]
    owned = deal_shards(plan, 2)
    assert sorted(i for o in owned for i in o) == list(range(6)) and owned == deal_shards(plan, 2)
    load = [sum(len(s.tokens) + 1 for i in o for s in plan[i][1]) for o in owned]
    assert max(load) - min(load) <= 11 * 100  # round-robin: 0, 2, 4 vs 1, 3, 5 -> 3,600 vs 2,300
    assert all(o == sorted(o) for o in owned) and deal_shards(plan, 1) == [list(range(6))]
    assert sum(map(len, deal_shards(plan[:1], 3))) == 1  # more ranks than shards: some get none
