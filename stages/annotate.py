"""`structkd annotate`: run every teacher once over the corpora and write the teacher-output store.

Each corpus's sentences go to the teacher of the corpus's language. Every (corpus, split) is cut into
chunks of ``shard_size`` sentences in file order; a chunk is one shard, annotated in length-bucketed
batches under a word budget and committed atomically (store/writer.py). Re-running resumes: shards
already complete (marker + checksums + same input) are kept, the others are redone.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.config import AnnotateConfig, CorpusConfig, from_dict
from pipeline.corpus import Sentence, corpus_splits, read_corpus
from pipeline.kd.types import StudentPotentials
from pipeline.tagger import Tagger
from pipeline.teacher_outputs import teacher_outputs
from pipeline.trainer import resolve_device
from stages.common import console, load_config
from store.schema import (SPLITS, StoreError, StoreOptions, TeacherMeta, check_name, check_split,
                          make_sid, shard_id)
from store.tensors import length_batches
from store.writer import ShardSpec, StoreWriter


def _teacher_id(folder: str, fingerprint: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(folder).name).strip("-_")[:80] or "teacher"
    return f"{stem}-{fingerprint[:8]}"


def teacher_meta(teacher: Any, lang: str, folder: str, probe: list[str],
                 options: StoreOptions) -> TeacherMeta:
    """The store's record of a teacher; its factors come from the potentials of one probe sentence."""
    with torch.inference_mode():
        pot, _ = teacher.potentials([probe])
    shapes = {"transitions": (len(teacher.labels),) * 2, "start": (len(teacher.labels),),
              "end": (len(teacher.labels),)}
    allowed = {name: torch.ones(shape, dtype=torch.bool) for name, shape in shapes.items()}
    if pot.constraints is not None:
        allowed = {name: c.detach().bool().cpu() for name, c in zip(shapes, pot.constraints)}
    factors = {name: torch.zeros(shape) for name, shape in shapes.items()}
    if teacher.is_crf:
        if pot.transitions is None or pot.transitions.dim() != 2:
            raise StoreError(f"teacher {folder}: a CRF teacher needs shared [T, T] transitions")
        for name in shapes:
            value = getattr(pot, name)
            if value is not None:
                factors[name] = value.detach().float().cpu().reshape(shapes[name])
            factors[name] = factors[name].masked_fill(~allowed[name], float("-inf"))
    arrays = {name: factors[name].numpy().astype(np.float32) for name in shapes}
    arrays.update({f"allowed_{name}": allowed[name].numpy() for name in shapes})
    fingerprint = teacher.fingerprint()
    return TeacherMeta(_teacher_id(folder, fingerprint), lang, list(teacher.labels), teacher.scheme,
                       "crf" if teacher.is_crf else "maxent", fingerprint, options.k, options.tau,
                       folder, arrays)


def input_sha256(sentences: list[Sentence]) -> str:
    payload = [[s.sid, s.tokens, s.labels] for s in sentences]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def annotate_batch(teacher: Any, meta: TeacherMeta, sentences: list[Sentence],
                   options: StoreOptions) -> list[dict]:
    """Teacher outputs of one batch as per-sentence store rows (see StoreWriter.write_shard).

    Emissions are rounded to the storage dtype first, so every stored quantity is exactly the one of
    the stored potentials (store/README.md, "Precision")."""
    tokens = [s.tokens for s in sentences]
    pot, mask = teacher.potentials(tokens)
    lengths = [len(t) for t in tokens]
    if mask.shape[0] != len(tokens) or mask.sum(1).tolist() != lengths:
        raise StoreError(f"teacher {meta.id}: mask does not match the sentence lengths of the batch "
                         f"starting with {sentences[0].sid}")
    emissions = pot.emissions.float().to(getattr(torch, options.dtype)).float()
    pot = StudentPotentials(emissions, pot.transitions, pot.start, pot.end, pot.constraints)
    try:
        out = teacher_outputs(pot, mask, options.k, options.tau, meta.is_crf,
                              with_marginals=options.tensors == "full")
    except ValueError as err:
        raise StoreError(f"teacher {meta.id}, batch starting with {sentences[0].sid}: {err}") from None
    out["emissions"] = emissions
    out = {name: value.detach().cpu().numpy() for name, value in out.items()}
    index = {label: i for i, label in enumerate(meta.labels)}
    rows = []
    for b, s in enumerate(sentences):
        n = lengths[b]
        rows.append({
            "sid": s.sid, "corpus": s.corpus, "split": s.split, "lang": s.lang, "teacher": meta.id,
            "index": int(s.sid.rsplit("/", 1)[1]), "length": n, "tokens": list(s.tokens),
            "gold": None if s.labels is None else list(s.labels),
            "gold_ids": None if s.labels is None else [index.get(label, -1) for label in s.labels],
            "viterbi": out["viterbi"][b, :n], "kbest_paths": out["kbest_paths"][b, :, :n],
            "kbest_logprob": out["kbest_logprob"][b], "residual_mass": float(out["residual_mass"][b]),
            "log_z": float(out["log_z"][b]), "emissions": out["emissions"][b, :n],
            **({"node": out["node"][b, :n], "edge": out["edge"][b, :n - 1]} if "node" in out else {}),
        })
    return rows


