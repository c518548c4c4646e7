"""The streaming loader: exactly-once delivery across workers and ranks, token budget, padding,
targets equal to the store's per-sentence data, refusal of mismatched and corrupted stores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from store import StoreError, open_store
from store.stream import ALL_FIELDS, StoreStream, pack
from tests.stores import LABELS, SIZES, make_store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("stream"), unlabeled=True)[0]


def test_pack_respects_budget_and_sentence_cap():
    lengths = sorted([1, 2, 2, 3, 5, 5, 8, 30])
    batches = pack(lengths, budget=10, max_sentences=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 10)


def test_two_workers_deliver_each_sentence_once_per_epoch(store_path):
    stream = StoreStream(store_path, ["train", "unlabeled"], batch_tokens=60, shuffle_buffer=20, seed=3)
    expected = sorted(open_store(store_path).frame(["sid", "split"]).query(
        "split in ['train', 'unlabeled']")["sid"])
    assert len(expected) == stream.sentences == SIZES["train"] + 20
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    orders = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        sids = [sid for batch in loader for sid in batch.sids]
        assert sorted(sids) == expected
        orders.append(sids)
    assert orders[0] != orders[1]
    stream.set_epoch(0)
    assert [sid for batch in stream for sid in batch.sids] != orders[1]


def test_ranks_partition_the_epoch(store_path):
    parts = [[sid for batch in StoreStream(store_path, ["train"], seed=5, rank=r, world_size=2)
              for sid in batch.sids] for r in (0, 1)]
    assert not set(parts[0]) & set(parts[1])
    assert len(parts[0]) + len(parts[1]) == SIZES["train"] and parts[0] and parts[1]


def test_budget_padding_and_targets_match_the_store(store_path):
    store = open_store(store_path)
    stream = StoreStream(store_path, ["train", "unlabeled"], batch_tokens=40, shuffle_buffer=16, seed=1)
    seen_unlabeled = False
    for batch in stream:
        size, longest = batch.mask.shape
        assert size == 1 or size * longest <= 40
        lengths = batch.mask.sum(1)
        assert batch.mask.equal(torch.arange(longest)[None] < lengths[:, None])
        pad = ~batch.mask
        t = batch.teacher
        assert not t.emissions[pad].any() and not t.node[pad].any() and not batch.hard[pad].any()
        assert not t.kbest_paths.masked_select(pad[:, None, :]).any()
        for b, sid in enumerate(batch.sids):
            ref = store.get(sid)
            n = int(lengths[b])
            np.testing.assert_allclose(t.emissions[b, :n].numpy(), ref["emissions"], atol=1e-6)
            np.testing.assert_allclose(t.node[b, :n].numpy(), ref["node"], atol=1e-5)
            np.testing.assert_allclose(t.edge[b, :n - 1].numpy(), ref["edge"], atol=1e-5)
            np.testing.assert_array_equal(t.kbest_paths[b, :, :n].numpy(), ref["kbest_paths"])
            np.testing.assert_allclose(t.kbest_logprob[b].numpy(), ref["kbest_logprob"])
            np.testing.assert_allclose(t.transitions[b].numpy(), ref["transitions"])
            assert batch.tokens[b] == list(ref["tokens"]) and bool(t.crf[b])
            if ref["gold"] is None:
                seen_unlabeled = True
                assert not batch.has_gold[b]
                assert batch.hard[b, :n].tolist() == list(ref["viterbi"])
            else:
                assert batch.has_gold[b]
                assert [LABELS[i] for i in batch.hard[b, :n].tolist()] == list(ref["gold"])
    assert seen_unlabeled


def test_reads_only_the_fields_asked_and_selects_k(store_path):
    stream = StoreStream(store_path, ["train"], fields=("kbest_paths", "kbest_logprob"), k=2)
    batch = next(iter(stream))
    assert batch.teacher.emissions is None and batch.teacher.node is None
    assert batch.teacher.kbest_paths.shape[1] == 2 and batch.teacher.transitions is not None
    full = next(iter(StoreStream(store_path, ["train"], fields=ALL_FIELDS)))
    assert full.teacher.kbest_paths.shape[1] == 4


def test_full_store_marginals_are_read_as_stored(tmp_path):
    path = make_store(tmp_path, tensors="full", decoder="maxent")[0]
    store = open_store(path)
    batch = next(iter(StoreStream(path, ["train"], fields=("node", "edge"))))
    n = int(batch.mask[0].sum())
    ref = store.get(batch.sids[0])
    np.testing.assert_allclose(batch.teacher.node[0, :n].numpy(), ref["node"], atol=1e-6)
    assert not batch.teacher.crf.any()


def test_mismatched_labels_are_refused(store_path):
    with pytest.raises(StoreError, match="do not match the student"):
        StoreStream(store_path, ["train"], labels=LABELS[::-1])


def test_other_schema_version_and_incomplete_stores_are_refused(tmp_path):
    path = make_store(tmp_path)[0]
    manifest_path = Path(path) / "manifest.json"
    original = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**original, "complete": False, "pending": ["x"]}))
    with pytest.raises(StoreError, match="incomplete"):
        StoreStream(path, ["train"])
    manifest_path.write_text(json.dumps({**original, "schema_version": 999}))
    with pytest.raises(StoreError, match="schema version"):
        StoreStream(path, ["train"])


def test_corrupted_shard_is_refused(tmp_path):
    path = make_store(tmp_path)[0]
    store = open_store(path)
    shard = store.shards("train")[1]
    chunk = next(f for f in sorted(store.shard_info(shard)["files"]) if "/emissions/c" in f)
    target = Path(path) / chunk
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum mismatch"):
        list(StoreStream(path, ["train"], fields=("emissions",)))


def test_ranks_step_through_batches_at_the_same_length_quantile(store_path, monkeypatch):
    """Under DDP the ranks' j-th batches (run in lock-step) have similar lengths, while each rank's
    order is still random; one process keeps its plain shuffle."""
    def steps(data: int, rank: int, world_size: int, seed: int = 3) -> list[int]:
        stream = StoreStream(store_path, ["train"], seed=seed, rank=rank, world_size=world_size,
                             batch_tokens=120, shuffle_buffer=64)
        lengths = np.random.default_rng(data).integers(1, 60, size=150)  # each rank its own data
        monkeypatch.setattr(stream, "my_pieces", lambda worker=0, workers=1: [("a", 0, 50), ("b", 0, 50), ("c", 0, 50)])
        monkeypatch.setattr(stream, "_read", lambda shard, rng, first, stop: iter(
            [{"length": int(n)} for n in lengths[{"a": 0, "b": 50, "c": 100}[shard]:][:50]]))
        monkeypatch.setattr(stream, "collate", lambda items: max(item["length"] for item in items))
        return list(stream)

    ranks = [steps(0, 0, 2), steps(1, 1, 2)]
    n = min(map(len, ranks))
    aligned = np.abs(np.subtract(ranks[0][:n], ranks[1][:n])).mean()
    alone = [steps(0, 0, 1), steps(1, 0, 1)]
    m = min(map(len, alone))
    unaligned = np.abs(np.subtract(alone[0][:m], alone[1][:m])).mean()
    assert aligned < 0.4 * unaligned, (aligned, unaligned)
    assert ranks[0] != sorted(ranks[0]) and steps(0, 0, 2, seed=4) != ranks[0]  # still shuffled, by seed


@pytest.mark.parametrize("world_size, workers", [(2, 1), (3, 1), (2, 2)])
def test_every_slot_gets_the_same_number_of_sentences(store_path, world_size, workers):
    """Rows, not whole shards, are dealt: the shards hold 16, 16 and 16 train sentences + 12 dev
    (an uneven last piece), and each (rank, worker) slot gets the same count (+-1), all disjoint."""
    got = []
    for rank in range(world_size):
        stream = StoreStream(store_path, ["train", "dev"], seed=2, rank=rank, world_size=world_size)
        stream.set_epoch(1)
        for worker in range(workers):
            pieces = stream.my_pieces(worker, workers)
            got.append([(shard, row) for shard, first, stop in pieces for row in range(first, stop)])
    sizes = [len(part) for part in got]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == SIZES["train"] + SIZES["dev"]
    assert len({item for part in got for item in part}) == sum(sizes)
    parts = [[sid for batch in StoreStream(store_path, ["train", "dev"], seed=2, rank=r, world_size=world_size)
              for sid in batch.sids] for r in range(world_size)]
    assert sorted(sid for part in parts for sid in part) == sorted(set(sid for part in parts for sid in part))
    assert max(map(len, parts)) - min(map(len, parts)) <= workers
