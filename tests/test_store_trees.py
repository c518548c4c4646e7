"""The store's tree layout (issue 17): dependency teachers (HeadSelection, DependencyCRF, projective)
annotated, read back against enumeration, verified, corrupted, resumed, framed, streamed, and an
earlier chain store still loading."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from typer.testing import CliRunner

import store.build as build_module
from pipeline.structs import mst
from stages.cli import app
from store import StoreError, open_store, verify_store
from store.build import build_store
from store.checks import check_verified
from store.schema import OLD_COLUMNS, TREE_COLUMNS
from store.stream import StoreStream
from store.trees import to_rows
from tests.store_fakes import RELS, UPOS, FakeParser, FakeTeacher, config, gold_tree, with_trees
from tests.store_kit import resign, torchrun

TREE_TARGETS = ("arc", "rel", "kbest_paths", "kbest_logprob", "residual_mass", "log_z")


@pytest.fixture(autouse=True)
def gold_trees(monkeypatch):
    """Labeled sentences get a gold tree and UPOS (until the corpus readers give heads)."""
    monkeypatch.setattr(build_module, "read_corpus", with_trees(build_module.read_corpus))


def build(tmp: Path, decoder: str = "tree", *, name: str = "store", out: Path | None = None,
          tensors: str = "potentials", dtype: str = "float32", k: int = 6, max_len: int = 4, teacher=None,
          **kw) -> Path:
    """A tree store of the corpus ``name`` (labeled train / dev + unlabeled) at ``out`` (tmp / name)."""
    out = out or tmp / name
    cfg = config(tmp / f"{name}-data", out=out, unlabeled=5, dtype=dtype, k=k, max_len=max_len, **kw)
    cfg.tensors = tensors
    build_store(cfg, teachers={"en": teacher or FakeParser(decoder)})
    return out


def _enumerate(scores: np.ndarray, decoder: str) -> tuple[np.ndarray, np.ndarray]:
    """Every head vector [P, n] of a sentence that the decoder allows, and its score from the stored
    [n, n+1] d-major arc potentials (row d - 1 = word d's heads)."""
    n = scores.shape[0]
    heads = np.array(list(itertools.product(range(n + 1), repeat=n)), dtype=np.int64)
    if decoder != "heads":
        full = torch.from_numpy(np.concatenate([np.zeros((len(heads), 1), dtype=np.int64), heads], 1))
        ok = mst.is_tree(full, torch.full((len(heads),), n), True, decoder == "tree_projective").numpy()
        heads = heads[ok]
    heads = heads[(heads != np.arange(1, n + 1)).all(1)]  # no self loops
    return heads, scores.astype(np.float64)[np.arange(n), heads].sum(1)


def _teacher_view(teacher: FakeParser, tokens: list[str]):
    """The teacher's own LabeledArcs of one sentence, and its arc / relation marginals [n, n+1] / [n, R]."""
    structure = teacher.structure([list(tokens)])
    marg = structure.marginals("arc", "rel")
    n = len(tokens)
    return structure, to_rows(marg["arc"][0].numpy(), n), marg["rel"][0, 1:n + 1].numpy()


@pytest.mark.parametrize("decoder,tensors,dtype", [
    ("heads", "potentials", "float32"), ("tree", "full", "float16"),
    ("tree_projective", "potentials", "float16"), ("heads", "full", "float32")])
def test_tree_store_matches_enumeration(tmp_path, decoder, tensors, dtype):
    """Every stored quantity against enumeration of the sentence's trees (or head vectors) from its
    stored potentials, padded / ragged lengths 1-4 in shared batches, k = 6 above the number of
    trees of short sentences (2 words: 2 trees, 4 head vectors)."""
    teacher = FakeParser(decoder)
    path = build(tmp_path, decoder, tensors=tensors, dtype=dtype)
    assert verify_store(path) == []
    s = open_store(path)
    meta = next(iter(s.teachers.values()))
    assert meta.decoder == decoder and meta.labels == RELS and meta.arrays == {}
    tol = 2e-3 if dtype == "float16" else 1e-5
    lengths = set()
    for sid in s.frame(columns=["sid"])["sid"]:
        got = s.get(sid)
        n = got["length"]
        lengths.add(n)
        assert got["arc_scores"].shape == got["arc"].shape == (n, n + 1)
        assert got["rel"].shape == (n, len(RELS))
        heads, score = _enumerate(got["arc_scores"], decoder)
        log_z = np.logaddexp.reduce(score)
        assert got["log_z"] == pytest.approx(log_z, abs=1e-4)
        p = np.exp(score - log_z)
        arc = np.zeros((n, n + 1))
        for d in range(n):
            np.add.at(arc[d], heads[:, d], p)
        np.testing.assert_allclose(got["arc"], arc, atol=tol)
        order = np.argsort(-score, kind="stable")
        best = np.full(6, -np.inf)
        best[:min(6, len(order))] = (score - log_z)[order[:6]]
        np.testing.assert_allclose(got["kbest_logprob"], best, atol=1e-4)
        finite = np.isfinite(got["kbest_logprob"])
        assert finite.sum() == min(6, len(heads)) and not got["kbest_paths"][~finite].any()
        for path, lp in zip(got["kbest_paths"][finite], got["kbest_logprob"][finite]):
            assert (score - log_z)[(heads == path).all(1)][0] == pytest.approx(lp, abs=1e-4)
        assert got["residual_mass"] == pytest.approx(max(0.0, 1 - np.exp(best[np.isfinite(best)]).sum()),
                                                     abs=1e-5)
        # the Viterbi heads: the best tree (projective for a projective teacher, any for HeadSelection)
        trees, tree_score = _enumerate(got["arc_scores"], "tree" if decoder == "heads" else decoder)
        assert got["viterbi"].tolist() in trees.tolist()
        assert tree_score[(trees == got["viterbi"]).all(1)][0] == pytest.approx(tree_score.max(), abs=1e-4)
        structure, _, rel = _teacher_view(teacher, got["tokens"])  # relations: not from the potentials
        full = torch.from_numpy(np.concatenate([[0], got["viterbi"]]))[None]
        np.testing.assert_array_equal(got["relations"], structure.labels.best(full)[0, 1:].numpy())
        np.testing.assert_allclose(got["rel"], rel, atol=tol)
        if got["split"] == "unlabeled":
            assert got["gold"] is None and got["gold_heads"] is None and got["upos"] is None
        else:
            gold_heads, gold_rels = gold_tree(sid, n)
            assert got["gold_heads"].tolist() == gold_heads and got["gold"].tolist() == gold_rels
            assert got["gold_ids"].tolist() == [RELS.index(r) for r in gold_rels]
            assert got["upos"].tolist() == [UPOS.get(t, "X") for t in got["tokens"]]
    assert {1, 2, 4} <= lengths


def test_frame_shows_heads_and_relation_names(tmp_path):
    path = build(tmp_path, "heads")
    s = open_store(path)
    frame = s.frame()
    assert frame["heads"].map(list).equals(frame["viterbi"].map(list))
    direct = pd.read_parquet(path / "table").set_index("sid")
    for sid, names in zip(frame["sid"], frame["relations"]):
        assert names == [RELS[i] for i in direct.loc[sid, "relations"]]
    assert frame.loc[frame["split"] == "unlabeled", "gold_heads"].isna().all()
    labeled = frame[frame["split"] != "unlabeled"]
    assert labeled["gold_heads"].map(len).equals(labeled["length"].astype(int))


def test_chain_frame_and_table_have_no_tree_values(tmp_path):
    cfg = config(tmp_path / "data", out=tmp_path / "chain", unlabeled=3)
    build_store(cfg, teachers={"en": FakeTeacher()})
    frame = open_store(tmp_path / "chain").frame()
    assert "heads" not in frame and frame[list(TREE_COLUMNS)].isna().all().all()
    assert list(pd.read_parquet(tmp_path / "chain" / "table").columns) == list(frame.columns)


def _copy(path: Path, to: Path) -> Path:
    shutil.copytree(path, to)
    return to


def test_verify_catches_a_corrupted_arc_marginal_and_a_non_tree_viterbi(tmp_path):
    """Checksums re-signed after each edit: only the recomputed invariants can tell."""
    path = build(tmp_path, "tree", tensors="full", max_len=5)
    assert verify_store(path) == []
    s = open_store(path)
    shard = s.shards("train")[0]
    sid = s.frame(columns=["sid", "shard", "length"]).query("shard == @shard and length >= 3")["sid"].iloc[0]
    row = int(sid.rsplit("/", 1)[1])

    bad = _copy(path, tmp_path / "arc")
    group = zarr.open_group(str(bad / f"tensors/{shard}.zarr"), mode="r+")
    offsets = group["arc_offsets"][...]
    arc = group["arc"][...]
    arc[offsets[row] + 1] += 0.25  # word 1's marginal of head 1 (a self loop: impossible)
    group["arc"][...] = arc
    resign(bad)
    problems = verify_store(bad)
    assert problems and all(f"shard {shard}, sentence {sid}" in p for p in problems)
    assert any("head marginals of a word do not sum to 1" in p for p in problems)
    assert any("stored arc marginals differ" in p for p in problems)
    result = CliRunner().invoke(app, ["store", "verify", str(bad)])
    assert result.exit_code == 1 and sid in result.output

    bad = _copy(path, tmp_path / "viterbi")
    table_file = bad / f"table/{shard}.parquet"
    table = pq.read_table(table_file)
    viterbi = table.column("viterbi").to_pylist()
    viterbi[row] = [2, 1] + viterbi[row][2:]  # words 1 and 2 head each other: a cycle
    column = pa.array(viterbi, type=table.schema.field("viterbi").type)
    pq.write_table(table.set_column(table.column_names.index("viterbi"), "viterbi", column), table_file)
    resign(bad)
    problems = verify_store(bad)
    assert len(problems) == 1 and f"sentence {sid}: the stored Viterbi heads" in problems[0]
    assert "not a dependency tree" in problems[0]
    assert CliRunner().invoke(app, ["store", "verify", str(path)]).exit_code == 0


def test_annotate_refuses_to_write_a_non_tree_viterbi(tmp_path, monkeypatch):
    """The write-time check: a teacher path producing a cyclic top-1 tree writes nothing."""
    import pipeline.teaching as teaching

    def cyclic(arcs):
        heads = torch.zeros(arcs.scores.shape[:2], dtype=torch.long)
        heads[:, 1], heads[:, 2:] = 2, 1
        return heads.masked_fill(~torch.cat([torch.zeros_like(arcs.mask[:, :1]), arcs.mask], 1), 0)

    monkeypatch.setattr(teaching, "tree_argmax", cyclic)
    with pytest.raises(StoreError, match="not a dependency tree; annotate verifies what it writes"):
        build(tmp_path, "heads", max_len=5)
    assert not list((tmp_path / "store" / "table").glob("*.parquet"))


def test_resume_after_an_interrupted_shard_equals_an_uninterrupted_run(tmp_path):
    reference = build(tmp_path, "tree", name="reference", shard_size=4)
    with pytest.raises(RuntimeError, match="crashed"):
        build(tmp_path, "tree", name="reference", shard_size=4, out=tmp_path / "resumed",
              teacher=FakeParser("tree", fail_after=5))
    partial = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert not partial["complete"] and list((tmp_path / "resumed" / "shards").glob("*.json"))
    build(tmp_path, "tree", name="reference", shard_size=4, out=tmp_path / "resumed")
    assert verify_store(tmp_path / "resumed") == []
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (reference, tmp_path / "resumed"))
    assert a["shards"] == b["shards"]  # same rows, every file byte for byte
    pd.testing.assert_frame_equal(open_store(reference).frame(), open_store(tmp_path / "resumed").frame())


