"""The one model interface teachers and students share: encoder + dropout + linear head + decoder.

A saved tagger is a self-contained folder (see docs/DESIGN.md, "Model folders"):

    config.json          {"model": ModelConfig, "labels", "scheme", "decoder", "format"}
    model.safetensors    every weight and buffer (constraints included)
    encoder/             transformer encoders: HF config.json + tokenizer files (no original path needed)
    vocab.json           BiLSTM encoders: word and char vocabularies
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from pipeline.config import ModelConfig, from_dict, to_dict
from pipeline.decoders import build_decoder
from pipeline.encoders import BiLSTMEncoder, TransformerWordEncoder, Vocab, WordEncoder
from pipeline.potentials import Constraints
from pipeline.schemes import allowed_transitions
from pipeline.structs import Structure

FORMAT = 1
ENCODER_DIR = "encoder"


class Tagger(nn.Module):
    """Word-level sequence labeler; see ``build_tagger`` and ``Tagger.load`` to create one."""

    def __init__(self, cfg: ModelConfig, labels: list[str], scheme: str, encoder: nn.Module,
                 constraints: Constraints | None = None):
        super().__init__()
        self.cfg = cfg
        self.labels = list(labels)
        self.scheme = scheme
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.encoder = encoder
        self.dropout = nn.Dropout(cfg.encoder.dropout)
        self.head = nn.Linear(encoder.output_dim, len(self.labels))
        self.decoder = build_decoder(cfg.decoder.kind, len(self.labels), constraints)

    @property
    def is_crf(self) -> bool:
        return self.decoder.kind == "crf"

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def featurize(self, batch_tokens: list[list[str]]) -> dict[str, Tensor]:
        """The encoder's CPU input tensors for a batch (loader workers call this off the training
        thread; ``forward`` then needs tensors only)."""
        return self.encoder.featurize(batch_tokens)

    def forward(self, features: dict[str, Tensor]) -> Structure:
        """The batch's Structure (ChainCRF or Factorized) over float32 word-level emissions."""
        vectors, mask = self.encoder(features)
        emissions = self.head(self.dropout(vectors)).float()
        return self.decoder.structure(emissions, mask)

    def structure(self, batch_tokens: list[list[str]]) -> Structure:
        """``forward(featurize(batch_tokens))``."""
        return self(self.featurize(batch_tokens))

    def decode(self, batch_tokens: list[list[str]]) -> list[list[str]]:
        """Viterbi (CRF) or argmax (MaxEnt, constrained when the scheme has constraints) labels.

        Runs without gradients in the module's current mode: call ``.eval()`` first for inference.
        """
        with torch.no_grad():
            paths = self.structure(batch_tokens).argmax().tolist()
        return [[self.labels[i] for i in path[:len(tokens)]] for path, tokens in zip(paths, batch_tokens)]

    def tag_ids(self, batch_labels: list[list[str]]) -> Tensor:
        """Label strings -> [B, L] long on the model's device (0 at padding)."""
        longest = max((len(s) for s in batch_labels), default=0)
        out = torch.zeros(len(batch_labels), longest, dtype=torch.long)
        for b, labels in enumerate(batch_labels):
            try:
                out[b, :len(labels)] = torch.tensor([self.label_index[x] for x in labels], dtype=torch.long)
            except KeyError as err:
                raise KeyError(f"label {err} is not one of the tagger's labels {self.labels}") from None
        return out.to(self.device)

    def _meta(self) -> dict:
        return {"format": FORMAT, "model": to_dict(self.cfg), "labels": self.labels,
                "scheme": self.scheme, "decoder": self.decoder.kind}

    def _tokenizer_text(self) -> str:
        if isinstance(self.encoder, TransformerWordEncoder):
            return self.encoder.tokenizer.backend_tokenizer.to_str()
        return self.encoder.vocab.to_json()

    def fingerprint(self) -> str:
        """sha256 of the weights (names, dtypes, shapes, bytes), labels, scheme, config, tokenizer."""
        h = hashlib.sha256()
        h.update(json.dumps(self._meta(), sort_keys=True).encode())
        h.update(self._tokenizer_text().encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def save(self, folder: str | Path) -> Path:
        """Write the model folder atomically (temporary sibling folder, then rename)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(self._meta(), indent=2) + "\n", encoding="utf-8")
        save_model(self, str(tmp / "model.safetensors"))
        if isinstance(self.encoder, TransformerWordEncoder):
            self.encoder.save_files(tmp / ENCODER_DIR)
        else:
            self.encoder.vocab.save(tmp / "vocab.json")
        if folder.exists():
            os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Tagger:
        """Rebuild a saved tagger (offline: only the folder is read) on ``device``, in eval mode."""
        meta, cfg, encoder = read_folder(folder)
        tagger = cls(cfg, meta["labels"], meta["scheme"], encoder, _constraints(cfg, meta["labels"],
                                                                                 meta["scheme"]))
        load_model(tagger, str(Path(folder) / "model.safetensors"), strict=True)
        return tagger.to(device).eval()


def read_folder(folder: str | Path, architecture: tuple[str, str, str] | None = None
                ) -> tuple[dict, ModelConfig, WordEncoder]:
    """(config.json, model config, the encoder rebuilt without pretrained weights) of a model folder
    (a tagger's, a parser's or a span tagger's: same format); ValueError for a format this version
    cannot read, or, with ``architecture`` = (name in config.json, what it is, how to load the
    others), for a folder of another architecture (a tagger's has none)."""
    folder = Path(folder)
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: unsupported model folder format {meta.get('format')!r}")
    if architecture is not None and meta.get("architecture") != architecture[0]:
        raise ValueError(f"{folder}: not a {architecture[1]} folder (architecture "
                         f"{meta.get('architecture', 'tagger')!r}); {architecture[2]}")
    cfg = from_dict(ModelConfig, meta["model"])
    if cfg.encoder.kind == "transformer":
        encoder = TransformerWordEncoder(replace(cfg.encoder, name=str(folder / ENCODER_DIR)), pretrained=False)
    else:
        encoder = BiLSTMEncoder(cfg.encoder, Vocab.load(folder / "vocab.json"), pretrained=False)
    return meta, cfg, encoder


def fresh_encoder(model_cfg: ModelConfig, vocab_sentences: list[list[str]] | None) -> tuple[ModelConfig, WordEncoder]:
    """A copy of ``model_cfg`` (its BiLSTM word_dim filled in) and a fresh encoder: pretrained
    transformer weights, or a BiLSTM whose vocabulary is built from ``vocab_sentences``."""
    cfg = copy.deepcopy(model_cfg)
    if cfg.encoder.kind == "transformer":
        encoder = TransformerWordEncoder(cfg.encoder)
    elif cfg.encoder.kind == "bilstm":
        if vocab_sentences is None:
            raise ValueError("a BiLSTM encoder needs vocab_sentences to build its vocabulary")
        encoder = BiLSTMEncoder(cfg.encoder, Vocab.build(vocab_sentences, cfg.encoder.min_word_count))
        cfg.encoder.word_dim = encoder.word_dim
    else:
        raise ValueError(f"encoder kind must be transformer or bilstm, got {cfg.encoder.kind!r}")
    return cfg, encoder


def _constraints(cfg: ModelConfig, labels: list[str], scheme: str) -> Constraints | None:
    if not cfg.decoder.constraints or scheme == "none":
        return None
    return allowed_transitions(labels, scheme)


def build_tagger(model_cfg: ModelConfig, labels: list[str], scheme: str,
                 vocab_sentences: list[list[str]] | None = None) -> Tagger:
    """A fresh tagger: pretrained transformer weights, or a BiLSTM whose vocabulary is built from
    ``vocab_sentences`` (token lists; required for BiLSTM encoders)."""
    cfg, encoder = fresh_encoder(model_cfg, vocab_sentences)
    return Tagger(cfg, labels, scheme, encoder, _constraints(cfg, labels, scheme))
