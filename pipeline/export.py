"""Export a student (``pipeline.tagger.Tagger``) to ONNX; ``pipeline.onnx_decode`` runs the result.

The graph is the student's ``forward`` from featurized tensors to word-level emissions [B, L, T]
float32 (batch and lengths dynamic); decoding stays outside it, in numpy, because it needs only the
small factors written beside it. An export folder holds:

    export.json       format, labels, scheme, decoder; the CRF's learned transitions [T, T] /
                      start [T] / end [T] (finite values) and the scheme's allowed masks (null when
                      unconstrained; forbidden factors become -inf at decode time); the featurize
                      spec; the graphs and the parity measured at export time
    model.onnx        float32 graph
    model.int8.onnx   with ``quantize="int8"``: onnxruntime dynamic int8 quantization (default graph)
    vocab.json        BiLSTM students: word and char vocabularies (the model folder's)
    tokenizer.json    transformer students: the fast tokenizer, as the encoder uses it

Graph inputs (int64): BiLSTM ``words`` [B, L], ``lengths`` [B] and, with a character encoder,
``chars`` [N, C], ``char_lengths`` [N]; transformer ``input_ids`` / ``attention_mask`` [R, S] and
``word_pieces`` [B, L, K] (see ``onnx_decode.TransformerFeatures``).

Why not ``torch.onnx.export`` of the encoder itself (TorchScript exporter, opset 17): its packed
LSTM does not export (the exporter fails on ``pack_padded_sequence``), and the transformer's
``index_add`` pooling exports as a ScatterElements without reduction (repeated indices overwrite
instead of adding: wrong mean pooling). The wrappers here compute the same function with plain
ops: each LSTM direction runs padded (the backward one on each sentence reversed within its
length, so padding never reaches a real position), and gathers replace the scatters (also the
boolean-mask assignment of char features to words). ``export_onnx`` checks the graph against
torch on a ragged probe batch before it writes anything.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.encoders import MAX_WORD_CHARS, BiLSTMEncoder, CharEncoder, TransformerWordEncoder
from pipeline.config import to_dict
from pipeline.errors import DataError
from pipeline.onnx_decode import EXPORT_FILE, FEATURIZERS, FORMAT, VERSION, OnnxTagger, is_export, require
from pipeline.tagger import Tagger

OPSET = 17
TOLERANCE = 1e-4  # max |emission difference| / max(1, max |emission|) accepted at export time
PROBE = [["The", "European", "Commission", "said", "on", "Thursday", "it", "disagreed", "with",
          "German", "advice", "to", "consumers", "to", "shun", "British", "lamb", "."],
         ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"], ["x"],
         ["Germany", "'s", "representative", "to", "the", "European", "Union", "'s", "veterinary",
          "committee", "Werner", "Zwingmann", "said", "on", "Wednesday", "consumers", "should",
          "buy", "sheep", "meat", "from", "countries", "other", "than", "Britain", "until", "the",
          "scientific", "advice", "was", "clearer", ".", "unseenwordxyz", "\u00e9t\u00e9"]]


def _reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """x [N, S, D] with each row's first ``lengths`` steps reversed, padding left in place."""
    steps = torch.ones_like(x[:1, :, 0], dtype=torch.long).cumsum(1) - 1  # [1, S]
    last = lengths.unsqueeze(1) - 1
    index = torch.where(steps <= last, last - steps, steps)
    return x.gather(1, index.unsqueeze(2).expand_as(x))