TREE_ANNOTATE = """
import sys
from pathlib import Path
import store.build as build
from tests.store_fakes import FakeParser, config, with_trees
build.read_corpus = with_trees(build.read_corpus)
cfg = config(Path(sys.argv[1]), out=Path(sys.argv[2]), sizes={"train": 21, "dev": 9}, unlabeled=7, k=3)
build.build_store(cfg, teachers={"en": FakeParser("heads")})
"""


def test_two_rank_annotate_writes_the_single_process_tree_store(tmp_path):
    data = tmp_path / "data"
    cfg = config(data, out=tmp_path / "single", sizes={"train": 21, "dev": 9}, unlabeled=7, k=3)
    build_store(cfg, teachers={"en": FakeParser("heads")})
    run = torchrun(TREE_ANNOTATE, str(data), str(tmp_path / "double"))
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (json.loads((tmp_path / p / "manifest.json").read_text())["shards"] for p in ("single", "double"))
    assert a == b and verify_store(tmp_path / "double") == []


def test_an_earlier_chain_store_still_loads_verifies_streams_and_resumes(tmp_path):
    """A store of the version before trees: its tables lack gold_heads / relations / upos."""
    cfg = config(tmp_path / "data", out=tmp_path / "old", unlabeled=3)
    build_store(cfg, teachers={"en": FakeTeacher()})
    old = tmp_path / "old"
    new_frame = open_store(old).frame()
    for table_file in (old / "table").glob("*.parquet"):
        table = pq.read_table(table_file).select(list(OLD_COLUMNS))
        pq.write_table(table.replace_schema_metadata({b"structkd_schema_version": b"1"}), table_file,
                       row_group_size=1024, compression="zstd")
    manifest = json.loads((old / "manifest.json").read_text())
    for entry in manifest["shards"].values():
        entry.pop("verified")  # an earlier store: check_verified recomputes its shards
    (old / "manifest.json").write_text(json.dumps(manifest))
    for marker_file in (old / "shards").glob("*.json"):
        marker = json.loads(marker_file.read_text())
        marker.pop("verified")
        marker_file.write_text(json.dumps(marker))
    resign(old)
    s = open_store(old)
    assert pq.read_schema(next((old / "table").glob("*.parquet"))).names == list(OLD_COLUMNS)
    pd.testing.assert_frame_equal(s.frame(), new_frame)
    assert verify_store(old) == []
    check_verified(s)
    batches = list(StoreStream(s, ["train", "unlabeled"], batch_tokens=40))
    assert sum(len(b.sids) for b in batches) == 26
    stamps = {p: p.stat().st_mtime_ns for p in (old / "table").glob("*.parquet")}
    build_store(cfg, teachers={"en": FakeTeacher()})  # resume: nothing to redo, old tables kept
    assert {p: p.stat().st_mtime_ns for p in (old / "table").glob("*.parquet")} == stamps


