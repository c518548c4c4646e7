"""Numerics under extreme inputs: no NaN or inf in any KD loss, the gold NLL, the teacher outputs or
the CRF / MaxEnt dynamic programs, nor in their gradients.

Seeded grid: |potentials| up to 1e4 (random, flat ties, one-hot peaks, all very negative), float32
and float16 inputs, batches whose rows are length 1 (padded rows with only the first position real),
an all-length-1 batch, and padding filled with +-1e4 garbage. Every objective of the registry is run
for CRF and MaxEnt students against CRF and MaxEnt teachers, with and without tag-scheme constraints.

No +inf is legitimate any more: a MaxEnt teacher meeting a constrained CRF student is distilled
through its distribution restricted to the allowed sequences (pipeline/kd/structural.py).
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import crf
from pipeline.kd import OBJECTIVES, TeacherTargets, build_objective, combine, nll
from pipeline.structs import ROUNDING, ChainCRF, Factorized
from pipeline.schemes import allowed_transitions
from pipeline.teaching import teacher_targets

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
T = len(LABELS)
CONSTRAINTS = allowed_transitions(LABELS, "IOB2")
SCALES = (1.0, 1e2, 1e4)
DTYPES = (torch.float32, torch.float16)
LAYOUTS = {"mixed": [6, 1, 3, 1], "single": [1, 1, 1], "full": [4, 4]}  # row lengths of a batch
OPTIONS = {"token": {"tau": 2.0}, "multigrained": {"k": 3}, "topk": {"k": 3}, "topwk": {"k": 3}}
K = 4


def potentials(gen: torch.Generator, lengths: list[int], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Emissions [B, L, T] with extreme rows, and the mask; padding is +-1e4 garbage."""
    longest = max(lengths)
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    em = torch.randn(len(lengths), longest, T, generator=gen) * scale
    em[0, 0] = scale  # flat: a T-way tie
    if longest > 1:
        em[0, 1] = -scale
        em[0, 1, 2] = scale  # one-hot peak
    em[-1] = -scale - torch.rand(longest, T, generator=gen)  # everything very negative
    garbage = torch.where(torch.rand(em.shape, generator=gen) < 0.5, 1e4, -1e4)
    return torch.where(mask.unsqueeze(-1), em, garbage), mask


def factors(gen: torch.Generator, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.randn(shape, generator=gen) * scale for shape in ((T, T), (T,), (T,)))


def teacher(gen, lengths, scale, dtype, is_crf: bool, constrained: bool):
    """(TeacherTargets as the stream delivers them, raw teacher_outputs, mask); emissions in ``dtype``."""
    em, mask = potentials(gen, lengths, scale)
    em = em.to(dtype)
    trans, start, end = factors(gen, scale)
    allowed = CONSTRAINTS if constrained else None
    structure = ChainCRF(em, trans, mask, start, end, allowed) if is_crf else Factorized(em, mask, allowed)
    out = teacher_targets(structure, K)
    batch = len(lengths)
    if is_crf and allowed is not None:
        trans, start, end = (f.masked_fill(~a, float("-inf")) for f, a in zip((trans, start, end), allowed))
    if not is_crf:
        trans, start, end = torch.zeros(T, T), torch.zeros(T), torch.zeros(T)
    em = em.masked_fill(~mask.unsqueeze(-1), 0.0)  # the stream pads with zeros
    targets = TeacherTargets(em, trans.expand(batch, T, T), start.expand(batch, T), end.expand(batch, T),
                             out["node"], out["edge"], out["kbest_paths"], out["kbest_logprob"],
                             out["residual_mass"], out["log_z"], torch.full((batch,), is_crf))
    return targets, out, mask


def student(gen, lengths, scale, dtype, is_crf: bool, constrained: bool):
    em, mask = potentials(gen, lengths, scale)
    leaves = {"emissions": em.to(dtype).requires_grad_()}
    allowed = CONSTRAINTS if constrained else None
    if not is_crf:
        return Factorized(leaves["emissions"], mask, allowed), leaves
    leaves.update(zip(("transitions", "start", "end"),
                      (f.to(dtype).requires_grad_() for f in factors(gen, scale))))
    return ChainCRF(leaves["emissions"], leaves["transitions"], mask, leaves["start"], leaves["end"],
                    allowed), leaves


def check_objectives(seed: int, lengths: list[int], scale: float, dtype, student_crf: bool,
                     teacher_crf: bool, constrained: bool) -> None:
    """Every registry objective and the gold NLL: finite loss (outside the documented +inf), and
    finite gradients of combine(loss, nll) w.r.t. every student potential and objective parameter."""
    gen = torch.Generator().manual_seed(seed)
    targets, _, mask = teacher(gen, lengths, scale, dtype, teacher_crf, constrained)
    hard = targets.kbest_paths[:, 0]  # the teacher's best allowed path
    for name in list(OBJECTIVES) + ["nll"]:
        pot, leaves = student(gen, lengths, scale, dtype, student_crf, constrained)
        objective = build_objective(name, **OPTIONS.get(name, {})) if name != "nll" else None
        loss = objective(pot, targets, hard) if objective is not None else nll(pot, hard)
        where = (f"{name} scale={scale} {dtype} lengths={lengths} student_crf={student_crf} "
                 f"teacher_crf={teacher_crf} constrained={constrained}")
        assert loss.shape == (len(lengths),) and not torch.isnan(loss).any(), where
        assert torch.isfinite(loss).all(), (where, loss)
        total, _ = combine(loss, nll(pot, hard), 0.5, mask)
        assert torch.isfinite(total), where
        total.backward()
        for key, leaf in list(leaves.items()) + list(objective.named_parameters() if objective else []):
            if leaf.grad is not None:  # None: unused (transitions of all-length-1 batches)
                assert leaf.grad.dtype == leaf.dtype and torch.isfinite(leaf.grad).all(), (where, key)