def _direction(lstm: nn.LSTM, layer: int, reverse: bool) -> nn.LSTM:
    """A one-layer unidirectional LSTM holding one direction of one layer of ``lstm``."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    weight_ih = getattr(lstm, "weight_ih" + suffix)
    one = nn.LSTM(weight_ih.shape[1], lstm.hidden_size, batch_first=True)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(one, name + "_l0").data.copy_(getattr(lstm, name + suffix).data)
    return one


class PaddedBiLSTM(nn.Module):
    """``nn.LSTM(bidirectional=True, batch_first=True)`` over padded rows without packing: outputs
    [N, S, 2H] equal the packed LSTM's at real positions; ``final`` gives [N, 2H], the packed
    LSTM's last-layer final states (forward at step length-1, backward at step 0)."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        layers = range(lstm.num_layers)
        self.forwards = nn.ModuleList(_direction(lstm, k, False) for k in layers)
        self.backwards = nn.ModuleList(_direction(lstm, k, True) for k in layers)

    def _run(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Last layer's outputs [N, S, 2H], its forward outputs and its backward outputs in
        reversed time [N, S, H]."""
        for fwd, bwd in zip(self.forwards, self.backwards):
            ahead = fwd(x)[0]
            behind = bwd(_reverse_within(x, lengths))[0]
            x = torch.cat([ahead, _reverse_within(behind, lengths)], 2)
        return x, ahead, behind

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self._run(x, lengths)[0]

    def final(self, x: Tensor, lengths: Tensor) -> Tensor:
        _, ahead, behind = self._run(x, lengths)
        at = (lengths - 1).view(-1, 1, 1).expand(-1, 1, ahead.shape[2])
        return torch.cat([ahead.gather(1, at), behind.gather(1, at)], 2).squeeze(1)


class BiLSTMGraph(nn.Module):
    """The student's emissions [B, L, T] from ``BiLSTMEncoder.featurize``'s tensors (eval mode:
    dropout is the identity)."""

    def __init__(self, tagger: Tagger):
        super().__init__()
        enc: BiLSTMEncoder = tagger.encoder
        self.word_embed, self.head = enc.word_embed, tagger.head
        self.lstm = PaddedBiLSTM(enc.lstm)
        self.chars: CharEncoder | None = enc.chars
        lstm_chars = enc.chars is not None and enc.chars.kind == "lstm"
        self.char_lstm = PaddedBiLSTM(enc.chars.net) if lstm_chars else None

    def _char_features(self, chars: Tensor, char_lengths: Tensor) -> Tensor:
        """[N, H] per word, as ``CharEncoder.forward``."""
        x = self.chars.embed(chars)
        if self.char_lstm is not None:
            return self.char_lstm.final(x, char_lengths)
        h = self.chars.net(x.transpose(1, 2))
        steps = torch.ones_like(chars[:1], dtype=torch.long).cumsum(1) - 1
        pad = steps >= char_lengths.unsqueeze(1)
        return h.masked_fill(pad.unsqueeze(1), float("-inf")).amax(dim=2)

    def forward(self, words: Tensor, lengths: Tensor, chars: Tensor | None = None,
                char_lengths: Tensor | None = None) -> Tensor:
        x = self.word_embed(words)
        if self.chars is not None:
            feats = self._char_features(chars, char_lengths)
            steps = torch.ones_like(words[:1], dtype=torch.long).cumsum(1) - 1
            real = (steps < lengths.unsqueeze(1)).reshape(-1).long()
            index = real.cumsum(0) * real  # word n of the batch (1-based) at its grid cell, else 0
            table = torch.cat([feats[:1] * 0, feats], 0)
            grid = table.index_select(0, index).view(words.shape[0], words.shape[1], feats.shape[1])
            x = torch.cat([x, grid], 2)
        return self.head(self.lstm(x, lengths)).float()


class TransformerGraph(nn.Module):
    """The student's emissions [B, L, T] from input_ids / attention_mask [R, S] and word_pieces
    [B, L, K]: each word is the mean of its K gathered sub-word vectors (K = 1 for ``first``)."""

    def __init__(self, tagger: Tagger):
        super().__init__()
        self.model, self.head = tagger.encoder.model, tagger.head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, word_pieces: Tensor) -> Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        flat = hidden.reshape(-1, hidden.shape[2])
        table = torch.cat([flat[:1] * 0, flat], 0)
        pieces = table.index_select(0, word_pieces.reshape(-1)).view(
            word_pieces.shape[0], word_pieces.shape[1], word_pieces.shape[2], flat.shape[1])
        counts = (word_pieces > 0).sum(2, keepdim=True).clamp(min=1).float()
        return self.head(pieces.sum(2) / counts).float()


def _spec(tagger: Tagger, folder: Path) -> tuple[nn.Module, dict, dict]:
    """The graph module, the featurize spec for ``onnx_decode`` and the dynamic axes; writes the
    featurizer's file into ``folder``."""
    enc = tagger.encoder
    if isinstance(enc, BiLSTMEncoder):
        enc.vocab.save(folder / "vocab.json")
        spec = {"kind": "bilstm", "file": "vocab.json", "max_word_chars": MAX_WORD_CHARS,
                "chars": enc.chars is not None}
        axes = {"words": {0: "batch", 1: "words"}, "lengths": {0: "batch"}}
        if enc.chars is not None:
            axes.update(chars={0: "batch_words", 1: "chars"}, char_lengths={0: "batch_words"})
        return BiLSTMGraph(tagger), spec, axes
    if isinstance(enc, TransformerWordEncoder):
        tok = enc.tokenizer
        (folder / "tokenizer.json").write_text(tok.backend_tokenizer.to_str(), encoding="utf-8")
        spec = {"kind": "transformer", "file": "tokenizer.json", "prefix": enc.prefix, "suffix": enc.suffix,
                "width": enc.width, "stride": enc.cfg.stride, "pad_id": tok.pad_token_id or 0,
                "unk_id": tok.unk_token_id, "pooling": enc.cfg.pooling,
                "split_special_tokens": bool(getattr(tok, "split_special_tokens", False))}
        axes = {"input_ids": {0: "windows", 1: "pieces"}, "attention_mask": {0: "windows", 1: "pieces"},
                "word_pieces": {0: "batch", 1: "words", 2: "pooled"}}
        return TransformerGraph(tagger), spec, axes
    raise TypeError(f"cannot export an encoder of type {type(enc).__name__}")


def _factors(tagger: Tagger) -> tuple[dict | None, dict | None]:
    """(learned transitions / start / end as lists, or None for MaxEnt; allowed masks or None)."""
    dec = tagger.decoder
    pots = None
    if tagger.is_crf:
        pots = {name: getattr(dec, name).detach().float().cpu().numpy()
                for name in ("transitions", "start", "end")}
        bad = [name for name, v in pots.items() if not np.isfinite(v).all()]
        if bad:
            raise ValueError(f"the student's CRF {', '.join(bad)} hold non-finite values; cannot export")
        pots = {name: v.tolist() for name, v in pots.items()}
    allowed = None
    if dec.constraints is not None:
        allowed = dict(zip(("transitions", "start", "end"), (m.cpu().tolist() for m in dec.constraints)))
    return pots, allowed


def emission_gap(tagger: Tagger, runner: OnnxTagger, batch_tokens: list[list[str]]) -> float:
    """max |ONNX - torch| over the real positions of a batch, relative to max(1, max |torch|)."""
    with torch.no_grad():
        ref = tagger(tagger.featurize(batch_tokens)).emissions.cpu().numpy()
    out, lengths = runner.emissions(batch_tokens)
    real = np.arange(ref.shape[1])[None] < lengths[:, None]
    return float(np.abs(out - ref)[real].max() / max(1.0, float(np.abs(ref[real]).max())))


def export_onnx(tagger: Tagger, folder: str | Path, *, quantize: str | None = None) -> Path:
    """Write ``folder`` (atomically: a temporary sibling, then a rename) with the student's ONNX
    graph, decoding factors and featurize files; ``quantize="int8"`` adds the dynamically
    quantized graph and makes it the default. The float32 graph must match torch within
    ``TOLERANCE`` on a ragged probe batch, else ValueError and nothing is written. Returns the
    folder; ``OnnxTagger.load(folder)`` runs it."""
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    require("onnx")
    require("onnxruntime")
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (is_export(folder) or not any(folder.iterdir()))):
        raise DataError(f"{folder} exists and is not an ONNX export: refusing to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    was_training, device = tagger.training, tagger.device
    tagger.cpu().eval()
    try:
        graph, spec, axes = _spec(tagger, tmp)
        graph.eval()
        sample = {k: torch.from_numpy(v) for k, v in FEATURIZERS[spec["kind"]](tmp, spec)(PROBE[:3]).items()}
        names = list(axes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(graph, tuple(sample[n] for n in names), str(tmp / "model.onnx"),
                              dynamo=False, input_names=names, output_names=["emissions"],
                              dynamic_axes={**axes, "emissions": {0: "batch", 1: "words"}},
                              opset_version=OPSET)
        pots, allowed = _factors(tagger)
        meta = {"format": FORMAT, "version": VERSION, "labels": tagger.labels, "scheme": tagger.scheme,
                "decoder": tagger.decoder.kind, "potentials": pots, "allowed": allowed, "featurize": spec,
                "inputs": names, "output": "emissions", "graphs": {"fp32": "model.onnx"}, "default": "fp32",
                "source": {"fingerprint": tagger.fingerprint(), "model": to_dict(tagger.cfg)}}
        _write(tmp, meta)
        gap = emission_gap(tagger, OnnxTagger(tmp, "fp32", threads=1), PROBE)
        if gap > TOLERANCE:
            raise ValueError(f"the exported graph differs from the torch student by {gap:.2e} "
                             f"(relative; tolerance {TOLERANCE:.0e}): not written")
        meta["parity"] = {"fp32_max_rel_gap": gap}
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            root = logging.getLogger()  # quantize_dynamic logs a pre-processing hint on the root logger
            level = root.level
            root.setLevel(logging.ERROR)
            try:
                quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"),
                                 weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
            meta["graphs"]["int8"], meta["default"] = "model.int8.onnx", "int8"
            _write(tmp, meta)
            int8 = OnnxTagger(tmp, "int8", threads=1)
            meta["parity"]["int8_max_rel_gap"] = emission_gap(tagger, int8, PROBE)
        _write(tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        tagger.to(device).train(was_training)
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _write(folder: Path, meta: dict) -> None:
    (folder / EXPORT_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
