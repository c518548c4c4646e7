"""Stage two's training loop: stream the teacher-output store into a student (the teacher never runs).

TextBrewer-style separation: the models (``pipeline.tagger``), the KD objectives (``pipeline.kd``) and
the data path (``pipeline.stream``) know nothing of each other; ``distill`` wires them:

    loss = combine(lambda * KD(student, teacher, mask, hard) + (1 - lambda) * NLL(student, hard))

``hard`` is the gold path of a labeled sentence and the teacher's top-1 (Viterbi) path of an unlabeled
one, for the NLL part and for any objective that reads a hard label. ``none`` is the gold-only
baseline: lambda 0, and no unlabeled rows. ``online_teacher`` (comparison only) recomputes the same
targets by running the teacher on every batch, as the published implementations do.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader

from pipeline.config import DistillConfig, KDConfig, to_dict
from pipeline.kd import StudentPotentials, TeacherTargets, build_objective, combine, lambda_for
from pipeline.kd.registry import objective_options
from pipeline.metrics import evaluate_groups, main_score
from store.checks import check_store, open_checked, verify_files
from store.stream import KBEST_FIELDS, Batch, StoreStream
from pipeline.tagger import Tagger, build_tagger
from pipeline.teacher_outputs import teacher_outputs
from pipeline.trainer import param_groups, predict, resolve_device, seed_everything, warmup_linear
from store import StoreError
from store.reader import Store

TIMERS = ("data", "teacher", "forward", "loss", "backward")
EVAL_BATCH = 64


def build_kd_objective(kd: KDConfig) -> torch.nn.Module:
    """The objective ``kd.method`` with ``k`` / ``tau`` where it takes them, then ``kd.options``."""
    valid = objective_options(kd.method)
    options = {}
    if "k" in valid and kd.k is not None:
        options["k"] = kd.k
    if "tau" in valid:
        options["tau"] = kd.tau
    options.update(kd.options)
    return build_objective(kd.method, **options)


def lambda_at(kd: KDConfig, epoch: int, epochs: int) -> float:
    """lambda of the epoch (0-based); always 0 for the gold-only baseline ``none``."""
    if kd.method == "none":
        return 0.0
    opts = {"constant": {"lam": kd.lam}, "anneal": {"rate": kd.anneal_rate}}.get(kd.schedule, {})
    return lambda_for(kd.schedule, epoch, epochs, **opts)


def teacher_fields(objective: torch.nn.Module, student_is_crf: bool) -> tuple[str, ...]:
    """The stored teacher fields the objective reads (structural KD of a CRF student: edges too)."""
    fields = set(objective.needs)
    if objective.name == "structural" and student_is_crf:
        fields.add("edge")
    if fields & {"kbest_paths", "kbest_logprob"}:
        fields.update(KBEST_FIELDS)
    return tuple(sorted(fields))


class OnlineTeacher:
    """Comparison mode: the KD targets of a batch computed by running the teacher on it, exactly as
    annotate computes the stored ones (emissions rounded to the store's dtype, same k and tau)."""

    def __init__(self, folder: str, store: Store, device: torch.device, fields: tuple[str, ...],
                 k: int | None, console: Console | None = None):
        if len(store.teachers) != 1:
            raise StoreError(f"--online-teacher compares with a single-teacher store; {store.url} has "
                             f"{sorted(store.teachers)}")
        self.meta = next(iter(store.teachers.values()))
        self.tagger = Tagger.load(folder, device)
        if self.tagger.labels != self.meta.labels:
            raise StoreError(f"online teacher {folder}: labels {self.tagger.labels} != the store's "
                             f"{self.meta.labels}")
        if self.tagger.fingerprint() != self.meta.fingerprint:
            (console or Console(stderr=True)).print(
                f"[yellow]warning:[/] online teacher {folder} is not the teacher of the store")
        self.fields, self.k = fields, k
        self.dtype = getattr(torch, store.options.dtype)
        self.store_k = store.options.k

    def __call__(self, batch: Batch) -> tuple[TeacherTargets, torch.Tensor]:
        """(targets, hard): hard = gold where the sentence has it, else the teacher's Viterbi path."""
        with torch.no_grad():
            pot, mask = self.tagger.potentials(batch.tokens)
            emissions = pot.emissions.float().to(self.dtype).float().masked_fill(~mask.unsqueeze(-1), 0.0)
            pot = StudentPotentials(emissions, pot.transitions, pot.start, pot.end, pot.constraints)
            out = teacher_outputs(pot, mask, self.store_k, self.meta.tau, self.meta.is_crf,
                                  with_marginals=bool({"node", "edge"} & set(self.fields)))
            size = emissions.shape[0]
            factors = self._factors(pot, emissions)
            targets = TeacherTargets(
                emissions=emissions if "emissions" in self.fields else None,
                **{name: value.expand(size, *value.shape) for name, value in factors.items()},
                **{name: out[name] for name in ("node", "edge") + KBEST_FIELDS if name in self.fields},
                crf=torch.full((size,), self.meta.is_crf, device=emissions.device))
            hard = torch.where(batch.has_gold.unsqueeze(1), batch.hard, out["viterbi"])
        return (targets.select(self.k) if self.k is not None else targets), hard

    def _factors(self, pot: StudentPotentials, emissions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Effective transitions / start / end as the store keeps them (-inf where forbidden)."""
        num = emissions.shape[-1]
        zeros = {"transitions": emissions.new_zeros(num, num), "start": emissions.new_zeros(num),
                 "end": emissions.new_zeros(num)}
        if not self.meta.is_crf:
            return zeros
        out = {name: zeros[name] if getattr(pot, name) is None else getattr(pot, name).float()
               for name in zeros}
        if pot.constraints is not None:
            for name, allowed in zip(zeros, pot.constraints):
                out[name] = out[name].masked_fill(~allowed.bool(), float("-inf"))
        return out


def eval_rows(store: Store, split: str) -> list[dict]:
    """Labeled sentences of ``split`` (tokens, gold, lang), one per sid, in manifest order; each
    shard's files are checked against their manifest checksums first, as the stream does."""
    seen: dict[str, dict] = {}
    for shard in store.shards(split):
        verify_files(store, store.shard_info(shard).get("files", {}), f"shard {shard}")
        table = store.read_table(shard, ["sid", "lang", "tokens", "gold"]).to_pylist()
        for row in table:
            if row["gold"] is not None and row["sid"] not in seen:
                seen[row["sid"]] = row
    return list(seen.values())


def evaluate(student: Tagger, rows: list[dict], scheme: str) -> dict:
    """``{"all": metrics, lang: metrics}`` (seqeval P/R/F1, or accuracy for POS)."""
    pred = predict(student, [r["tokens"] for r in rows], batch_size=EVAL_BATCH)
    result = evaluate_groups([r["gold"] for r in rows], pred, [r["lang"] for r in rows], scheme)
    return {group: {key: value for key, value in metrics.items() if key != "per_type"}
            for group, metrics in result.items()}


def vocab_sentences(store: Store, splits: list[str]) -> list[list[str]]:
    """Token lists of the splits (the BiLSTM vocabulary), read from the Parquet tokens column only."""
    out: list[list[str]] = []
    for split in splits:
        for shard in store.shards(split):
            out += store.read_table(shard, ["tokens"]).column("tokens").to_pylist()
    return out


def progress_bar(enabled: bool, console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]:.0f} sent/s"),
                    TimeElapsedColumn(), console=console, disable=not enabled)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class Laps:
    """Wall time per phase of a training step: ``laps("forward")`` books the time since the last lap."""

    def __init__(self, sync):
        self.sync, self.times = sync, dict.fromkeys(TIMERS, 0.0)
        self.last = sync()

    def __call__(self, name: str) -> None:
        now = self.sync()
        self.times[name] += now - self.last
        self.last = now


