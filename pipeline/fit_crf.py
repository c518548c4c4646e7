"""``structkd fit-crf``: give a MaxEnt Hugging Face teacher a CRF by training only its factors.

The checkpoint (encoder and classifier) stays frozen: each sentence's word-level emissions [L, T]
are computed once (``HFTeacher.emissions``) and cached, then a few epochs of Adam fit transitions
[T, T] and start / end [T] (zeros at first: the CRF starts as the teacher's MaxEnt distribution
restricted to the scheme's valid sequences) on the mean gold NLL
``-ChainCRF(emissions, transitions, mask, start, end, constraints).log_prob(gold)``. The result is a
``CRFTeacher`` (pipeline/hf_teacher.py): a ChainCRF teacher, so annotate stores edge marginals and
k-best paths of a CRF. Dev F1 of the MaxEnt teacher (constrained argmax) and of the CRF (Viterbi)
is measured on the same cached emissions (pipeline.metrics) after every epoch, and by default
(``select: dev``) the factors of the best dev epoch are kept, epoch 0 (no fit) included.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from pipeline.batching import budget_batches
from pipeline.config import FitCRFConfig
from pipeline.corpus import Sentence, corpus_splits, effective_scheme, read_corpus
from pipeline.hf_teacher import CRFTeacher, HFTeacher, TeacherError, check_schemes
from pipeline.metrics import evaluate_tags, main_score
from pipeline.structs import ChainCRF, Factorized
from pipeline.trainer import resolve_device


class Batch(NamedTuple):
    rows: list[int]  # indices of the batch's sentences in their split
    emissions: Tensor  # [B, L, T] float32, 0 at padding
    mask: Tensor  # [B, L] bool
    gold: Tensor  # [B, L] long, 0 at padding


def cache_emissions(teacher: HFTeacher, sentences: list[Sentence], batch_size: int) -> list[Tensor]:
    """Each sentence's emissions [L, T] (float32, CPU), the checkpoint run once per sentence in
    length-sorted batches of ``batch_size``."""
    out: list[Tensor | None] = [None] * len(sentences)
    lengths = [len(s.tokens) for s in sentences]
    with torch.no_grad():
        for rows in budget_batches(lengths, None, batch_size):
            emissions, _ = teacher.emissions([sentences[i].tokens for i in rows])
            for b, i in enumerate(rows):
                out[i] = emissions[b, :lengths[i]].cpu()
    return out


def gold_ids(teacher: HFTeacher, sentences: list[Sentence]) -> list[Tensor]:
    """Gold label ids [L] long per sentence; a TeacherError names labels the teacher lacks."""
    if any(s.labels is None for s in sentences):
        raise TeacherError(f"{teacher.source}: fit-crf needs labeled sentences")
    index = {label: i for i, label in enumerate(teacher.labels)}
    unknown = sorted({label for s in sentences for label in s.labels if label not in index})
    if unknown:
        raise TeacherError(f"{teacher.source}: gold labels {unknown} are not the teacher's {teacher.labels}")
    return [torch.tensor([index[label] for label in s.labels], dtype=torch.long) for s in sentences]


def make_batches(emissions: list[Tensor], gold: list[Tensor], batch_size: int) -> list[Batch]:
    """Length-sorted padded batches of at most ``batch_size`` sentences (built once, reused by
    every epoch: the emissions never change)."""
    batches = []
    for rows in budget_batches([len(g) for g in gold], None, batch_size):
        rows = rows.tolist()
        lengths = torch.tensor([len(gold[i]) for i in rows])
        mask = torch.arange(int(lengths.max())) < lengths.unsqueeze(1)
        batches.append(Batch(rows, pad_sequence([emissions[i] for i in rows], batch_first=True), mask,
                             pad_sequence([gold[i] for i in rows], batch_first=True)))
    return batches


def chain(teacher: HFTeacher, batch: Batch, factors: dict[str, Tensor]) -> ChainCRF:
    """The batch's ChainCRF under ``factors`` (transitions, start, end) and the scheme's constraints."""
    return ChainCRF(batch.emissions, factors["transitions"], batch.mask, factors["start"], factors["end"],
                    teacher.constraints)


def fit_factors(teacher: HFTeacher, batches: list[Batch], *, epochs: int, lr: float, seed: int,
                score: Callable[[dict[str, Tensor]], float] | None = None
                ) -> tuple[dict[str, Tensor], list[float], list[float]]:
    """Adam over transitions [T, T], start / end [T] on each batch's mean gold NLL, batch order
    shuffled every epoch. Returns the factors, the mean NLL per sentence of each epoch (epoch 1's
    is measured while the factors move away from zero) and ``score(factors)`` after epochs
    0..epochs (empty without ``score``). With ``score`` the factors returned are those of the best
    score, epoch 0 (zeros) included, ties to the later epoch; without it, the last epoch's.

    Why select: the frozen emissions are fitted to the train split, so its gold NLL can pull the
    transitions where dev F1 drops (measured on the CoNLL-2003 MiniLM checkpoint of docs/RESULTS.md:
    dev 0.9139 before, 0.9092 after 5 epochs). A gold path the scheme forbids is an error naming
    its sentence, never an infinite loss."""
    num = len(teacher.labels)
    factors = {"transitions": torch.zeros(num, num, requires_grad=True),
               "start": torch.zeros(num, requires_grad=True), "end": torch.zeros(num, requires_grad=True)}
    optimizer = torch.optim.Adam(factors.values(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    history: list[float] = []
    scores = [] if score is None else [score(factors)]
    best = {name: value.detach().clone() for name, value in factors.items()}
    for _ in range(epochs):
        total, count = 0.0, 0
        for b in torch.randperm(len(batches), generator=order).tolist():
            batch = batches[b]
            nll = -chain(teacher, batch, factors).log_prob(batch.gold)
            if not torch.isfinite(nll).all():
                bad = batch.rows[int(torch.nonzero(~torch.isfinite(nll))[0])]
                raise TeacherError(f"{teacher.source}: the gold labels of train sentence {bad} are not valid "
                                   f"{teacher.scheme} (probability 0 under the scheme's constraints)")
            optimizer.zero_grad()
            nll.mean().backward()
            optimizer.step()
            total, count = total + float(nll.detach().sum()), count + len(nll)
        history.append(total / max(count, 1))
        if score is not None:
            scores.append(score(factors))
        if score is None or scores[-1] >= max(scores[:-1]):
            best = {name: value.detach().clone() for name, value in factors.items()}
    return best, history, scores


def dev_scores(teacher: HFTeacher, batches: list[Batch], sentences: list[Sentence], scheme: str,
               factors: dict[str, Tensor] | None = None) -> dict:
    """``evaluate_tags`` on ``sentences`` (the split ``batches`` were made from) of the MaxEnt
    teacher (``factors`` None: constrained argmax) or of its CRF under ``factors`` (Viterbi)."""
    pred: list[list[str]] = [[] for _ in sentences]
    with torch.no_grad():
        for batch in batches:
            structure = (Factorized(batch.emissions, batch.mask, teacher.constraints) if factors is None
                         else chain(teacher, batch, factors))
            for i, path in zip(batch.rows, structure.argmax().tolist()):
                pred[i] = [teacher.labels[c] for c in path[:len(sentences[i].tokens)]]
    return evaluate_tags([s.labels for s in sentences], pred, scheme)


def fit_crf(cfg: FitCRFConfig) -> tuple[CRFTeacher, dict]:
    """Load the checkpoint, fit its CRF on ``cfg.corpus`` train, score dev before / after; returns
    the CRFTeacher (not saved) and a JSON-able summary (sentences, seconds of caching and of
    fitting, NLL per epoch, dev scores before / after, ``dev_f1_before`` / ``dev_f1_after``)."""
    teacher = HFTeacher.load(cfg.checkpoint, resolve_device(cfg.device), scheme=cfg.scheme,
                             max_length=cfg.max_length, stride=cfg.stride)
    train = [s for s in read_corpus(cfg.corpus, "train") if s.tokens]
    has_dev = "dev" in corpus_splits(cfg.corpus)
    dev = [s for s in read_corpus(cfg.corpus, "dev") if s.tokens] if has_dev else []
    if not train:
        raise TeacherError(f"corpus {cfg.corpus.name!r}: no labeled train sentences to fit the CRF on")
    scheme = effective_scheme(cfg.corpus, train)
    check_schemes(teacher.scheme, scheme, cfg.checkpoint)
    train_gold, dev_gold = gold_ids(teacher, train), gold_ids(teacher, dev)  # refused before any forward
    started = time.perf_counter()
    train_batches = make_batches(cache_emissions(teacher, train, cfg.batch_size), train_gold, cfg.batch_size)
    dev_batches = make_batches(cache_emissions(teacher, dev, cfg.batch_size), dev_gold, cfg.batch_size)
    cached = time.perf_counter()
    before = dev_scores(teacher, dev_batches, dev, scheme) if dev else None

    def dev_f1(factors: dict[str, Tensor]) -> float:
        return main_score(dev_scores(teacher, dev_batches, dev, scheme, factors))

    factors, history, curve = fit_factors(teacher, train_batches, epochs=cfg.epochs, lr=cfg.lr,
                                          seed=cfg.seed, score=dev_f1 if dev and cfg.select == "dev" else None)
    fitted = time.perf_counter()
    after = dev_scores(teacher, dev_batches, dev, scheme, factors) if dev else None
    summary = {"checkpoint": cfg.checkpoint, "labels": teacher.labels, "scheme": teacher.scheme,
               "train_sentences": len(train), "dev_sentences": len(dev), "epochs": cfg.epochs,
               "emission_seconds": round(cached - started, 3), "fit_seconds": round(fitted - cached, 3),
               "train_nll": history, "select": cfg.select if curve else "last", "dev_f1_per_epoch": curve,
               "best_epoch": max(range(len(curve)), key=lambda e: (curve[e], e)) if curve else cfg.epochs,
               "dev_before": before, "dev_after": after,
               "dev_f1_before": None if before is None else main_score(before),
               "dev_f1_after": None if after is None else main_score(after)}
    return CRFTeacher(teacher, factors["transitions"], factors["start"], factors["end"]).eval(), summary
