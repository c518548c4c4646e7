"""A teacher-output store as distillation's data (``pipeline.distiller.DistillData``).

The stream (store/stream.py), the labeled dev / test rows, the BiLSTM vocabulary and, for the
comparison mode only, an online teacher that recomputes a batch's targets with the one teacher
path (``pipeline.teaching.teacher_targets``), exactly as annotate stored them.
"""
from __future__ import annotations

import torch
from rich.console import Console

from pipeline.config import DistillConfig
from pipeline.dist import World
from pipeline.distiller import DistillData, Distiller
from pipeline.kd.types import TeacherTargets
from pipeline.tagger import Tagger
from pipeline.teaching import rounded, teacher_factors, teacher_targets
from pipeline.trainer import resolve_device
from store.checks import check_k, check_store, check_verified, open_checked, verify_files
from store.reader import Store
from store.schema import StoreError, table_path
from store.select import RowFilter
from store.stream import KBEST_FIELDS, Batch, StoreStream
from store.stream_spans import SPAN_FIELDS, teacher_kind


def stream_fields(fields: tuple[str, ...]) -> tuple[str, ...]:
    """The stored fields to read for TeacherTargets ``fields`` (k-best data comes as one group)."""
    out = set(fields)
    if out & {"kbest_paths", "kbest_logprob"}:
        out.update(KBEST_FIELDS)
    return tuple(sorted(out - {"transitions", "start", "end", "crf"}))


def eval_rows(store: Store, split: str) -> list[dict]:
    """Labeled sentences of ``split`` (tokens, gold, lang; a store of dependency teachers also
    gold_heads and upos, its gold being the relations), one per sid, in manifest order; each
    shard's files are checked against their manifest checksums first, as the stream does."""
    seen: dict[str, dict] = {}
    tree = any(t.is_tree for t in store.teachers.values())
    columns = ["sid", "lang", "tokens", "gold"] + (["gold_heads", "upos"] if tree else [])
    for shard in store.shards(split):
        verify_files(store, store.shard_info(shard).get("files", {}), f"shard {shard}")
        for row in store.read_table(shard, columns).to_pylist():
            if row["gold"] is not None and row["sid"] not in seen:
                seen[row["sid"]] = row
    return list(seen.values())


def encoded_labels(store: Store, splits: list[str], kind: str) -> list[str]:
    """The labels of a tagger student of dependency teachers (``pipeline.head_encoding``): those of
    every tree it is trained on, the gold tree of a labeled row and the teacher's best tree of an
    unlabeled one, sorted. StoreError naming the sentence whose tree cannot be encoded."""
    from pipeline.head_encoding import encode

    out: set[str] = set()
    names = {tid: t.labels for tid, t in store.teachers.items()}
    columns = ["sid", "teacher", "gold", "gold_heads", "viterbi", "relations", "upos"]
    for split in splits:
        for shard in store.shards(split):
            verify_files(store, store.shard_info(shard).get("files", {}), f"shard {shard}")
            for row in store.read_table(shard, columns).to_pylist():
                heads, rels = (row["gold_heads"], row["gold"]) if row["gold"] is not None else \
                    (row["viterbi"], [names[row["teacher"]][i] for i in row["relations"]])
                try:
                    out.update(encode(heads, rels, row["upos"], kind))
                except ValueError as err:
                    raise StoreError(f"sentence {row['sid']}: {err}") from None
    return sorted(out)


def vocab_sentences(store: Store, splits: list[str]) -> list[list[str]]:
    """Token lists of the splits (the BiLSTM vocabulary), read from the Parquet tokens column only,
    after the table file's checksum."""
    out: list[list[str]] = []
    for split in splits:
        for shard in store.shards(split):
            rel = table_path(shard)
            files = store.shard_info(shard).get("files", {})
            verify_files(store, {rel: files.get(rel, "")}, f"shard {shard}")
            out += store.read_table(shard, ["tokens"]).column("tokens").to_pylist()
    return out