@pytest.mark.parametrize("tensors", ["potentials", "full"])
def test_stream_targets_are_the_teachers_marginals(tmp_path, tensors):
    teacher = FakeParser("tree")
    path = build(tmp_path, "tree", tensors=tensors, max_len=5)
    s = open_store(path)
    stream = StoreStream(s, ["train", "unlabeled"], fields=TREE_TARGETS, batch_tokens=30, k=3)
    seen = 0
    for batch in stream:
        t = batch.teacher
        assert t.kinds == frozenset({"labeled_tree"}) and t.kbest_paths.shape[1] == 3
        assert batch.hard.shape == (len(batch.sids), 2, batch.mask.shape[1] + 1)
        for b, sid in enumerate(batch.sids):
            got = s.get(sid)
            n = got["length"]
            _, arc, rel = _teacher_view(teacher, got["tokens"])
            np.testing.assert_allclose(to_rows(t.arc[b].numpy(), n), arc, atol=1e-5)
            np.testing.assert_allclose(t.rel[b, 1:n + 1].numpy(), rel, atol=1e-5)
            assert not t.arc[b, :, 0].any() and not t.rel[b, 0].any() and not t.arc[b, n + 1:].any()
            np.testing.assert_array_equal(t.kbest_paths[b, :, 1:n + 1].numpy(), got["kbest_paths"][:3])
            heads, rels = (got["gold_heads"], got["gold_ids"]) if got["gold"] is not None \
                else (got["viterbi"], got["relations"])
            assert batch.hard[b, 0, 1:n + 1].tolist() == heads.tolist()
            assert batch.hard[b, 1, 1:n + 1].tolist() == rels.tolist() and batch.has_gold[b] == (
                got["gold"] is not None)
            seen += 1
    assert seen == stream.sentences
    hot = StoreStream(s, ["train"], fields=("arc",), tau=2.0)  # arcs recomputed at the stream's tau
    batch = next(iter(hot))
    n = int(batch.mask[0].sum())
    structure = teacher.structure([batch.tokens[0]]).arcs.tempered(2.0)
    np.testing.assert_allclose(batch.teacher.arc[0, :n + 1, :n + 1], structure.marginals()["arc"][0],
                               atol=1e-5)
    with pytest.raises(StoreError, match="relation marginals are stored at tau = 1.0"):
        StoreStream(s, ["train"], fields=("rel",), tau=2.0)
    with pytest.raises(StoreError, match="needs head_encoding"):
        StoreStream(s, ["train"], fields=("node",))


