"""The teacher path, written once: what a teacher is and what the store keeps of it.

A ``Teacher`` is anything with ``labels``, ``scheme``, ``fingerprint()`` and
``structure(batch_tokens) -> Structure`` (our ``Tagger`` folders; adapters for other checkpoints
implement the same four). ``teacher_targets`` turns the teacher's Structure of a batch into the
quantities the store keeps (``Structure.summary`` at the store's temperature, plus the emissions
they were computed from). annotate, the online-teacher comparison and ``store verify`` all call it,
so the three can never disagree.

A dependency teacher's structure is labeled (``pipeline.structs.labeled.LabeledArcs``: ``arcs`` a
``DependencyCRF`` or ``HeadSelection`` over scores [B, L+1, L+1], ``labels`` an ``ArcLabels``); its
labels are the relation names, and what the store keeps of it is ``tree_targets``. A span NER
teacher's structure is a ``Spans`` (scores [B, L, L, E]); its labels are its BIOES labels and what
the store keeps of it is ``span_targets``.
"""
from __future__ import annotations

import functools
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from pipeline.potentials import Constraints
from pipeline.structs import ArcLabels, ChainCRF, DependencyCRF, Factorized, HeadSelection, Spans, Structure
from pipeline.structs import mst
from pipeline.structs.base import residual_mass

FACTORS = ("transitions", "start", "end")
DECODER_KIND = {"chain": "crf", "factorized": "maxent"}  # structure kind -> the store's decoder name
LABELED_KINDS = ("labeled_tree", "labeled_heads")  # LabeledArcs: a dependency teacher
TREE_DECODERS = {"heads": None, "tree": False, "tree_projective": True}  # decoder -> projective (None: heads)


class Teacher(Protocol):
    labels: list[str]
    scheme: str

    def fingerprint(self) -> str: ...

    def structure(self, batch_tokens: list[list[str]]) -> Structure: ...


