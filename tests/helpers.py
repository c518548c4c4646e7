"""Shared test fixtures: a tiny random-weight BERT model folder and a tiny CoNLL corpus.

Both writers are deterministic (fixed seed / fixed text) and fast, so any test can call them on
its own ``tmp_path`` (or once per module via ``tmp_path_factory``); import them as
``from tests.helpers import write_tiny_bert, write_tiny_conll``:

    model_dir = write_tiny_bert(tmp_path / "bert")          # usable as EncoderConfig.name
    files = write_tiny_conll(tmp_path / "corpus")           # {"train": path, "dev": path, "test": path}
    cfg = CorpusConfig(name="tiny", files={k: str(v) for k, v in files.items()})
"""
from __future__ import annotations

import random
import string
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "of", "and", "in", "to", "is", "was", "john", "smith", "new", "york", "london",
         "paris", "mary", "visited", "lives", "works", "for", "acme", "corp", "bank", "said"]
PIECE_CHARS = string.ascii_lowercase + string.digits + ".,-'"


def tiny_vocab() -> list[str]:
    """The WordPiece vocabulary of the tiny BERT: specials, some whole words, every char and ##char."""
    chars = list(PIECE_CHARS)
    return SPECIAL_TOKENS + WORDS + chars + ["##" + c for c in chars]


def write_tiny_bert(folder: str | Path, *, layers: int = 2, hidden: int = 32, heads: int = 2,
                    intermediate: int = 64, max_positions: int = 64, seed: int = 0) -> Path:
    """Write a random-weight BERT (config.json, model.safetensors) + fast tokenizer to ``folder``.

    Defaults: 2 layers, hidden 32, 2 heads, intermediate 64, 64 positions; an uncased WordPiece
    vocab.txt (``tiny_vocab()``) from which a ``BertTokenizerFast`` is built. Any word made of
    ``PIECE_CHARS`` tokenizes without [UNK]; zero-width / control characters tokenize to nothing.
    Returns the folder, loadable with ``AutoModel``/``AutoTokenizer.from_pretrained``.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 reads `vocab`, 4.x reads `vocab_file`; each ignores the other keyword.
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), vocab_file=str(vocab_file))
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tiny BERT tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_positions)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(folder)
    return folder


ENTITY_NAMES = {"PER": [["john", "smith"], ["mary"]], "LOC": [["new", "york"], ["london"], ["paris"]],
                "ORG": [["acme", "corp"], ["bank"]]}
PATTERNS = [["PER", "visited", "LOC"], ["PER", "works", "for", "ORG", "in", "LOC"],
            ["ORG", "said", "PER", "lives", "in", "LOC"], ["the", "ORG", "of", "LOC"]]


def _tag(words: list[str], etype: str, scheme: str) -> list[str]:
    if scheme == "IOB2":
        return [("B-" if i == 0 else "I-") + etype for i in range(len(words))]
    if len(words) == 1:
        return ["S-" + etype]
    return ["B-" + etype] + ["I-" + etype] * (len(words) - 2) + ["E-" + etype]


def tiny_sentences(n: int, *, seed: int = 0, scheme: str = "IOB2") -> list[tuple[list[str], list[str]]]:
    """``n`` (tokens, labels) pairs from a few NER templates (PER/LOC/ORG) in IOB2 or BIOES."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens: list[str] = []
        labels: list[str] = []
        for slot in rng.choice(PATTERNS):
            if slot in ENTITY_NAMES:
                words = rng.choice(ENTITY_NAMES[slot])
                tokens += [w.capitalize() for w in words]
                labels += _tag(words, slot, scheme)
            else:
                tokens.append(slot)
                labels.append("O")
        if rng.random() < 0.5:
            tokens.append(".")
            labels.append("O")
        out.append((tokens, labels))
    return out


def write_conll(path: str | Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    """Write (tokens, labels) pairs as CoNLL: ``word label`` per line, blank line between sentences."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = ["\n".join(f"{w} {t}" for w, t in zip(tokens, labels)) for tokens, labels in sentences]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def write_tiny_conll(folder: str | Path, *, sizes: dict[str, int] | None = None, seed: int = 0,
                     scheme: str = "IOB2") -> dict[str, Path]:
    """Write ``{split}.conll`` files (default train 40, dev 10, test 10 sentences) to ``folder``.

    Returns ``{split: path}``; pass ``{k: str(v)}`` as ``CorpusConfig.files``.
    """
    sizes = sizes or {"train": 40, "dev": 10, "test": 10}
    folder = Path(folder)
    return {split: write_conll(folder / f"{split}.conll", tiny_sentences(n, seed=seed + i, scheme=scheme))
            for i, (split, n) in enumerate(sizes.items())}
