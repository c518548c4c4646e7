"""How unlabeled rows enter training: per-row lambda (``distill.unlabeled.lam``) in combine and in a
training step, and the row filters (``min_top1``, ``drop_outside_only``) against the store's own
table read with pandas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import (DecoderConfig, DistillConfig, EncoderConfig, KDConfig, ModelConfig, OptimConfig,
                             UnlabeledConfig, from_dict)
from pipeline.distiller import row_lambda
from pipeline.errors import ConfigError
from pipeline.kd import combine
from store import StoreError, open_store
from store.feed import distill
from store.select import RowFilter, outside_id
from store.stream import StoreStream
from tests.stores import LABELS, SIZES, make_store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("unlabeled"), unlabeled=True)[0]


def test_combine_with_per_row_lambda_matches_the_weighted_sum():
    kd = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    gold = torch.tensor([3.0, 1.0, 2.0], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]]).bool()
    lam = torch.tensor([0.25, 1.0, 0.5])
    loss, parts = combine(kd, gold, lam, mask)
    assert loss.item() == pytest.approx((0.25 * 1 + 0.75 * 3 + 2.0 + 0.5 * 4 + 0.5 * 2) / 3)
    assert parts["lambda"].item() == pytest.approx(1.75 / 3) and parts["nll"].item() == pytest.approx(2.0)
    loss.backward()
    assert gold.grad.tolist() == pytest.approx([0.75 / 3, 0.0, 0.5 / 3])
    # an inf in a row of weight 0 stays out of the loss and of the gradients
    bad = torch.tensor([3.0, float("inf"), 2.0], requires_grad=True)
    loss, _ = combine(kd.detach(), bad, lam, mask, normalize="token")
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(bad.grad).all()
    assert loss.item() == pytest.approx((0.25 * 1 + 0.75 * 3 + 2.0 + 0.5 * 4 + 0.5 * 2) / 6)
    with pytest.raises(ValueError, match=r"\[B\]"):
        combine(kd, gold, torch.tensor([0.5, 0.5]), mask)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        combine(kd, gold, torch.tensor([0.5, 1.5, 0.0]), mask)
    loss, parts = combine(kd, None, torch.ones(3), mask)  # every row KD only: the NLL may be absent
    assert loss.item() == pytest.approx(7 / 3) and "nll" not in parts


def test_row_lambda_gives_rows_without_gold_their_own_weight():
    has_gold = torch.tensor([True, False, True])
    assert row_lambda(0.5, None, has_gold) == 0.5
    assert row_lambda(0.5, 1.0, torch.tensor([True, True])) == 0.5
    assert row_lambda(0.5, 1.0, has_gold).tolist() == [0.5, 1.0, 0.5]


def test_unlabeled_lam_is_refused_with_the_learned_schedule():
    with pytest.raises(ConfigError, match="unlabeled.lam"):
        from_dict(DistillConfig, {"kd": {"method": "multigrained", "schedule": "learned"},
                                  "unlabeled": {"lam": 1.0}}, "distill")
    with pytest.raises(ConfigError, match="min_top1"):
        from_dict(DistillConfig, {"unlabeled": {"min_top1": 1.5}}, "distill")
    assert from_dict(DistillConfig, {"unlabeled": {"lam": 1.0}}, "distill").unlabeled == UnlabeledConfig(lam=1.0)


def kept_by_pandas(store_path: str, rule: RowFilter) -> set[str]:
    """The oracle: sids of the unlabeled rows the rule keeps, from the store's pandas view."""
    frame = open_store(store_path).frame(["sid", "kbest_logprob", "viterbi"], split="unlabeled")
    outside = LABELS.index("O")
    keep = [np.exp(lp[0]) >= rule.min_top1 and (not rule.drop_outside_only or any(v != outside for v in vit))
            for lp, vit in zip(frame["kbest_logprob"], frame["viterbi"])]
    return set(frame["sid"][keep])


def streamed(stream: StoreStream) -> tuple[set[str], set[str], int]:
    gold, unlabeled, words = set(), set(), 0
    for batch in stream:
        words += batch.words
        for sid, labeled in zip(batch.sids, batch.has_gold.tolist()):
            (gold if labeled else unlabeled).add(sid)
    return gold, unlabeled, words


def test_row_filters_keep_exactly_the_rows_the_store_table_says(store_path):
    frame = open_store(store_path).frame(["kbest_logprob"], split="unlabeled")
    median = float(np.median([np.exp(lp[0]) for lp in frame["kbest_logprob"]]))
    for rule in (RowFilter(min_top1=median), RowFilter(drop_outside_only=True),
                 RowFilter(min_top1=median, drop_outside_only=True)):
        want = kept_by_pandas(store_path, rule)
        assert 0 < len(want) < len(frame) or rule.drop_outside_only
        stream = StoreStream(store_path, ["train", "unlabeled"], batch_tokens=64, shuffle_buffer=8, unlabeled=rule)
        gold, unlabeled, words = streamed(stream)
        assert unlabeled == want and len(gold) == SIZES["train"]
        assert stream.sentences == len(gold) + len(want) and stream.words == words
    everything = StoreStream(store_path, ["train", "unlabeled"], batch_tokens=64, shuffle_buffer=8)
    assert streamed(everything)[1] == set(open_store(store_path).frame(["sid"], split="unlabeled")["sid"])


def test_drop_outside_only_is_refused_where_there_is_no_outside_label(store_path):
    with pytest.raises(StoreError, match="drop_outside_only"):
        outside_id(open_store(store_path), [label for label in LABELS if label != "O"],
                          RowFilter(drop_outside_only=True))


def test_distill_trains_unlabeled_rows_on_kd_only_and_counts_the_kept_rows(store_path, tmp_path, monkeypatch):
    import pipeline.distiller

    seen = []

    def spy(kd, nll, lam, mask, normalize="sentence"):
        seen.append(lam)
        return combine(kd, nll, lam, mask, normalize)

    monkeypatch.setattr(pipeline.distiller, "combine", spy)
    cfg = DistillConfig(store=store_path, kd=KDConfig(method="posterior", k=3, lam=0.5),
                        model=ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none",
                                                        dropout=0.0), DecoderConfig(kind="crf")),
                        optim=OptimConfig(epochs=1, lr=1e-2, seed=1), batch_tokens=120, shuffle_buffer=32,
                        out=str(tmp_path), device="cpu",
                        unlabeled=UnlabeledConfig(lam=1.0, drop_outside_only=True))
    metrics = distill(cfg, progress=False)
    kept = kept_by_pandas(store_path, RowFilter(drop_outside_only=True))
    assert metrics["train_sentences"] == SIZES["train"] + len(kept)
    mixed = [lam for lam in seen if isinstance(lam, torch.Tensor)]
    assert mixed and all(set(lam.tolist()) <= {0.5, 1.0} for lam in mixed) and any(1.0 in lam for lam in mixed)
    assert all(lam == 0.5 for lam in seen if not isinstance(lam, torch.Tensor))
    assert metrics["config"]["unlabeled"] == {"lam": 1.0, "min_top1": 0.0, "drop_outside_only": True}
