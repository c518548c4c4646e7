"""Training budgets in optimizer steps (``optim.min_steps``) and the warning of a run that ended
while its dev score was still rising (issue 19: students that converge by default on small corpora)."""
from __future__ import annotations

import csv
import math

import torch

from pipeline.config import DecoderConfig, DistillConfig, EncoderConfig, KDConfig, ModelConfig, OptimConfig
from pipeline.loop import Loop, Step, epochs_for, still_rising
from store.feed import distill
from tests.stores import make_store


def config(store: str, out, **optim) -> DistillConfig:
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=16, hidden=16, char="none", dropout=0.0),
                        DecoderConfig(kind="crf"))
    return DistillConfig(store=store, name="none", kd=KDConfig(method="none", lam=0.0), model=model,
                         optim=OptimConfig(lr=2e-2, warmup=0.0, seed=1, **optim),
                         batch_tokens=120, shuffle_buffer=32, out=str(out), device="cpu")


def epochs_csv(out) -> list[dict]:
    with open(out / "epochs.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_epochs_for_raises_epochs_to_meet_the_step_budget():
    assert epochs_for(OptimConfig(epochs=3), 10) == 3  # no budget
    assert epochs_for(OptimConfig(epochs=3, min_steps=100), 10) == 10
    assert epochs_for(OptimConfig(epochs=3, min_steps=101), 10) == 11
    assert epochs_for(OptimConfig(epochs=30, min_steps=100), 10) == 30  # never fewer epochs
    assert epochs_for(OptimConfig(epochs=1, min_steps=5), 2.5) == 2


def test_still_rising_compares_the_last_two_evaluated_epochs():
    rec = lambda score: {"dev": {}, "dev_score": score}  # noqa: E731
    assert still_rising([rec(0.1), rec(0.2)])
    assert not still_rising([rec(0.3), rec(0.2)])
    assert not still_rising([rec(0.5), rec(0.2), rec(0.4)])  # rose, but not to the best
    assert not still_rising([rec(0.2)]) and not still_rising([{"dev": None, "dev_score": float("nan")}] * 3)


def _loop(scores, epochs):
    model = torch.nn.Linear(1, 1, bias=False)
    it = iter(scores)

    def step(batch, epoch, laps):
        loss = (model(batch) - 1.0).pow(2).mean()
        return Step(loss, {"loss": loss.detach()}, len(batch))
    return Loop(model, torch.optim.SGD(model.parameters(), lr=0.1), OptimConfig(epochs=epochs, patience=9),
                lambda epoch: [torch.ones(2, 1)], step, lambda steps, seen: 1.0, lambda: (next(it), {}),
                total=1, description="probe")


def test_a_run_ending_while_dev_rises_warns(capsys):
    best = _loop([0.1, 0.2, 0.3], 3).run(progress=False)
    assert best["still_rising"] and "dev score still rising" in capsys.readouterr().err
    best = _loop([0.1, 0.3, 0.2], 3).run(progress=False)
    assert not best["still_rising"] and "still rising" not in capsys.readouterr().err


def test_distill_min_steps_adds_epochs_and_records_still_rising(tmp_path):
    store, _ = make_store(tmp_path / "store", unlabeled=False)
    one = distill(config(store, tmp_path / "one", epochs=1), progress=False)
    steps_per_epoch = one["steps"]
    budget = 3 * steps_per_epoch
    got = distill(config(store, tmp_path / "budget", epochs=1, min_steps=budget, patience=99), progress=False)
    rows = epochs_csv(tmp_path / "budget")
    assert len(rows) >= 3 and got["steps"] >= budget
    assert got["config"]["optim"]["epochs"] == len(rows) >= math.ceil(budget / steps_per_epoch)
    assert isinstance(got["still_rising"], bool)
