"""Building a store (stage one's logic): plan, resume, annotate, commit, finalize.

Each corpus's sentences go to the teacher of the corpus's language. Every (corpus, split) is cut into
chunks of ``shard_size`` sentences in file order; a chunk is one shard, annotated in length-bucketed
batches under a word budget and committed atomically (store/writer.py). Re-running resumes: shards
already complete (marker + checksums + same input) are kept, the others are redone.

The teacher quantities of a batch come from ``pipeline.teaching.teacher_targets``, the one teacher
path (the online-teacher comparison and ``store verify`` use it too).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.batching import budget_batches
from pipeline.config import AnnotateConfig, CorpusConfig
from pipeline.dist import World, broadcast, device_for, finish, first_error, init, world_from_env
from pipeline.precision import autocast
from pipeline.corpus import Sentence, check_corpora, corpus_splits, read_corpus
from pipeline.teaching import (Teacher, decoder_name, is_labeled_tree, rounded, teacher_factors,
                               teacher_targets)
from store.schema import StoreError, StoreOptions, TeacherMeta, check_name, check_split, make_sid, shard_id
from store.spans import bioes_gold, span_row
from store.trees import to_rows
from store.remote import writer_type
from store.writer import ShardSpec

OnBatch = Callable[[int, int], None]  # (sentences, words) annotated


def load_teacher(folder: str, device: str = "auto") -> Teacher:
    """A teacher on ``device`` (``auto``: CUDA when present): our model folder, a Hugging Face
    token-classification checkpoint (folder or hub name) or a ``fit-crf`` folder
    (``pipeline.hf_teacher.load_any_teacher``)."""
    from pipeline.hf_teacher import load_any_teacher
    from pipeline.trainer import resolve_device

    return load_any_teacher(folder, resolve_device(device))


def structure_device(teacher: Teacher) -> torch.device:
    """The device a teacher runs on (its parameters'; the CPU for a teacher without any)."""
    params = getattr(teacher, "parameters", None)
    first = next(params(), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def teacher_id(folder: str, fingerprint: str) -> str:
    """``<folder name>-<fingerprint[:8]>``, reduced to safe characters."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(folder).name).strip("-_")[:80] or "teacher"
    return f"{stem}-{fingerprint[:8]}"


def teacher_meta(teacher: Teacher, lang: str, folder: str, probe: list[str],
                 options: StoreOptions) -> TeacherMeta:
    """The store's record of a teacher; its factors come from the Structure of one probe sentence."""
    with torch.inference_mode():
        structure = teacher.structure([probe])
    try:
        arrays = teacher_factors(structure)
        decoder = decoder_name(structure)
    except ValueError as err:
        raise StoreError(f"teacher {folder}: {err}") from None
    fingerprint = teacher.fingerprint()
    spans = decoder == "spans"  # a span teacher is stored over its BIOES labels
    labels = structure.labels_bioes if spans else teacher.labels
    if labels is None:
        raise StoreError(f"teacher {folder}: its Spans names no BIOES labels (labels_bioes)")
    return TeacherMeta(teacher_id(folder, fingerprint), lang, list(labels), "BIOES" if spans else teacher.scheme,
                       decoder, fingerprint, options.k, options.tau, folder, arrays)


def tree_gold(s: Sentence) -> tuple[list | None, list | None, list | None]:
    """(heads, relations, upos) of a sentence (None where the corpus has none); a tree teacher
    stores them. Heads and relations come together or not at all."""
    heads, rels, upos = (getattr(s, name, None) for name in ("heads", "rels", "upos"))
    if (heads is None) != (rels is None):
        raise StoreError(f"sentence {s.sid}: has {'heads' if rels is None else 'relations'} but no "
                         f"{'relations' if rels is None else 'heads'}; a tree teacher needs both or neither")
    return (None if heads is None else [int(h) for h in heads], None if rels is None else list(rels),
            None if upos is None else list(upos))


def input_sha256(sentences: list[Sentence], tree: bool = False) -> str:
    """sha256 of a shard's input: sids, tokens and labels (and for a tree teacher the sentences'
    heads, relations and UPOS where present; a chain shard's hash is the one of earlier versions)."""
    payload = []
    for s in sentences:
        gold = tree_gold(s) if tree else (None, None, None)
        payload.append([s.sid, s.tokens, s.labels] + ([list(gold)] if gold != (None, None, None) else []))
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def annotate_batch(teacher: Teacher, meta: TeacherMeta, sentences: list[Sentence],
                   options: StoreOptions, precision: str = "fp32") -> list[dict]:
    """Teacher outputs of one batch as per-sentence store rows (see StoreWriter.write_shard).

    The teacher's forward pass runs under ``precision`` (pipeline/precision.py; its dynamic programs
    in fp32). Its potentials (emissions, arc scores) are rounded to the storage dtype first, so every
    stored quantity is exactly the one of the stored potentials (store/README.md, "Precision"). A
    tree teacher's rows hold heads (1-based, 0 = the root) and relation ids of words 1..L; a span
    teacher's rows BIOES label ids, its gold the BIOES labels of the corpus gold's span set."""
    tokens = [s.tokens for s in sentences]
    with autocast(precision, structure_device(teacher)):
        structure = teacher.structure(tokens)
    lengths = [len(t) for t in tokens]
    try:
        decoder = decoder_name(structure)
    except ValueError as err:
        raise StoreError(f"teacher {meta.id}: {err}") from None
    mask = structure.arcs.mask if is_labeled_tree(structure) else structure.mask
    if decoder != meta.decoder or mask.shape[0] != len(tokens) or mask.sum(1).tolist() != lengths:
        raise StoreError(f"teacher {meta.id}: its structure ({decoder}) or mask does not match the "
                         f"teacher ({meta.decoder}) or the sentence lengths of the batch starting with "
                         f"{sentences[0].sid}")
    try:
        out = teacher_targets(rounded(structure, getattr(torch, options.dtype)), options.k,
                              tau=options.tau, with_marginals=options.tensors == "full")
    except ValueError as err:
        raise StoreError(f"teacher {meta.id}, batch starting with {sentences[0].sid}: {err}") from None
    out = {name: value.detach().cpu().numpy() for name, value in out.items()}
    if meta.is_tree and out["rel"].shape[-1] != len(meta.labels):
        raise StoreError(f"teacher {meta.id}: {out['rel'].shape[-1]} relation scores per arc, but "
                         f"{len(meta.labels)} relation names (its labels)")
    index = {label: i for i, label in enumerate(meta.labels)}
    rows = []
    for b, s in enumerate(sentences):
        n = lengths[b]
        gold = s.labels
        row = {"sid": s.sid, "corpus": s.corpus, "split": s.split, "lang": s.lang, "teacher": meta.id,
               "index": int(s.sid.rsplit("/", 1)[1]), "length": n, "tokens": list(s.tokens),
               "kbest_logprob": out["kbest_logprob"][b], "residual_mass": float(out["residual_mass"][b]),
               "log_z": float(out["log_z"][b])}
        if meta.is_tree:  # heads [L+1] -> words 1..n; arcs (h, d) -> the stored [n, n+1] rows
            row["gold_heads"], gold, row["upos"] = tree_gold(s)
            row.update(viterbi=out["viterbi"][b, 1:n + 1], kbest_paths=out["kbest_paths"][b, :, 1:n + 1],
                       relations=out["relations"][b, 1:n + 1], rel=out["rel"][b, 1:n + 1],
                       arc_scores=to_rows(out["arc_scores"][b], n),
                       **({"arc": to_rows(out["arc"][b], n)} if "arc" in out else {}))
        elif meta.is_span:
            row.update(span_row(out, b, n))
            gold = bioes_gold(gold)
        else:
            row.update(viterbi=out["viterbi"][b, :n], kbest_paths=out["kbest_paths"][b, :, :n],
                       emissions=out["emissions"][b, :n])
            if "node" in out:
                row.update(node=out["node"][b, :n], edge=out["edge"][b, :n - 1])
        row["gold"] = None if gold is None else list(gold)
        row["gold_ids"] = None if gold is None else [index.get(label, -1) for label in gold]
        rows.append(row)
    return rows


def annotate_shard(teacher: Teacher, meta: TeacherMeta, spec: ShardSpec, sentences: list[Sentence],
                   options: StoreOptions, batch_tokens: int, on_batch: OnBatch | None = None,
                   precision: str = "fp32") -> list[dict]:
    """Rows of one shard in sentence order; batches are length-bucketed under ``batch_tokens`` words."""
    rows: list[dict | None] = [None] * len(sentences)
    lengths = np.array([len(s.tokens) for s in sentences])
    for batch in budget_batches(lengths, batch_tokens):
        for i, row in zip(batch, annotate_batch(teacher, meta, [sentences[i] for i in batch], options,
                                                precision)):
            rows[i] = {**row, "shard": spec.id}
        if on_batch is not None:
            on_batch(len(batch), int(lengths[batch].sum()))
    return rows


def read_all(cfg: AnnotateConfig) -> list[tuple[CorpusConfig, str, list[Sentence]]]:
    """Every (corpus, split, sentences) of ``cfg`` to annotate; refuses corpora without a teacher
    and two corpora of the same name (their sentence ids would collide)."""
    splits = [check_split(s) for s in cfg.splits]
    check_corpora(cfg.corpora)
    seen: set[str] = set()
    out = []
    for corpus in cfg.corpora:
        check_name("corpus", corpus.name)
        if corpus.name in seen:
            raise StoreError(f"two corpora are named {corpus.name!r}: corpus names must be unique in a "
                             "store (their sentence ids corpus/split/index would collide)")
        seen.add(corpus.name)
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


def plan_shards(work, metas: dict[str, TeacherMeta],
                shard_size: int) -> list[tuple[ShardSpec, list[Sentence]]]:
    """The deterministic shard plan: each (corpus, split) in chunks of ``shard_size`` in file order."""
    plan = []
    for corpus, split, sentences in work:
        meta = metas[corpus.lang]
        for chunk, first in enumerate(range(0, len(sentences), shard_size)):
            part = sentences[first:first + shard_size]
            spec = ShardSpec(shard_id(meta.id, corpus.name, split, chunk), meta.id, corpus.name, split,
                             corpus.lang, first, len(part), input_sha256(part, meta.is_tree))
            plan.append((spec, part))
    return plan


def deal_shards(plan: list[tuple[ShardSpec, list[Sentence]]], ranks: int) -> list[list[int]]:
    """The plan's shard indices per rank, balanced by work: longest-processing-time first, each
    shard (by words + sentences, what a teacher pass costs) to the least loaded rank (ties: the
    lowest rank), each rank's list in plan order. Deterministic, so every rank deals the same.
    Round-robin dealing ignored the shards' sizes (each split's last shard is short)."""
    cost = [sum(len(s.tokens) for s in part) + len(part) for _, part in plan]
    loads, owned = [0] * ranks, [[] for _ in range(ranks)]
    for i in sorted(range(len(plan)), key=lambda i: (-cost[i], i)):
        rank = loads.index(min(loads))
        loads[rank] += cost[i]
        owned[rank].append(i)
    return [sorted(indices) for indices in owned]


def build_store(cfg: AnnotateConfig, *, teachers: dict[str, Teacher] | None = None,
                on_batch: OnBatch | None = None, on_skip: Callable[[int], None] | None = None,
                on_plan: Callable[[int], None] | None = None, world: World | None = None) -> dict:
    """Annotate every corpus split of ``cfg`` into the store ``cfg.out``; returns the manifest.

    ``teachers`` (language -> loaded teacher) replaces loading the ``cfg.teachers`` model folders
    (tests, benchmarks, teachers built in Python). Progress callbacks (rank 0 only under torchrun):
    ``on_plan(sentences of this rank)``, ``on_batch(sentences, words)`` per annotated batch and
    ``on_skip(sentences)`` per shard kept from an earlier run.

    Under torchrun (``world``, read from the environment when None) every rank reads the corpora and
    makes the same deterministic plan; rank 0 holds the store's lock, registers the teachers and
    records the plan; each rank annotates and commits its part of the shards (``deal_shards``:
    equal work; each shard is written by exactly one process, atomically); after a barrier rank 0
    finalizes the manifest. The store is the one a single process writes (same rows, same array
    bytes); a killed rank leaves its committed shards, and a rerun resumes. A second job on the
    store is refused by the lock.
    ``cfg.out`` may be an fsspec URL (``s3://`` ...): every process then stages its shards locally
    and uploads them, each marker after its files, the manifest last (store/remote.py).
    """
    world = world or world_from_env()
    device = device_for(world, cfg.device)
    created = init(world, device)
    try:
        return _build(cfg, world, device, teachers, on_batch, on_skip, on_plan)
    finally:
        finish(world, created)


def _build(cfg, world, device, teachers, on_batch, on_skip, on_plan) -> dict:
    """build_store's work (see there) in an initialized world."""
    options = StoreOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(StoreOptions)})
    writer_cls = writer_type(cfg.out)  # an fsspec URL: staged locally, uploaded per shard (store/remote.py)
    main = writer_cls(cfg.out, options, mix_teachers=cfg.mix_teachers) if world.is_main else None
    with main if main is not None else contextlib.nullcontext():
        error = None
        try:
            work = read_all(cfg)
            metas, loaded = {}, {}
            for lang in sorted({corpus.lang for corpus, _, _ in work}):
                folder = cfg.teachers.get(lang, f"teacher-{lang}")
                loaded[lang] = (teachers or {}).get(lang) or load_teacher(folder, str(device))
                probe = next(sents[0].tokens for corpus, _, sents in work if corpus.lang == lang)
                metas[lang] = teacher_meta(loaded[lang], lang, folder, probe, options)
                if main is not None:
                    metas[lang].id = main.add_teacher(metas[lang])
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then raised
            error = err
        _raise_shared(world, error)
        ids = broadcast(world, {lang: meta.id for lang, meta in metas.items()})
        for lang, meta in metas.items():
            meta.id = ids[lang]
        plan = plan_shards(work, metas, options.shard_size)
        error = None
        try:
            if main is not None:
                main.begin([spec for spec, _ in plan])
        except Exception as err:  # noqa: BLE001
            error = err
        _raise_shared(world, error)
        writer = main or writer_cls.attach(cfg.out, options, {m.id: m for m in metas.values()})
        mine = [plan[i] for i in deal_shards(plan, world.size)[world.rank]]
        if on_plan is not None and world.is_main:
            on_plan(sum(spec.rows for spec, _ in mine))
        error = None
        try:
            with torch.inference_mode():
                for spec, part in mine:
                    if writer.is_complete(spec):
                        if on_skip is not None and world.is_main:
                            on_skip(spec.rows)
                        continue
                    rows = annotate_shard(loaded[spec.lang], metas[spec.lang], spec, part, options,
                                          cfg.batch_tokens, on_batch if world.is_main else None,
                                          cfg.precision)
                    writer.write_shard(spec, rows)
        except Exception as err:  # noqa: BLE001
            error = err
        _raise_shared(world, error)
        manifest = None
        if main is not None:
            for spec, _ in plan:
                if spec.id not in main.done:
                    main.is_complete(spec)  # another rank's committed shard
            manifest = main.finalize([spec for spec, _ in plan])
        return broadcast(world, manifest)


def _raise_shared(world: World, error: BaseException | None) -> None:
    """Raise ``error`` here, or any other rank's error as a StoreError, on every rank alike."""
    if not world.distributed:
        if error is not None:
            raise error
        return
    message = first_error(world, error)
    if error is not None:
        raise error
    if message is not None:
        raise StoreError(f"another rank failed: {message}")
