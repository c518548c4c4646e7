"""Crash and lock campaign for `structkd annotate`: SIGKILL at random points, resume, compare.

    nice -n 10 python bench/crash_campaign.py --kills 20 --races 20 --seed 0

Each kill trial starts an instrumented annotate (FakeTeacher, 50 + 14 labeled and 10 raw sentences,
11 shards) in a child process on a fresh store. The child announces every step it takes on stdout
and pauses ``--pause`` seconds around it: a teacher batch (phase ``compute``), each file operation
of a shard commit (``shard``: Zarr and Parquet writes under .tmp, fsyncs, the intent marker, removal
of the old shard's files, renames, the completion marker), of a manifest update (``manifest``: the
atomic JSON write, the removal of dropped shards' files in finalize) and of the teacher's commit
(``teacher``, targeted only with ``--phases``). Trial i targets the phases in turn (compute, shard,
manifest by default), at a step drawn at random (without replacement) among that phase's steps of an
uninterrupted instrumented run, waits a random part of the pause after the child announces it, and
sends SIGKILL. The store is then resumed
in-process (plain ``build_store``) and compared with an uninterrupted reference run: manifest (every
file's sha256), table rows, array bytes, the set of files, and the sentence ids (lost = expected but
absent, duplicated = extra rows).

Each race starts two annotate processes on one fresh store; both import, report ready, and call
``build_store`` when the parent releases them together: exactly one must win the lock, the other
must stop with a StoreLockedError naming the holder, and the store must verify and equal the
reference.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.store_fakes: the deterministic FakeTeacher and corpus writer

import pandas as pd

from store.build import build_store
from store import StoreLockedError, open_store, verify_store
from tests.store_fakes import FakeTeacher, config

PHASES = ("compute", "shard", "manifest")
SIZES = {"train": 50, "dev": 14}
UNLABELED = 10


def campaign_config(data: Path, out: Path):
    return config(data, out=out, sizes=SIZES, unlabeled=UNLABELED)


class _Proxy:
    """A module stand-in whose listed functions announce themselves (other names pass through)."""

    def __init__(self, module, names: tuple[str, ...], step):
        self._module = module
        for name in names:
            setattr(self, name, step(name, getattr(module, name)))

    def __getattr__(self, name):
        return getattr(self._module, name)


def instrument(pause: float) -> None:
    """Make every annotate step announce itself (``seq phase op`` on stdout) and pause around it."""
    import pyarrow.parquet as pq

    from store import build as annotate
    from store import files, writer
    state = {"seq": 0, "phase": "setup"}

    def step(op, fn):
        def wrapped(*args, **kwargs):
            state["seq"] += 1
            print(f"{state['seq']} {state['phase']} {op}", flush=True)
            time.sleep(pause / 2)
            out = fn(*args, **kwargs)
            time.sleep(pause / 2)
            return out
        return wrapped

    def phase(name, fn):
        def wrapped(*args, **kwargs):
            before, state["phase"] = state["phase"], name
            try:
                return fn(*args, **kwargs)
            finally:
                state["phase"] = before
        return wrapped

    cls = writer.StoreWriter
    cls.write_shard = phase("shard", cls.write_shard)
    cls.add_teacher = phase("teacher", cls.add_teacher)
    cls._save_manifest = phase("manifest", step("save_manifest", cls._save_manifest))
    cls.finalize = phase("manifest", cls.finalize)
    cls._remove_unlisted = step("remove_dropped", cls._remove_unlisted)
    for name in ("write_arrays", "remove_named", "fsync_tree", "fsync_dir", "atomic_json"):
        setattr(writer, name, step(name, getattr(writer, name)))
    writer.pq = _Proxy(pq, ("write_table",), step)
    writer.os = _Proxy(os, ("rename",), step)
    files.os = _Proxy(os, ("replace", "fsync"), step)
    annotate.annotate_batch = phase("compute", step("teacher_batch", annotate.annotate_batch))


def child(args: argparse.Namespace) -> None:
    """Child process: ``instrumented`` (kill trials) or ``race`` (start on the parent's signal)."""
    cfg = campaign_config(Path(args.data), Path(args.out))
    if args.mode == "instrumented":
        instrument(args.pause)
    else:
        print("READY", flush=True)
        sys.stdin.readline()
    try:
        build_store(cfg, teachers={"en": FakeTeacher(delay=args.pause)})
    except StoreLockedError as err:
        print(f"LOCKED {err}", flush=True)
        sys.exit(3)


def spawn(mode: str, data: Path, out: Path, pause: float) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--data", str(data),
           "--out", str(out), "--pause", str(pause)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def events(data: Path, work: Path, pause: float) -> list[tuple[str, str]]:
    """(phase, op) of every announced step of one uninterrupted instrumented run."""
    proc = spawn("instrumented", data, work / "dry-run", pause)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"instrumented dry run failed:\n{err}")
    return [tuple(line.split()[1:3]) for line in out.splitlines() if line[:1].isdigit()]


