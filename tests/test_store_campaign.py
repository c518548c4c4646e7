"""Hostile-use campaign against the store (slow): generated cases, the figures of store/README.md.

    python -m pytest -m slow tests/test_store_campaign.py -s

Families (seeded, ``random.Random(0)``): annotate into folders that are not stores (random trees of
the store's own folder names, files, a manifest that is not ours, links out); annotate again into
stores where the user planted files (resume, fewer / more / other sentences); stores whose files or
folders were replaced by symbolic links; manifest edits, unsigned and re-signed, then the checks
distill makes (``check_store`` + ``check_verified``); plans with a corpus name twice; k against the
store's; foreign lock files. Every case must end in a success that loses nothing or a StoreError of
one line; a user's file deleted or changed, a traceback, or a silent drop fails the campaign.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from store import StoreError, StoreWriter, open_store, verify_store
from store.build import build_store
from store.checks import check_k, check_store, check_verified
from store.schema import DIGEST, manifest_digest
from tests.store_fakes import FakeTeacher, config, write_corpus
from tests.store_kit import snapshot, spec

SIZES = {"train": 20, "dev": 6}
NAMES = ["table", "tensors", "shards", "teachers", ".tmp", "README.md", ".hidden", "data.csv", "notes",
         "manifest.json", ".lock", "x.parquet", "c"]
MANIFESTS = [b"{}", b'{"format": "other"}', b"garbage", b"[]", b"",
             json.dumps({"format": "structkd-store", "schema_version": 2}).encode()]


class Tally:
    """Outcome counts per family, plus the failures (deleted user files, tracebacks, silent drops)."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.failures: list[str] = []

    def run(self, family: str, case: str, action, *, expect_refusal: bool | None) -> str:
        try:
            action()
            outcome = "accepted"
        except StoreError as err:
            outcome = "refused" if "\n" not in str(err) else "traceback"
        except Exception as err:  # noqa: BLE001 - a traceback is what the campaign counts
            outcome = "traceback"
            self.failures.append(f"{family} {case}: {type(err).__name__}: {err}")
        if expect_refusal is not None and (outcome == "refused") != expect_refusal and outcome != "traceback":
            wanted = "a refusal" if expect_refusal else "success"
            self.failures.append(f"{family} {case}: {outcome}, expected {wanted}")
            outcome = "silent" if expect_refusal else "wrongly refused"
        self.counts[(family, outcome)] += 1
        return outcome

    def intact(self, family: str, case: str, before: dict, after: dict) -> None:
        lost = [rel for rel, data in before.items() if after.get(rel) != data]
        self.counts[(family, "user files deleted or changed")] += len(lost)
        if lost:
            self.failures.append(f"{family} {case}: user files deleted or changed: {lost}")


def _tree(rng: random.Random, root: Path, victim: Path) -> None:
    """1-5 random entries: files, folders of files, a manifest that is not ours, links out."""
    for name in rng.sample(NAMES, rng.randint(1, 5)):
        kind = rng.choice(["file", "dir", "link"])
        if name == "manifest.json":
            (root / name).write_bytes(rng.choice(MANIFESTS))
        elif kind == "dir":
            for i in range(rng.randint(1, 3)):
                path = root / name / rng.choice(["", "c/", "a.zarr/"]) / f"f{i}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(rng.randbytes(rng.randint(0, 20)))
        elif kind == "link":
            os.symlink(victim, root / name)
        else:
            (root / name).write_bytes(rng.randbytes(rng.randint(1, 20)))


def _plant(rng: random.Random, store: Path, shards: list[str], tid: str) -> None:
    shard = rng.choice(shards)
    places = ["notes.txt", "table/mine.csv", f"table/{shard}.parquet.bak", "tensors/mine.zarr/zarr.json",
              f"shards/{shard[:-5]}99999.json", "shards/readme.json", "teachers/notes.md", ".tmp/draft",
              f"tensors/{shard}.zarr/mine.txt", f"teachers/{tid}.zarr/mine.txt", ".tmp/sub/x",
              ".tmp/mine.zarr/x", "shards/.notes.json.tmp-1", ".lock.stale-x"]
    for rel in rng.sample(places, rng.randint(1, 4)):
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_bytes(rng.randbytes(rng.randint(1, 20)))


