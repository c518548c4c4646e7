"""`annotate`: resume after SIGKILL (and the crash campaign, -m slow), two processes racing for the lock,
fingerprint and lock refusals, language routing, real Tagger + CLI."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.config import CorpusConfig, DecoderConfig, EncoderConfig, ModelConfig
from pipeline.tagger import build_tagger
from store.build import build_store
from stages.cli import app
from store import StoreError, StoreLockedError, open_store, verify_store
from tests.helpers import write_tiny_bert
from tests.store_fakes import LABELS, FakeTeacher, config, write_corpus

ROOT = Path(__file__).resolve().parents[1]
KILLED_RUN = """
import sys
from pathlib import Path
from tests.store_fakes import FakeTeacher, config
from store.build import build_store
cfg = config(Path(sys.argv[1]), out=Path(sys.argv[2]), sizes={"train": 50, "dev": 14}, unlabeled=10)
build_store(cfg, teachers={"en": FakeTeacher(delay=float(sys.argv[3]))})
"""
RACING_RUN = """
import sys
from pathlib import Path
from store import StoreLockedError
from tests.store_fakes import FakeTeacher, config
from store.build import build_store
cfg = config(Path(sys.argv[1]), out=Path(sys.argv[2]), sizes={"train": 24, "dev": 6})
print("READY", flush=True)
sys.stdin.readline()
try:
    build_store(cfg, teachers={"en": FakeTeacher(delay=0.01)})
except StoreLockedError as err:
    print(err, flush=True)
    sys.exit(3)
