"""Bring your own teacher: a Hugging Face token-classification checkpoint as a structkd ``Teacher``.

``HFTeacher`` wraps any ``AutoModelForTokenClassification`` (a local folder or a hub name; only the
local cache when ``HF_HUB_OFFLINE`` is set). It is a MaxEnt teacher: its word-level emissions
[B, L, T] are the logits of each word's first sub-word (HF ``word_ids``), long sentences windowed by
``TransformerWordEncoder.featurize`` itself (so exactly as our own encoders window them), and its
``structure`` is a ``Factorized`` with the tag scheme's constraints, so decoding is valid.
``CRFTeacher`` is the same checkpoint plus transitions / start / end fitted by ``structkd fit-crf``
(pipeline/fit_crf.py): a ``ChainCRF`` teacher with edge marginals and k-best paths.

Labels come from ``config.id2label`` in id order (BILOU names ``U-`` / ``L-`` read as BIOES ``S-`` /
``E-``); the scheme is detected from them. ``map_labels`` maps them onto another label list (a
corpus's, another teacher's): same names in another order, or a clear ``TeacherError``.

Folders ``load_any_teacher`` tells apart (``teacher_kind``): ours (``config.json`` with a
structkd ``format``), an HF checkpoint (``config.json`` of a ``*ForTokenClassification``
architecture, no ``format``) and a fitted CRF (``crf.json`` + ``crf.safetensors``, which name
their checkpoint). Nothing is pickled: the CRF factors are safetensors, and transformers reads a
checkpoint's safetensors (or a ``.bin`` with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors, save_file
from torch import Tensor, nn

from pipeline.config import EncoderConfig
from pipeline.encoders import TransformerWordEncoder
from pipeline.errors import DataError
from pipeline.potentials import Constraints
from pipeline.schemes import allowed_transitions, detect_scheme, normalize_scheme
from pipeline.structs import ChainCRF, Factorized, Structure

CRF_META, CRF_WEIGHTS = "crf.json", "crf.safetensors"
CRF_KIND = "hf-crf"
BILOU = {"U": "S", "L": "E"}  # BILOU prefixes as their BIOES names
HUB_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class TeacherError(DataError, ValueError):
    """A teacher that cannot be loaded or mapped; the message names the folder or the labels."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def canonical_labels(labels: list[str]) -> list[str]:
    """``labels`` with BILOU's ``U-X`` / ``L-X`` renamed ``S-X`` / ``E-X`` when the set is BILOU
    (some ``U-`` or ``L-`` label, every label ``O`` or ``[BILU]-X``); any other set as it is."""
    def prefix(label: str) -> str | None:
        return label[0] if len(label) >= 3 and label[1] == "-" else None

    prefixes = {prefix(label) for label in labels if label != "O"}
    if not prefixes & set(BILOU) or not prefixes <= set("BILU"):
        return list(labels)
    return [f"{BILOU.get(label[0], label[0])}{label[1:]}" if label != "O" else label for label in labels]


def label_scheme(labels: list[str], what: str = "labels") -> str:
    """The tag scheme of a label *set* (``detect_scheme`` over one-label sentences): BIOES with
    E-/S- labels, none without prefixes, IOB1 when I- labels outnumber B- ones, else IOB2 (a full
    B/I set cannot tell IOB1 from IOB2: pass the scheme explicitly for an IOB1 checkpoint). A set
    mixing prefixed and plain labels is refused (a TeacherError naming ``what``)."""
    scheme = detect_scheme([[label] for label in labels])
    _constraints(labels, scheme, what)
    return scheme


def _constraints(labels: list[str], scheme: str, what: str) -> Constraints | None:
    if scheme == "none":
        return None
    try:
        return allowed_transitions(labels, scheme)
    except ValueError as err:
        raise TeacherError(f"{what}: {err}") from None


def check_schemes(teacher_scheme: str, corpus_scheme: str, what: str = "teacher") -> None:
    """Refuse a teacher and corpus in two span schemes: no per-label mapping exists between them,
    but the corpus can be re-encoded in the teacher's (``pipeline.schemes.convert``)."""
    if teacher_scheme != corpus_scheme and "none" not in (teacher_scheme, corpus_scheme):
        raise TeacherError(f"{what}: its labels are {teacher_scheme} and the corpus's {corpus_scheme}: "
                           f"re-encode the corpus (corpus convert_to: {teacher_scheme})")


