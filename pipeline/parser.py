"""The deep biaffine dependency parser (Dozat & Manning 2017): teacher, and tree -> tree student.

    encoder (TransformerWordEncoder | BiLSTMEncoder) -> word vectors [B, L, H]
    a learned root vector prepended at position 0     -> x [B, L+1, H], dropout
    MLP_arc-dep / MLP_arc-head (decoder.arc_mlp)      -> Biaffine with the head bias: arc [B, L+1, L+1]
    MLP_rel-dep / MLP_rel-head (decoder.rel_mlp)      -> Biaffine: relation scores [B, L+1, L+1, R]

Every head-dependent pair gets all R relation scores (memory [B, L+1, L+1, R] float32: 32 sentences
of 60 words and 40 relations take 19 MB; a 1,000-word sentence 160 MB, so very long sentences are
the limit). MLP dropout is ``encoder.dropout``.

The structure (``forward``) is a ``LabeledArcs`` whose arcs are, by ``decoder.kind``:
  - ``heads``: ``HeadSelection`` (a softmax over heads per word, the biaffine parser's own
    factorization); with ``decoder.second_order``: sibling scores (``biaffine.SiblingScorer``) and
    Wang & Tu's (2020) mean-field head marginals Q (``mean_field_heads``, ``mean_field_iterations``
    parallel updates). The arcs are then ``HeadSelection(F)`` with F the logits of the last update
    (F[h, d] = arc[h, d] + sum_s Q^{T-1}(h_s = h) sib[h, d, s]), so its marginals are Q^T =
    softmax_h F exactly, and its log-probs are log Q^T computed in log space (never log of an
    underflowed Q). A temperature tau divides F (the mean field itself runs at tau = 1).
  - ``tree``: ``DependencyCRF`` (one root child; ``decoder.projective``: Eisner, else the
    matrix-tree theorem). The second-order mean field has no tree constraint, so
    ``second_order`` with ``tree`` is refused.

``parse`` always returns well-formed trees: the best single-root tree (Chu-Liu-Edmonds, or Eisner
when ``decoder.projective``) under the arc scores (for ``heads`` these give the same tree as the
arc log-probs: a tree has one head per word, so the per-word normalizers add a constant), then
each chosen arc's most probable relation.

A saved parser is a model folder like a tagger's (docs/DESIGN.md): config.json with
``"architecture": "biaffine"`` (labels = the relation names), model.safetensors, encoder/ or
vocab.json. No pickle.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model
from torch import Tensor, nn

from pipeline.biaffine import MLP, Biaffine, SiblingScorer
from pipeline.config import ModelConfig, to_dict
from pipeline.structs import ArcLabels, DependencyCRF, HeadSelection, LabeledArcs, mean_field_heads
from pipeline.tagger import FORMAT, Tagger, fresh_encoder, read_folder

ARCHITECTURE = "biaffine"
KINDS = ("heads", "tree")


class Parser(nn.Module):
    """Biaffine dependency parser; see ``build_parser`` and ``Parser.load`` to create one."""

    scheme = "none"  # the Teacher protocol's tag scheme: relations are plain labels

    def __init__(self, cfg: ModelConfig, labels: list[str], encoder: nn.Module):
        super().__init__()
        dec = cfg.decoder
        if dec.kind not in KINDS:
            raise ValueError(f"a biaffine parser's decoder.kind must be one of {list(KINDS)}, got {dec.kind!r}")
        if dec.second_order and dec.kind != "heads":
            raise ValueError("decoder.second_order is Wang & Tu's mean field over head selection (no tree "
                             "constraint): use decoder.kind 'heads' (parse still returns trees)")
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"relation labels must be non-empty and distinct, got {labels}")
        self.cfg = cfg
        self.labels = list(labels)
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.encoder = encoder
        dim, p = encoder.output_dim, cfg.encoder.dropout
        self.root = nn.Parameter(torch.randn(dim) / dim ** 0.5)
        self.dropout = nn.Dropout(p)
        self.arc_dep, self.arc_head = MLP(dim, dec.arc_mlp, p), MLP(dim, dec.arc_mlp, p)
        self.rel_dep, self.rel_head = MLP(dim, dec.rel_mlp, p), MLP(dim, dec.rel_mlp, p)
        self.arc_attn = Biaffine(dec.arc_mlp, 1, head_bias=False)
        self.rel_attn = Biaffine(dec.rel_mlp, len(self.labels))
        self.siblings = SiblingScorer(dim, dec.rel_mlp, dec.rel_mlp, p) if dec.second_order else None

    @property
    def device(self) -> torch.device:
        return self.root.device

    def featurize(self, batch_tokens: list[list[str]]) -> dict[str, Tensor]:
        """The encoder's CPU input tensors for a batch (``forward`` then needs tensors only)."""
        return self.encoder.featurize(batch_tokens)

    def forward(self, features: dict[str, Tensor]) -> LabeledArcs:
        """The batch's ``LabeledArcs`` (arc scores [B, L+1, L+1] and relation scores
        [B, L+1, L+1, R] in float32, position 0 = the root)."""
        vectors, mask = self.encoder(features)
        root = self.root.to(vectors.dtype).expand(len(vectors), 1, -1)
        x = self.dropout(torch.cat([root, vectors], 1))
        arc = self.arc_attn(self.arc_dep(x), self.arc_head(x))[..., 0].float()
        rel = self.rel_attn(self.rel_dep(x), self.rel_head(x)).float()
        lengths = mask.sum(1)
        if self.siblings is not None:
            arc = self._mean_field_logits(arc, self.siblings(x).float(), mask)
        if self.cfg.decoder.kind == "heads":
            arcs = HeadSelection(arc, lengths)
        else:
            arcs = DependencyCRF(arc, lengths, projective=self.cfg.decoder.projective, single_root=True)
        return LabeledArcs(arcs, ArcLabels(rel, lengths))

    def _mean_field_logits(self, arc: Tensor, sib: Tensor, mask: Tensor) -> Tensor:
        """F = the logits of the last mean-field update (module docstring): softmax_h F =
        ``mean_field_heads(arc, sib, mask, T)``. Q^{T-1} is zero on impossible arcs (self loops
        included) and ``sib`` zero at d = s, so the sum runs over the siblings the mean field uses;
        F at impossible arcs is arbitrary (HeadSelection makes it -inf)."""
        q = mean_field_heads(arc, sib, mask, self.cfg.decoder.mean_field_iterations - 1)
        return arc + torch.einsum("bhs,bhds->bhd", q, sib)

    def structure(self, batch_tokens: list[list[str]]) -> LabeledArcs:
        """``forward(featurize(batch_tokens))``."""
        return self(self.featurize(batch_tokens))

    def trees(self, structure: LabeledArcs) -> Tensor:
        """The best well-formed tree of each sentence, heads [B, L+1] (module docstring)."""
        arcs = structure.arcs
        if arcs.kind == "heads":
            arcs = DependencyCRF(arcs.scores, arcs.word_lengths, projective=self.cfg.decoder.projective)
        return arcs.argmax()

    def parse(self, batch_tokens: list[list[str]]) -> tuple[list[list[int]], list[list[str]]]:
        """(heads, relations) per sentence: head of each word (1-based, 0 = the root) of its best
        tree and the most probable relation of each of its arcs. Runs without gradients in the
        module's current mode: call ``.eval()`` first for inference."""
        with torch.no_grad():
            structure = self.structure(batch_tokens)
            heads = self.trees(structure)
            rels = structure.labels.best(heads)
        heads, rels = heads.tolist(), rels.tolist()
        return ([h[1:len(t) + 1] for h, t in zip(heads, batch_tokens)],
                [[self.labels[r] for r in row[1:len(t) + 1]] for row, t in zip(rels, batch_tokens)])

    def gold(self, batch_heads: list[list[int]], batch_rels: list[list[str]]) -> Tensor:
        """Gold trees as ``LabeledArcs`` outputs y [B, 2, L+1] long on the model's device: row 0
        the heads (``batch_heads[b][i]`` = head of word i + 1, 0 = the root), row 1 relation ids
        (0 at position 0 and padding)."""
        longest = max((len(h) for h in batch_heads), default=0)
        out = torch.zeros(len(batch_heads), 2, longest + 1, dtype=torch.long)
        for b, (heads, rels) in enumerate(zip(batch_heads, batch_rels)):
            if len(heads) != len(rels):
                raise ValueError(f"batch row {b}: {len(heads)} heads but {len(rels)} relations")
            try:
                ids = [self.label_index[r] for r in rels]
            except KeyError as err:
                raise KeyError(f"relation {err} is not one of the parser's relations {self.labels}") from None
            out[b, 0, 1:len(heads) + 1] = torch.tensor(heads, dtype=torch.long)
            out[b, 1, 1:len(heads) + 1] = torch.tensor(ids, dtype=torch.long)
        return out.to(self.device)

    def _meta(self) -> dict:
        return {"format": FORMAT, "architecture": ARCHITECTURE, "model": to_dict(self.cfg),
                "labels": self.labels, "scheme": self.scheme, "decoder": self.cfg.decoder.kind}

    # The model-folder format is the tagger's: the same writer, fingerprint and tokenizer text.
    _tokenizer_text = Tagger._tokenizer_text
    fingerprint = Tagger.fingerprint
    save = Tagger.save

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Parser:
        """Rebuild a saved parser (offline: only the folder is read) on ``device``, in eval mode."""
        meta, cfg, encoder = read_folder(folder, (ARCHITECTURE, "biaffine parser", "load a tagger with Tagger.load"))
        parser = cls(cfg, meta["labels"], encoder)
        load_model(parser, str(Path(folder) / "model.safetensors"), strict=True)
        return parser.to(device).eval()


def build_parser(model_cfg: ModelConfig, labels: list[str],
                 vocab_sentences: list[list[str]] | None = None) -> Parser:
    """A fresh parser over the relation ``labels``: pretrained transformer weights, or a BiLSTM
    whose vocabulary is built from ``vocab_sentences`` (token lists; required for BiLSTM encoders)."""
    cfg, encoder = fresh_encoder(model_cfg, vocab_sentences)
    return Parser(cfg, labels, encoder)
