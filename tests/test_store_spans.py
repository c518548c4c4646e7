"""The store's span layout (issue 17, case 4): a span NER teacher (``SpanTagger``) annotated, read
back against the teacher's own ``Spans`` and a brute-force enumeration of every span set, verified,
corrupted, framed and streamed."""
from __future__ import annotations

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

from pipeline.config import AnnotateConfig, CorpusConfig, DecoderConfig, EncoderConfig, ModelConfig
from pipeline.schemes import complete_labels, convert
from pipeline.span_model import build_span_tagger
from pipeline.structs import Spans
from stages.cli import app
from store import open_store, verify_store
from store.build import build_store
from store.stream import StoreStream
from tests import enumerated as E
from tests.helpers import tiny_sentences, write_tiny_conll
from tests.store_kit import resign

TYPES = ["LOC", "ORG", "PER"]
BIOES = ["O"] + [f"{p}-{t}" for t in TYPES for p in "BIES"]


def span_teacher(width: int | None = 3):
    """A random-weight BiLSTM span tagger over LOC / ORG / PER (eval mode, every weight random)."""
    torch.manual_seed(0)
    cfg = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none", dropout=0.0),
                      DecoderConfig(kind="spans", span_mlp=6, max_span_width=width))
    labels = complete_labels([f"B-{t}" for t in TYPES], "IOB2")
    model = build_span_tagger(cfg, labels, "IOB2", [t for t, _ in tiny_sentences(20)]).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    return model


def build(root: Path, tensors: str = "potentials", dtype: str = "float32", width: int | None = 3):
    """(store path, teacher) of a span teacher annotating a tiny IOB2 corpus (shards of 8)."""
    files = write_tiny_conll(root / "corpus", sizes={"train": 20, "dev": 6, "test": 6})
    teacher = span_teacher(width)
    folder = teacher.save(root / "teacher")
    corpus = CorpusConfig(name="tiny", lang="en", scheme="IOB2", files={s: str(p) for s, p in files.items()})
    cfg = AnnotateConfig(teachers={"en": str(folder)}, corpora=[corpus], out=str(root / "store"), k=3,
                         shard_size=8, tensors=tensors, dtype=dtype, splits=["train", "dev", "test"])
    build_store(cfg, teachers={"en": teacher})
    return root / "store", teacher


def _copy(path: Path, dest: Path) -> Path:
    shutil.copytree(path, dest)
    return dest


@pytest.mark.parametrize("tensors,dtype,width", [("potentials", "float32", 3), ("full", "float32", None),
                                                 ("full", "float16", 3)])
def test_span_store_matches_the_teacher_and_enumeration(tmp_path, tensors, dtype, width):
    path, teacher = build(tmp_path, tensors, dtype, width)
    assert verify_store(path) == []
    s = open_store(path)
    (meta,) = s.teachers.values()
    assert meta.decoder == "spans" and meta.labels == BIOES and meta.scheme == "BIOES"
    frame = s.frame()
    assert frame.equals(pd.read_parquet(path / "table"))
    enumerated = 0
    for sid in frame["sid"]:
        row = s.get(sid)
        L, tokens = row["length"], list(row["tokens"])
        assert set(row) >= {"span_scores", "node"} and "transitions" not in row
        with torch.no_grad():
            spans = teacher.structure([tokens])
        scores = spans.scores[0].float()
        stored = torch.from_numpy(row["span_scores"].astype(np.float32))
        ends = torch.arange(L)[None, :] >= torch.arange(L)[:, None]
        quantum = 1e-5 if dtype == "float32" else 2e-3  # the teacher ran on a batch of other sentences
        np.testing.assert_allclose(stored[ends].numpy(), scores[ends].numpy(), atol=quantum)
        assert (stored[~ends] == 0).all()
        if width is not None:
            assert torch.isneginf(stored[ends.triu(width)]).all()
        exact = Spans(stored[None], torch.tensor([L]), BIOES)  # the teacher's Spans on the stored scores
        assert row["log_z"] == pytest.approx(float(exact.log_partition[0]), abs=1e-5)
        mtol = 1e-5 if dtype == "float32" or tensors == "potentials" else 5e-4  # stored float16 marginals
        np.testing.assert_allclose(row["node"], exact.bioes_marginals()[0].numpy(), atol=mtol)
        if dtype == "float32":  # the teacher's own Spans
            assert row["log_z"] == pytest.approx(float(spans.log_partition[0]), abs=1e-4)
            np.testing.assert_allclose(row["node"], spans.bioes_marginals()[0].numpy(), atol=1e-5)
        assert list(row["gold_ids"]) == [BIOES.index(g) for g in row["gold"]]
        if L <= 5:  # every span set of the sentence, enumerated
            enumerated += 1
            oracle = E.span_sets(stored.double())
            assert row["log_z"] == pytest.approx(oracle.log_partition, abs=1e-4)
            probs = oracle.log_probs.exp()
            node = torch.stack([(probs[:, None] * (oracle.outputs == a).double()).sum(0)
                                for a in range(len(BIOES))], 1)
            np.testing.assert_allclose(row["node"], node.numpy(), atol=mtol)
            paths, lps = oracle.kbest(3)
            np.testing.assert_allclose(row["kbest_logprob"], np.array(lps, dtype=np.float32), atol=1e-4)
            assert row["viterbi"].tolist() == oracle.argmax().tolist()
            assert row["residual_mass"] == pytest.approx(1 - float(np.exp(lps).sum()), abs=1e-5)
    assert enumerated >= 3


