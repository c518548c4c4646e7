"""The store's on-disk contract: layout, names, options, table schema (documented in store/README.md)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.errors import DataError

SCHEMA_VERSION = 1
FORMAT = "structkd-store"
SPLITS = ("train", "dev", "test", "unlabeled")
TENSOR_MODES = ("potentials", "full")
DTYPES = ("float16", "float32")
CHAIN_DECODERS = ("crf", "maxent")
# Tree teachers (store/README.md, "Trees"): HeadSelection, DependencyCRF (matrix-tree), projective
# DependencyCRF (Eisner); every one single-root. pipeline/teaching.py TREE_DECODERS builds them.
TREE_DECODERS = ("heads", "tree", "tree_projective")
SPAN_DECODERS = ("spans",)  # span NER teachers (store/README.md, "Spans"): pipeline.structs.Spans
DECODERS = CHAIN_DECODERS + TREE_DECODERS + SPAN_DECODERS

MANIFEST = "manifest.json"
TABLE_DIR = "table"
TENSOR_DIR = "tensors"
MARKER_DIR = "shards"
TEACHER_DIR = "teachers"
LOCK_FILE = ".lock"
TMP_DIR = ".tmp"
DIGEST = "digest"  # manifest field: sha256 of the rest of the manifest (manifest_digest)
VERIFIED = 1  # version of the invariants StoreWriter.write_shard checks; recorded per shard
# The writer's own temporary names (atomic_json's temporary file, a broken lock on its way out):
# the only files in a store it removes without a record naming them.
OWN_TEMP = re.compile(r"\.(manifest\.json\.tmp|lock\.stale)-[0-9]+")

# Zarr arrays of one shard group: token-major flat arrays + int64 offsets (row i = [off[i], off[i+1])).
TOKEN_OFFSETS = "offsets"  # [n + 1] into emissions / node rows
EDGE_OFFSETS = "edge_offsets"  # [n + 1] into edge rows (a sentence of length L has L - 1)
STORED_ARRAYS = {"potentials": ("emissions",), "full": ("emissions", "node", "edge")}
TEACHER_ARRAYS = ("transitions", "start", "end", "allowed_transitions", "allowed_start", "allowed_end")
# Tree shards: arc potentials and marginals [L, L+1] per sentence (d-major), flattened to 1-D with
# their own offsets (a sentence owns L * (L + 1) values); relation marginals [L, R] on TOKEN_OFFSETS.
ARC_OFFSETS = "arc_offsets"
ARC_ARRAYS = ("arc_scores", "arc")  # the 1-D arrays on ARC_OFFSETS
TREE_STORED_ARRAYS = {"potentials": ("arc_scores", "rel"), "full": ("arc_scores", "arc", "rel")}
# Span shards: span potentials [L, L, E] per sentence flattened to 1-D with their own offsets (a
# sentence owns L * L * E values); BIOES node marginals [L, 1 + 4E] on TOKEN_OFFSETS (full only).
SPAN_OFFSETS = "span_offsets"
SPAN_STORED_ARRAYS = {"potentials": ("span_scores",), "full": ("span_scores", "node")}


def stored_arrays(decoder: str, tensors: str) -> tuple[str, ...]:
    """The Zarr arrays (besides the offsets) a shard of a teacher with ``decoder`` holds."""
    if decoder in SPAN_DECODERS:
        return SPAN_STORED_ARRAYS[tensors]
    return (TREE_STORED_ARRAYS if decoder in TREE_DECODERS else STORED_ARRAYS)[tensors]


def teacher_arrays(decoder: str) -> tuple[str, ...]:
    """The arrays of a teacher's Zarr group: a chain's factors; none for a tree or span teacher (its
    decoder name says everything a reader needs to rebuild its structure)."""
    return () if decoder in TREE_DECODERS + SPAN_DECODERS else TEACHER_ARRAYS

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_SHARD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.[A-Za-z0-9][A-Za-z0-9_-]*\.[a-z]+\.[0-9]{5,}")
OWN_MARKER_TEMP = re.compile(rf"\.{_SHARD.pattern}\.json\.tmp-[0-9]+")  # a marker's atomic_json
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class StoreError(DataError):
    """A store that cannot be opened, written or trusted; the message names the store, shard or sid.
    A DataError: the CLI prints it as one line and exits 1."""


class StoreLockedError(StoreError):
    """Another live process holds the store's write lock."""