def test_bad_tree_teachers_and_sentences_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(StoreError, match="5 relation scores per arc, but 3 relation names"):
        build(tmp_path, name="a", teacher=_Relabeled())
    multi = FakeParser("tree")
    labeled = multi.structure
    multi.structure = lambda tokens: labeled(tokens).replace(
        arcs=labeled(tokens).arcs.replace(single_root=False))
    with pytest.raises(StoreError, match="single_root=False"):
        build(tmp_path, name="b", teacher=multi)

    def half(read_corpus):
        def read(corpus, split):
            return [type(s)(**{**s.__dict__, "rels": None}) for s in read_corpus(corpus, split)]
        return read

    monkeypatch.setattr(build_module, "read_corpus", half(build_module.read_corpus))
    with pytest.raises(StoreError, match=r"sentence tiny/train/0: has heads but no relations"):
        build(tmp_path, name="c")


class _Relabeled(FakeParser):
    """A parser whose relation names are fewer than its relation scores."""

    def __init__(self):
        super().__init__("tree")
        self.labels = RELS[:3]


def _offset_targets(arc, rel, upos, labels, rel_names, kind):
    """A stand-in for pipeline.head_encoding.label_targets (kind rel_offset: label ``offset@rel``):
    P(offset, rel | d) = P(head = d + offset | d) P(rel | d)."""
    index = {label: i for i, label in enumerate(labels)}
    n = arc.shape[0]
    out = np.zeros((n, len(labels)), dtype=np.float32)
    for d in range(1, n + 1):
        for h in range(n + 1):
            for r, name in enumerate(rel_names):
                label = f"{'root' if h == 0 else h - d}@{name}"
                if label in index:
                    out[d - 1, index[label]] += arc[d - 1, h] * rel[d - 1, r]
    return out


