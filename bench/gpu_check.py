"""The GPU check behind bench/gpu_check.sh (issue 16); runs on the CPU too (``--device cpu --quick``).

(a) annotate sentences/s: a teacher of all-MiniLM-L6-v2's shape with random weights (speed does not
    depend on them) and a CRF head, over CoNLL-2003 train, k = 5, bf16 autocast (precision auto);
(b) distill epoch seconds per method for a BiLSTM-CRF student streamed from that store;
(d) correctness: one epoch of structural KD in fp32 on the device and on the CPU from the same
    initial weights: the epoch's mean loss must agree within 1e-3 relative.
(c) is bench/bench_crf.py --device cuda, run by the shell script.

    python bench/gpu_check.py --data .gpu/data --tokenizer .gpu/tokenizer --out /tmp/gpu_check
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.config import (AnnotateConfig, CorpusConfig, DecoderConfig, DistillConfig, EncoderConfig,
                             KDConfig, ModelConfig, OptimConfig)
from pipeline.corpus import read_corpus
from pipeline.distiller import Distiller
from pipeline.encoders import TransformerWordEncoder
from pipeline.loop import progress_bar
from pipeline.schemes import allowed_transitions, complete_labels
from pipeline.tagger import Tagger
from store.build import build_store
from store.feed import store_data

METHODS = ["none", "posterior", "structural", "topwk", "multigrained"]


def random_teacher(tokenizer: Path, labels: list[str], device: torch.device) -> Tagger:
    """A MiniLM-L6-shaped encoder with random weights + a CRF head (seeded)."""
    torch.manual_seed(0)
    cfg = ModelConfig(EncoderConfig(name=str(tokenizer), dropout=0.0), DecoderConfig(kind="crf"))
    encoder = TransformerWordEncoder(cfg.encoder, pretrained=False)
    return Tagger(cfg, labels, "IOB2", encoder, allowed_transitions(labels, "IOB2")).to(device).eval()


def annotate(args, device: torch.device) -> tuple[str, dict]:
    corpus = CorpusConfig(name="conll03", files={"train": str(args.data / "train.txt"),
                                                 "dev": str(args.data / "valid.txt")},
                          word_col=0, label_col=-1, scheme="IOB1", convert_to="IOB2",
                          limit=args.sentences)
    train = read_corpus(corpus, "train")
    labels = complete_labels({label for s in train for label in s.labels}, "IOB2")
    teacher = random_teacher(args.tokenizer, labels, device)
    cfg = AnnotateConfig(teachers={"en": "random-minilm"}, corpora=[corpus], splits=["train", "dev"],
                         out=str(args.out / "store"), k=5, shard_size=2000, batch_tokens=args.batch_tokens,
                         device=str(device))
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        teacher.structure([s.tokens for s in train[:64]])  # warm-up (CUDA context, kernels)
    sync()
    started = time.perf_counter()
    manifest = build_store(cfg, teachers={"en": teacher})
    sync()
    seconds = time.perf_counter() - started
    rows = manifest["totals"]["rows"]
    return cfg.out, {"sentences": rows, "seconds": round(seconds, 2), "sentences_per_s": round(rows / seconds, 1)}


def student_cfg(store: str, out: Path, method: str, device: str, precision: str) -> DistillConfig:
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=100, hidden=200, char="cnn", dropout=0.3),
                        DecoderConfig(kind="crf"))
    kd = KDConfig(method=method, k=5, schedule="learned" if method == "multigrained" else "constant")
    return DistillConfig(store=store, name=method, kd=kd, model=model, device=device, precision=precision,
                         optim=OptimConfig(epochs=1, lr=1e-3, seed=13), batch_tokens=2048,
                         out=str(out / "runs" / method), use_unlabeled=False)


def epoch(cfg: DistillConfig) -> dict:
    run = Distiller(cfg, store_data(cfg))
    with progress_bar(False) as bar:
        task = bar.add_task("epoch", total=None, loss=0.0, speed=0.0)
        record = run.loop.run_epoch(0, bar, task)
    return {"epoch_s": round(record["wall_s"], 2), "loss": record.get("loss"), "sentences": record["sentences"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(".gpu/data"))
    parser.add_argument("--tokenizer", type=Path, default=Path(".gpu/tokenizer"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sentences", type=int, default=None, help="limit CoNLL-2003 train (all: None)")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--check-sentences", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 300 sentences, 2 methods")
    args = parser.parse_args()
    if args.quick:
        args.sentences, args.check_sentences, args.batch_tokens = 300, 100, 2048
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__}
    store, report["annotate"] = annotate(args, device)
    print(f"(a) annotate: {report['annotate']}", flush=True)
    methods = METHODS[:2] if args.quick else METHODS
    report["distill"] = {m: epoch(student_cfg(store, args.out, m, str(device), "auto")) for m in methods}
    for method, row in report["distill"].items():
        print(f"(b) distill {method}: {row}", flush=True)
    torch.backends.cudnn.allow_tf32 = False  # the check compares fp32 with fp32
    check = {}
    for where in (str(device), "cpu"):
        cfg = student_cfg(store, args.out / where, "structural", where, "fp32")
        cfg = replace(cfg, optim=replace(cfg.optim, max_steps=max(1, args.check_sentences // 32)))
        check[where] = epoch(cfg)["loss"]
    relative = abs(check[str(device)] - check["cpu"]) / max(abs(check["cpu"]), 1e-12)
    report["correctness"] = {"loss": check, "relative_difference": relative, "ok": relative < 1e-3}
    print(f"(d) correctness: {report['correctness']}", flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