def map_labels(teacher_labels: list[str], corpus_labels: list[str], *, teacher_scheme: str | None = None,
               corpus_scheme: str | None = None, what: str = "teacher") -> list[int]:
    """``columns`` with ``columns[j]`` = the teacher's index of ``corpus_labels[j]``, so that
    ``emissions[..., columns]`` are the teacher's emissions in the corpus's label order.

    Names are matched after ``canonical_labels`` (BILOU -> BIOES). Refused with a TeacherError:
    two span schemes (re-encode the corpus, ``check_schemes``), corpus labels the teacher lacks,
    and teacher labels the corpus lacks (dropping a teacher label would leave probabilities that do
    not sum to one; map onto a list that includes it)."""
    teacher = canonical_labels(list(teacher_labels))
    corpus = list(corpus_labels)
    check_schemes(teacher_scheme or label_scheme(teacher, what),
                  corpus_scheme or label_scheme(corpus, "corpus"), what)
    position = {label: i for i, label in enumerate(teacher)}
    missing = [label for label in corpus if label not in position]
    extra = [label for label in teacher if label not in set(corpus)]
    if missing or extra:
        raise TeacherError(f"{what}: labels cannot be mapped onto {corpus}: " + "; ".join(
            part for part in (f"corpus labels {missing} are not the teacher's" if missing else "",
                              f"teacher labels {extra} have no corpus label" if extra else "") if part))
    return [position[label] for label in corpus]


class _LabelTeacher(nn.Module):
    """What both teachers share: ``decode`` (for ``pipeline.trainer.predict`` / evaluate)."""

    labels: list[str]

    def structure(self, batch_tokens: list[list[str]]) -> Structure:
        raise NotImplementedError

    def decode(self, batch_tokens: list[list[str]]) -> list[list[str]]:
        """Constrained argmax (MaxEnt) or Viterbi (CRF) label strings of each sentence."""
        with torch.no_grad():
            paths = self.structure(batch_tokens).argmax().tolist()
        return [[self.labels[i] for i in path[:len(tokens)]] for path, tokens in zip(paths, batch_tokens)]


class HFTeacher(_LabelTeacher):
    """An ``AutoModelForTokenClassification`` as a MaxEnt teacher over word-level emissions.

    ``labels``: present the teacher in this label order (``map_labels``; default: ``id2label``
    order). ``scheme``: the checkpoint's tag scheme (default: detected from its labels).
    ``max_length`` / ``stride``: sub-word windows, as ``EncoderConfig`` (None: the model's maximum).
    """

    is_crf = False

    def __init__(self, model: nn.Module, source: str, *, labels: list[str] | None = None,
                 scheme: str | None = None, max_length: int | None = None, stride: int = 32):
        super().__init__()
        self.model, self.source = model.requires_grad_(False), source  # frozen: a teacher only
        id2label = model.config.id2label
        if sorted(id2label) != list(range(len(id2label))):
            raise TeacherError(f"{source}: config.id2label ids {sorted(id2label)} are not "
                               f"0..{len(id2label) - 1}")
        own = canonical_labels([id2label[i] for i in range(len(id2label))])
        if len(set(own)) != len(own):
            raise TeacherError(f"{source}: config.id2label repeats labels {own}")
        self.scheme = normalize_scheme(scheme) if scheme else label_scheme(own, source)
        columns = list(range(len(own))) if labels is None else map_labels(
            own, labels, teacher_scheme=self.scheme, what=source)
        self.labels = [own[i] for i in columns]
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.constraints = _constraints(self.labels, self.scheme, source)
        # our encoder's windowing, used for its featurize only: its skeleton on the meta device
        # allocates no weights and never runs (the logits come from self.model)
        try:
            cfg = EncoderConfig(name=source, max_length=max_length, stride=stride, pooling="first")
            with torch.device("meta"):
                windows = TransformerWordEncoder(cfg, pretrained=False)
        except (OSError, ValueError) as err:  # no (fast) tokenizer, a stride the windows cannot share
            raise TeacherError(f"{source}: {err}") from None
        self._featurize, self.tokenizer = windows.featurize, windows.tokenizer
        self.max_length, self.stride = windows.max_length, stride
        self.eval()  # a teacher: dropout off (``predict`` restores this mode after decoding)

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu", **options) -> HFTeacher:
        """Load a checkpoint folder or hub name (``options``: see the class) on ``device``."""
        from transformers import AutoModelForTokenClassification

        source = str(source)
        try:
            model = AutoModelForTokenClassification.from_pretrained(source, local_files_only=_offline())
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            where = "" if Path(source).exists() else "no such folder, and "
            raise TeacherError(f"{source}: {where}cannot load a Hugging Face token-classification model "
                               f"({first})") from None
        return cls(model, source, **options).to(device)

    @property
    def device(self) -> torch.device:
        return self.columns.device

    def emissions(self, batch_tokens: list[list[str]]) -> tuple[Tensor, Tensor]:
        """Float32 emissions [B, L, T] (each word's first sub-word logits, in ``labels`` order, 0 at
        padding) and mask [B, L] bool."""
        f = {name: value.to(self.device) for name, value in self._featurize(batch_tokens).items()}
        lengths = f["lengths"]
        batch, longest = len(lengths), int(lengths.max()) if len(lengths) else 0
        logits = self.model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits.float()
        first = f["first"]
        pieces = logits[f["src_row"][first], f["src_col"][first]][:, self.columns]
        flat = pieces.new_zeros(batch * longest, len(self.labels)).index_copy(0, f["dst"][first], pieces)
        mask = torch.arange(longest, device=self.device) < lengths.unsqueeze(1)
        return flat.view(batch, longest, len(self.labels)), mask

    def structure(self, batch_tokens: list[list[str]]) -> Factorized:
        """The batch's MaxEnt distribution (scheme constraints restrict its argmax / k-best)."""
        emissions, mask = self.emissions(batch_tokens)
        return Factorized(emissions, mask, _on(self.constraints, emissions.device))

    def _meta(self) -> dict:
        return {"kind": "hf-token-classification", "labels": self.labels, "scheme": self.scheme,
                "columns": self.columns.tolist(), "max_length": self.max_length, "stride": self.stride}

    def fingerprint(self) -> str:
        """sha256 of the labels, scheme, windowing, tokenizer and weights (as ``Tagger.fingerprint``)."""
        h = hashlib.sha256(json.dumps(self._meta(), sort_keys=True).encode())
        h.update(self.tokenizer.backend_tokenizer.to_str().encode())
        _hash_tensors(h, self.model.state_dict())
        return h.hexdigest()


