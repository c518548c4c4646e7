"""A span NER teacher (structural KD slides, case 4): a biaffine span scorer on any word encoder.

NER as dependency parsing (Yu, Bohnet & Poesio 2020, "Named Entity Recognition as Dependency
Parsing"): two MLPs give every word a start and an end vector, and a biaffine map scores every
span (start i, end j, type m):

    h_s(i) = MLP_start(x_i),  h_e(j) = MLP_end(x_j)                      (decoder.span_mlp each)
    r_m(i, j) = h_s(i)^T U_m h_e(j) + W_m (h_s(i) (+) h_e(j)) + b_m      scores [B, L, L, E]

(``biaffine.Biaffine`` with its bias inputs on both sides is exactly this form.) Yu et al. classify
each span locally and decode greedily; here the scores are the potentials of ``structs.Spans``, a
semi-Markov CRF over sets of non-overlapping typed spans, so training is the exact span-set NLL

    loss = -log P(gold span set) = log Z - sum_{(i, j, m) in gold} r_m(i, j)

(Z by the semi-Markov forward algorithm) and decoding is its exact argmax (semi-Markov Viterbi).
``decoder.max_span_width`` (None = any width) sets r_m(i, j) = -inf for j - i + 1 above it; Spans
itself gives -inf to j < i and to spans past the sentence.

``labels`` are the corpus labels (``scheme``: IOB1, IOB2 or BIOES); the entity types are theirs
(``schemes.entity_types``), so ``decode`` gives tag sequences in the corpus scheme like a tagger.
A saved span tagger is a model folder like a tagger's (docs/DESIGN.md) with
``"architecture": "span_tagger"`` in config.json. No pickle.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model
from torch import Tensor, nn

from pipeline.biaffine import MLP, Biaffine
from pipeline.config import ModelConfig, to_dict
from pipeline.potentials import NEG_INF
from pipeline.schemes import encode, entity_types, spans
from pipeline.structs import Spans
from pipeline.tagger import FORMAT, Tagger, fresh_encoder, read_folder

ARCHITECTURE = "span_tagger"
KIND = "spans"


class SpanTagger(nn.Module):
    """Biaffine span scorer + ``Spans``; see ``build_span_tagger`` and ``SpanTagger.load``."""

    def __init__(self, cfg: ModelConfig, labels: list[str], scheme: str, encoder: nn.Module):
        super().__init__()
        dec = cfg.decoder
        if dec.kind != KIND:
            raise ValueError(f"a span tagger's decoder.kind must be {KIND!r}, got {dec.kind!r}")
        if scheme not in ("IOB1", "IOB2", "BIOES"):
            raise ValueError(f"a span tagger needs an entity tag scheme (IOB1, IOB2, BIOES), got {scheme!r}")
        self.types = entity_types(labels)
        if not self.types:
            raise ValueError(f"a span tagger needs at least one entity type in its labels, got {labels}")
        self.cfg, self.labels, self.scheme = cfg, list(labels), scheme
        self.type_index = {t: e for e, t in enumerate(self.types)}
        self.labels_bioes = ["O"] + [f"{p}-{t}" for t in self.types for p in "BIES"]
        self.encoder = encoder
        dim, p = encoder.output_dim, cfg.encoder.dropout
        self.dropout = nn.Dropout(p)
        self.start_mlp, self.end_mlp = MLP(dim, dec.span_mlp, p), MLP(dim, dec.span_mlp, p)
        self.span_attn = Biaffine(dec.span_mlp, len(self.types))

    @property
    def device(self) -> torch.device:
        return self.span_attn.weight.device

    def featurize(self, batch_tokens: list[list[str]]) -> dict[str, Tensor]:
        """The encoder's CPU input tensors for a batch (``forward`` then needs tensors only)."""
        return self.encoder.featurize(batch_tokens)

    def span_scores(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(r [B, L, L, E] float32, r[b, i, j, m] = score of span (i, j inclusive, type m), -inf
        above ``max_span_width``; lengths [B])."""
        vectors, mask = self.encoder(features)
        x = self.dropout(vectors)
        # Biaffine(dep, head)[b, h, d] with head = start i, dep = end j: [B, i, j, E]
        scores = self.span_attn(self.end_mlp(x), self.start_mlp(x)).float()
        width = self.cfg.decoder.max_span_width
        if width is not None:
            pos = torch.arange(scores.shape[1], device=scores.device)
            too_wide = pos[None, :] - pos[:, None] + 1 > width
            scores = scores.masked_fill(too_wide[None, :, :, None], NEG_INF)
        return scores, mask.sum(1)

    def forward(self, features: dict[str, Tensor]) -> Spans:
        """The batch's ``Spans`` over the span scores (``span_scores``)."""
        scores, lengths = self.span_scores(features)
        return Spans(scores, lengths, self.labels_bioes)

    def structure(self, batch_tokens: list[list[str]]) -> Spans:
        """``forward(featurize(batch_tokens))``."""
        return self(self.featurize(batch_tokens))

    def decode(self, batch_tokens: list[list[str]]) -> list[list[str]]:
        """The best span set of each sentence as tags in the corpus scheme. Runs without
        gradients in the module's current mode: call ``.eval()`` first for inference."""
        with torch.no_grad():
            best = self.structure(batch_tokens).argmax().tolist()
        out = []
        for ids, tokens in zip(best, batch_tokens):
            bioes = [self.labels_bioes[i] for i in ids[:len(tokens)]]
            out.append(encode(spans(bioes), len(tokens), self.scheme))
        return out

    def gold(self, batch_labels: list[list[str]]) -> Tensor:
        """Gold tag sequences (any prefixed scheme) -> the BIOES ids [B, L] long of their span
        sets that ``Spans.score`` / ``log_prob`` take (0 = O, also at padding), on the model's device."""
        longest = max((len(s) for s in batch_labels), default=0)
        out = torch.zeros(len(batch_labels), longest, dtype=torch.long)
        for b, tags in enumerate(batch_labels):
            for start, end, etype in spans(tags):
                if etype not in self.type_index:
                    raise KeyError(f"entity type {etype!r} is not one of the span tagger's types {self.types}")
                base = 1 + 4 * self.type_index[etype]
                if end - start == 1:
                    out[b, start] = base + 3
                else:
                    out[b, start], out[b, start + 1:end - 1], out[b, end - 1] = base, base + 1, base + 2
        return out.to(self.device)

    def _meta(self) -> dict:
        return {"format": FORMAT, "architecture": ARCHITECTURE, "model": to_dict(self.cfg),
                "labels": self.labels, "scheme": self.scheme, "decoder": KIND}

    # The model-folder format is the tagger's: the same writer, fingerprint and tokenizer text.
    _tokenizer_text = Tagger._tokenizer_text
    fingerprint = Tagger.fingerprint
    save = Tagger.save

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> SpanTagger:
        """Rebuild a saved span tagger (offline: only the folder is read) on ``device``, in eval mode."""
        meta, cfg, encoder = read_folder(
            folder, (ARCHITECTURE, "span tagger", "load it with pipeline.hf_teacher.load_any_teacher"))
        model = cls(cfg, meta["labels"], meta["scheme"], encoder)
        load_model(model, str(Path(folder) / "model.safetensors"), strict=True)
        return model.to(device).eval()


def build_span_tagger(model_cfg: ModelConfig, labels: list[str], scheme: str,
                      vocab_sentences: list[list[str]] | None = None) -> SpanTagger:
    """A fresh span tagger over the entity types of ``labels``: pretrained transformer weights, or
    a BiLSTM whose vocabulary is built from ``vocab_sentences`` (required for BiLSTM encoders)."""
    cfg, encoder = fresh_encoder(model_cfg, vocab_sentences)
    return SpanTagger(cfg, labels, scheme, encoder)
