"""Stage two's training: a student learns from teacher targets it is fed (the teacher never runs).

TextBrewer-style separation: the models (``pipeline.tagger``: they build a Structure), the KD
objectives (``pipeline.kd``) and the data (a ``DistillData``; store/feed.py builds one from a
teacher-output store) know nothing of each other; ``Distiller`` wires them on the shared loop
(``pipeline.loop``):

    loss = combine(lambda * KD(student, teacher, hard) + (1 - lambda) * NLL(student, hard))

``hard`` is the gold path of a labeled sentence and the teacher's top-1 path of an unlabeled one.
``none`` is the gold-only baseline: lambda 0, and no unlabeled rows.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from pipeline.config import DistillConfig, KDConfig, to_dict
from pipeline.decoders import DECODERS
from pipeline.dist import World, broadcast, device_for, finish, init, world_from_env
from pipeline.gold_loop import param_groups, warmup_linear
from pipeline.kd import build_objective, check_schedule, combine, lambda_for, nll
from pipeline.kd.registry import objective_options
from pipeline.loop import Loop, Step, epochs_for
from pipeline.metrics import evaluate_groups, main_score
from pipeline.precision import autocast, grad_scaler
from pipeline.tagger import Tagger, build_tagger
from pipeline.trainer import predict, seed_everything

EVAL_BATCH = 64


@dataclass
class DistillData:
    """What distillation reads. ``stream(fields, featurize, world)`` gives this rank's iterable
    dataset of batches
    (``tokens``, ``teacher`` TeacherTargets with ``fields``, ``mask``, ``hard``, ``has_gold``,
    ``sids``, ``features`` = ``featurize(tokens)`` computed in the loader workers) with
    ``set_epoch(epoch)`` and ``sentences`` (per epoch); ``dev`` / ``test`` rows hold ``tokens``,
    ``gold``, ``lang``; ``online(fields)``, when set, recomputes a batch's targets by running the
    teacher (comparison mode) and returns ``(targets, hard)``."""

    labels: list[str]
    scheme: str
    teacher_kinds: frozenset[str]
    stream: Callable[[tuple[str, ...], Callable | None, World], Any]
    dev: list[dict]
    test: list[dict]
    vocab: Callable[[], list[list[str]]]
    info: dict
    online: Callable[[tuple[str, ...]], Callable] | None = None
    trees: bool = False  # the teachers are dependency parsers: rows also hold gold_heads, upos
    head_encoding: str | None = None  # trees, tagger student: its labels encode heads


def build_kd_objective(kd: KDConfig) -> torch.nn.Module:
    """The objective ``kd.method`` with ``k`` / ``tau`` where it takes them, then ``kd.options``; a
    temperature other than 1 for an objective that has none is refused (never silently ignored),
    and so is a schedule that would drop or double the gold NLL (``check_schedule``)."""
    valid = objective_options(kd.method)
    options = {}
    if "k" in valid and kd.k is not None:
        options["k"] = kd.k
    if "tau" in valid:
        options["tau"] = kd.tau
    elif kd.tau != 1.0:
        raise ValueError(f"kd.tau = {kd.tau}: KD objective '{kd.method}' has no temperature "
                         "(leave kd.tau at 1)")
    options.update(kd.options)
    objective = build_objective(kd.method, **options)
    check_schedule(kd.schedule, kd.method, objective.owns_hard_loss)
    return objective


def lambda_at(kd: KDConfig, epoch: int, epochs: int) -> float:
    """lambda of the epoch (0-based); always 0 for the gold-only baseline ``none``."""
    if kd.method == "none":
        return 0.0
    opts = {"constant": {"lam": kd.lam},
            "anneal": {"percent": kd.anneal_percent} if kd.anneal_percent is not None
            else {"rate": kd.anneal_rate}}.get(kd.schedule, {})
    return lambda_for(kd.schedule, epoch, epochs, **opts)


def row_lambda(lam: float, unlabeled: float | None, has_gold: torch.Tensor) -> float | torch.Tensor:
    """The batch's lambda: ``lam`` on every row, or with ``distill.unlabeled.lam`` set, [B] weights
    that give the rows without gold (``has_gold`` [B] False) that lambda instead (None for ``none``)."""
    if unlabeled is None or bool(has_gold.all()):
        return lam
    return torch.where(has_gold, lam, unlabeled).to(torch.float32)


def evaluate(student: Tagger, rows: list[dict], scheme: str, data: DistillData | None = None) -> dict:
    """``{"all": metrics, lang: metrics}`` (seqeval P/R/F1, or accuracy for POS; UAS / LAS for the
    student of dependency teachers, ``pipeline.tree_eval``)."""
    if data is not None and data.trees:
        from pipeline.tree_eval import evaluate_trees

        return evaluate_trees(student, rows, data.head_encoding, batch_size=EVAL_BATCH)
    pred = predict(student, [r["tokens"] for r in rows], batch_size=EVAL_BATCH)
    result = evaluate_groups([r["gold"] for r in rows], pred, [r["lang"] for r in rows], scheme)
    return {group: {key: value for key, value in metrics.items() if key != "per_type"}
            for group, metrics in result.items()}


def build_student(cfg: DistillConfig, data: DistillData, vocab: list[list[str]] | None):
    """(student, its structure kind): a tagger, or for dependency teachers with a ``heads`` /
    ``tree`` decoder a biaffine parser over the teachers' relations (tree -> tree)."""
    from pipeline.parser import KINDS as PARSER_KINDS

    decoder = cfg.model.decoder.kind
    if decoder in PARSER_KINDS:
        if not data.trees or data.head_encoding is not None:
            raise ValueError(f"a biaffine student (decoder {decoder}) learns from dependency teachers "
                             f"without head_encoding; this store's teachers are "
                             f"{'dependency parsers with head_encoding set' if data.trees else 'sequence labelers'}")
        from pipeline.parser import build_parser

        student = build_parser(cfg.model, data.labels, vocab)
        return student, "labeled_tree" if decoder == "tree" else "labeled_heads"
    if data.trees and data.head_encoding is None:
        raise ValueError(f"a {decoder} tagger learns from dependency teachers through distill.head_encoding "
                         "(rel_pos | rel_offset); or give the student a heads / tree decoder")
    return build_tagger(cfg.model, data.labels, data.scheme, vocab), DECODERS[decoder].structure_kind


