"""Run an exported student (``pipeline.export``) with onnxruntime: featurize, emissions, decode.

No torch here: featurize is plain Python / numpy (BiLSTM vocabularies; the ``tokenizers`` library
for transformer students), the graph runs in onnxruntime, and decoding is numpy, so a process that
only predicts starts without importing torch. Two lines from Python::

    from pipeline.onnx_decode import OnnxTagger
    labels = OnnxTagger.load("student-onnx").decode([["John", "lives", "in", "Paris"]])

Decoding is the torch student's, exactly (docs/DESIGN.md conventions): a CRF student takes the
Viterbi path of start[y1] + sum_i emissions[i, y_i] + sum_i transitions[y_i, y_i+1] + end[y_n]
with forbidden factors at -inf (the scheme's allowed masks, stored apart from the finite learned
values); a MaxEnt student takes the per-word argmax, or, with constraints, the Viterbi path of
the per-word log-softmax under zero transitions (``Factorized.argmax``). Scores accumulate in
float64 (log space), ties go to the lowest label index, as torch's argmax does.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import DataError, UserError
from pipeline.windows import most_central, windows

EXPORT_FILE = "export.json"
FORMAT, VERSION = "structkd-onnx", 1
REQUIRED = {"labels", "scheme", "decoder", "potentials", "allowed", "featurize", "graphs", "default"}


class MissingDependency(UserError, ImportError):
    """An optional package the ONNX path needs is not installed (exit 1)."""


def require(module: str):
    """Import ``module`` (onnx, onnxruntime) or raise one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{module} is not installed: pip install onnx onnxruntime "
                                "(or the project's [onnx] extra)") from None


def is_export(folder: str | Path) -> bool:
    """True if ``folder`` holds an exported student (its ``export.json``)."""
    return (Path(folder) / EXPORT_FILE).is_file()