class CRFTeacher(_LabelTeacher):
    """An ``HFTeacher`` whose emissions feed a ChainCRF with fitted ``transitions`` [T, T],
    ``start`` / ``end`` [T] (scheme constraints applied by ChainCRF); ``structkd fit-crf`` makes it."""

    is_crf = True

    def __init__(self, base: HFTeacher, transitions: Tensor, start: Tensor, end: Tensor):
        super().__init__()
        self.base = base
        num = len(base.labels)
        for name, value, shape in (("transitions", transitions, (num, num)), ("start", start, (num,)),
                                   ("end", end, (num,))):
            if tuple(value.shape) != shape:
                raise TeacherError(f"{base.source}: CRF {name} has shape {list(value.shape)}, expected "
                                   f"{list(shape)} for {num} labels")
            self.register_buffer(name, value.detach().float().clone().to(base.device))

    @property
    def labels(self) -> list[str]:
        return self.base.labels

    @property
    def scheme(self) -> str:
        return self.base.scheme

    def chain(self, emissions: Tensor, mask: Tensor) -> ChainCRF:
        """The ChainCRF of emissions [B, L, T] / mask [B, L] under this teacher's factors."""
        return ChainCRF(emissions, self.transitions, mask, self.start, self.end,
                        _on(self.base.constraints, emissions.device))

    def structure(self, batch_tokens: list[list[str]]) -> ChainCRF:
        return self.chain(*self.base.emissions(batch_tokens))

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{CRF_KIND}|{self.base.fingerprint()}".encode())
        _hash_tensors(h, {"transitions": self.transitions, "start": self.start, "end": self.end})
        return h.hexdigest()

    def save(self, folder: str | Path) -> Path:
        """Write ``crf.safetensors`` (the three factors) and ``crf.json`` (the checkpoint it refers
        to: relative to ``folder`` when local, else its hub name; labels, scheme, windowing, the
        checkpoint's fingerprint, the weights' sha256). crf.json goes last, each file through a
        temporary name, and its sha256 ties the pair."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / CRF_WEIGHTS
        tmp = weights.with_name(f".{CRF_WEIGHTS}.tmp-{os.getpid()}")
        save_file({name: getattr(self, name).detach().cpu().contiguous()
                   for name in ("transitions", "start", "end")}, str(tmp))
        os.replace(tmp, weights)
        local = Path(self.base.source).is_dir()
        source = (os.path.relpath(Path(self.base.source).resolve(), folder.resolve()) if local
                  else self.base.source)
        meta = {"kind": CRF_KIND, "version": 1, "checkpoint": source, "checkpoint_is_folder": local,
                "labels": self.labels, "scheme": self.scheme, "max_length": self.base.max_length,
                "stride": self.base.stride, "checkpoint_fingerprint": self.base.fingerprint(),
                "crf_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
        tmp = folder / f".{CRF_META}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder / CRF_META)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> CRFTeacher:
        """Rebuild a saved CRF teacher; refused when its weights or its checkpoint changed."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / CRF_META).read_text(encoding="utf-8"))
            blob = (folder / CRF_WEIGHTS).read_bytes()
        except (OSError, ValueError) as err:
            raise TeacherError(f"{folder}: unreadable CRF teacher ({type(err).__name__}: {err})") from None
        if not isinstance(meta, dict) or meta.get("kind") != CRF_KIND or meta.get("version") != 1:
            raise TeacherError(f"{folder}: {CRF_META} is not a version-1 {CRF_KIND} teacher")
        if hashlib.sha256(blob).hexdigest() != meta.get("crf_sha256"):
            raise TeacherError(f"{folder}: {CRF_WEIGHTS} does not match {CRF_META} (sha256); "
                               "fit-crf again")
        missing = [key for key in ("checkpoint", "labels", "scheme", "max_length", "stride")
                   if key not in meta]
        if missing:
            raise TeacherError(f"{folder}: {CRF_META} lacks {missing}")
        source = meta["checkpoint"]
        if meta.get("checkpoint_is_folder"):
            source = str(folder / source)
        base = HFTeacher.load(source, device, labels=meta["labels"], scheme=meta["scheme"],
                              max_length=meta["max_length"], stride=meta["stride"])
        if base.fingerprint() != meta.get("checkpoint_fingerprint"):
            raise TeacherError(f"{folder}: its checkpoint {source} changed since fit-crf (fingerprint); "
                               "fit-crf again")
        factors = load_safetensors(blob)
        if set(factors) != {"transitions", "start", "end"}:
            raise TeacherError(f"{folder}: {CRF_WEIGHTS} holds {sorted(factors)}, expected end, "
                               "start, transitions")
        return cls(base, factors["transitions"], factors["start"], factors["end"]).eval()