def annotate_shard(teacher: Any, meta: TeacherMeta, spec: ShardSpec, sentences: list[Sentence],
                   options: StoreOptions, batch_tokens: int, on_batch=None) -> list[dict]:
    """Rows of one shard in sentence order; batches are length-bucketed under ``batch_tokens`` words."""
    rows: list[dict | None] = [None] * len(sentences)
    lengths = np.array([len(s.tokens) for s in sentences])
    for batch in length_batches(lengths, batch_tokens):
        for i, row in zip(batch, annotate_batch(teacher, meta, [sentences[i] for i in batch], options)):
            rows[i] = {**row, "shard": spec.id}
        if on_batch is not None:
            on_batch(len(batch), int(lengths[batch].sum()))
    return rows


def _read_all(cfg: AnnotateConfig) -> list[tuple[CorpusConfig, str, list[Sentence]]]:
    splits = [check_split(s) for s in cfg.splits]
    out = []
    for corpus in cfg.corpora:
        check_name("corpus", corpus.name)
        if corpus.lang not in cfg.teachers:
            raise StoreError(f"corpus {corpus.name} is in language {corpus.lang!r}, which has no teacher "
                             f"(teachers: {sorted(cfg.teachers)})")
        available = corpus_splits(corpus)
        for split in (s for s in splits if s in available):
            sentences = read_corpus(corpus, split)
            for i, s in enumerate(sentences):
                if s.sid != make_sid(corpus.name, split, i) or not s.tokens:
                    raise StoreError(f"corpus {corpus.name}/{split}: sentence {i} has sid {s.sid!r} "
                                     f"and {len(s.tokens)} tokens")
            if sentences:
                out.append((corpus, split, sentences))
    return out


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]annotate[/]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                    disable=not enabled)


def run_annotate(cfg: AnnotateConfig, progress: bool = True, *,
                 teachers: dict[str, Any] | None = None) -> dict:
    """Annotate every corpus split of ``cfg`` into the store ``cfg.out``; returns the manifest.

    ``teachers`` (language -> loaded tagger) replaces loading ``cfg.teachers`` folders (tests,
    benchmarks).
    """
    options = StoreOptions(k=cfg.k, tau=cfg.tau, dtype=cfg.dtype, tensors=cfg.tensors,
                           prune=cfg.prune, shard_size=cfg.shard_size)
    device = resolve_device(cfg.device)
    with StoreWriter(cfg.out, options, mix_teachers=cfg.mix_teachers) as writer:
        work = _read_all(cfg)
        langs = sorted({corpus.lang for corpus, _, _ in work})
        loaded: dict[str, Any] = {}
        metas: dict[str, TeacherMeta] = {}
        for lang in langs:
            if teachers is not None and lang in teachers:
                loaded[lang] = teachers[lang]
            else:
                loaded[lang] = Tagger.load(cfg.teachers[lang], device).eval()
            probe = next(sents[0].tokens for corpus, _, sents in work if corpus.lang == lang)
            meta = teacher_meta(loaded[lang], lang, cfg.teachers.get(lang, f"teacher-{lang}"), probe, options)
            meta.id = writer.add_teacher(meta)
            metas[lang] = meta
        plan: list[tuple[ShardSpec, list[Sentence]]] = []
        for corpus, split, sentences in work:
            meta = metas[corpus.lang]
            for chunk, first in enumerate(range(0, len(sentences), options.shard_size)):
                part = sentences[first:first + options.shard_size]
                spec = ShardSpec(shard_id(meta.id, corpus.name, split, chunk), meta.id, corpus.name, split,
                                 corpus.lang, first, len(part), input_sha256(part))
                plan.append((spec, part))
        writer.begin([spec for spec, _ in plan])
        total = sum(spec.rows for spec, _ in plan)
        started, done = time.perf_counter(), [0, 0]
        with _progress(progress) as bar, torch.inference_mode():
            task = bar.add_task("annotate", total=total, rate="")

            def on_batch(sentences: int, words: int) -> None:
                done[0] += sentences
                done[1] += words
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=sentences,
                           rate=f"{done[0] / elapsed:.0f} sent/s {done[1] / elapsed:.0f} tok/s")

            for spec, part in plan:
                if writer.is_complete(spec):
                    bar.update(task, advance=spec.rows)
                    continue
                meta = metas[spec.lang]
                rows = annotate_shard(loaded[spec.lang], meta, spec, part, options, cfg.batch_tokens,
                                      on_batch)
                writer.write_shard(spec, rows)
        return writer.finalize([spec for spec, _ in plan])


