"""Gold training of a biaffine parser (teachers and tree -> tree students' baseline) on pipeline.loop.

The loss of a batch, normalized per word (summed over its words, divided by their number):

    -log P(gold heads)  under the parser's arc structure: per-word cross entropy (``heads``), the
                        tree CRF's NLL (``tree``), or the cross entropy of the mean-field marginals
                        Q at the gold heads (second order: Wang & Tu 2020's end-to-end training)
    -log P(gold relation | gold head -> word)   the relation classifier at the gold arcs

Optimizer, schedule, batching and early stopping are the tagger's (pipeline.gold_loop): AdamW with
warm-up then linear decay, layer-wise lr decay, ``head_lr`` for everything but the transformer,
length-bucketed batches, dev LAS each epoch with patience, the best dev LAS weights kept.

Gold trees are checked before training: heads must be word positions (0 = the root) and no word its
own head; a ``tree`` decoder (one root child) gives zero probability to anything but a tree with
one root child, and a projective one to non-projective trees, so such a sentence is refused with an
error naming it (a projective CRF over a non-projective treebank: use ``projective: false``, or
projectivize the corpus first).
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.attachment import attachment_scores
from pipeline.config import DecoderConfig, TeacherConfig
from pipeline.gold_loop import batched_inference, gold_history, gold_training, training_sentences
from pipeline.loop import Step
from pipeline.parser import Parser, build_parser
from pipeline.structs import mst
from pipeline.trainer import resolve_device, seed_everything


def relation_labels(train: list) -> list[str]:
    """The relations seen in training, sorted."""
    return sorted({r for s in train for r in s.rels})


def check_gold(sentences: list, decoder: DecoderConfig) -> None:
    """Every sentence must have one head and one relation per word, heads in 0..n and no self loop;
    under a ``tree`` decoder its heads must form a tree with one root child (projective when
    ``decoder.projective``). ValueError naming the first sentence that fails."""
    for s in sentences:
        sid = getattr(s, "sid", "?")
        heads, rels = getattr(s, "heads", None), getattr(s, "rels", None)
        if heads is None or rels is None:
            raise ValueError(f"sentence {sid} has no gold heads / relations (a parser needs a CoNLL-U "
                             f"corpus with HEAD and DEPREL)")
        n = len(s.tokens)
        if len(heads) != n or len(rels) != n:
            raise ValueError(f"sentence {sid}: {n} words but {len(heads)} heads and {len(rels)} relations")
        bad = [i + 1 for i, h in enumerate(heads) if not 0 <= h <= n or h == i + 1]
        if bad:
            raise ValueError(f"sentence {sid}: word {bad[0]} has head {heads[bad[0] - 1]} (heads must be "
                             f"0..{n}, 0 = the root, and no word its own head)")
        if decoder.kind == "tree":
            _check_tree(sid, heads, decoder.projective)


def _check_tree(sid: str, heads: list[int], projective: bool) -> None:
    y = torch.tensor([[0] + list(heads)])
    n = torch.tensor([len(heads)])
    if not bool(mst.is_tree(y, n, False, False)):
        raise ValueError(f"sentence {sid}: its gold heads {heads} contain a cycle (not a tree)")
    roots = sum(h == 0 for h in heads)
    if roots != 1:
        raise ValueError(f"sentence {sid}: its gold tree has {roots} root children; decoder.kind 'tree' "
                         f"gives probability 1 to single-root trees only (use decoder.kind 'heads')")
    if projective and not bool(mst.is_tree(y, n, True, True)):
        raise ValueError(f"sentence {sid}: its gold tree is not projective; a projective tree CRF gives it "
                         f"probability 0 (set decoder.projective: false, or projectivize the corpus)")


def gold_losses(parser: Parser, sentences: list) -> tuple[Tensor, Tensor]:
    """-log P(gold heads) [B] under the parser's arc structure (module docstring) and
    -log P(gold relations | gold arcs) [B], each summed over the words of its sentence."""
    structure = parser.structure([s.tokens for s in sentences])
    heads, rels = parser.gold([s.heads for s in sentences], [s.rels for s in sentences]).unbind(1)
    return -structure.arcs.log_prob(heads), -structure.labels.log_prob(heads, rels)


def parse_sentences(parser: Parser, sentences: list, batch_size: int = 32) -> tuple[list, list]:
    """(heads, relations) of each sentence (``Sentence`` objects or token lists), batched by length,
    in eval mode under ``torch.inference_mode``; empty sentences give empty lists. The module's
    train/eval mode is restored afterwards."""
    tokens = [getattr(s, "tokens", s) for s in sentences]
    heads: list[list[int]] = [[] for _ in tokens]
    rels: list[list[str]] = [[] for _ in tokens]

    def run(idx: list[int], batch: list[list[str]]) -> None:
        for i, h, r in zip(idx, *parser.parse(batch)):
            heads[i], rels[i] = h, r
    batched_inference(parser, tokens, batch_size, run)
    return heads, rels


def evaluate_parser(parser: Parser, sentences: list, batch_size: int = 32) -> dict:
    """UAS / LAS of the parser's trees on gold ``sentences`` (``attachment_scores``: punctuation
    excluded when the sentences carry UPOS tags)."""
    heads, rels = parse_sentences(parser, sentences, batch_size)
    upos = [getattr(s, "upos", None) for s in sentences]
    return attachment_scores([s.heads for s in sentences], [s.rels for s in sentences], heads, rels,
                             upos=None if any(u is None for u in upos) else upos)


def train_parser(cfg: TeacherConfig, train: list, dev: list, progress: bool = True) -> tuple[Parser, dict]:
    """Train a biaffine parser on gold trees; returns it (best dev LAS weights) and a JSON-able
    history: ``labels`` (relations), ``decoder``, ``steps``, ``best_epoch``, ``best_dev_score`` (LAS),
    ``epochs`` (per epoch: ``train_loss`` / ``arc_loss`` / ``rel_loss`` (per word), ``sentences_per_s``,
    ``seconds``, ``dev`` {uas, las, words})."""
    optim = cfg.optim
    seed_everything(optim.seed)
    device = resolve_device(cfg.device)
    train = training_sentences(train)
    dev = [s for s in dev if s.tokens]
    check_gold(train, cfg.model.decoder)
    check_gold(dev, DecoderConfig(kind="heads"))  # dev is only scored: any head vector will do
    labels = relation_labels(train)
    parser = build_parser(cfg.model, labels, vocab_sentences=[s.tokens for s in train]).to(device)
    def step(sents: list, epoch: int, laps) -> Step:
        sizes = [len(s.tokens) for s in sents]
        words = sum(sizes)
        arc, rel = (loss.sum() / words for loss in gold_losses(parser, sents))
        return Step(arc + rel, {"loss": (arc + rel).detach(), "arc_loss": arc.detach(), "rel_loss": rel.detach()},
                    len(sents), words, len(sents) * max(sizes))

    def evaluate():
        if not dev:
            return None
        result = evaluate_parser(parser, dev, optim.batch_size)
        return result["las"], result

    loop, best = gold_training(parser, optim, cfg.name, train, step, evaluate,
                               lambda r: f"dev UAS {r['dev']['uas']:.4f} LAS {r['dev']['las']:.4f}", progress)
    history = gold_history(loop, best, bool(dev), ("arc_loss", "rel_loss"), labels=labels,
                           decoder=cfg.model.decoder.kind)
    return parser, history