def _on(constraints: Constraints | None, device: torch.device) -> Constraints | None:
    return None if constraints is None else Constraints(*(c.to(device) for c in constraints))


def _hash_tensors(h, tensors: dict[str, Tensor]) -> None:
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _config(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_hf_checkpoint(folder: str | Path) -> bool:
    """A folder whose config.json is a Hugging Face token-classification model's: its
    ``architectures`` name a ``*ForTokenClassification`` class (or, with no ``architectures``, it
    has ``id2label``), and it has no structkd ``format`` key."""
    config = _config(Path(folder))
    if config is None or "format" in config:
        return False
    architectures = config.get("architectures")
    if architectures:
        return any(str(a).endswith("ForTokenClassification") for a in architectures)
    return "id2label" in config


def teacher_kind(folder: str | Path) -> str:
    """``"tagger"`` / ``"parser"`` / ``"spans"`` (our model folders: a tagger, a biaffine parser, a
    span tagger), ``"hf"`` (HF checkpoint) or ``"hf-crf"`` (fit-crf output); a TeacherError
    naming the folder for anything else."""
    path = Path(folder)
    if not path.is_dir():
        raise TeacherError(f"{folder}: " + ("is a file, not a model folder" if path.exists()
                                            else "no such folder"))
    if (path / CRF_META).is_file():
        return CRF_KIND
    config = _config(path)
    if config is None:
        raise TeacherError(f"{folder}: not a model folder (no readable config.json or {CRF_META})")
    if "format" in config:
        return {"biaffine": "parser", "span_tagger": "spans"}.get(config.get("architecture"), "tagger")
    if is_hf_checkpoint(path):
        return "hf"
    raise TeacherError(f"{folder}: a Hugging Face {config.get('architectures') or 'model'} checkpoint, not a "
                       "token-classification model (no *ForTokenClassification architecture, no id2label)")


def looks_like_hub_name(source: str | Path) -> bool:
    """``owner/name`` (letters, digits, ``._-``) that is no path here and whose owner is no local
    folder: a hub model id, not a mistyped path (``models/x`` beside a ``models/`` folder is a path)."""
    parts = str(source).split("/")
    return (len(parts) == 2 and all(HUB_PART.fullmatch(part) for part in parts)
            and not Path(parts[0]).exists())


def load_any_teacher(source: str | Path, device: str | torch.device = "cpu"):
    """The teacher of a folder (``teacher_kind``) or of a hub name (``looks_like_hub_name``; only
    the local cache under ``HF_HUB_OFFLINE``) on ``device`` in eval mode: our ``Tagger``, an
    ``HFTeacher``, a ``CRFTeacher``, our biaffine ``Parser`` or our ``SpanTagger``."""
    if not Path(source).exists():
        if not looks_like_hub_name(source):
            raise TeacherError(f"{source}: no such folder (nor a hub model name owner/name)")
        return HFTeacher.load(source, device)
    kind = teacher_kind(source)
    if kind == "parser":
        from pipeline.parser import Parser

        return Parser.load(source, device)
    if kind == "spans":
        from pipeline.span_model import SpanTagger

        return SpanTagger.load(source, device)
    if kind == "tagger":
        from pipeline.tagger import Tagger

        return Tagger.load(source, device).eval()
    if kind == CRF_KIND:
        return CRFTeacher.load(source, device)
    return HFTeacher.load(source, device)