class Trainable(torch.nn.Module):
    """The student and the objective (its parameters: multigrained's learned weights) as one module,
    whose forward is a training step's loss: what DistributedDataParallel wraps."""

    def __init__(self, student: Tagger, objective: torch.nn.Module, normalize: str):
        super().__init__()
        self.student, self.objective, self.normalize = student, objective, normalize

    def forward(self, features, tokens, targets, hard, lam: float | torch.Tensor):
        """``lam`` a float, or [B] per-row weights (``row_lambda``)."""
        structure = self.student(features) if features is not None else self.student.structure(tokens)
        expected = hard.shape if hard.dim() == 2 else (hard.shape[0], hard.shape[-1] - 1)  # trees: [B, 2, L+1]
        if structure.mask.shape != expected:
            raise RuntimeError(f"student mask {tuple(structure.mask.shape)} != batch mask {tuple(hard.shape)}")
        some = (lambda test: bool(test.any())) if isinstance(lam, torch.Tensor) else bool
        kd = self.objective(structure, targets, hard) if some(lam > 0) else None
        gold = nll(structure, hard) if some(lam < 1) else None
        return combine(kd, gold, lam, structure.mask, self.normalize)


class Distiller:
    """One distillation run (see ``distill``); attributes hold the wired-up parts for inspection.

    Under torchrun (RANK / WORLD_SIZE in the environment) every rank trains on its own part of the
    shards (re-dealt each epoch) with DistributedDataParallel (gloo on CPUs, nccl on GPUs); uneven
    parts are handled by ``Join``; rank 0 evaluates, and its dev score, broadcast, drives early
    stopping on every rank; rank 0 writes the model and metrics. Same seed and world size, same model.
    """

    def __init__(self, cfg: DistillConfig, data: DistillData, console: Console | None = None,
                 world: World | None = None):
        self.cfg, self.data, self.console = cfg, data, console or Console(stderr=True)
        self.world = world or world_from_env()
        seed_everything(cfg.optim.seed)
        self.device = device_for(self.world, cfg.device)
        self.created_group = init(self.world, self.device)
        self.labels, self.scheme = data.labels, data.scheme
        self.objective = build_kd_objective(cfg.kd).to(self.device)
        vocab = data.vocab() if cfg.model.encoder.kind == "bilstm" else None
        self.student, kind = build_student(cfg, data, vocab)
        self.student = self.student.to(self.device)
        if kind not in self.objective.structures:
            raise ValueError(f"KD objective '{cfg.kd.method}' is defined for {list(self.objective.structures)} "
                             f"students, not a {cfg.model.decoder.kind} ({kind}) student")
        self.fields = self.objective.needs_for(kind, data.teacher_kinds)
        self.online = data.online(self.fields) if data.online else None
        self.stream = data.stream(() if self.online else self.fields, self.student.featurize, self.world)
        if not self.stream.sentences:
            raise ValueError(f"{cfg.store}: no sentences to train on")
        # a rank's steps per epoch are at least its words over the word budget of a batch
        epochs = epochs_for(cfg.optim, self.stream.words / self.world.size / cfg.batch_tokens)
        if epochs != cfg.optim.epochs:
            self.console.print(f"optim.min_steps {cfg.optim.min_steps}: {epochs} epochs instead of "
                               f"{cfg.optim.epochs} ({self.stream.sentences} sentences per epoch)")
            cfg = self.cfg = replace(cfg, optim=replace(cfg.optim, epochs=epochs))
        cuda = self.device.type == "cuda"
        self.loader = DataLoader(self.stream, batch_size=None, num_workers=cfg.workers, pin_memory=cuda)
        groups = param_groups(self.student, cfg.optim)
        extra = [p for p in self.objective.parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "lr": cfg.optim.head_lr or cfg.optim.lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups)
        self.trainable = Trainable(self.student, self.objective, cfg.kd.normalize)
        self.model = self.trainable
        join = contextlib.nullcontext
        if self.world.distributed:
            from torch.distributed.algorithms.join import Join
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # the students' buffers (CRF constraint masks, fixed multigrained weights) never change:
            # no broadcast of them before every forward (DDP's default) unless a layer keeps statistics
            running = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.trainable.modules())
            self.model = DistributedDataParallel(self.trainable, device_ids=ids, find_unused_parameters=True,
                                                 gradient_as_bucket_view=True, broadcast_buffers=running)
            join = lambda: Join([self.model])  # noqa: E731
        total = cfg.optim.epochs * self.stream.sentences  # sentences of all ranks
        lr = warmup_linear(total, cfg.optim.warmup)
        finale = cfg.optim.epochs - 1 if cfg.kd.schedule == "kd_then_nll" and cfg.kd.method != "none" else None
        self.loop = Loop(self.trainable, self.optimizer, cfg.optim, self._batches, self._step,
                         lambda steps, seen: lr(seen * self.world.size), self._evaluate,
                         total // self.world.size, description=f"distill {cfg.kd.method}", finale=finale,
                         on_epoch=self._report if self.world.is_main else None, sync=self._sync,
                         scaler=grad_scaler(cfg.precision, self.device), join=join)
        for split, rows in (("dev", data.dev), ("test", data.test)):
            if not rows:
                self.console.print(f"[yellow]warning:[/] {cfg.store} has no labeled {split} rows: no "
                                   f"{split} evaluation" + (", the last epoch's weights are kept"
                                                            if split == "dev" else ""))

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _batches(self, epoch: int):
        self.objective.train()
        self.stream.set_epoch(epoch)
        self.lam = lambda_at(self.cfg.kd, epoch, self.cfg.optim.epochs)
        return self.loader

    def _step(self, batch, epoch: int, laps) -> Step:
        batch = batch.to(self.device, non_blocking=True)
        targets, hard = self.online(batch) if self.online else (batch.teacher, batch.hard)
        laps("teacher")
        with autocast(self.cfg.precision, self.device):
            lam = row_lambda(self.lam, None if self.cfg.kd.method == "none" else self.cfg.unlabeled.lam,
                             batch.has_gold)
            loss, parts = self.model(batch.features, batch.tokens, targets, hard, lam)
        laps("forward")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.loop.steps} (method {self.cfg.kd.method}, "
                                     f"parts { {k: float(v) for k, v in parts.items()} }, "
                                     f"first sentence {batch.sids[0]})")
        laps("loss")
        return Step(loss, parts, len(batch.tokens), batch.words, batch.mask.numel())

    def _evaluate(self):
        """Rank 0's dev score and metrics, the same on every rank (broadcast)."""
        if not self.data.dev:
            return None
        result = None
        if self.world.is_main:
            dev = evaluate(self.student, self.data.dev, self.scheme, self.data)
            result = (main_score(dev["all"]), dev)
        return broadcast(self.world, result)

    def _report(self, record: dict) -> None:
        record["dev_f1"] = record["dev_score"]
        self.console.print(f"epoch {record['epoch']}: loss {record.get('loss', float('nan')):.4f}, "
                           f"dev {record['dev_f1']:.4f}, {record['wall_s']:.1f} s")

    def run(self, progress: bool) -> dict:
        """Train; rank 0 evaluates on test and writes ``cfg.out`` (model/, metrics.json, epochs.csv);
        every rank returns the metrics."""
        best = self.loop.run(progress and self.world.is_main, self.console)
        metrics = None
        if self.world.is_main:
            out = Path(self.cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            test = evaluate(self.student, self.data.test, self.scheme, self.data) if self.data.test else None
            metrics = self._metrics(best, test)
            self.student.save(out / "model")
            for path in (out / "metrics.json", out / "model" / "metrics.json"):
                path.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n",
                                encoding="utf-8")
            _write_csv(out / "epochs.csv", self.loop.records)
        metrics = broadcast(self.world, metrics)
        finish(self.world, self.created_group)
        return metrics

    def _metrics(self, best: dict, test: dict | None) -> dict:
        cfg, records = self.cfg, self.loop.records
        return {
            "name": cfg.name, "method": cfg.kd.method, "store": cfg.store,
            "online_teacher": cfg.online_teacher,
            "device": str(self.device), "world_size": self.world.size, "precision": self.cfg.precision,
            "labels": self.labels, "scheme": self.scheme, **self.data.info,
            "student": {"encoder": cfg.model.encoder.kind, "decoder": cfg.model.decoder.kind,
                        "parameters": sum(p.numel() for p in self.student.parameters())},
            "train_sentences": self.stream.sentences, "steps": self.loop.steps,  # rank 0's steps
            "epochs": len(records), "best_epoch": best["epoch"], "dev": best["dev"], "test": test,
            "still_rising": best["still_rising"],
            "epoch_seconds": [round(r["wall_s"], 3) for r in records],
            "padding_efficiency": records[-1]["padding_efficiency"] if records else None,
            "config": to_dict(cfg),
        }


CSV_COLUMNS = ("epoch", "steps", "sentences", "lambda", "loss", "kd", "nll", "dev_f1", "wall_s", "data_s",
               "teacher_s", "forward_s", "loss_s", "backward_s", "eval_s", "padding_efficiency")


def _write_csv(path: Path, records: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({k: round(v, 6) if isinstance(v, float) and math.isfinite(v) else v
                             for k, v in record.items()})