def one_thread_on_cpu(fn):
    """Run ``fn(structure, ...)`` with one intra-op thread when the structure is on the CPU: the
    dynamic programs are long chains of tiny [B, T, T] ops, for which thread hand-offs cost more than
    they save (measured on 2 loaded cores: a k=5 batch took 15-20x longer with 2 threads than 1)."""

    @functools.wraps(fn)
    def wrapper(structure, *args, **kwargs):
        if structure.mask.device.type != "cpu":
            return fn(structure, *args, **kwargs)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(structure, *args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


def is_labeled_tree(structure) -> bool:
    return getattr(structure, "kind", "") in LABELED_KINDS


def decoder_name(structure: Structure) -> str:
    """The store's decoder name of a teacher's structure (``crf``, ``maxent``, ``heads``, ``tree``,
    ``tree_projective``, ``spans``); ValueError for a structure the store cannot hold."""
    if structure.kind == "spans":
        return "spans"
    if structure.kind in DECODER_KIND:
        return DECODER_KIND[structure.kind]
    if not is_labeled_tree(structure):
        raise ValueError(f"the store holds chain, MaxEnt, labeled dependency and span teachers, not a "
                         f"{structure.kind!r} structure (a parser teacher returns LabeledArcs)")
    arcs = structure.arcs
    if arcs.kind == "heads":
        return "heads"
    if not arcs.single_root:
        raise ValueError("the store holds single-root dependency teachers; this DependencyCRF has "
                         "single_root=False")
    return "tree_projective" if arcs.projective else "tree"


def stored_arcs(decoder: str, scores: Tensor, lengths: Tensor, tau: float = 1.0) -> Structure:
    """A tree teacher's arc structure rebuilt from stored arc potentials [B, L+1, L+1] (h, d)."""
    projective = TREE_DECODERS[decoder]
    if projective is None:
        return HeadSelection(scores, lengths, tau)
    return DependencyCRF(scores, lengths, projective=projective, single_root=True, tau=tau)


def rounded(structure: Structure, dtype: torch.dtype) -> Structure:
    """The structure with its potentials (a chain's emissions, a tree's arc scores, a span teacher's
    span scores) rounded to the store's ``dtype`` (then float32; padding and impossible parts 0), so
    that every stored quantity is exactly the one of the stored potentials."""
    if structure.kind == "spans":
        allowed = structure.allowed.unsqueeze(-1)
        return structure.replace(scores=structure.scores.float().to(dtype).float().masked_fill(~allowed, 0.0))
    if is_labeled_tree(structure):
        arcs = structure.arcs
        scores = arcs.scores.float().to(dtype).float().masked_fill(~arcs.allowed, 0.0)
        return structure.replace(arcs=arcs.replace(scores=scores))
    em = structure.emissions.float().to(dtype).float().masked_fill(~structure.mask.unsqueeze(-1), 0.0)
    return structure.replace(emissions=em)


@one_thread_on_cpu
def teacher_targets(structure: Structure, k: int, *, tau: float = 1.0,
                    with_marginals: bool = True) -> dict[str, Tensor]:
    """The teacher quantities of a batch: ``Structure.summary(k)`` of the structure at temperature
    ``tau`` (log_z, viterbi, kbest_paths, kbest_logprob, residual_mass and, with ``with_marginals``,
    node / edge) plus ``emissions``, the untempered potentials they come from. A labeled tree
    teacher: ``tree_targets``; a span teacher: ``span_targets``."""
    if structure.kind == "spans":
        return span_targets(structure, k, tau=tau, with_marginals=with_marginals)
    if is_labeled_tree(structure):
        return tree_targets(structure.arcs, structure.labels, k, tau=tau, with_marginals=with_marginals)
    with torch.inference_mode():
        out = structure.tempered(tau).summary(k, with_marginals=with_marginals)
    out["emissions"] = structure.emissions.float()
    return out


def tree_argmax(arcs: Structure) -> Tensor:
    """The best dependency tree [B, L+1] of an arc structure: a DependencyCRF's argmax; for a
    HeadSelection the best single-root (non-projective) tree of its arc scores by Chu-Liu-Edmonds,
    which is also its most probable tree (its per-word normalizers are the same for every tree).
    Its own argmax, each word's best head, need not be a tree."""
    if arcs.kind != "heads":
        return arcs.argmax()
    heads, found = mst.best_trees(arcs.parts["arc"], arcs.word_lengths, True)
    if not bool(found.all()):
        raise ValueError(f"batch row {int((~found).nonzero()[0])}: no dependency tree has a finite score")
    return heads.to(arcs.scores.device)


def arc_targets(arcs: Structure, k: int, *, tau: float = 1.0,
                with_marginals: bool = True) -> dict[str, Tensor]:
    """What the store keeps of an arc structure (a DependencyCRF or HeadSelection) at temperature
    ``tau``: ``log_z`` [B], ``viterbi`` [B, L+1] (``tree_argmax``: always a tree), ``kbest_paths``
    [B, k, L+1] and ``kbest_logprob`` [B, k] (its k best head vectors: trees for a DependencyCRF,
    any head vectors for a HeadSelection), ``residual_mass`` [B], with ``with_marginals`` ``arc``
    [B, L+1, L+1] = P(head(d) = h), and ``arc_scores``, the untempered potentials."""
    # The tree marginals are the autograd of log Z: normal mode (tensors of an inference-mode
    # teacher pass are cloned out of it), no graph kept.
    with torch.inference_mode(False), torch.no_grad():
        arcs = arcs.replace(scores=arcs.scores.clone(), lengths=arcs.word_lengths.clone(), tau=tau)
        out = {"log_z": arcs.log_partition.float()}
        if with_marginals:
            out["arc"] = arcs.marginals()["arc"]
        out["kbest_paths"], logprob = arcs.kbest(k)
        out["viterbi"] = out["kbest_paths"][:, 0] if arcs.kind == "tree" else tree_argmax(arcs)
        out["kbest_logprob"] = logprob.float()
        out["residual_mass"] = residual_mass(logprob, out["log_z"], arcs.lengths)
    out["arc_scores"] = arcs.scores.float()
    return out


def tree_targets(arcs: Structure, labels: ArcLabels, k: int, *, tau: float = 1.0,
                 with_marginals: bool = True) -> dict[str, Tensor]:
    """``arc_targets`` of a labeled dependency teacher plus ``rel`` [B, L+1, R] = P(l | d) (always:
    the store cannot recompute it without the label scores) and ``relations`` [B, L+1], the most
    probable relation of each arc of ``viterbi``."""
    out = arc_targets(arcs, k, tau=tau, with_marginals=True)
    with torch.inference_mode(False), torch.no_grad():
        labels = ArcLabels(labels.scores, labels.lengths, tau)
        out["rel"] = labels.label_marginals(out["arc"])
        out["relations"] = labels.best(out["viterbi"])
    if not with_marginals:
        del out["arc"]
    return out


def span_targets(spans: Spans, k: int, *, tau: float = 1.0, with_marginals: bool = True) -> dict[str, Tensor]:
    """What the store keeps of a span teacher at temperature ``tau``: ``log_z`` [B] (semi-Markov),
    ``viterbi`` [B, L] and ``kbest_paths`` [B, k, L] (its k best span sets as BIOES label ids),
    ``kbest_logprob`` [B, k], ``residual_mass`` [B], with ``with_marginals`` ``node`` [B, L, 1 + 4E]
    = its BIOES marginals (``Spans.bioes_marginals``), and ``span_scores`` [B, L, L, E], the
    untempered potentials."""
    with torch.no_grad():
        tempered = spans.tempered(tau)
        out = {"log_z": tempered.log_partition.float()}
        if with_marginals:
            out["node"] = tempered.bioes_marginals()
        out["kbest_paths"], logprob = tempered.kbest(k)
        out["viterbi"] = out["kbest_paths"][:, 0]
        out["kbest_logprob"] = logprob.float()
        out["residual_mass"] = residual_mass(logprob, out["log_z"], tempered.lengths)
    out["span_scores"] = spans.scores.float()
    return out


def teacher_factors(structure: Structure) -> dict[str, np.ndarray]:
    """The per-teacher arrays the store keeps: the effective ``transitions`` / ``start`` / ``end``
    (float32, -inf where the scheme forbids them; zeros for a factorized teacher) and the
    ``allowed_*`` bool masks of its constraints (all True without constraints). None for a tree or
    span teacher (its decoder name rebuilds its structure)."""
    if is_labeled_tree(structure) or structure.kind == "spans":
        return {}
    num = structure.emissions.shape[-1]
    shapes = {"transitions": (num, num), "start": (num,), "end": (num,)}
    constraints = getattr(structure, "constraints", None)
    allowed = {name: torch.ones(shape, dtype=torch.bool) for name, shape in shapes.items()}
    if constraints is not None:
        allowed = {name: c.detach().bool().cpu() for name, c in zip(FACTORS, constraints)}
    factors = {name: torch.zeros(shape) for name, shape in shapes.items()}
    if structure.kind == "chain":
        parts = structure.tempered(1.0).parts
        for name, part in zip(FACTORS, ("edge", "start", "end")):
            value = parts[part].detach().float().cpu()
            if value.shape != shapes[name]:
                raise ValueError(f"a chain teacher needs shared {list(shapes[name])} {name}, got "
                                 f"{list(value.shape)}")
            factors[name] = value
    arrays = {name: factors[name].numpy().astype(np.float32) for name in FACTORS}
    arrays.update({f"allowed_{name}": allowed[name].numpy() for name in FACTORS})
    return arrays


def stored_structure(decoder: str, arrays: dict[str, np.ndarray], emissions: Tensor, mask: Tensor,
                     tau: float = 1.0) -> Structure:
    """The teacher's Structure rebuilt from stored potentials: emissions [B, L, T] and the per-teacher
    ``arrays`` of ``teacher_factors`` (``decoder``: "crf" or "maxent")."""
    if decoder == "crf":
        trans, start, end = (torch.from_numpy(np.asarray(arrays[name], dtype=np.float32)) for name in FACTORS)
        return ChainCRF(emissions, trans, mask, start, end, tau=tau)
    constraints = Constraints(*(torch.from_numpy(np.asarray(arrays[f"allowed_{name}"], dtype=bool))
                                for name in FACTORS))
    return Factorized(emissions, mask, constraints, tau)