class Distiller:
    """One distillation run (see ``distill``); attributes hold the wired-up parts for inspection."""

    def __init__(self, cfg: DistillConfig, console: Console | None = None):
        self.cfg, self.console = cfg, console or Console(stderr=True)
        seed_everything(cfg.optim.seed)
        self.device = resolve_device(cfg.device)
        self.store = open_checked(cfg.store)
        self.labels, self.scheme = check_store(self.store, cfg.labels)
        self.splits = ["train"] + (["unlabeled"] if cfg.use_unlabeled and cfg.kd.method != "none" else [])
        self.objective = build_kd_objective(cfg.kd).to(self.device)
        bilstm = cfg.model.encoder.kind == "bilstm"
        vocab = vocab_sentences(self.store, self.splits) if bilstm else None
        self.student = build_tagger(cfg.model, self.labels, self.scheme, vocab).to(self.device)
        fields = teacher_fields(self.objective, self.student.is_crf)
        self.online = None
        if cfg.online_teacher:
            self.online = OnlineTeacher(cfg.online_teacher, self.store, self.device, fields, cfg.kd.k,
                                        self.console)
        self.stream = StoreStream(self.store, self.splits, fields=() if self.online else fields, k=cfg.kd.k,
                                  batch_tokens=cfg.batch_tokens, shuffle_buffer=cfg.shuffle_buffer,
                                  seed=cfg.optim.seed, labels=self.labels)
        if not self.stream.sentences:
            raise StoreError(f"{cfg.store}: no sentences in splits {self.splits}")
        cuda = self.device.type == "cuda"
        self.loader = DataLoader(self.stream, batch_size=None, num_workers=cfg.workers, pin_memory=cuda)
        groups = param_groups(self.student, cfg.optim)
        extra = [p for p in self.objective.parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "lr": cfg.optim.head_lr or cfg.optim.lr, "weight_decay": 0.0})
        for group in groups:
            group["base_lr"] = group["lr"]
        self.optimizer = torch.optim.AdamW(groups)
        self.params = [p for g in groups for p in g["params"]]
        total = cfg.optim.epochs * self.stream.sentences
        self.lr_factor = warmup_linear(total, cfg.optim.warmup)
        self.dev, self.test = eval_rows(self.store, "dev"), eval_rows(self.store, "test")
        for split, rows in (("dev", self.dev), ("test", self.test)):
            if not rows:
                self.console.print(f"[yellow]warning:[/] {cfg.store} has no labeled {split} rows: no "
                                   f"{split} evaluation" + (", the last epoch's weights are kept"
                                                            if split == "dev" else ""))
        self.step, self.seen = 0, 0

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def train_epoch(self, epoch: int, lam: float, bar: Progress, task) -> dict:
        """One pass over the stream; returns the epoch's mean loss parts and wall-time split."""
        self.student.train()
        self.objective.train()
        self.stream.set_epoch(epoch)
        laps = Laps(self._sync)
        sums, sentences, words, padded = {"loss": 0.0, "kd": 0.0, "nll": 0.0}, 0, 0, 0
        started = laps.last
        for batch in self.loader:
            batch = batch.to(self.device, non_blocking=True)
            laps("data")
            targets, hard = self.online(batch) if self.online else (batch.teacher, batch.hard)
            laps("teacher")
            potentials, mask = self.student.potentials(batch.tokens)
            if mask.shape != batch.mask.shape:
                raise RuntimeError(f"student mask {tuple(mask.shape)} != batch mask "
                                   f"{tuple(batch.mask.shape)}")
            laps("forward")
            kd = self.objective(potentials, targets, mask, hard) if lam > 0 else None
            nll = self.student.nll(potentials, hard, mask) if lam < 1 else None
            loss, parts = combine(kd, nll, lam, mask, self.cfg.kd.normalize)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {self.step} (method {self.cfg.kd.method}, "
                                         f"parts { {k: float(v) for k, v in parts.items()} }, "
                                         f"first sentence {batch.sids[0]})")
            laps("loss")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.optim.grad_clip and self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
            factor = self.lr_factor(self.seen)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            self.optimizer.step()
            laps("backward")
            size = len(batch.tokens)
            self.step, self.seen, sentences = self.step + 1, self.seen + size, sentences + size
            words, padded = words + batch.words, padded + batch.mask.numel()
            for name in sums:
                if name in parts:
                    sums[name] += float(parts[name]) * size
            bar.update(task, advance=size, loss=float(parts["loss"]),
                       speed=sentences / max(laps.last - started, 1e-9))
            if self.cfg.optim.max_steps and self.step >= self.cfg.optim.max_steps:
                break
        wall = self._sync() - started
        return {**{name: value / max(sentences, 1) for name, value in sums.items()}, "sentences": sentences,
                "words": words, "padding_efficiency": words / max(padded, 1), "wall_s": wall,
                **{f"{name}_s": value for name, value in laps.times.items()}}

    def run(self, progress: bool) -> dict:
        cfg, optim = self.cfg, self.cfg.optim
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        records, best, best_state, bad = [], None, None, 0
        with progress_bar(progress, self.console) as bar:
            task = bar.add_task(f"distill {cfg.kd.method}", total=optim.epochs * self.stream.sentences,
                                loss=0.0, speed=0.0)
            for epoch in range(optim.epochs):
                lam = lambda_at(cfg.kd, epoch, optim.epochs)
                record = {"epoch": epoch + 1, "lambda": lam, **self.train_epoch(epoch, lam, bar, task)}
                started = time.perf_counter()
                dev = evaluate(self.student, self.dev, self.scheme) if self.dev else None
                record["dev_f1"] = main_score(dev["all"]) if dev else float("nan")
                record["eval_s"] = time.perf_counter() - started
                record["steps"] = self.step
                records.append(record)
                self.console.print(f"epoch {epoch + 1}: loss {record['loss']:.4f}, "
                                   f"dev {record['dev_f1']:.4f}, "
                                   f"{record['wall_s']:.1f} s")
                if dev is None or best is None or record["dev_f1"] > best["score"]:
                    best, best_state, bad = {"epoch": epoch + 1, "score": record["dev_f1"], "dev": dev}, \
                        _snapshot(self.student), 0
                else:
                    bad += 1
                if (optim.max_steps and self.step >= optim.max_steps) or (dev and bad >= optim.patience):
                    break
        self.student.load_state_dict(best_state)
        test = evaluate(self.student, self.test, self.scheme) if self.test else None
        metrics = self._metrics(records, best, test)
        self.student.save(out / "model")
        for path in (out / "metrics.json", out / "model" / "metrics.json"):
            path.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n",
                            encoding="utf-8")
        _write_csv(out / "epochs.csv", records)
        return metrics

    def _metrics(self, records: list[dict], best: dict, test: dict | None) -> dict:
        cfg = self.cfg
        return {
            "name": cfg.name, "method": cfg.kd.method, "store": cfg.store,
            "online_teacher": cfg.online_teacher,
            "device": str(self.device), "labels": self.labels, "scheme": self.scheme,
            "teachers": {tid: {"lang": t.lang, "decoder": t.decoder, "fingerprint": t.fingerprint}
                         for tid, t in self.store.teachers.items()},
            "student": {"encoder": cfg.model.encoder.kind, "decoder": cfg.model.decoder.kind,
                        "parameters": sum(p.numel() for p in self.student.parameters())},
            "splits": self.splits, "train_sentences": self.stream.sentences, "steps": self.step,
            "epochs": len(records), "best_epoch": best["epoch"], "dev": best["dev"], "test": test,
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


def distill(cfg: DistillConfig, progress: bool = True) -> dict:
    """Train the student of ``cfg`` from the store; writes ``cfg.out``/{model/, metrics.json,
    epochs.csv} and returns the metrics (dev / test P/R/F1 overall and per language, epoch times)."""
    return Distiller(cfg).run(progress)