def test_head_encoding_gives_a_tagger_the_mapped_teacher_marginals(tmp_path, monkeypatch):
    """Parsing as sequence labeling (case 1b): node targets over the student's labels from each
    sentence's arc and relation marginals, hard = the encoded gold (or teacher top-1) tree."""
    import sys
    import types

    module = types.ModuleType("pipeline.head_encoding")
    module.label_targets = _offset_targets
    monkeypatch.setitem(sys.modules, "pipeline.head_encoding", module)
    teacher = FakeParser("tree")
    path = build(tmp_path, "tree", max_len=4)
    labels = [f"{o}@{r}" for o in ["root", -3, -2, -1, 1, 2, 3] for r in RELS]
    stream = StoreStream(str(path), ["train", "unlabeled"], fields=("node",), labels=labels,
                         head_encoding="rel_offset", batch_tokens=30)
    s = open_store(path)
    for batch in stream:
        assert batch.teacher.kinds == frozenset({"factorized"}) and batch.hard.shape == batch.mask.shape
        for b, sid in enumerate(batch.sids):
            got = s.get(sid)
            n = got["length"]
            _, arc, rel = _teacher_view(teacher, got["tokens"])
            np.testing.assert_allclose(batch.teacher.node[b, :n].numpy(),
                                       _offset_targets(arc, rel, None, labels, RELS, "rel_offset"), atol=1e-5)
            heads, rels = (got["gold_heads"], got["gold"]) if got["gold"] is not None \
                else (got["viterbi"], [RELS[i] for i in got["relations"]])
            expected = [labels.index(f"{'root' if h == 0 else h - d}@{r}")
                        for d, (h, r) in enumerate(zip(heads, rels), 1)]
            assert batch.hard[b, :n].tolist() == expected
    with pytest.raises(ValueError, match="needs the student's labels"):
        StoreStream(str(path), ["train"], fields=("node",), head_encoding="rel_offset")
    with pytest.raises(StoreError, match=r"fields \['node'\], not \['edge'\]"):
        StoreStream(str(path), ["train"], fields=("node", "edge"), labels=labels, head_encoding="rel_offset")
    chain = config(tmp_path / "chain-data", out=tmp_path / "chain")
    build_store(chain, teachers={"en": FakeTeacher()})
    with pytest.raises(StoreError, match="sequence labelers"):
        StoreStream(str(tmp_path / "chain"), ["train"], fields=("node",), labels=labels,
                    head_encoding="rel_offset")
