"""The one training-loop skeleton teacher training and distillation share.

Epochs of optimizer steps, the learning-rate factor, gradient clipping, a dev evaluation per epoch
with early stopping on its score (best weights kept), an optional final epoch that always runs
(``kd_then_nll``: the NLL-only epoch of the efficient KD paper, also when early stopping ends the
KD epochs first), a rich progress bar and wall-time laps per phase. What a step computes (the loss of
a batch) and what an epoch feeds (its batches) are the caller's.

``epochs_for`` turns a step budget (``optim.min_steps``) into epochs; a run whose dev score still
rose at its last evaluated epoch ends with a warning and ``still_rising`` in its best record.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from pipeline.config import OptimConfig

TIMERS = ("data", "teacher", "forward", "loss", "backward")


def epochs_for(optim: OptimConfig, steps_per_epoch: float) -> int:
    """``optim.epochs``, raised so that ``epochs * steps_per_epoch >= optim.min_steps`` (None: no
    budget). ``steps_per_epoch`` may be an estimate; a low one only adds epochs."""
    if not optim.min_steps:
        return optim.epochs
    return max(optim.epochs, math.ceil(optim.min_steps / max(steps_per_epoch, 1e-9)))


def still_rising(records: list[dict]) -> bool:
    """Whether the last evaluated epoch had the best dev score and beat the epoch before it."""
    scores = [r["dev_score"] for r in records if r.get("dev") is not None]
    return len(scores) >= 2 and scores[-1] > scores[-2] and scores[-1] >= max(scores)


def progress_bar(enabled: bool, console: Console | None = None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]:.0f} sent/s"),
                    TimeElapsedColumn(), console=console or Console(stderr=True), disable=not enabled)


class Laps:
    """Wall time per phase of a training step: ``laps("forward")`` books the time since the last lap
    (``sync`` waits for the device first, so GPU time lands in the right phase)."""

    def __init__(self, sync: Callable[[], float]):
        self.sync, self.times = sync, dict.fromkeys(TIMERS, 0.0)
        self.last = sync()

    def __call__(self, name: str) -> None:
        now = self.sync()
        self.times[name] += now - self.last
        self.last = now


def snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class Step:
    """What one batch gave: the scalar loss to minimize, its detached parts (logged, averaged per
    sentence over the epoch) and the number of sentences."""

    loss: Tensor
    parts: dict[str, Tensor]
    size: int
    words: int = 0
    padded: int = 0


@dataclass
class Loop:
    """Runs ``epochs`` epochs of ``batches(epoch)`` through ``step(batch, epoch, laps) -> Step``.

    ``evaluate() -> (score, metrics)`` or None (no dev set: the last weights are kept);
    ``lr_factor(step, seen_sentences)`` scales every group's ``base_lr``; ``finale``: index of an
    epoch that must run last whatever early stopping decides (run from the best weights so far),
    or None. ``sync`` times the device (``torch.cuda.synchronize`` on a GPU). ``scaler``: a
    GradScaler for fp16 training; ``join()``: the context an epoch's steps run in (DDP's ``Join``,
    so that ranks with fewer batches never hang the others). Under DDP every rank runs the loop;
    ``evaluate`` must return the same result on every rank (rank 0's, broadcast), so that early
    stopping decides alike everywhere.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    optim: OptimConfig
    batches: Callable[[int], Iterable]
    step: Callable[..., Step]
    lr_factor: Callable[[int, int], float]
    evaluate: Callable[[], tuple[float, dict] | None]
    total: int
    description: str = "train"
    finale: int | None = None
    on_epoch: Callable[[dict], None] | None = None
    sync: Callable[[], float] = time.perf_counter
    scaler: torch.amp.GradScaler | None = None
    join: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    steps: int = 0
    seen: int = 0
    records: list[dict] = field(default_factory=list)
    best: dict | None = None

    def __post_init__(self):
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def _capped(self) -> bool:
        return bool(self.optim.max_steps) and self.steps >= self.optim.max_steps

    def run_epoch(self, epoch: int, bar: Progress, task, step_cap: int | None = None) -> dict:
        """One pass over ``batches(epoch)`` (at most ``step_cap`` steps); its record (no evaluation)."""
        self.model.train()
        laps = Laps(self.sync)
        started, first_step = laps.last, self.steps
        sums: dict[str, float] = {}
        sentences = words = padded = 0
        with self.join():
            for batch in self.batches(epoch):
                laps("data")
                out = self.step(batch, epoch, laps)
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(f"non-finite loss at step {self.steps} "
                                             f"(parts { {k: float(v) for k, v in out.parts.items()} })")
                self._update(out.loss)
                laps("backward")
                self.steps, self.seen, sentences = self.steps + 1, self.seen + out.size, sentences + out.size
                words, padded = words + out.words, padded + out.padded
                for name, value in out.parts.items():
                    sums[name] = sums.get(name, 0.0) + float(value) * out.size
                bar.update(task, advance=out.size, loss=float(out.parts.get("loss", out.loss.detach())),
                           speed=sentences / max(laps.last - started, 1e-9))
                if step_cap is not None and self.steps - first_step >= step_cap:
                    break
        wall = self.sync() - started
        return {"epoch": epoch + 1, **{k: v / max(sentences, 1) for k, v in sums.items()},
                "sentences": sentences, "words": words, "padding_efficiency": words / max(padded, 1),
                "wall_s": wall, **{f"{name}_s": value for name, value in laps.times.items()}}

    def _update(self, loss: Tensor) -> None:
        """Backward, (unscale,) clip, set the learning rate, optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.optim.grad_clip and self.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.optim.grad_clip)
        factor = self.lr_factor(self.steps, self.seen)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _evaluate(self, record: dict) -> bool:
        """Evaluate on dev, track the best weights; True when this epoch is the best so far."""
        started = time.perf_counter()
        result = self.evaluate()
        record["eval_s"] = time.perf_counter() - started
        record["steps"] = self.steps
        score, metrics = result if result is not None else (float("nan"), None)
        record["dev_score"], record["dev"] = score, metrics
        self.records.append(record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        better = result is None or self.best is None or score > self.best["score"]
        if better:
            self.best = {"epoch": record["epoch"], "score": score, "dev": metrics,
                         "state": snapshot(self.model)}
        return better

    def run(self, progress: bool = True, console: Console | None = None) -> dict:
        """Train; returns the best epoch's {epoch, score, dev} (its weights are loaded)."""
        bad, stopped = 0, False
        with progress_bar(progress, console) as bar:
            task = bar.add_task(self.description, total=self.total, loss=0.0, speed=0.0)
            cap = self.optim.max_steps or None
            for epoch in range(self.optim.epochs if self.finale is None else self.finale):
                bad = 0 if self._evaluate(self.run_epoch(epoch, bar, task, cap and cap - self.steps)) else bad + 1
                stopped = self._capped() or (self.records[-1]["dev"] is not None and bad >= self.optim.patience)
                if stopped:
                    break
            if self.finale is not None:
                if stopped:  # early stopping ended the KD epochs: the final epoch starts from the best
                    self.model.load_state_dict(self.best["state"])
                self._evaluate(self.run_epoch(self.finale, bar, task, cap))
        self.model.load_state_dict(self.best["state"])
        rising = still_rising(self.records)
        if rising and not self._capped():
            scores = [r["dev_score"] for r in self.records if r.get("dev") is not None]
            (console or Console(stderr=True)).print(
                f"[yellow]warning:[/] {self.description}: dev score still rising at the last epoch "
                f"({scores[-2]:.4f} -> {scores[-1]:.4f}); training may not have converged: raise "
                f"optim.epochs or optim.min_steps")
        return {**{key: value for key, value in self.best.items() if key != "state"}, "still_rising": rising}