GRID = list(itertools.product(SCALES, DTYPES, sorted(LAYOUTS)))


@pytest.mark.parametrize("scale,dtype,layout", GRID, ids=lambda v: str(v).replace("torch.", ""))
def test_every_objective_and_nll_finite_with_finite_gradients(scale, dtype, layout):
    for seed, config in enumerate(itertools.product((True, False), repeat=3)):
        check_objectives(seed, LAYOUTS[layout], scale, dtype, *config)


@pytest.mark.parametrize("scale,dtype,layout", GRID, ids=lambda v: str(v).replace("torch.", ""))
def test_teacher_outputs_and_dynamic_programs_finite(scale, dtype, layout):
    lengths = LAYOUTS[layout]
    for seed, (is_crf, constrained) in enumerate(itertools.product((True, False), repeat=2)):
        gen = torch.Generator().manual_seed(100 + seed)
        _, out, mask = teacher(gen, lengths, scale, dtype, is_crf, constrained)
        for key in ("log_z", "node", "edge", "residual_mass"):
            assert torch.isfinite(out[key]).all(), key
        assert ((out["residual_mass"] >= 0) & (out["residual_mass"] <= 1)).all()
        lp = out["kbest_logprob"]
        assert not torch.isnan(lp).any() and (lp <= 1e-3 * (1 + out["log_z"].abs()[:, None])).all()
        assert torch.isfinite(lp[:, 0]).all()  # every sentence has at least one allowed path
        real = mask.unsqueeze(-1)
        rounding = ROUNDING * (mask.sum(1) + 1) * (1 + out["log_z"].abs())  # float32 at |log Z| ~ 1e5
        assert ((out["node"].sum(-1) - mask.float()).abs() <= rounding[:, None]).all()
        assert (out["node"].masked_select(~real) == 0).all()
        assert ((out["viterbi"] >= 0) & (out["viterbi"] < T)).all()


def _crf_inputs(gen, lengths, scale, dtype, constrained):
    em, mask = potentials(gen, lengths, scale)
    trans, start, end = factors(gen, scale)
    leaves = [x.to(dtype).requires_grad_() for x in (em, trans, start, end)]
    return leaves, mask, CONSTRAINTS if constrained else None


@pytest.mark.parametrize("scale,dtype,layout", GRID, ids=lambda v: str(v).replace("torch.", ""))
def test_crf_functions_and_gradients_finite(scale, dtype, layout):
    lengths = LAYOUTS[layout]
    for seed, constrained in enumerate((False, True)):
        gen = torch.Generator().manual_seed(200 + seed)
        (em, trans, start, end), mask, allowed = _crf_inputs(gen, lengths, scale, dtype, constrained)
        args = (em, trans, mask, start, end)
        log_z = crf.log_partition(*args, constraints=allowed)
        node, edge = crf.marginals(*args, constraints=allowed)
        log_node, log_edge = crf.log_marginals(*args, constraints=allowed)
        for value in (log_z, node, edge):
            assert torch.isfinite(value).all()
        for value in (log_node, log_edge):  # -inf is legitimate (padding, forbidden), NaN / +inf never
            assert not torch.isnan(value).any() and not (value == float("inf")).any()
        assert torch.isfinite(log_node.masked_select(mask.unsqueeze(-1) & (node > 0))).all()
        for fn in (crf.viterbi, lambda *a, **kw: crf.kbest(*a[:3], K, *a[3:], **kw)):
            paths, scores = fn(*args, constraints=allowed)
            assert torch.isfinite(scores.reshape(len(lengths), -1)[:, 0]).all()
            assert not torch.isnan(scores).any() and ((paths >= 0) & (paths < T)).all()
        for value in crf.maxent_marginals(em, mask):
            assert torch.isfinite(value).all()
        paths, logprob = crf.maxent_kbest(em, mask, K, constraints=allowed)
        assert torch.isfinite(logprob[:, 0]).all() and not torch.isnan(logprob).any()
        finite_log_node = log_node.masked_fill(~torch.isfinite(log_node), 0.0)
        loss = log_z.sum() + (node * edge.sum((2, 3), keepdim=True)[:, :1, :, 0]).sum() \
            + finite_log_node.sum() + crf.maxent_log_probs(em, mask).sum()
        loss.backward()
        for leaf in (em, trans, start, end):
            assert torch.isfinite(leaf.grad).all()


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-3.0, 4.0),
       lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4), half=st.booleans(),
       config=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_random_scales_property(seed, log_scale, lengths, half, config):
    """Any scale in [1e-3, 1e4], any batch of lengths 1..7: as the grid, drawn at random."""
    check_objectives(seed, lengths, 10.0 ** log_scale, torch.float16 if half else torch.float32, *config)