def test_gold_is_the_bioes_of_the_corpus_gold_and_a_rerun_keeps_every_shard(tmp_path):
    path, teacher = build(tmp_path)
    before = {f: f.read_bytes() for f in sorted(path.rglob("*.parquet"))}
    cfg = AnnotateConfig(teachers={"en": str(tmp_path / "teacher")}, out=str(path), k=3, shard_size=8,
                         dtype="float32", splits=["train", "dev", "test"],
                         corpora=[CorpusConfig(name="tiny", lang="en", scheme="IOB2", files={
                             s: str(tmp_path / "corpus" / f"{s}.conll") for s in ("train", "dev", "test")})])
    skipped = []
    build_store(cfg, teachers={"en": teacher}, on_skip=skipped.append)
    assert sum(skipped) == 32 and before == {f: f.read_bytes() for f in sorted(path.rglob("*.parquet"))}
    assert verify_store(path) == []
    s = open_store(path)
    text = (tmp_path / "corpus" / "train.conll").read_text(encoding="utf-8")
    first = text.strip().split("\n\n")[0].splitlines()
    iob2 = [line.split()[-1] for line in first]
    row = s.get("tiny/train/0")
    assert list(row["gold"]) == convert(iob2, "IOB2", "BIOES")
    assert list(row["gold_ids"]) == [BIOES.index(g) for g in row["gold"]]


def test_verify_catches_a_corrupted_marginal_and_an_invalid_viterbi(tmp_path):
    """Checksums re-signed after each edit: only the recomputed invariants can tell."""
    path, _ = build(tmp_path / "src", tensors="full")
    assert verify_store(path) == []
    s = open_store(path)
    shard = s.shards("train")[0]
    sid = s.frame(columns=["sid", "shard", "length"]).query("shard == @shard and length >= 3")["sid"].iloc[0]
    row = int(sid.rsplit("/", 1)[1])

    bad = _copy(path, tmp_path / "node")
    group = zarr.open_group(str(bad / f"tensors/{shard}.zarr"), mode="r+")
    offsets = group["offsets"][...]
    node = group["node"][...]
    node[offsets[row] + 1, 0] += 0.25  # word 2's O marginal
    group["node"][...] = node
    resign(bad)
    problems = verify_store(bad)
    assert problems and all(f"shard {shard}, sentence {sid}" in p for p in problems)
    assert any("BIOES marginals of a word do not sum to 1" in p for p in problems)
    assert any("stored BIOES marginals differ" in p for p in problems)
    result = CliRunner().invoke(app, ["store", "verify", str(bad)])
    assert result.exit_code == 1 and sid in result.output

    bad = _copy(path, tmp_path / "viterbi")
    table_file = bad / f"table/{shard}.parquet"
    table = pq.read_table(table_file)
    viterbi = table.column("viterbi").to_pylist()
    viterbi[row] = [BIOES.index("I-LOC")] + viterbi[row][1:]  # a sentence cannot start inside a span
    column = pa.array(viterbi, type=table.schema.field("viterbi").type)
    pq.write_table(table.set_column(table.column_names.index("viterbi"), "viterbi", column), table_file)
    resign(bad)
    problems = verify_store(bad)
    assert len(problems) == 1 and f"sentence {sid}: the stored Viterbi path" in problems[0]
    assert "not a valid BIOES sequence" in problems[0]

    bad = _copy(path, tmp_path / "logz")
    table_file = bad / f"table/{shard}.parquet"
    table = pq.read_table(table_file)
    log_z = table.column("log_z").to_pylist()
    log_z[row] += 0.5
    column = pa.array(log_z, type=table.schema.field("log_z").type)
    pq.write_table(table.set_column(table.column_names.index("log_z"), "log_z", column), table_file)
    resign(bad)
    assert any("recomputed from the potentials" in p for p in verify_store(bad))
    assert CliRunner().invoke(app, ["store", "verify", str(path)]).exit_code == 0


@pytest.mark.parametrize("tensors", ["potentials", "full"])
def test_stream_gives_a_bioes_tagger_the_teachers_marginals(tmp_path, tensors):
    path, _ = build(tmp_path, tensors)
    s = open_store(path)
    stream = StoreStream(str(path), ["train"], batch_tokens=40, shuffle_buffer=8, labels=BIOES)
    assert stream.fields == ("node", "kbest_paths", "kbest_logprob", "residual_mass", "log_z")
    seen = 0
    for batch in stream:
        assert batch.teacher.kinds == frozenset({"spans"}) and batch.teacher.emissions is None
        for b, sid in enumerate(batch.sids):
            row = s.get(sid)
            L = row["length"]
            np.testing.assert_allclose(batch.teacher.node[b, :L].numpy(), row["node"], atol=1e-6)
            assert (batch.teacher.node[b, L:] == 0).all()
            assert batch.hard[b, :L].tolist() == row["gold_ids"].tolist()
            assert batch.teacher.kbest_paths[b, :, :L].tolist() == row["kbest_paths"].tolist()
            seen += 1
    assert seen == 20
    with pytest.raises(Exception, match="span-teacher store gives"):
        StoreStream(str(path), ["train"], fields=["edge"], labels=BIOES)