def read_export(folder: str | Path) -> dict:
    """The export's metadata, checked; a DataError naming the folder when it is not an export."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected an ONNX export of a student)")
    if not is_export(folder):
        hint = (" (it is a model folder: run `structkd export` on it first)"
                if (folder / "config.json").is_file() else "")
        raise DataError(f"{folder} is not an ONNX export (no {EXPORT_FILE}){hint}")
    try:
        meta = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{folder / EXPORT_FILE}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{folder / EXPORT_FILE}: not a {FORMAT} version {VERSION} export")
    missing = sorted(REQUIRED - set(meta))
    if missing or not isinstance(meta["featurize"], dict) or meta["featurize"].get("kind") not in FEATURIZERS:
        raise DataError(f"{folder / EXPORT_FILE}: damaged export ("
                        + (f"missing {missing})" if missing else "unknown featurize kind)"))
    return meta


class BiLSTMFeatures:
    """``BiLSTMEncoder.featurize`` in numpy: words [B, L], lengths [B] and, with a character
    encoder, chars [N, C] and char_lengths [N] (N words of the batch in order; int64 all)."""

    def __init__(self, folder: Path, spec: dict):
        vocab = json.loads((folder / spec["file"]).read_text(encoding="utf-8"))
        self.word_index = {w: i for i, w in enumerate(vocab["words"])}
        self.char_index = {c: i for i, c in enumerate(vocab["chars"])}
        self.max_chars, self.chars = int(spec["max_word_chars"]), bool(spec["chars"])

    def __call__(self, batch_tokens: list[list[str]]) -> dict[str, np.ndarray]:
        lengths = np.array([len(t) for t in batch_tokens], dtype=np.int64)
        words = np.zeros((len(batch_tokens), int(lengths.max())), dtype=np.int64)
        for b, tokens in enumerate(batch_tokens):
            words[b, :len(tokens)] = [self.word_index.get(w, 1) for w in tokens]
        out = {"words": words, "lengths": lengths}
        if self.chars:
            ids = [[self.char_index.get(c, 1) for c in w[:self.max_chars]] or [0]
                   for tokens in batch_tokens for w in tokens]
            chars = np.zeros((len(ids), max(map(len, ids))), dtype=np.int64)
            for i, row in enumerate(ids):
                chars[i, :len(row)] = row
            out.update(chars=chars, char_lengths=np.array([len(r) for r in ids], dtype=np.int64))
        return out


class TransformerFeatures:
    """``TransformerWordEncoder.featurize`` with the ``tokenizers`` library: input_ids and
    attention_mask [R, S] (R windows of ``width`` sub-words plus specials) and word_pieces
    [B, L, K] int64: for each word, the flat positions (row * S + column) + 1 of the K sub-words it
    pools (its first one, or all of them for ``mean``), 0 where there is none (padding). Each
    sub-word is read from the window in which it is most central, as in the torch encoder."""

    def __init__(self, folder: Path, spec: dict):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / spec["file"]))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.tokenizer.encode_special_tokens = bool(spec["split_special_tokens"])
        self.prefix, self.suffix = list(spec["prefix"]), list(spec["suffix"])
        self.width, self.stride = int(spec["width"]), int(spec["stride"])
        self.pad_id, self.unk_id = int(spec["pad_id"]), int(spec["unk_id"])
        self.mean = spec["pooling"] == "mean"

    def _pieces(self, tokens: list[str], encoding) -> tuple[list[int], list[int]]:
        grouped: list[list[int]] = [[] for _ in tokens]
        for piece, word in zip(encoding.ids, encoding.word_ids):
            if word is not None:
                grouped[word].append(piece)
        ids, owner = [], []
        for w, pieces in enumerate(grouped):
            pieces = pieces or [self.unk_id]
            ids += pieces
            owner += [w] * len(pieces)
        return ids, owner

    def __call__(self, batch_tokens: list[list[str]]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(batch_tokens, is_pretokenized=True, add_special_tokens=False)
        rows: list[list[int]] = []
        sources: list[list[list[tuple[int, int]]]] = []  # per sentence, per word: (row, column)
        for tokens, encoding in zip(batch_tokens, encodings):
            ids, owner = self._pieces(tokens, encoding)
            starts = windows(len(ids), self.width, self.stride)
            base = len(rows)
            rows += [self.prefix + ids[s:s + self.width] + self.suffix for s in starts]
            words: list[list[tuple[int, int]]] = [[] for _ in tokens]
            for j, word in enumerate(owner):
                if self.mean or not words[word]:
                    w = most_central(j, starts, self.width) if len(starts) > 1 else 0
                    words[word].append((base + w, len(self.prefix) + j - starts[w]))
            sources.append(words)
        seq = max(len(r) for r in rows)
        input_ids = np.full((len(rows), seq), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), seq), dtype=np.int64)
        for r, row in enumerate(rows):
            input_ids[r, :len(row)] = row
            attention[r, :len(row)] = 1
        longest = max(len(t) for t in batch_tokens)
        k = max(len(w) for words in sources for w in words)
        word_pieces = np.zeros((len(batch_tokens), longest, k), dtype=np.int64)
        for b, words in enumerate(sources):
            for i, found in enumerate(words):
                word_pieces[b, i, :len(found)] = [row * seq + col + 1 for row, col in found]
        return {"input_ids": input_ids, "attention_mask": attention, "word_pieces": word_pieces}


FEATURIZERS = {"bilstm": BiLSTMFeatures, "transformer": TransformerFeatures}


def viterbi(emissions: np.ndarray, lengths: np.ndarray, transitions: np.ndarray, start: np.ndarray,
            end: np.ndarray) -> list[list[int]]:
    """Best label path of each sentence: emissions [B, L, T] (padding ignored), lengths [B] >= 1,
    transitions [T, T] (``[a, c]``: a followed by c), start / end [T], -inf where forbidden.

    Max-sum in float64 with a [B, L, T] backpointer table; a sentence without any allowed path gets
    all zeros, as in ``pipeline.crf.viterbi``."""
    em = emissions.astype(np.float64)
    batch, length, _ = em.shape
    trans = transitions.astype(np.float64)[None]
    score = start.astype(np.float64)[None] + em[:, 0]
    back = np.zeros((batch, length, em.shape[2]), dtype=np.int64)
    for i in range(1, length):
        cand = score[:, :, None] + trans  # [B, a, c]
        back[:, i] = cand.argmax(1)
        step = np.take_along_axis(cand, back[:, i][:, None, :], 1)[:, 0] + em[:, i]
        score = np.where((i < lengths)[:, None], step, score)
    final = score + end.astype(np.float64)[None]
    paths = []
    for b in range(batch):
        n = int(lengths[b])
        if final[b].max() == -np.inf:
            paths.append([0] * n)
            continue
        label = int(final[b].argmax())
        path = [label]
        for i in range(n - 1, 0, -1):
            label = int(back[b, i, label])
            path.append(label)
        paths.append(path[::-1])
    return paths


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Per-position log-softmax over the last axis, float64."""
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