class OnlineTeacher:
    """Comparison mode: the KD targets of a batch computed by running the teacher on it, exactly as
    annotate computes the stored ones (emissions rounded to the store's dtype, same k and tau)."""

    def __init__(self, folder: str, store: Store, device: torch.device, fields: tuple[str, ...],
                 k: int | None, tau: float, console: Console | None = None):
        if len(store.teachers) != 1:
            raise StoreError(f"--online-teacher compares with a single-teacher store; {store.url} has "
                             f"{sorted(store.teachers)}")
        self.meta = next(iter(store.teachers.values()))
        if self.meta.is_tree or self.meta.is_span:
            raise StoreError(f"--online-teacher compares sequence-labeling teachers; {store.url} holds "
                             f"the {self.meta.decoder} teacher {self.meta.id}")
        self.tagger = Tagger.load(folder, device)
        if self.tagger.labels != self.meta.labels:
            raise StoreError(f"online teacher {folder}: labels {self.tagger.labels} != the store's "
                             f"{self.meta.labels}")
        if self.tagger.fingerprint() != self.meta.fingerprint:
            (console or Console(stderr=True)).print(
                f"[yellow]warning:[/] online teacher {folder} is not the teacher of the store")
        self.fields, self.k, self.tau = fields, k, tau
        self.dtype = getattr(torch, store.options.dtype)
        self.store_k = store.options.k

    def __call__(self, batch: Batch) -> tuple[TeacherTargets, torch.Tensor]:
        """(targets, hard): hard = gold where the sentence has it, else the teacher's Viterbi path."""
        with torch.no_grad():
            structure = rounded(self.tagger.structure(batch.tokens), self.dtype)
            out = teacher_targets(structure, self.store_k, tau=self.tau,
                                  with_marginals=bool({"node", "edge"} & set(self.fields)))
            size, device = structure.mask.shape[0], structure.mask.device
            factors = {name: torch.from_numpy(value).to(device).expand(size, *value.shape)
                       for name, value in teacher_factors(structure).items() if not name.startswith("allowed")}
            kind = structure.kind
            targets = TeacherTargets(
                emissions=out["emissions"] if "emissions" in self.fields else None, **factors,
                **{name: out[name] for name in ("node", "edge") + KBEST_FIELDS if name in self.fields},
                crf=torch.full((size,), kind == "chain", device=device), tau=self.tau,
                kinds=frozenset({kind}))
            hard = torch.where(batch.has_gold.unsqueeze(1), batch.hard, out["viterbi"])
        return (targets.select(self.k) if self.k is not None else targets), hard


def store_data(cfg: DistillConfig, console: Console | None = None) -> DistillData:
    """The store ``cfg.store`` as DistillData: splits train (+ unlabeled unless the method is the
    gold-only ``none`` or ``use_unlabeled`` is off), dev and test rows, the stream at ``cfg.kd.k`` /
    ``cfg.kd.tau`` (refused when the store keeps fewer paths). With ``cfg.head_encoding`` (a tagger
    student of a dependency-teacher store) the student's labels are ``cfg.labels``. A store of span
    teachers trains a maxent or crf tagger over their BIOES labels (store/stream_spans.py)."""
    store = open_checked(cfg.store)
    labels, scheme = check_store(store, None if cfg.head_encoding else cfg.labels)
    check_verified(store)
    check_k(store, cfg.kd.k)
    splits = ["train"] + (["unlabeled"] if cfg.use_unlabeled and cfg.kd.method != "none" else [])
    trees = any(t.is_tree for t in store.teachers.values())
    if cfg.head_encoding is not None:
        if not trees:
            raise StoreError(f"{cfg.store}: distill.head_encoding maps a dependency teacher's outputs onto "
                             "a tagger's labels; this store's teachers are sequence labelers")
        labels, scheme = cfg.labels or encoded_labels(store, splits, cfg.head_encoding), "none"
    kinds = frozenset(teacher_kind(t, cfg.head_encoding) for t in store.teachers.values())
    spans = "spans" in kinds
    if spans and cfg.model.decoder.kind not in ("maxent", "crf"):
        raise StoreError(f"{cfg.store}: a span-teacher store trains a BIOES tagger (decoder maxent or crf), "
                         f"not a {cfg.model.decoder.kind} student")

    def stream(fields: tuple[str, ...], featurize, world: World) -> StoreStream:
        missing = sorted(set(stream_fields(fields)) - set(SPAN_FIELDS)) if spans else []
        if missing:
            raise StoreError(f"{cfg.store}: KD objective '{cfg.kd.method}' needs {missing} of the teacher for "
                             f"a {cfg.model.decoder.kind} student, which a span-teacher store does not hold "
                             "(it keeps BIOES node marginals and k-best paths: use none, structural or "
                             "posterior with a maxent student, none or posterior with a crf student)")
        return StoreStream(store, splits, fields=stream_fields(fields), k=cfg.kd.k,
                           batch_tokens=cfg.batch_tokens, shuffle_buffer=cfg.shuffle_buffer,
                           seed=cfg.optim.seed, labels=labels, tau=cfg.kd.tau, featurize=featurize,
                           rank=world.rank, world_size=world.size, head_encoding=cfg.head_encoding,
                           unlabeled=RowFilter(cfg.unlabeled.min_top1, cfg.unlabeled.drop_outside_only))

    def online(fields: tuple[str, ...]) -> OnlineTeacher:
        return OnlineTeacher(cfg.online_teacher, store, resolve_device(cfg.device), stream_fields(fields),
                             cfg.kd.k, cfg.kd.tau, console)

    info = {"splits": splits,
            "teachers": {tid: {"lang": t.lang, "decoder": t.decoder, "fingerprint": t.fingerprint}
                         for tid, t in store.teachers.items()}}
    return DistillData(labels, scheme, kinds, stream, eval_rows(store, "dev"), eval_rows(store, "test"),
                       lambda: vocab_sentences(store, splits), info,
                       online if cfg.online_teacher else None, trees, cfg.head_encoding)


def distill(cfg: DistillConfig, progress: bool = True) -> dict:
    """Train the student of ``cfg`` from its store; writes ``cfg.out``/{model/, metrics.json,
    epochs.csv} and returns the metrics (dev / test P/R/F1 overall and per language, epoch times)."""
    return Distiller(cfg, store_data(cfg)).run(progress)
