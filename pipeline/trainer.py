"""Gold-label training of a tagger (teachers): fine-tune encoder + decoder, early-stop on dev.

AdamW with linear warm-up then linear decay, optional layer-wise lr decay for transformer layers and
a separate lr for the head (emission layer, decoder, and a BiLSTM encoder), gradient clipping,
length-bucketed batches, dev F1 (accuracy for POS) each epoch with patience, best weights kept.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from rich.console import Console

from pipeline.batching import pack
from pipeline.config import OptimConfig, TeacherConfig
from pipeline.corpus import Sentence, effective_scheme
from pipeline.encoders import TransformerWordEncoder
from pipeline.kd.nll import nll
from pipeline.loop import Loop, Step
from pipeline.metrics import evaluate_tags, main_score
from pipeline.schemes import complete_labels, first_invalid
from pipeline.tagger import Tagger, build_tagger

BUCKET_POOL = 50  # batches per pool sorted by length before the batches are shuffled


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_labels(train: list[Sentence], scheme: str) -> list[str]:
    """Every label of ``scheme`` for the entity types seen in training (or the POS tags seen), in
    ``schemes.sort_labels`` order."""
    return complete_labels({label for s in train for label in s.labels}, scheme)


def check_labels(train: list[Sentence], scheme: str) -> None:
    """Every training sentence must be valid in ``scheme`` (a constrained CRF gives it zero mass)."""
    for s in train:
        bad = first_invalid(s.labels, scheme)
        if bad is not None:
            raise ValueError(f"sentence {getattr(s, 'sid', '?')} is not valid {scheme} at position "
                             f"{bad}: {s.labels}")


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled index batches of similar length: shuffle, sort pools by length, shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    pool = batch_size * BUCKET_POOL
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [[chunk[k] for k in rows] for rows in pack([lengths[i] for i in chunk], None, batch_size)]
    rng.shuffle(batches)
    return batches


def param_groups(tagger: Tagger, optim: OptimConfig) -> list[dict]:
    """AdamW groups: transformer parameters at ``lr * layer_decay ** (depth below the top layer)``,
    everything else at ``head_lr``; no weight decay on biases, norms and decoder factors."""
    encoder = tagger.encoder
    transformer = isinstance(encoder, TransformerWordEncoder)
    groups: dict[tuple[float, float], list] = {}
    for name, param in tagger.named_parameters():
        if not param.requires_grad:
            continue
        if transformer and name.startswith("encoder.model."):
            depth = encoder.layer_of(name[len("encoder.model."):])
            lr = optim.lr * optim.layer_decay ** max(0, encoder.num_layers - depth)
        else:
            lr = optim.head_lr or optim.lr
        decay = 0.0 if param.ndim < 2 or name.startswith("decoder.") else optim.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def warmup_linear(total: int, warmup: float):
    """lr multiplier: linear warm-up over ``warmup * total`` steps, then linear decay to 0."""
    warm = int(warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))
    return factor


def predict(tagger: Tagger, sentences: list, batch_size: int = 32) -> list[list[str]]:
    """Labels for each sentence (``Sentence`` objects or token lists), batched by length, in eval
    mode under ``torch.inference_mode``; the module's train/eval mode is restored afterwards."""
    tokens = [getattr(s, "tokens", s) for s in sentences]
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    out: list[list[str]] = [[] for _ in tokens]
    was_training = tagger.training
    tagger.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = [i for i in order[start:start + batch_size] if tokens[i]]
                if idx:
                    for i, labels in zip(idx, tagger.decode([tokens[i] for i in idx])):
                        out[i] = labels
    finally:
        tagger.train(was_training)
    return out


def train_tagger(cfg: TeacherConfig, train: list[Sentence], dev: list[Sentence],
                 progress: bool = True) -> tuple[Tagger, dict]:
    """Train a tagger on gold labels; returns it (best dev weights) and a JSON-able history:
    ``labels``, ``scheme``, ``steps``, ``best_epoch``, ``best_dev_score``, ``epochs`` (per epoch:
    ``train_loss`` (mean per-sentence NLL), ``sentences_per_s``, ``seconds``, ``dev`` metrics)."""
    optim = cfg.optim
    seed_everything(optim.seed)
    device = resolve_device(cfg.device)
    train = [s for s in train if s.tokens]
    if not train:
        raise ValueError("no non-empty training sentences")
    scheme = effective_scheme(cfg.corpus, train)
    check_labels(train, scheme)
    labels = training_labels(train, scheme)
    tagger = build_tagger(cfg.model, labels, scheme, vocab_sentences=[s.tokens for s in train]).to(device)
    total = optim.epochs * math.ceil(len(train) / optim.batch_size)
    if optim.max_steps:
        total = min(total, optim.max_steps)
    rng = random.Random(optim.seed)
    lengths = [len(s.tokens) for s in train]

    def batches(epoch: int):
        for batch in length_batches(lengths, optim.batch_size, rng):
            yield [train[i] for i in batch]

    def step(sents: list[Sentence], epoch: int, laps) -> Step:
        structure = tagger.structure([s.tokens for s in sents])
        losses = nll(structure, tagger.tag_ids([s.labels for s in sents]))
        return Step(losses.mean(), {"loss": losses.detach().mean()}, len(sents))

    def evaluate():
        if not dev:
            return None
        result = evaluate_tags([s.labels for s in dev], predict(tagger, dev, optim.batch_size), scheme)
        return main_score(result), result

    def report(record: dict) -> None:
        if progress and record["dev"] is not None:
            Console(stderr=True).print(f"epoch {record['epoch']}: loss {record['loss']:.4f}, "
                                       f"dev {record['dev_score']:.4f}")

    loop = Loop(tagger, torch.optim.AdamW(param_groups(tagger, optim)), optim, batches, step,
                lambda steps, seen: warmup_linear(total, optim.warmup)(steps), evaluate, total * optim.batch_size,
                description=cfg.name, on_epoch=report)
    best = loop.run(progress)
    history: dict = {"labels": labels, "scheme": scheme, "steps": loop.steps,
                     "best_epoch": best["epoch"] if dev else None,
                     "best_dev_score": best["score"] if dev else None,
                     "epochs": [{"epoch": r["epoch"], "steps": r["steps"], "train_loss": r.get("loss", 0.0),
                                 "sentences_per_s": r["sentences"] / max(r["wall_s"], 1e-9),
                                 "seconds": r["wall_s"],
                                 **({"dev": r["dev"], "dev_score": r["dev_score"]} if dev else {})}
                                for r in loop.records]}
    return tagger, history
