"""The shared training loop: early stopping, best weights, max_steps and the final epoch that
always runs (kd_then_nll's NLL-only epoch), on a one-parameter model."""
from __future__ import annotations

import torch

from pipeline.config import OptimConfig
from pipeline.kd import lambda_for
from pipeline.loop import Loop, Step


def make_loop(scores, *, epochs=6, patience=1, finale=None, max_steps=None):
    model = torch.nn.Linear(1, 1, bias=False)
    seen_epochs, lambdas = [], []
    scores = iter(scores)

    def step(batch, epoch, laps):
        seen_epochs.append(epoch)
        lambdas.append(lambda_for("kd_then_nll", epoch, epochs))
        loss = (model(batch) - 1.0).pow(2).mean()
        return Step(loss, {"loss": loss.detach()}, len(batch))

    optim = OptimConfig(epochs=epochs, patience=patience, max_steps=max_steps, grad_clip=0.0)
    loop = Loop(model, torch.optim.SGD(model.parameters(), lr=0.1), optim,
                lambda epoch: [torch.ones(2, 1)] * 3, step, lambda steps, seen: 1.0,
                lambda: (next(scores), {"epoch_score": True}), total=1, finale=finale)
    return loop, seen_epochs, lambdas


def test_early_stopping_keeps_the_best_epoch():
    loop, seen, _ = make_loop([0.5, 0.7, 0.6, 0.65, 0.9])
    best = loop.run(progress=False)
    assert best["epoch"] == 2 and [r["epoch"] for r in loop.records] == [1, 2, 3]
    assert sorted(set(seen)) == [0, 1, 2]


def test_final_nll_epoch_runs_even_when_early_stopping_ends_training():
    loop, seen, lambdas = make_loop([0.5, 0.7, 0.6, 0.8], finale=5)
    best = loop.run(progress=False)
    assert [r["epoch"] for r in loop.records] == [1, 2, 3, 6]  # stopped after 3, then the final epoch
    assert sorted(set(seen)) == [0, 1, 2, 5] and lambdas[-1] == 0.0 and set(lambdas[:-3]) == {1.0}
    assert best["epoch"] == 6


def test_final_epoch_without_early_stop_and_with_max_steps():
    loop, seen, _ = make_loop([0.1, 0.2, 0.3, 0.4], epochs=4, patience=9, finale=3)
    loop.run(progress=False)
    assert [r["epoch"] for r in loop.records] == [1, 2, 3, 4] and seen.count(3) == 3
    capped, seen, _ = make_loop([0.1, 0.2, 0.3], epochs=4, max_steps=4, finale=3)
    capped.run(progress=False)
    assert [r["epoch"] for r in capped.records] == [1, 2, 4] and capped.steps == 4 + 3  # the final epoch: at most max_steps steps
