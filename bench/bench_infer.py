"""Inference bench: what distillation buys on CPU. Teachers and students on the same CoNLL-2003
test sentences, in one run, each model in its own fresh worker process:

    python bench/bench_infer.py --sentences 500 --student runs/none/model
    python bench/bench_infer.py --sentences 3453 --models torch,onnx,int8 --student runs/none/model

Per model: sentences/s at batch 1 and at ``--batch`` (sentences sorted by length, as ``structkd
predict`` batches them), p50 / p99 latency per sentence at batch 1, load time, peak RSS of the
worker and its growth from loading and running the model, runtime libraries included (VmHWM: torch and
onnxruntime allocate outside Python, which tracemalloc cannot see), parameters, size on disk, F1.

Models: ``torch`` (the student folder, ``Tagger``), ``onnx`` / ``int8`` (its export, ``OnnxTagger``
fp32 / int8 graphs; exported by this run), ``minilm`` (the MiniLM-L6 CRF teacher folder) and
``bert-base`` (a random-weight ``BertConfig()`` encoder, 110M parameters, MiniLM's uncased
tokenizer, with a CRF head: speed does not depend on the weights). Without ``--student`` the
student is the configs/conll03.yaml architecture (BiLSTM 256, char CNN, MiniLM-sized frozen word
embeddings, CRF) with random weights: speed only. F1 is reported for model folders given (the
student, the MiniLM teacher) and never for random weights; ``agree`` is the share of sentences
whose ONNX / int8 labels equal the torch student's. ``startup_s``: process start to the first
labels printed, for the two-line Python use of the ONNX export and of the torch folder.
One thread everywhere (``--threads``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TEST = SHARED / "data" / "conll2003_en" / "test.txt"
TRAIN = SHARED / "data" / "conll2003_en" / "train.txt"
TEACHER = SHARED / "models" / "conll03-minilm-crf"
MODELS = ("torch", "onnx", "int8", "minilm", "bert-base")
FIRST = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]]


def rss_mb() -> float:
    """Peak resident set of this process, MB: VmHWM (Linux; it restarts at exec, whereas ru_maxrss
    keeps the forking parent's peak), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus(path: Path, limit: int | None):
    from pipeline.config import CorpusConfig
    from pipeline.corpus import read_corpus

    cfg = CorpusConfig(name="conll03", format="conll", scheme="IOB2", label_col=-1,
                       files={"test": str(path)}, limit=limit)
    return [s for s in read_corpus(cfg, "test") if s.tokens]


def disk_mb(paths: list[Path]) -> float:
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2 ** 20


def bert_base_folder(folder: Path) -> Path:
    """config.json of ``BertConfig()`` (the standard base size) + MiniLM's uncased tokenizer."""
    from transformers import AutoTokenizer, BertConfig

    from pipeline.encoders import resolve_model_path

    BertConfig().save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_path("minilm")).save_pretrained(folder)
    return folder


def load(kind: str, folder: Path, labels: list[str], threads: int):
    """(decode function: batch of token lists -> labels, parameters (None: the parent counts the
    student's), MB on disk; bert-base: its fp32 weights' bytes, no folder is written). The ONNX
    kinds never import torch (their memory and start-up are onnxruntime's and numpy's)."""
    if kind in ("onnx", "int8"):
        from pipeline.onnx_decode import OnnxTagger

        tagger = OnnxTagger.load(folder, "fp32" if kind == "onnx" else "int8", threads=threads)
        files = [folder / tagger.meta["graphs"][tagger.graph], folder / tagger.meta["featurize"]["file"]]
        return tagger.decode, None, disk_mb(files)
    import torch

    from pipeline.tagger import Tagger

    torch.set_num_threads(threads)

    if kind == "bert-base":
        from pipeline.config import DecoderConfig, EncoderConfig, ModelConfig
        from pipeline.encoders import TransformerWordEncoder
        from pipeline.schemes import allowed_transitions

        cfg = ModelConfig(EncoderConfig(name=str(folder)), DecoderConfig("crf"))
        encoder = TransformerWordEncoder(cfg.encoder, pretrained=False)
        tagger = Tagger(cfg, labels, "IOB2", encoder, allowed_transitions(labels, "IOB2")).eval()
        size = sum(t.numel() * t.element_size() for t in tagger.state_dict().values()) / 2 ** 20
    else:
        tagger = Tagger.load(folder)
        size = disk_mb([folder / n for n in ("model.safetensors", "vocab.json", "encoder")])
    params = sum(p.numel() for p in tagger.parameters())

    def decode(batch):
        with torch.inference_mode():
            return tagger.decode(batch)
    return decode, params, size


def worker(args) -> None:
    """One model on the sentences of ``--data``: load, warm up, time batch 1 and batched; one JSON
    line on stdout (with the batched predictions, scored by the parent)."""
    data = json.loads(Path(args.data).read_text(encoding="utf-8"))
    tokens, labels = data["tokens"], data["labels"]
    base = rss_mb()
    started = time.perf_counter()
    decode, params, size = load(args.worker, Path(args.folder), labels, args.threads)
    load_s = time.perf_counter() - started
    for s in tokens[:10]:
        decode([s])
    lat = []
    for s in tokens:
        t = time.perf_counter()
        decode([s])
        lat.append(time.perf_counter() - t)
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    pred: list = [None] * len(tokens)
    t = time.perf_counter()
    for i in range(0, len(order), args.batch):
        idx = order[i:i + args.batch]
        for j, labels in zip(idx, decode([tokens[k] for k in idx])):
            pred[j] = labels
    batched = time.perf_counter() - t
    print(json.dumps({"model": args.worker, "sentences": len(tokens), "tokens": sum(map(len, tokens)),
                      "params": params, "disk_mb": size, "load_s": load_s,
                      "b1_sent_s": len(tokens) / sum(lat), "p50_ms": 1e3 * float(np.percentile(lat, 50)),
                      "p99_ms": 1e3 * float(np.percentile(lat, 99)), "batched_sent_s": len(tokens) / batched,
                      "peak_rss_mb": rss_mb(), "rss_growth_mb": rss_mb() - base, "pred": pred}))


