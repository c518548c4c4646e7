"""Gold training of the span NER teacher (pipeline.span_model) on the shared recipe (pipeline.gold_loop).

The loss of a batch is the mean over its sentences of the exact span-set NLL

    -log P(gold span set) = log Z - sum_{(i, j, m) in gold} r_m(i, j)

(``Spans.log_prob`` of the gold BIOES ids; Z by the semi-Markov forward algorithm). Dev entity F1
(``metrics.evaluate_tags`` in the corpus scheme) each epoch, patience and the best weights kept.

Gold tags are checked before training: valid in the corpus scheme (``trainer.check_labels``) and,
with ``decoder.max_span_width``, no entity wider than it (the model gives such a set probability 0).
"""
from __future__ import annotations

from torch import Tensor

from pipeline.config import TeacherConfig
from pipeline.corpus import Sentence, effective_scheme
from pipeline.gold_loop import gold_history, gold_training, training_sentences
from pipeline.loop import Step
from pipeline.schemes import spans
from pipeline.span_model import SpanTagger, build_span_tagger
from pipeline.trainer import check_labels, dev_scorer, resolve_device, seed_everything, training_labels


def check_widths(sentences: list[Sentence], max_width: int | None) -> None:
    """ValueError naming the first sentence with an entity wider than ``max_width`` (None: any width)."""
    if max_width is None:
        return
    for s in sentences:
        wide = [(a, b, t) for a, b, t in spans(s.labels) if b - a > max_width]
        if wide:
            a, b, t = wide[0]
            raise ValueError(f"sentence {getattr(s, 'sid', '?')}: entity {t} of {b - a} words "
                             f"({' '.join(s.tokens[a:b])}) is wider than decoder.max_span_width {max_width}")


def span_losses(model: SpanTagger, sentences: list[Sentence]) -> Tensor:
    """-log P(gold span set) [B] of each sentence (module docstring)."""
    structure = model.structure([s.tokens for s in sentences])
    return -structure.log_prob(model.gold([s.labels for s in sentences]))


def train_span_tagger(cfg: TeacherConfig, train: list[Sentence], dev: list[Sentence],
                      progress: bool = True) -> tuple[SpanTagger, dict]:
    """Train a span tagger on gold entities; returns it (best dev F1 weights) and a JSON-able
    history like ``trainer.train_tagger``'s: ``labels``, ``scheme``, ``steps``, ``best_epoch``,
    ``best_dev_score``, ``still_rising``, ``epochs`` (per epoch: ``train_loss`` (mean per-sentence
    span-set NLL), ``sentences_per_s``, ``seconds``, ``dev`` metrics)."""
    optim = cfg.optim
    seed_everything(optim.seed)
    device = resolve_device(cfg.device)
    train = training_sentences(train)
    scheme = effective_scheme(cfg.corpus, train)
    check_labels(train, scheme)
    check_widths(train, cfg.model.decoder.max_span_width)
    labels = training_labels(train, scheme)
    model = build_span_tagger(cfg.model, labels, scheme, vocab_sentences=[s.tokens for s in train]).to(device)

    def step(sents: list[Sentence], epoch: int, laps) -> Step:
        losses = span_losses(model, sents)
        return Step(losses.mean(), {"loss": losses.detach().mean()}, len(sents))

    loop, best = gold_training(model, optim, cfg.name, train, step, dev_scorer(model, dev, scheme, optim.batch_size),
                               lambda record: f"dev F1 {record['dev_score']:.4f}", progress)
    history = gold_history(loop, best, bool(dev), labels=labels, scheme=scheme, decoder=cfg.model.decoder.kind)
    return model, history