class StoreWarning(UserWarning):
    """A store that loads but deserves attention (a manifest without digest, one that was edited)."""


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace) without its ``digest``
    field. It detects a manifest edited or damaged after annotate wrote it, which its per-file
    checksums cannot (the manifest holds them); it is not a signature: anyone can recompute it."""
    body = {key: value for key, value in manifest.items() if key != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_state(manifest: dict) -> str:
    """``signed`` (digest matches), ``modified`` (it does not), or ``unsigned`` (no digest: written by
    structkd before the digest existed)."""
    if DIGEST not in manifest:
        return "unsigned"
    return "signed" if manifest[DIGEST] == manifest_digest(manifest) else "modified"


def modified_message(where: str) -> str:
    return (f"{where}: manifest.json was modified after annotate wrote it (its digest does not match "
            "its content); run `structkd store verify`, and re-run annotate to rebuild it")


def check_name(kind: str, value: str) -> str:
    """A corpus or teacher name: letters, digits, '_' and '-' (it becomes part of file names)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise StoreError(f"{kind} name {value!r} must match {_NAME.pattern} (letters, digits, _ and -)")
    return value


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise StoreError(f"split {split!r} must be one of {SPLITS}")
    return split


def shard_id(teacher: str, corpus: str, split: str, chunk: int) -> str:
    """``teacher.corpus.split.00000``: chunk = index of the ``shard_size`` block in the corpus split."""
    return f"{check_name('teacher', teacher)}.{check_name('corpus', corpus)}.{check_split(split)}.{chunk:05d}"


def is_shard_id(value: str) -> bool:
    return isinstance(value, str) and bool(_SHARD.fullmatch(value))


def check_shard_id(value: str) -> str:
    """Refuse any shard id that is not a plain file-name stem (no '/', '..', absolute paths)."""
    if not isinstance(value, str) or not _SHARD.fullmatch(value):
        raise StoreError(f"invalid shard id {value!r}: expected teacher.corpus.split.NNNNN")
    return value


def make_sid(corpus: str, split: str, index: int) -> str:
    return f"{check_name('corpus', corpus)}/{check_split(split)}/{int(index)}"


def parse_sid(sid: str) -> tuple[str, str, int]:
    """``corpus/split/index`` -> (corpus, split, index), validated."""
    parts = sid.split("/") if isinstance(sid, str) else []
    if len(parts) != 3 or not parts[2].isdigit():
        raise StoreError(f"invalid sid {sid!r}: expected corpus/split/index")
    return check_name("corpus", parts[0]), check_split(parts[1]), int(parts[2])


def check_relpath(path: str) -> str:
    """A store-relative file path from a manifest: '/'-separated plain parts, never '..' or absolute."""
    parts = path.split("/") if isinstance(path, str) else [""]
    if not all(_PART.fullmatch(p) and p not in (".", "..") for p in parts):
        raise StoreError(f"unsafe path {path!r} in the store manifest")
    return path


def table_path(shard: str) -> str:
    return f"{TABLE_DIR}/{check_shard_id(shard)}.parquet"


def tensor_path(shard: str) -> str:
    return f"{TENSOR_DIR}/{check_shard_id(shard)}.zarr"


def marker_path(shard: str) -> str:
    return f"{MARKER_DIR}/{check_shard_id(shard)}.json"


def teacher_path(teacher: str) -> str:
    return f"{TEACHER_DIR}/{check_name('teacher', teacher)}.zarr"