def compare(reference: Path, store: Path) -> list[str]:
    """Differences between two stores: manifest, files, table rows, array bytes."""
    out = []
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (reference, store))
    if ma != mb:
        out.append("manifest differs")
    listing = [sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file() and f.name != ".lock")
               for p in (reference, store)]
    if listing[0] != listing[1]:
        out.append(f"files differ: {sorted(set(listing[0]) ^ set(listing[1]))}")
    sa, sb = open_store(reference), open_store(store)
    try:
        pd.testing.assert_frame_equal(sa.frame(), sb.frame())
    except AssertionError as err:
        out.append(f"table rows differ: {err}")
    for shard in sa.shards():
        arrays_a, arrays_b = sa.read_shard(shard)[1], sb.read_shard(shard)[1]
        for name in arrays_a:
            if arrays_a[name][0].tobytes() != arrays_b[name][0].tobytes():
                out.append(f"{shard}: {name} bytes differ")
    return out


def sentence_counts(expected: list[str], store: Path) -> tuple[int, int]:
    """(lost, duplicated) sentences of ``store`` against the expected sids."""
    got = open_store(store).frame(columns=["sid"])["sid"].tolist()
    counts = Counter(got)
    lost = len(set(expected) - set(got))
    duplicated = sum(n - 1 for n in counts.values()) + len(set(got) - set(expected))
    return lost, duplicated


