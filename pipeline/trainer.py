"""Gold-label training of a tagger (teachers): fine-tune encoder + decoder, early-stop on dev.

The recipe of pipeline.gold_loop (AdamW, warm-up then linear decay, layer-wise lr decay, ``head_lr``
for the emission layer, decoder and a BiLSTM encoder, length-bucketed batches, gradient clipping),
dev F1 (accuracy for POS) each epoch with patience, the best weights kept.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from pipeline.config import TeacherConfig
from pipeline.corpus import Sentence, effective_scheme
from pipeline.gold_loop import batched_inference, gold_history, gold_training, training_sentences
from pipeline.kd.nll import nll
from pipeline.loop import Step
from pipeline.metrics import evaluate_tags, main_score
from pipeline.schemes import complete_labels, first_invalid
from pipeline.tagger import Tagger, build_tagger


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


def predict(tagger: Tagger, sentences: list, batch_size: int = 32) -> list[list[str]]:
    """Labels for each sentence (``Sentence`` objects or token lists), batched by length, in eval
    mode under ``torch.inference_mode``; the module's train/eval mode is restored afterwards."""
    tokens = [getattr(s, "tokens", s) for s in sentences]
    out: list[list[str]] = [[] for _ in tokens]

    def run(idx: list[int], batch: list[list[str]]) -> None:
        for i, labels in zip(idx, tagger.decode(batch)):
            out[i] = labels
    batched_inference(tagger, tokens, batch_size, run)
    return out


def dev_scorer(model, dev: list[Sentence], scheme: str, batch_size: int):
    """The ``evaluate`` of a tagging model's gold training: (main score, metrics) of its labels on
    ``dev`` (entity F1, or accuracy for scheme none), or None without a dev set."""
    def evaluate():
        if not dev:
            return None
        result = evaluate_tags([s.labels for s in dev], predict(model, dev, batch_size), scheme)
        return main_score(result), result
    return evaluate


def train_tagger(cfg: TeacherConfig, train: list[Sentence], dev: list[Sentence],
                 progress: bool = True) -> tuple[Tagger, dict]:
    """Train a tagger on gold labels; returns it (best dev weights) and a JSON-able history:
    ``labels``, ``scheme``, ``steps``, ``best_epoch``, ``best_dev_score``, ``epochs`` (per epoch:
    ``train_loss`` (mean per-sentence NLL), ``sentences_per_s``, ``seconds``, ``dev`` metrics)."""
    optim = cfg.optim
    seed_everything(optim.seed)
    device = resolve_device(cfg.device)
    train = training_sentences(train)
    scheme = effective_scheme(cfg.corpus, train)
    check_labels(train, scheme)
    labels = training_labels(train, scheme)
    tagger = build_tagger(cfg.model, labels, scheme, vocab_sentences=[s.tokens for s in train]).to(device)

    def step(sents: list[Sentence], epoch: int, laps) -> Step:
        structure = tagger.structure([s.tokens for s in sents])
        losses = nll(structure, tagger.tag_ids([s.labels for s in sents]))
        return Step(losses.mean(), {"loss": losses.detach().mean()}, len(sents))

    loop, best = gold_training(tagger, optim, cfg.name, train, step, dev_scorer(tagger, dev, scheme, optim.batch_size),
                               lambda record: f"dev {record['dev_score']:.4f}", progress)
    history = gold_history(loop, best, bool(dev), labels=labels, scheme=scheme)
    return tagger, history
