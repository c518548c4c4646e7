"""The recipe both teachers train by on gold (tagger: pipeline.trainer, parser: pipeline.parse_train).

AdamW with linear warm-up then linear decay (``warmup_linear``), optional layer-wise lr decay for
transformer layers and ``head_lr`` for everything else (``param_groups``), length-bucketed shuffled
batches (``length_batches``), dev evaluation each epoch with patience and the best weights kept
(pipeline.loop.Loop). ``gold_training`` wires them; ``batched_inference`` is the eval-mode,
sorted-by-length pass that prediction, parsing and dev scoring share.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from rich.console import Console

from pipeline.batching import pack
from pipeline.config import OptimConfig
from pipeline.encoders import TransformerWordEncoder
from pipeline.loop import Loop, Step, epochs_for

BUCKET_POOL = 50  # batches per pool sorted by length before the batches are shuffled


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


def param_groups(model: torch.nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: transformer parameters at ``lr * layer_decay ** (depth below the top layer)``,
    everything else at ``head_lr``; no weight decay on biases, norms and decoder factors."""
    encoder = model.encoder
    transformer = isinstance(encoder, TransformerWordEncoder)
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
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


def batched_inference(model: torch.nn.Module, tokens: Sequence[list[str]], batch_size: int,
                      run: Callable[[list[int], list[list[str]]], None]) -> None:
    """Calls ``run(indices, token_lists)`` on batches of the non-empty sentences sorted by length,
    in eval mode under ``torch.inference_mode``; the module's train/eval mode is restored after."""
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = [i for i in order[start:start + batch_size] if tokens[i]]
                if idx:
                    run(idx, [tokens[i] for i in idx])
    finally:
        model.train(was_training)


def gold_training(model: torch.nn.Module, optim: OptimConfig, name: str, train: list,
                  step: Callable[..., Step], evaluate: Callable[[], tuple[float, dict] | None],
                  dev_line: Callable[[dict], str], progress: bool) -> tuple[Loop, dict]:
    """Runs the recipe on ``train`` (non-empty sentences with ``tokens``); returns the loop (its
    ``records``, ``steps``) and the best record. ``step(sentences, epoch, laps)`` gives a batch's
    loss, ``dev_line(record)`` the text printed after an evaluated epoch."""
    per_epoch = math.ceil(len(train) / optim.batch_size)
    optim = replace(optim, epochs=epochs_for(optim, per_epoch))
    total = optim.epochs * per_epoch
    if optim.max_steps:
        total = min(total, optim.max_steps)
    rng = random.Random(optim.seed)
    lengths = [len(s.tokens) for s in train]

    def batches(epoch: int):
        for batch in length_batches(lengths, optim.batch_size, rng):
            yield [train[i] for i in batch]

    def report(record: dict) -> None:
        if progress and record["dev"] is not None:
            Console(stderr=True).print(f"epoch {record['epoch']}: loss {record['loss']:.4f}, {dev_line(record)}")

    loop = Loop(model, torch.optim.AdamW(param_groups(model, optim)), optim, batches, step,
                lambda steps, seen: warmup_linear(total, optim.warmup)(steps), evaluate, total * optim.batch_size,
                description=name, on_epoch=report)
    return loop, loop.run(progress)


def training_sentences(train: list) -> list:
    """The non-empty sentences of ``train``; ValueError when there are none."""
    train = [s for s in train if s.tokens]
    if not train:
        raise ValueError("no non-empty training sentences")
    return train


def gold_history(loop: Loop, best: dict, has_dev: bool, extra: Sequence[str] = (), **fields) -> dict:
    """The JSON-able history of a gold training: ``fields`` (labels, scheme, ...), ``steps``,
    ``best_epoch``, ``best_dev_score``, ``still_rising`` and ``epochs`` (per epoch: epoch, steps,
    train_loss and the ``extra`` losses, sentences_per_s, seconds, dev and dev_score)."""
    epochs = [{"epoch": r["epoch"], "steps": r["steps"], "train_loss": r.get("loss", 0.0),
               **{key: r.get(key, 0.0) for key in extra},
               "sentences_per_s": r["sentences"] / max(r["wall_s"], 1e-9), "seconds": r["wall_s"],
               **({"dev": r["dev"], "dev_score": r["dev_score"]} if has_dev else {})}
              for r in loop.records]
    return {**fields, "steps": loop.steps, "best_epoch": best["epoch"] if has_dev else None,
            "best_dev_score": best["score"] if has_dev else None, "still_rising": best["still_rising"],
            "epochs": epochs}