def run_worker(kind: str, folder: Path, data: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--folder", str(folder), "--data", str(data),
           "--batch", str(args.batch), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def startup(code: str, threads: int) -> float:
    """Seconds from process start to the first line the process prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    proc.stdout.readline()
    took = time.perf_counter() - t
    proc.communicate()
    return took


def build_student(folder: Path) -> Path:
    """The configs/conll03.yaml student architecture, random weights, vocabulary of train.txt."""
    from pipeline.config import DecoderConfig, EncoderConfig, ModelConfig
    from pipeline.tagger import build_tagger

    labels = json.loads((TEACHER / "config.json").read_text())["labels"]
    enc = EncoderConfig(kind="bilstm", hidden=256, char="cnn", dropout=0.3, init_from="minilm",
                        freeze_embeddings=True)
    train = [s.tokens for s in corpus(TRAIN, None)]
    return build_tagger(ModelConfig(enc, DecoderConfig("crf")), labels, "IOB2", train).save(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, help="student model folder (F1 reported); default: random")
    parser.add_argument("--teacher", type=Path, default=TEACHER, help="MiniLM teacher model folder")
    parser.add_argument("--test", type=Path, default=TEST)
    parser.add_argument("--sentences", type=int, default=500, help="first n test sentences")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {','.join(MODELS)}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    try:
        result = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(table(result), file=sys.stderr)


def run(args, tmp: Path) -> dict:
    """Every model of ``--models`` on the test sentences; the student exported under ``tmp``."""
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.export import export_onnx
    from pipeline.metrics import evaluate_tags
    from pipeline.tagger import Tagger

    kinds = args.models.split(",")
    student = args.student or build_student(tmp / "student")
    tagger = Tagger.load(student)
    labels = tagger.labels
    sentences = corpus(args.test, args.sentences)
    data = tmp / "sentences.json"
    data.write_text(json.dumps({"tokens": [s.tokens for s in sentences], "labels": labels}), encoding="utf-8")
    t = time.perf_counter()
    onnx = export_onnx(tagger, tmp / "onnx", quantize="int8")
    export_s = time.perf_counter() - t
    folders = {"torch": student, "onnx": onnx, "int8": onnx, "minilm": args.teacher,
               "bert-base": bert_base_folder(tmp / "bert-base") if "bert-base" in kinds else None}
    rows = {}
    for kind in kinds:
        rows[kind] = row = run_worker(kind, folders[kind], data, args)
        scored = kind == "minilm" or (kind in ("torch", "onnx", "int8") and args.student is not None)
        gold = [s.labels for s in sentences]
        row["f1"] = evaluate_tags(gold, row["pred"], "IOB2")["f1"] if scored else None
        print(f"{kind}: {rows[kind]['b1_sent_s']:.1f} sent/s at batch 1, "
              f"{rows[kind]['batched_sent_s']:.1f} at batch {args.batch}", file=sys.stderr)
    if "torch" in rows:
        for kind in ("onnx", "int8"):
            if kind in rows:
                same = sum(a == b for a, b in zip(rows[kind]["pred"], rows["torch"]["pred"]))
                rows[kind]["agree"] = same / len(rows["torch"]["pred"])
    for kind in ("onnx", "int8"):  # the student's weights
        if kind in rows:
            rows[kind]["params"] = sum(p.numel() for p in tagger.parameters())
    for row in rows.values():
        del row["pred"]
    load_onnx = (f"from pipeline.onnx_decode import OnnxTagger\n"
                 f"print(OnnxTagger.load({str(onnx)!r}, threads={args.threads}).decode({FIRST!r}))")
    load_torch = (f"import torch; torch.set_num_threads({args.threads})\nfrom pipeline.tagger import Tagger\n"
                  f"print(Tagger.load({str(student)!r}).decode({FIRST!r}))")
    return {"sentences": len(sentences), "batch": args.batch, "threads": args.threads,
            "student": str(args.student) if args.student else "random (conll03 architecture)",
            "export_s": export_s, "startup_s": {"onnx": startup(load_onnx, args.threads),
                                                "torch": startup(load_torch, args.threads)},
            "models": rows}


def table(result: dict) -> str:
    """The figures as a markdown table, with speed-ups (batch 1 / batched) over each teacher."""
    rows, b = result["models"], result["batch"]
    refs = [k for k in ("bert-base", "minilm") if k in rows]
    head = (f"| model | sent/s b1 | sent/s b{b} | p50 ms | p99 ms | peak RSS MB | params | disk MB | F1 "
            "| agree |"
            + "".join(f" x {k} (b1 / b{b}) |" for k in refs))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        cells = [name, f"{r['b1_sent_s']:.1f}", f"{r['batched_sent_s']:.1f}", f"{r['p50_ms']:.2f}",
                 f"{r['p99_ms']:.2f}", f"{r['peak_rss_mb']:.0f}",
                 f"{r['params'] / 1e6:.2f}M", f"{r['disk_mb']:.1f}",
                 f"{r['f1']:.4f}" if r["f1"] is not None else "-",
                 f"{100 * r['agree']:.2f}%" if "agree" in r else "-"]
        cells += [f"{r['b1_sent_s'] / rows[k]['b1_sent_s']:.1f} / "
                  f"{r['batched_sent_s'] / rows[k]['batched_sent_s']:.1f}" for k in refs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