def _parse_corpus(text: str) -> CorpusConfig:
    """``name=X,lang=en,format=conll,train=PATH,dev=PATH`` -> CorpusConfig (split keys go to files)."""
    data: dict[str, Any] = {"files": {}}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--corpus item {item!r} is not KEY=VALUE")
        if key in SPLITS:
            data["files"][key] = value
        elif key in ("word_col", "label_col", "limit"):
            data[key] = int(value)
        else:
            data[key] = value
    return from_dict(CorpusConfig, data)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise typer.BadParameter(f"{what} {item!r} is not LANG=FOLDER")
        out[key] = value
    return out


def main(
    params: Optional[Path] = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    section: str = typer.Option("annotate", help="Section of params.yaml."),
    teacher: Optional[list[str]] = typer.Option(None, help="LANG=FOLDER, replaces the params' teachers."),
    corpus: Optional[list[str]] = typer.Option(
        None, help="name=X,lang=en,format=conll,train=PATH,... (replaces the params' corpora)."),
    split: Optional[list[str]] = typer.Option(None, help="Splits to annotate (train dev test unlabeled)."),
    out: Optional[str] = typer.Option(None, help="Store to write (local path)."),
    k: Optional[int] = typer.Option(None, help="k-best paths stored per sentence."),
    shard_size: Optional[int] = typer.Option(None, help="Sentences per shard."),
    batch_tokens: Optional[int] = typer.Option(None, help="Word budget of one teacher batch."),
    dtype: Optional[str] = typer.Option(None, help="float16 | float32 storage of emissions/marginals."),
    tau: Optional[float] = typer.Option(None, help="Temperature of the stored distributions."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:n]."),
    mix_teachers: Optional[bool] = typer.Option(None, help="Allow a new teacher in an existing store."),
    tensors: Optional[str] = typer.Option(None, help="potentials (emissions; node/edge recomputed "
                                                     "on read) | full (also node and edge marginals)."),
    prune: Optional[float] = typer.Option(None, help="tensors=full: zero stored probabilities below this."),
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
) -> None:
    """Run the teachers over the corpora and write (or resume) the teacher-output store."""
    flags = {"teachers": _pairs(teacher, "--teacher") if teacher else None,
             "corpora": [vars(_parse_corpus(c)) for c in corpus] if corpus else None,
             "splits": split or None, "out": out, "k": k, "shard_size": shard_size,
             "batch_tokens": batch_tokens, "dtype": dtype, "tau": tau, "device": device,
             "mix_teachers": mix_teachers, "tensors": tensors, "prune": prune}
    cfg: AnnotateConfig = load_config(AnnotateConfig, params if params and params.exists() else None,
                                      [section], flags)
    try:
        manifest = run_annotate(cfg, progress)
    except StoreError as err:
        console.print(f"[red]annotate failed:[/] {err}")
        raise typer.Exit(1) from None
    totals = manifest["totals"]
    console.print(f"store {cfg.out}: {totals['rows']} sentences, {totals['tokens']} tokens, "
                  f"{totals['bytes'] / max(totals['tokens'], 1):.1f} B/token"
                  + ("" if manifest["complete"] else f", {len(manifest['pending'])} shards pending"))