"""


def _same_store(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma == mb  # every file's sha256 included: byte-identical shards
    sa, sb = open_store(a), open_store(b)
    pd.testing.assert_frame_equal(sa.frame(), sb.frame())
    assert sa.frame()["sid"].is_unique
    for shard in sa.shards():
        arrays_a, arrays_b = sa.read_shard(shard)[1], sb.read_shard(shard)[1]
        for name in arrays_a:
            assert arrays_a[name][0].tobytes() == arrays_b[name][0].tobytes()


def _wait_for(store: Path, markers: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while len(list((store / "shards").glob("*.json"))) < markers:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "annotate subprocess made no progress"
        time.sleep(0.02)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    cfg = config(tmp_path / "data", out=reference, sizes={"train": 50, "dev": 14}, unlabeled=10)
    build_store(cfg, teachers={"en": FakeTeacher()})
    total = len(open_store(reference).shards())

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "data"), str(killed), "0.1"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        _wait_for(killed, 1, proc)
        with pytest.raises(StoreLockedError, match=f"pid {proc.pid}"):  # a concurrent writer is refused
            build_store(replace(cfg, out=str(killed)), teachers={"en": FakeTeacher()})
        _wait_for(killed, 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["complete"] and not manifest["shards"] and len(manifest["pending"]) == total
    assert (killed / ".lock").exists()  # left behind by the killed process: stale, taken over below
    assert verify_store(killed)

    resumed = build_store(replace(cfg, out=str(killed)), teachers={"en": FakeTeacher()})
    assert resumed["complete"] and len(resumed["shards"]) == total
    assert verify_store(killed) == []
    _same_store(reference, killed)


def test_two_annotate_processes_race_for_one_store(tmp_path):
    """Both processes ask for the lock at the same instant: one writes the store, the other stops
    with a message naming the holder; the store verifies and equals an uncontended run."""
    reference = tmp_path / "reference"
    cfg = config(tmp_path / "data", out=reference, sizes={"train": 24, "dev": 6})
    build_store(cfg, teachers={"en": FakeTeacher()})
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", RACING_RUN, str(tmp_path / f"data-{i}"), str(store)],
                              cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "READY", proc.communicate()[1]
    for proc in procs:
        proc.stdin.write("GO\n")
        proc.stdin.flush()
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert sorted(proc.returncode for proc in procs) == [0, 3], outs
    loser = next(out for (out, _), proc in zip(outs, procs) if proc.returncode == 3)
    assert "store is locked by" in loser and "another annotate is writing it" in loser
    assert not (store / ".lock").exists() and verify_store(store) == []
    _same_store(reference, store)


@pytest.mark.slow
def test_crash_campaign(tmp_path):
    """bench/crash_campaign.py: 20 SIGKILLs across compute / shard write / manifest update, each
    resumed, and 20 lock races; nothing lost, duplicated or different from an uninterrupted run."""
    spec = importlib.util.spec_from_file_location("crash_campaign", ROOT / "bench" / "crash_campaign.py")
    campaign = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(campaign)
    summary = campaign.run(kills=20, races=20, seed=0, pause=0.02, work=tmp_path)["summary"]
    print(json.dumps(summary, indent=1))
    assert summary["killed_by_sigkill"] == summary["identical_after_resume"] == 20
    assert set(summary["kills_by_phase"]) == {"compute", "shard", "manifest"}
    assert summary["lost_sentences"] == summary["duplicated_sentences"] == 0
    assert summary["races_one_winner"] == summary["races_clear_message"] == summary["races_identical"] == 20


def test_kill_during_the_first_manifest_write_is_flagged_and_cleaned_on_resume(tmp_path):
    """A writer killed before it renamed its new manifest leaves the previous one (no shard, nothing
    pending, not complete) and a temporary file: verify says incomplete, the resume removes it."""
    cfg = config(tmp_path / "data", sizes={"train": 10})
    store = Path(cfg.out)
    build_store(cfg, teachers={"en": FakeTeacher()})
    manifest = json.loads((store / "manifest.json").read_text())
    (store / ".manifest.json.tmp-999999").write_text(json.dumps(manifest)[:100])
    (store / "manifest.json").write_text(json.dumps({**manifest, "shards": {}, "pending": [],
                                                     "complete": False}))
    assert any("store incomplete" in p for p in verify_store(store))
    build_store(cfg, teachers={"en": FakeTeacher()})
    assert verify_store(store) == [] and not list(store.glob(".manifest.json.tmp-*"))
    assert json.loads((store / "manifest.json").read_text()) == manifest


def test_resume_keeps_good_shards_and_redoes_damaged_ones(tmp_path):
    cfg = config(tmp_path / "data", sizes={"train": 20})
    build_store(cfg, teachers={"en": FakeTeacher()})
    store = Path(cfg.out)
    shards = open_store(store).shards()
    table = {s: store / f"table/{s}.parquet" for s in shards}
    stamps = {s: table[s].stat().st_mtime_ns for s in shards}
    victim = shards[1]
    table[victim].write_bytes(table[victim].read_bytes()[:-7])
    time.sleep(0.01)
    build_store(cfg, teachers={"en": FakeTeacher()})
    assert verify_store(store) == []
    assert [s for s in shards if table[s].stat().st_mtime_ns != stamps[s]] == [victim]
    with pytest.raises(StoreError, match="options"):
        build_store(replace(cfg, k=2), teachers={"en": FakeTeacher()})


def test_second_teacher_refused_unless_mixed(tmp_path):
    cfg = config(tmp_path / "data", sizes={"train": 10})
    build_store(cfg, teachers={"en": FakeTeacher(seed=0)})
    with pytest.raises(StoreError, match="mix_teachers"):
        build_store(cfg, teachers={"en": FakeTeacher(seed=1)})
    assert len(open_store(cfg.out).teachers) == 1 and verify_store(cfg.out) == []
    mixed = replace(cfg, mix_teachers=True)
    build_store(mixed, teachers={"en": FakeTeacher(seed=1)})
    s = open_store(cfg.out)
    assert len(s.teachers) == 2 and len(s.frame()) == 20 and verify_store(cfg.out) == []
    with pytest.raises(StoreError, match="several teachers"):
        s.get("tiny/train/0")
    for tid in s.teachers:
        assert s.get("tiny/train/0", teacher=tid)["teacher"] == tid


def test_languages_route_to_their_teacher(tmp_path):
    cfg = config(tmp_path / "data", sizes={"train": 6}, teachers={"en": "t-en", "de": "t-de"})
    cfg.corpora.append(CorpusConfig(name="deu", lang="de", format="conll", scheme="IOB2",
                                    files=write_corpus(tmp_path / "deu", {"train": 5, "test": 3}, seed=4)))
    build_store(cfg, teachers={"en": FakeTeacher(seed=0), "de": FakeTeacher(seed=5)})
    s = open_store(cfg.out)
    frame = s.frame()
    by_lang = {t.lang: t.id for t in s.teachers.values()}
    assert set(by_lang) == {"en", "de"} and by_lang["de"].startswith("t-de-")
    assert (frame["teacher"] == frame["lang"].map(by_lang)).all()
    assert frame.groupby("corpus")["lang"].unique().map(list).to_dict() == {"deu": ["de"], "tiny": ["en"]}
    cfg.corpora.append(CorpusConfig(name="fr", lang="fr", files={"train": cfg.corpora[0].files["train"]}))
    with pytest.raises(StoreError, match="no teacher"):
        build_store(cfg, teachers={"en": FakeTeacher(seed=0), "de": FakeTeacher(seed=5)})


def test_holdout_dev_is_annotated(tmp_path):
    """A corpus without a dev file but with ``holdout`` gets its dev rows (the train tail) stored."""
    cfg = config(tmp_path / "data", sizes={"train": 12, "test": 3})
    cfg.corpora[0].holdout = 4
    build_store(cfg, teachers={"en": FakeTeacher(seed=0)})
    counts = open_store(cfg.out).frame()["split"].value_counts().to_dict()
    assert counts == {"train": 8, "dev": 4, "test": 3}


@pytest.mark.parametrize("decoder", ["crf", "maxent"])
def test_cli_annotate_with_real_tagger(tmp_path, decoder):
    bert = write_tiny_bert(tmp_path / "bert")
    model = ModelConfig(EncoderConfig(name=str(bert), dropout=0.0), DecoderConfig(kind=decoder))
    build_tagger(model, LABELS, "IOB2").save(tmp_path / "teacher")
    files = write_corpus(tmp_path / "corpus", {"train": 12, "dev": 5})
    params = {"annotate": {"teachers": {"en": str(tmp_path / "teacher")}, "out": str(tmp_path / "ignored"),
                           "corpora": [{"name": "tiny", "lang": "en", "format": "conll", "files": files}],
                           "k": 3, "shard_size": 5, "dtype": "float16", "device": "cpu"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "store"
    args = ["annotate", "--params", str(tmp_path / "params.yaml"), "--out", str(out), "--no-progress"]
    full = ["--tensors", "full", "--prune", "1e-4"] if decoder == "crf" else []
    result = CliRunner().invoke(app, args + full)
    assert result.exit_code == 0, result.output
    s = open_store(out)
    assert s.frame()["split"].value_counts().to_dict() == {"train": 12, "dev": 5}
    assert next(iter(s.teachers.values())).decoder == decoder
    assert verify_store(out) == []
    runner = CliRunner()
    assert runner.invoke(app, ["store", "verify", str(out)]).exit_code == 0
    shown = runner.invoke(app, ["store", "show", str(out), "tiny/dev/2"])
    assert shown.exit_code == 0 and "p=" in shown.output
    inspected = runner.invoke(app, ["store", "inspect", str(out)])
    assert inspected.exit_code == 0 and "bytes/token" in inspected.output
    again = CliRunner().invoke(app, args + ["--k", "4"])
    assert again.exit_code == 1 and "options" in again.output
    sent = s.get("tiny/train/4")
    assert np.isfinite(sent["emissions"]).all() and sent["kbest_paths"].shape == (3, len(sent["tokens"]))
