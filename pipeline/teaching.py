"""The teacher path, written once: what a teacher is and what the store keeps of it.

A ``Teacher`` is anything with ``labels``, ``scheme``, ``fingerprint()`` and
``structure(batch_tokens) -> Structure`` (our ``Tagger`` folders; adapters for other checkpoints
implement the same four). ``teacher_targets`` turns the teacher's Structure of a batch into the
quantities the store keeps (``Structure.summary`` at the store's temperature, plus the emissions
they were computed from). annotate, the online-teacher comparison and ``store verify`` all call it,
so the three can never disagree.
"""
from __future__ import annotations

import functools
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from pipeline.potentials import Constraints
from pipeline.structs import ChainCRF, Factorized, Structure

FACTORS = ("transitions", "start", "end")
DECODER_KIND = {"chain": "crf", "factorized": "maxent"}  # structure kind -> the store's decoder name


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


def rounded(structure: Structure, dtype: torch.dtype) -> Structure:
    """The structure with its emissions rounded to the store's ``dtype`` (then float32, padding 0),
    so that every stored quantity is exactly the one of the stored potentials."""
    em = structure.emissions.float().to(dtype).float().masked_fill(~structure.mask.unsqueeze(-1), 0.0)
    return structure.replace(emissions=em)


@one_thread_on_cpu
def teacher_targets(structure: Structure, k: int, *, tau: float = 1.0,
                    with_marginals: bool = True) -> dict[str, Tensor]:
    """The teacher quantities of a batch: ``Structure.summary(k)`` of the structure at temperature
    ``tau`` (log_z, viterbi, kbest_paths, kbest_logprob, residual_mass and, with ``with_marginals``,
    node / edge) plus ``emissions``, the untempered potentials they come from."""
    with torch.inference_mode():
        out = structure.tempered(tau).summary(k, with_marginals=with_marginals)
    out["emissions"] = structure.emissions.float()
    return out


def teacher_factors(structure: Structure) -> dict[str, np.ndarray]:
    """The per-teacher arrays the store keeps: the effective ``transitions`` / ``start`` / ``end``
    (float32, -inf where the scheme forbids them; zeros for a factorized teacher) and the
    ``allowed_*`` bool masks of its constraints (all True without constraints)."""
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