MUTATIONS = {  # manifest edits a hostile or careless user makes
    "labels permuted": lambda m, r: r.shuffle(next(iter(m["teachers"].values()))["labels"]),
    "label renamed": lambda m, r: next(iter(m["teachers"].values()))["labels"].__setitem__(1, "B-PERSON"),
    "teacher k": lambda m, r: next(iter(m["teachers"].values())).update(k=10),
    "teacher tau": lambda m, r: next(iter(m["teachers"].values())).update(tau=2.0),
    "rows": lambda m, r: r.choice(list(m["shards"].values())).update(rows=3),
    "tokens": lambda m, r: r.choice(list(m["shards"].values())).update(tokens=5),
    "shard dropped": lambda m, r: m["shards"].pop(r.choice(list(m["shards"]))),
    "file sha": lambda m, r: (lambda f: f.update({next(iter(f)): "0" * 64}))(
        r.choice(list(m["shards"].values()))["files"]),
    "fingerprint": lambda m, r: next(iter(m["teachers"].values())).update(fingerprint="0" * 64),
    "pending": lambda m, r: m.update(pending=[next(iter(m["shards"]))]),
    "first_index": lambda m, r: (lambda e: e.update(first_index=e["first_index"] + 8))(
        r.choice(list(m["shards"].values()))),
}