class OnnxTagger:
    """An exported student: ``decode(batch_tokens) -> labels``, ``predict(sentences)`` batched.

    ``graph``: ``fp32`` or ``int8`` (the export's default: int8 when it was exported with
    ``--quantize int8``); ``threads``: onnxruntime intra-op threads (None: its default)."""

    def __init__(self, folder: str | Path, graph: str | None = None, threads: int | None = None):
        ort = require("onnxruntime")
        self.folder = Path(folder)
        meta = read_export(self.folder)
        self.meta = meta
        self.graph = graph or meta["default"]
        if self.graph not in meta["graphs"]:
            raise DataError(f"{self.folder}: no {self.graph!r} graph in this export (it has "
                            f"{sorted(meta['graphs'])})")
        path = self.folder / meta["graphs"][self.graph]
        missing = [p for p in (path, self.folder / meta["featurize"]["file"]) if not p.is_file()]
        if missing:
            raise DataError(f"{self.folder}: incomplete export, missing {', '.join(map(str, missing))}")
        self.labels, self.scheme, self.decoder = meta["labels"], meta["scheme"], meta["decoder"]
        self.featurize = FEATURIZERS[meta["featurize"]["kind"]](self.folder, meta["featurize"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        num = len(self.labels)
        allowed = meta["allowed"]
        pots = meta["potentials"] or {"transitions": np.zeros((num, num)), "start": np.zeros(num),
                                      "end": np.zeros(num)}
        self.factors = {}
        for name in ("transitions", "start", "end"):
            value = np.asarray(pots[name], dtype=np.float32).astype(np.float64)
            if allowed is not None:
                value = np.where(np.asarray(allowed[name], dtype=bool), value, -np.inf)
            self.factors[name] = value
        self.constrained = allowed is not None

    @classmethod
    def load(cls, folder: str | Path, graph: str | None = None, threads: int | None = None) -> OnnxTagger:
        """``OnnxTagger(folder, graph, threads)``, named as ``Tagger.load``."""
        return cls(folder, graph, threads)

    def emissions(self, batch_tokens: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Emissions [B, L, T] float32 (meaningless at padding) and lengths [B] of a batch of
        non-empty sentences."""
        features = self.featurize(batch_tokens)
        (out,) = self.session.run(None, {name: features[name] for name in self.inputs})
        return out, np.array([len(t) for t in batch_tokens], dtype=np.int64)

    def decode(self, batch_tokens: list[list[str]]) -> list[list[str]]:
        """Labels of each sentence of one batch (an empty sentence gets none)."""
        keep = [i for i, t in enumerate(batch_tokens) if t]
        out: list[list[str]] = [[] for _ in batch_tokens]
        if not keep:
            return out
        em, lengths = self.emissions([batch_tokens[i] for i in keep])
        if self.decoder == "crf" or self.constrained:
            scores = em if self.decoder == "crf" else log_softmax(em)
            f = self.factors
            paths = viterbi(scores, lengths, f["transitions"], f["start"], f["end"])
        else:
            paths = [row[:n].tolist() for row, n in zip(em.argmax(-1), lengths)]
        for i, path in zip(keep, paths):
            out[i] = [self.labels[y] for y in path]
        return out

    def predict(self, sentences: list, batch_size: int = 64) -> list[list[str]]:
        """Labels of every sentence (token lists or ``Sentence`` objects), in batches of similar
        length (as ``pipeline.trainer.predict``)."""
        tokens = [getattr(s, "tokens", s) for s in sentences]
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
        out: list[list[str]] = [[] for _ in tokens]
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            for i, labels in zip(idx, self.decode([tokens[i] for i in idx])):
                out[i] = labels
        return out