def kill_steps(steps: list[tuple[str, str]], kills: int, rng: random.Random,
               phases: tuple[str, ...] = PHASES) -> list[int]:
    """The step of each trial: trial i in phase ``phases[i % len(phases)]``, distinct steps within a
    phase (drawn without replacement while the phase has steps left)."""
    picks = {}
    for phase in phases:
        candidates = [n for n, (p, _) in enumerate(steps, 1) if p == phase]
        picks[phase] = rng.sample(candidates, min(len(candidates), -(-kills // len(phases))))
    return [picks[phases[i % len(phases)]][(i // len(phases)) % len(picks[phases[i % len(phases)]])]
            for i in range(kills)]


def kill_trial(i: int, target: int, rng: random.Random, data: Path, work: Path, pause: float) -> dict:
    """Kill one instrumented run a random part of the pause after it announced step ``target``."""
    store = work / f"kill-{i:02d}"
    proc = spawn("instrumented", data, store, pause)
    seen = None
    for line in proc.stdout:
        if line[:1].isdigit() and int(line.split()[0]) == target:
            seen = line.split()
            break
    if seen is None:
        proc.wait()
        raise RuntimeError(f"trial {i}: the child ended before step {target}: {proc.stderr.read()}")
    time.sleep(rng.uniform(0.0, pause))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    problems = verify_store(store)
    markers = len(list((store / "shards").glob("*.json"))) if (store / "shards").exists() else 0
    return {"trial": i, "step": target, "phase": seen[1], "op": seen[2], "rc": proc.returncode,
            "lock_left": (store / ".lock").exists(), "verify_problems": len(problems),
            "markers_before_resume": markers, "store": store}


def resume_and_check(trial: dict, data: Path, reference: Path, expected: list[str]) -> dict:
    store = trial.pop("store")
    manifest = build_store(campaign_config(data, store), teachers={"en": FakeTeacher()})
    lost, duplicated = sentence_counts(expected, store)
    diffs = compare(reference, store)
    return {**trial, "complete": manifest["complete"], "verify_after": len(verify_store(store)),
            "lost": lost, "duplicated": duplicated, "identical": not diffs, "diffs": diffs[:3]}


def race(i: int, data: Path, work: Path, reference: Path, expected: list[str], pause: float) -> dict:
    store = work / f"race-{i:02d}"
    procs = [spawn("race", data, store, pause) for _ in range(2)]
    for proc in procs:
        if proc.stdout.readline().strip() != "READY":
            raise RuntimeError(f"race {i}: a child failed to start: {proc.communicate()[1]}")
    for proc in procs:  # released together: both ask for the lock within a millisecond or so
        proc.stdin.write("GO\n")
        proc.stdin.flush()
    outs = [p.communicate() for p in procs]
    codes = sorted(p.returncode for p in procs)
    loser = next((out for (out, _), p in zip(outs, procs) if p.returncode == 3), "")
    lost, duplicated = sentence_counts(expected, store)
    return {"race": i, "codes": codes, "message": loser.strip()[:160],
            "clear_message": "store is locked by" in loser, "verify_after": len(verify_store(store)),
            "lost": lost, "duplicated": duplicated, "identical": not compare(reference, store)}


def run(kills: int, races: int, seed: int, pause: float, work: Path,
        phases: tuple[str, ...] = PHASES) -> dict:
    """The whole campaign in ``work``; returns per-trial records and a summary."""
    rng = random.Random(seed)
    data = work / "data"
    reference = work / "reference"
    build_store(campaign_config(data, reference), teachers={"en": FakeTeacher()})
    expected = open_store(reference).frame(columns=["sid"])["sid"].tolist()
    steps = events(data, work, pause)
    trials = [resume_and_check(kill_trial(i, target, rng, data, work, pause), data, reference, expected)
              for i, target in enumerate(kill_steps(steps, kills, rng, phases))]
    races_out = [race(i, data, work, reference, expected, pause) for i in range(races)]
    by_phase = Counter(t["phase"] for t in trials)
    summary = {
        "sentences": len(expected), "shards": len(open_store(reference).shards()),
        "steps_per_run": dict(Counter(p for p, _ in steps)), "kills": len(trials),
        "kills_by_phase": dict(by_phase),
        "killed_by_sigkill": sum(t["rc"] == -signal.SIGKILL for t in trials),
        "verify_flagged_before_resume": sum(t["verify_problems"] > 0 for t in trials),
        "identical_after_resume": sum(t["identical"] for t in trials),
        "lost_sentences": sum(t["lost"] for t in trials) + sum(r["lost"] for r in races_out),
        "duplicated_sentences": (sum(t["duplicated"] for t in trials)
                                 + sum(r["duplicated"] for r in races_out)),
        "races": len(races_out), "races_one_winner": sum(r["codes"] == [0, 3] for r in races_out),
        "races_clear_message": sum(r["clear_message"] for r in races_out),
        "races_identical": sum(r["identical"] and not r["verify_after"] for r in races_out),
    }
    return {"summary": summary, "trials": trials, "races": races_out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--races", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.02, help="Seconds around each announced step.")
    parser.add_argument("--json", type=Path, help="Also write the records here.")
    parser.add_argument("--phases", nargs="+", default=list(PHASES),
                        choices=list(PHASES) + ["teacher"], help="Phases the kills target, in turn.")
    parser.add_argument("--child", choices=["instrumented", "race"], dest="mode", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crash-campaign-") as work:
        result = run(args.kills, args.races, args.seed, args.pause, Path(work), tuple(args.phases))
    result["summary"]["wall_s"] = round(time.perf_counter() - started, 1)
    for t in result["trials"]:
        print(f"kill {t['trial']:2d}: step {t['step']:3d} {t['phase']:8s} {t['op']:16s} verify "
              f"{t['verify_problems']:2d} problem(s), {t['markers_before_resume']:2d} marker(s); resumed: "
              f"identical={t['identical']} lost={t['lost']} duplicated={t['duplicated']} {t['diffs']}")
    for r in result["races"]:
        print(f"race {r['race']:2d}: exit codes {r['codes']}, identical={r['identical']}: {r['message']}")
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
