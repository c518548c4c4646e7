"""A small real store for the stream and distill tests: random-weight BiLSTM teachers (saved as
model folders) annotating tiny template corpora."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import AnnotateConfig, CorpusConfig, DecoderConfig, EncoderConfig, ModelConfig
from pipeline.schemes import complete_labels
from pipeline.tagger import build_tagger
from store.build import build_store
from tests.helpers import tiny_sentences, write_tiny_conll

LABELS = complete_labels({"B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "O"}, "IOB2")
SIZES = {"train": 48, "dev": 12, "test": 12}


def make_store(root: Path, langs: tuple[str, ...] = ("en",), *, unlabeled: bool = False,
               tensors: str = "potentials", decoder: str = "crf", shard_size: int = 16,
               k: int = 4, splits: tuple[str, ...] = ("train", "dev", "test", "unlabeled"),
               ) -> tuple[str, dict[str, Path]]:
    """A store annotated by random-weight BiLSTM taggers (one per language, saved as model folders)
    over tiny template corpora; returns (store path, {lang: teacher folder})."""
    corpora, teachers, folders = [], {}, {}
    for i, lang in enumerate(langs):
        files = write_tiny_conll(root / f"corpus-{lang}", sizes=SIZES, seed=10 * i)
        corpora.append(CorpusConfig(name=f"tiny-{lang}", lang=lang, scheme="IOB2",
                                    files={s: str(p) for s, p in files.items()}))
        if unlabeled:
            raw = root / f"corpus-{lang}" / "unlabeled.txt"
            raw.write_text("\n".join(" ".join(t) for t, _ in tiny_sentences(20, seed=99 + i)) + "\n",
                           encoding="utf-8")
            corpora.append(CorpusConfig(name=f"raw-{lang}", lang=lang, format="raw",
                                        files={"unlabeled": str(raw)}, scheme="none"))
        torch.manual_seed(100 + i)
        model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none", dropout=0.0),
                            DecoderConfig(kind=decoder))
        teacher = build_tagger(model, LABELS, "IOB2", [t for t, _ in tiny_sentences(40, seed=10 * i)]).eval()
        with torch.no_grad():
            teacher.head.weight.mul_(8.0)  # a confident teacher: peaked marginals, a clear top path
        folders[lang] = teacher.save(root / f"teacher-{lang}")
        teachers[lang] = teacher
    cfg = AnnotateConfig(teachers={lang: str(f) for lang, f in folders.items()}, corpora=corpora,
                         out=str(root / "store"), k=k, shard_size=shard_size, tensors=tensors,
                         splits=list(splits))
    build_store(cfg, teachers=teachers)
    return str(root / "store"), folders