@pytest.mark.slow
def test_store_campaign(tmp_path):
    rng, tally = random.Random(0), Tally()
    clean = tmp_path / "clean"
    build_store(config(tmp_path / "data", out=clean, sizes=SIZES), teachers={"en": FakeTeacher()})
    s = open_store(clean)
    shards, tid = s.shards(), next(iter(s.teachers))
    expected = sorted(s.frame()["sid"])

    def annotate(out: Path, sizes=SIZES, seed: int = 0):
        cfg = config(tmp_path / f"data-{seed}-{sizes['train']}", out=out, sizes=sizes)
        cfg.corpora[0].files = write_corpus(tmp_path / f"corpus-{seed}-{sizes['train']}", sizes, seed=seed)
        return build_store(cfg, teachers={"en": FakeTeacher()})

    victim = tmp_path / "victim"
    (victim / "c").mkdir(parents=True)
    (victim / "precious.txt").write_bytes(b"keep")
    (victim / "c" / "0").write_bytes(b"chunk")
    keep = snapshot(victim)
    for i in range(60):  # A. folders that are not stores
        out = tmp_path / f"foreign-{i}"
        out.mkdir()
        _tree(rng, out, victim)
        before = snapshot(out)
        tally.run("A not a store", str(i), lambda: annotate(out), expect_refusal=True)
        tally.intact("A not a store", str(i), before, snapshot(out))
        tally.intact("A not a store", f"{i} (link target)", keep, snapshot(victim))
    for i in range(60):  # B. user files planted in a store, then resume / fewer / more / other sentences
        store = tmp_path / f"planted-{i}"
        shutil.copytree(clean, store)
        _plant(rng, store, shards, tid)
        before = snapshot(store)
        planted = {rel: data for rel, data in before.items() if rel not in snapshot(clean)}
        sizes, seed = rng.choice([(SIZES, 0), ({"train": 9, "dev": 6}, 0), ({"train": 30, "dev": 6}, 0),
                                  (SIZES, 5)])
        planned = {f"{tid}.tiny.{split}.{c:05d}" for split, n in sizes.items() for c in range(-(-n // 8))}
        inside = [rel for rel in planted if rel.startswith(f"teachers/{tid}.zarr/")
                  or any(rel.startswith(f"tensors/{x}.zarr/") for x in planned)]
        if tally.run("B files in a store", str(i), lambda: annotate(store, sizes, seed),
                     expect_refusal=bool(inside)) == "accepted":
            got = sorted(open_store(store).frame()["sid"])
            if len(got) != sum(sizes.values()) or len(set(got)) != len(got):
                tally.failures.append(f"B {i}: {len(got)} sentences, expected {sum(sizes.values())}")
                tally.counts[("B files in a store", "silent")] += 1
            odd = [p for p in verify_store(store) if "stray file" not in p]
            if odd:
                tally.failures.append(f"B {i}: verify: {odd[:2]}")
        tally.intact("B files in a store", str(i), planted, snapshot(store))
    links = [f"table/{shards[0]}.parquet", f"tensors/{shards[1]}.zarr", f"shards/{shards[2]}.json",
             f"teachers/{tid}.zarr", f".tmp/{shards[3]}", f"tensors/{shards[0]}.zarr/offsets/c/0"]
    for i in range(24):  # C. store entries replaced by symbolic links to the user's files
        store = tmp_path / f"linked-{i}"
        shutil.copytree(clean, store)
        rel = links[i % len(links)]
        target = victim / ("c" if (store / rel).is_dir() or rel.startswith(".tmp") else "precious.txt")
        if os.path.lexists(store / rel):
            shutil.rmtree(store / rel) if (store / rel).is_dir() else (store / rel).unlink()
        os.symlink(target, store / rel)
        tally.run("C links in a store", rel, lambda: annotate(store),
                  expect_refusal=rel in (f"tensors/{shards[1]}.zarr", f"teachers/{tid}.zarr"))
        tally.intact("C links in a store", rel, keep, snapshot(victim))
    for signed in (False, True):  # D. manifest edits, then the checks distill makes
        family = f"D manifest edit, {'re-signed' if signed else 'unsigned'}"
        for i, (name, edit) in enumerate(list(MUTATIONS.items()) * 3):
            store = tmp_path / f"edit-{signed}-{i}"
            shutil.copytree(clean, store)
            manifest = json.loads((store / "manifest.json").read_text())
            edit(manifest, rng)
            if signed:
                manifest[DIGEST] = manifest_digest(manifest)
            (store / "manifest.json").write_text(json.dumps(manifest))

            def distill_checks(store=store):
                opened = open_store(store)
                check_store(opened)
                check_verified(opened)
                check_k(opened, 4)

            with warnings.catch_warnings():  # an unsigned edit warns at open_store
                warnings.simplefilter("ignore")
                outcome = tally.run(family, name, distill_checks, expect_refusal=None if signed else True)
            if outcome == "accepted":
                tally.counts[(family, f"accepted: {name}")] += 1
                tally.counts[(family, "verify flags the accepted ones")] += bool(verify_store(store))
    for i in range(20):  # E. a corpus name twice in one plan
        store = tmp_path / f"dup-{i}"
        shutil.copytree(clean, store)
        other = rng.choice([tid, "other-1"])
        plan = [spec(tid, "news", "train", c, "a") for c in range(rng.randint(1, 3))]
        plan.insert(rng.randrange(len(plan) + 1), spec(other, "news", "train", rng.randrange(len(plan)),
                                                        rng.choice("ab")))

        def begin(store=store, plan=plan):
            with StoreWriter(store, open_store(store).options) as writer:
                writer.begin(plan)

        tally.run("E corpus name twice", str(i), begin, expect_refusal=True)
        if sorted(open_store(store).frame()["sid"]) != expected:
            tally.counts[("E corpus name twice", "silent")] += 1
    for k in range(13):  # F. k against the store's k = 4
        tally.run("F k", str(k), lambda: check_k(open_store(clean), k), expect_refusal=not 1 <= k <= 4)
    for i in range(10):  # G. a .lock that is not ours
        store = tmp_path / f"lock-{i}"
        shutil.copytree(clean, store)
        (store / ".lock").write_bytes(rng.choice([b"mine", b"[]", b"x" * 5000, b"pid=3"]) + rng.randbytes(3))
        before = snapshot(store)
        tally.run("G foreign .lock", str(i), lambda: annotate(store), expect_refusal=True)
        tally.intact("G foreign .lock", str(i), before, snapshot(store))
    table = {}
    for (family, outcome), n in sorted(tally.counts.items()):
        table.setdefault(family, {})[outcome] = n
    print(json.dumps(table, indent=1))
    assert not tally.failures, tally.failures