@dataclass
class StoreOptions:
    """What a store holds; every shard of a store is written with the same options.

    tensors: ``potentials`` stores emissions only and the reader recomputes node/edge marginals from
    them (exact); ``full`` also stores node and edge marginals (probabilities below ``prune`` zeroed).
    dtype: storage dtype of emissions, node and edge. Teacher outputs are computed from the emissions
    rounded to this dtype, so the stored potentials and every stored quantity agree exactly.
    """

    k: int = 5
    tau: float = 1.0
    dtype: str = "float16"
    tensors: str = "potentials"
    prune: float = 0.0
    shard_size: int = 2000

    def __post_init__(self) -> None:
        if self.k < 1 or self.shard_size < 1:
            raise StoreError(f"k and shard_size must be >= 1, got k={self.k}, shard_size={self.shard_size}")
        if not self.tau > 0:
            raise StoreError(f"tau must be > 0, got {self.tau}")
        if self.dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.tensors not in TENSOR_MODES:
            raise StoreError(f"tensors must be one of {TENSOR_MODES}, got {self.tensors!r}")
        if not 0.0 <= self.prune < 0.5 or (self.prune and self.tensors != "full"):
            raise StoreError(f"prune must be in [0, 0.5) and needs tensors=full, got {self.prune}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TeacherMeta:
    """One teacher of a store. ``transitions``/``start``/``end`` are the effective potentials the
    stored quantities were computed from: -inf marks a factor the tag scheme forbids (CRF); zeros for a
    MaxEnt teacher, whose constraints (``allowed_*``) only restrict its k-best and Viterbi paths.
    A tree teacher (``decoder`` in TREE_DECODERS) has no arrays and ``labels`` = its relation names;
    a span teacher (SPAN_DECODERS) has no arrays and ``labels`` = its BIOES labels."""

    id: str
    lang: str
    labels: list[str]
    scheme: str
    decoder: str
    fingerprint: str
    k: int
    tau: float
    source: str = ""
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def transitions(self) -> np.ndarray:
        return self.arrays["transitions"]

    @property
    def start(self) -> np.ndarray:
        return self.arrays["start"]

    @property
    def end(self) -> np.ndarray:
        return self.arrays["end"]

    @property
    def is_crf(self) -> bool:
        return self.decoder == "crf"

    @property
    def is_tree(self) -> bool:
        """A dependency teacher: labels are its relation names, paths are head vectors."""
        return self.decoder in TREE_DECODERS

    @property
    def is_span(self) -> bool:
        """A span NER teacher: labels are its BIOES labels (O, then B/I/E/S of each type), paths BIOES."""
        return self.decoder in SPAN_DECODERS

    def to_json(self) -> dict:
        return {"lang": self.lang, "labels": list(self.labels), "scheme": self.scheme,
                "decoder": self.decoder, "fingerprint": self.fingerprint, "k": self.k,
                "tau": self.tau, "source": self.source, "tensors": teacher_path(self.id)}

    @classmethod
    def from_json(cls, teacher_id: str, data: dict, arrays: dict[str, np.ndarray]) -> TeacherMeta:
        if data.get("decoder") not in DECODERS:
            raise StoreError(f"teacher {teacher_id}: decoder must be one of {DECODERS}")
        return cls(check_name("teacher", teacher_id), data["lang"], list(data["labels"]),
                   data["scheme"], data["decoder"], data["fingerprint"], int(data["k"]),
                   float(data["tau"]), data.get("source", ""), arrays)


TEACHER_KEYS = ("lang", "labels", "scheme", "decoder", "fingerprint", "k", "tau")


def teacher_entry_problems(teacher_id: str, entry: dict, attrs: dict) -> list[str]:
    """Where a teacher's manifest entry disagrees with the copy the writer keeps in the attributes
    of the teacher's Zarr group (checksummed with the teacher files): a label list permuted or
    renamed, another k, tau or decoder. A group without the copy (an earlier structkd) passes."""
    return [f"teacher {teacher_id}: the manifest says {key} = {entry.get(key)!r}, its files "
            f"{teacher_path(teacher_id)} say {attrs[key]!r}"
            for key in TEACHER_KEYS if key in attrs and attrs[key] != entry.get(key)]


TABLE_SCHEMA = pa.schema(
    [
        ("sid", pa.string()),
        ("corpus", pa.string()),
        ("split", pa.string()),
        ("lang", pa.string()),
        ("teacher", pa.string()),
        ("shard", pa.string()),
        ("index", pa.int64()),
        ("length", pa.int32()),
        ("tokens", pa.list_(pa.string())),
        ("gold", pa.list_(pa.string())),
        ("gold_ids", pa.list_(pa.int16())),
        ("viterbi", pa.list_(pa.int16())),
        ("kbest_paths", pa.list_(pa.list_(pa.int16()))),
        ("kbest_logprob", pa.list_(pa.float32())),
        ("residual_mass", pa.float32()),
        ("log_z", pa.float32()),
        # tree shards only (null in chain shards, absent from stores of earlier versions):
        ("gold_heads", pa.list_(pa.int16())),
        ("relations", pa.list_(pa.int16())),
        ("upos", pa.list_(pa.string())),
    ],
    metadata={b"structkd_schema_version": str(SCHEMA_VERSION).encode()},
)
TABLE_COLUMNS = tuple(TABLE_SCHEMA.names)
TREE_COLUMNS = ("gold_heads", "relations", "upos")
OLD_COLUMNS = TABLE_COLUMNS[:-len(TREE_COLUMNS)]  # the table of stores written before trees
