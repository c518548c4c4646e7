"""KD objectives, schedules and combine against brute-force enumeration (tests/kd_oracle.py)."""
from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.kd import (OBJECTIVES, TeacherTargets, build_objective, check_schedule, combine,
                         lambda_for, log1mexp, nll, objective_options, structural_kd)
from pipeline.structs import ChainCRF
from tests import kd_oracle as O

TOL = {"rtol": 1e-5, "atol": 2e-4}
SHAPES = {0: (2, [5, 1, 3, 2]), 1: (3, [4, 2, 5, 1]), 2: (4, [3, 5, 1, 4])}  # seed -> (T, lengths)
CONFIGS = [dict(student_crf=s, teacher_crf=t, start_end=e, constrained=c)
           for s in (True, False) for t in (True, False) for e in (True, False) for c in (False, True)
           if s or not e or t]  # a MaxEnt student ignores start/end unless the teacher is a CRF


@functools.lru_cache(maxsize=None)
def case(seed: int, k: int = 5, **config) -> O.Case:
    num_labels, lengths = SHAPES[seed]
    return O.make_case(seed, num_labels, lengths, k=k, **config)


def cfg_id(c: dict) -> str:
    return "-".join(name for name, on in [("crfS", c["student_crf"]), ("crfT", c["teacher_crf"]),
                                         ("se", c["start_end"]), ("cons", c["constrained"])] if on)


def run(name: str, c: O.Case, **options) -> torch.Tensor:
    return build_objective(name, **options)(c.student, c.teacher, c.hard)


@pytest.mark.parametrize("config", CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("seed", sorted(SHAPES))
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_matches_enumeration(name, seed, config):
    c = case(seed, **config)
    got = run(name, c)
    assert got.shape == (len(c.sentences),) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), O.oracle(name, c), **TOL)


@pytest.mark.parametrize("name,options", [("topk", {"k": 2}), ("topwk", {"k": 3}),
                                          ("posterior_topwk", {"k": 1}), ("multigrained", {"k": 2}),
                                          ("token", {"tau": 2.5}), ("topk", {"k": 50})])
def test_objective_options_match_enumeration(name, options):
    c = case(1, constrained=True, student_crf=True, teacher_crf=True, start_end=True)
    oracle_opts = {"k": options["k"]} if "k" in options else {"tau": options["tau"]}
    torch.testing.assert_close(run(name, c, **options).double(), O.oracle(name, c, **oracle_opts),
                               **TOL)


def test_maxent_teacher_to_constrained_crf_student_is_restricted_cross_entropy():
    """Slide scenario 3: the product of the teacher's softmaxes puts mass where the student's scheme
    forbids paths (the kernel's cross entropy against it is +inf); the objectives use the teacher
    restricted to allowed paths, finite and equal to the enumerated restricted cross entropy."""
    c = case(2, student_crf=True, teacher_crf=False, start_end=True, constrained=True)
    s = c.student
    product = structural_kd(s.emissions, s.transitions, c.mask, c.teacher.node, c.teacher.edge, s.start,
                            s.end, constraints=s.constraints)
    assert torch.isinf(product).any() and not torch.isnan(product).any()
    unrestricted = torch.tensor([O.cross_entropy(x.t_logp, x.s_logp) for x in c.sentences])
    assert torch.isinf(unrestricted).any()
    for name in ("structural", "posterior"):
        got = run(name, c)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), O.oracle(name, c), **TOL)
    no_emissions = dataclasses.replace(c.teacher, emissions=None)
    with pytest.raises(ValueError, match="needs teacher field"):
        build_objective("structural")(s, no_emissions, c.hard)


def _tempered_oracle(name: str, c: O.Case, tau: float) -> torch.Tensor:
    """tau^2 * CE(teacher at tau, student at tau) by enumeration (structural: sequences;
    posterior: node marginals)."""
    out = []
    for b, sent in enumerate(c.sentences):
        scores = O.crf_scores(sent.paths, c.student.emissions[b, :sent.n].double(),
                              c.student.transitions.double(), c.student.start.double(),
                              c.student.end.double(), tau=tau)
        t_scores = O.crf_scores(sent.paths, sent.t_em, sent.t_trans, sent.t_start,
                                c.teacher.end[b].double(), tau=tau)
        log_s, log_t = O.normalize(scores), O.normalize(t_scores)
        if name == "structural":
            out.append(tau ** 2 * O.cross_entropy(log_t, log_s))
        else:
            T = sent.s_em.shape[1]
            q_s, q_t = O.node_edge(sent.paths, log_s, T)[0], O.node_edge(sent.paths, log_t, T)[0]
            out.append(-tau ** 2 * (q_t * q_s.log()).sum().item())
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", ["structural", "posterior"])
def test_temperature_rule_is_tau_squared_tempered_cross_entropy(name):
    """One rule: teacher and student both at tau, loss scaled by tau^2 (brute force); teacher
    targets at another temperature are refused, never silently used."""
    c = case(0, student_crf=True, teacher_crf=True, start_end=True, constrained=False)
    tau = 2.5
    node, edge = [], []
    for b, sent in enumerate(c.sentences):  # the teacher's marginals at tau, as the stream gives them
        t_scores = O.crf_scores(sent.paths, sent.t_em, sent.t_trans, sent.t_start, c.teacher.end[b].double(),
                                tau=tau)
        n_, e_ = O.node_edge(sent.paths, O.normalize(t_scores), sent.s_em.shape[1])
        node.append(torch.nn.functional.pad(n_, (0, 0, 0, c.mask.shape[1] - sent.n)))
        edge.append(torch.nn.functional.pad(e_, (0, 0, 0, 0, 0, c.mask.shape[1] - 1 - e_.shape[0])))
    hot = dataclasses.replace(c.teacher, node=torch.stack(node).float(), edge=torch.stack(edge).float(), tau=tau)
    got = build_objective(name, tau=tau)(c.student, hot, c.hard)
    torch.testing.assert_close(got.double(), _tempered_oracle(name, c, tau), **TOL)
    with pytest.raises(ValueError, match="temperature"):
        build_objective(name, tau=tau)(c.student, c.teacher, c.hard)


def test_emission_kd_temperature():
    c = case(1, student_crf=True, teacher_crf=True, start_end=True, constrained=False)
    tau = 3.0
    want = []
    for sent in c.sentences:
        log_p = torch.stack([O.normalize(r) for r in sent.t_em / tau])
        log_q = torch.stack([O.normalize(r) for r in sent.s_em / tau])
        want.append(-tau ** 2 * (log_p.exp() * log_q).sum().item())
    got = build_objective("emission", tau=tau)(c.student, c.teacher, c.hard)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **TOL)


def test_schedule_combinations_are_checked():
    check_schedule("learned", "multigrained", owns_hard_loss=True)
    check_schedule("constant", "posterior", owns_hard_loss=False)
    check_schedule("learned", "none", owns_hard_loss=False)
    with pytest.raises(ValueError, match="drops the gold NLL"):
        check_schedule("learned", "posterior", owns_hard_loss=False)
    with pytest.raises(ValueError, match="second time"):
        check_schedule("constant", "multigrained", owns_hard_loss=True)
    assert build_objective("multigrained").owns_hard_loss
    assert not build_objective("multigrained", parts=("ce", "fuzzy")).owns_hard_loss
    assert build_objective("multigrained_posterior").owns_hard_loss


@pytest.mark.parametrize("config", [c for c in CONFIGS if c["student_crf"] and c["teacher_crf"]],
                         ids=cfg_id)
@pytest.mark.parametrize("name", ["structural", "posterior"])
def test_gradient_matches_autograd_of_enumeration(name, config):
    """structural_kd (and posterior, through crf.marginals) w.r.t. every student potential."""
    c = case(2, **config)
    s = c.student
    leaves = {"emissions": s.emissions, "transitions": s.transitions, "start": s.start, "end": s.end}
    leaves = {k: v for k, v in leaves.items() if v is not None}
    mine = {k: v.clone().requires_grad_() for k, v in leaves.items()}
    ref = {k: v.double().clone().requires_grad_() for k, v in leaves.items()}
    if name == "structural":
        loss = structural_kd(mine["emissions"], mine["transitions"], c.mask, c.teacher.node,
                             c.teacher.edge, mine.get("start"), mine.get("end"),
                             constraints=s.constraints)
    else:
        student = ChainCRF(mine["emissions"], mine["transitions"], c.mask, mine.get("start"),
                           mine.get("end"), s.constraints)
        loss = build_objective(name)(student, c.teacher, c.hard)
    loss.sum().backward()
    total = 0.0
    for b, sent in enumerate(c.sentences):
        scores = O.crf_scores(sent.paths, ref["emissions"][b, :sent.n], ref["transitions"],
                              ref.get("start"), ref.get("end"), s.constraints)
        log_ps = scores - torch.logsumexp(scores, 0)
        if name == "structural":
            target, log_q = sent.t_logp.exp(), log_ps
        else:
            q = O.node_edge(sent.paths, log_ps, leaves["emissions"].shape[-1])[0]
            target, log_q = sent.t_node, torch.log(torch.where(q > 0, q, 1.0))
        total = total - torch.where(target > 0, target * log_q, 0.0).sum()
    total.backward()
    torch.testing.assert_close(loss.sum().double(), total.detach(), **TOL)
    for key in mine:
        assert torch.isfinite(mine[key].grad).all(), key
        torch.testing.assert_close(mine[key].grad.double(), ref[key].grad, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), num_labels=st.integers(2, 4),
       lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3), constrained=st.booleans(),
       start_end=st.booleans(), k=st.integers(1, 8))
def test_structural_and_multigrained_property(seed, num_labels, lengths, constrained, start_end, k):
    """Random shapes: structural KD is the exact cross entropy; multigrained matches eqs. 4-7."""
    c = O.make_case(seed, num_labels, lengths, k=k, constrained=constrained, start_end=start_end)
    for name in ("structural", "multigrained", "substructure_l2"):
        torch.testing.assert_close(run(name, c).double(), O.oracle(name, c), **TOL)


def test_structural_kd_with_tau_is_cross_entropy_of_tempered_student():
    c = case(0, student_crf=True, teacher_crf=True, start_end=True, constrained=False)
    s, tau = c.student, 3.0
    got = structural_kd(s.emissions, s.transitions, c.mask, c.teacher.node, c.teacher.edge, s.start,
                        s.end, tau=tau)
    want = []
    for b, sent in enumerate(c.sentences):
        scores = O.crf_scores(sent.paths, s.emissions[b, :sent.n].double(), s.transitions.double(),
                              s.start.double(), s.end.double(), tau=tau)
        want.append(O.cross_entropy(sent.t_logp, O.normalize(scores)))
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **TOL)


def _regarbage(c: O.Case, seed: int) -> O.Case:
    """The same batch with every padded slot (and surplus k-best row) refilled with other garbage."""
    gen = torch.Generator().manual_seed(seed)
    pad = ~c.mask

    def refill(x, where, scale=100.0, labels=None):
        noise = (torch.randint(0, labels, x.shape, generator=gen) if labels is not None
                 else torch.randn(x.shape, generator=gen) * scale)
        return torch.where(where, noise.to(x.dtype), x)

    T = c.student.emissions.shape[-1]
    t = c.teacher
    surplus = ~torch.isfinite(t.kbest_logprob)[..., None] | pad[:, None, :]
    teacher = dataclasses.replace(
        t, emissions=refill(t.emissions, pad[..., None]), node=refill(t.node, pad[..., None]),
        edge=refill(t.edge, pad[:, 1:, None, None]), kbest_paths=refill(t.kbest_paths, surplus, labels=T))
    student = c.student.replace(emissions=refill(c.student.emissions, pad[..., None]))
    return dataclasses.replace(c, student=student, teacher=teacher, hard=refill(c.hard, pad, labels=T))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_padding_garbage_and_batching_never_change_results(name):
    c = case(0, student_crf=True, teacher_crf=True, start_end=True, constrained=True)
    # two fresh refills: `case` is cached, so c's student may hold a log Z cached by an earlier
    # objective from another (equally exact) kernel, which would differ in the last bit
    base = run(name, _regarbage(c, 3))
    torch.testing.assert_close(run(name, _regarbage(c, 7)), base, rtol=0, atol=0)
    b, n = 0, c.sentences[0].n  # the longest sentence alone, without any padding
    t = c.teacher
    alone = TeacherTargets(t.emissions[b:b + 1, :n], t.transitions[b:b + 1], t.start[b:b + 1],
                           t.end[b:b + 1], t.node[b:b + 1, :n], t.edge[b:b + 1, :n - 1],
                           t.kbest_paths[b:b + 1, :, :n], t.kbest_logprob[b:b + 1])
    student = c.student.replace(emissions=c.student.emissions[b:b + 1, :n], mask=c.mask[b:b + 1, :n])
    got = build_objective(name)(student, alone, c.hard[b:b + 1, :n])
    torch.testing.assert_close(got, base[b:b + 1], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_fp16_student_emissions(name):
    c = case(1, student_crf=True, teacher_crf=True, start_end=False, constrained=False)
    half = c.student.emissions.half().requires_grad_()
    student = c.student.replace(emissions=half)
    got = build_objective(name)(student, c.teacher, c.hard)
    ref_student = c.student.replace(emissions=half.detach().float())
    want = build_objective(name)(ref_student, c.teacher, c.hard)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if name != "none":
        got.sum().backward()
        assert half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()


@pytest.mark.parametrize("student_crf", [True, False])
@pytest.mark.parametrize("constrained", [False, True])
def test_nll_matches_enumeration(student_crf, constrained):
    c = case(2, student_crf=student_crf, teacher_crf=True, start_end=student_crf,
             constrained=constrained)
    want = torch.tensor([O.oracle_nll(s) for s in c.sentences], dtype=torch.float64)
    torch.testing.assert_close(nll(c.student, c.hard).double(), want, **TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1mexp_is_accurate_near_zero_and_far_away(dtype):
    xs = [-1e-30, -1e-12, -1e-7, -1e-3, -0.5, -math.log(2.0), -0.7, -5.0, -50.0, -800.0]
    got = log1mexp(torch.tensor(xs, dtype=dtype))
    want = torch.tensor([O.log1mexp(x) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-6 if dtype == torch.float32 else 1e-12,
                               atol=0)
    assert log1mexp(torch.tensor(0.0)).item() == float("-inf")
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def _near_one_case(tail: float) -> O.Case:
    """T=2, n=2: the teacher keeps 3 of the 4 paths; the student gives the 4th ``tail`` mass."""
    c = O.make_case(3, 2, [2], k=3, student_crf=True, teacher_crf=True, start_end=False)
    kept = {tuple(p) for p in c.sentences[0].kb_paths}
    (a, b), = {(0, 0), (0, 1), (1, 0), (1, 1)} - kept
    trans = torch.zeros(2, 2, dtype=torch.float64)
    trans[a, b] = math.log(3 * tail / (1 - tail))  # p(a, b) = e^s / (3 + e^s) = tail
    em = torch.zeros(1, 3, 2)
    paths = O.all_paths(2, 2)
    s_logp = O.normalize(O.crf_scores(paths, em[0, :2].double(), trans))
    assert abs(s_logp[O.path_index((a, b), 2)].exp().item() - tail) < 1e-9 * tail
    sent = dataclasses.replace(c.sentences[0], s_logp=s_logp, s_em=em[0, :2].double(), s_trans=trans)
    return dataclasses.replace(c, student=ChainCRF(em, trans.float(), c.mask), sentences=[sent])


@pytest.mark.parametrize("tail", [1e-3, 1e-5, 1e-12])
def test_multigrained_residual_term_near_one_is_stable(tail):
    c = _near_one_case(tail)
    em = c.student.emissions.clone().requires_grad_()
    obj = build_objective("multigrained", parts=("ce", "fuzzy"))
    got = obj(c.student.replace(emissions=em), c.teacher, c.hard)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(em.grad).all()
    want = O.oracle_multigrained_parts(c.sentences[0])
    if tail >= 1e-5:  # resolvable in float32: matches the float64 value (log(1 - p) ~ log(tail))
        torch.testing.assert_close(got.double(), torch.tensor([want["ce"] + want["fuzzy"]],
                                                              dtype=torch.float64), rtol=2e-3, atol=0)
    else:  # below float32 resolution: log(1 - p_s_sum) is capped at log1mexp(-eps), never -inf
        cap = -O.log1mexp(-torch.finfo(torch.float32).eps)
        residual = 1.0 - sum(math.exp(x) for x in c.sentences[0].kb_logp)
        assert got.item() <= want["ce"] + want["fuzzy"] and got.item() >= 2 * residual * cap * 0.99


def test_multigrained_uncertainty_weights_eq9():
    c = case(0, student_crf=True, teacher_crf=True, start_end=True, constrained=False)
    obj = build_objective("multigrained")
    with torch.no_grad():
        obj.log_lambda.copy_(torch.tensor([0.3, -0.2, 0.5]))
    got = obj(c.student, c.teacher, c.hard)
    parts = [O.oracle_multigrained_parts(s) for s in c.sentences]
    lam = {"ce": math.exp(0.3), "fuzzy": math.exp(-0.2), "hard": math.exp(0.5)}
    want = [sum(lam[k] * p[k] for k in lam) - 0.5 * (0.3 - 0.2 + 0.5) for p in parts]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **TOL)
    got.mean().backward()
    assert obj.log_lambda.grad is not None and torch.isfinite(obj.log_lambda.grad).all()
    assert set(obj.last_parts) == {"ce", "fuzzy", "hard", "lambda_ce", "lambda_fuzzy", "lambda_hard"}
    assert abs(obj.last_parts["hard"].item() - sum(p["hard"] for p in parts) / len(parts)) < 1e-3


def test_multigrained_fixed_weights_and_part_subsets():
    c = case(1, student_crf=False, teacher_crf=True, start_end=False, constrained=False)
    obj = build_objective("multigrained", parts=["hard", "fuzzy"], learned=False, weights=[2.0, 0.5])
    assert not list(obj.parameters())
    got = obj(c.student, c.teacher, c.hard)
    parts = [O.oracle_multigrained_parts(s) for s in c.sentences]
    want = torch.tensor([2.0 * p["hard"] + 0.5 * p["fuzzy"] for p in parts], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, **TOL)
    hard_only = build_objective("multigrained", parts=("hard",), learned=False)
    teacher = TeacherTargets()  # the hard part needs no teacher data
    torch.testing.assert_close(hard_only(c.student, teacher, c.hard).double(),
                               torch.tensor([p["hard"] for p in parts], dtype=torch.float64), **TOL)
    for bad in [dict(parts=("ce", "x")), dict(parts=()), dict(weights=[1.0]), dict(k=0)]:
        with pytest.raises(ValueError):
            build_objective("multigrained", **bad)


def test_registry_errors_list_the_valid_choices():
    with pytest.raises(ValueError, match="valid: .*'structural'"):
        build_objective("strucutral")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['kk'\]; valid: \['k'\]"):
        build_objective("topk", kk=3)
    assert objective_options("token") == ["tau"]
    c = case(0, student_crf=True, teacher_crf=True, start_end=True, constrained=False)
    with pytest.raises(ValueError, match="needs teacher field"):
        build_objective("posterior")(c.student, dataclasses.replace(c.teacher, node=None), c.hard)


def test_teacher_select_and_to():
    c = case(0, student_crf=True, teacher_crf=True, start_end=True, constrained=False)
    t = c.teacher.select(2)
    assert t.kbest_paths.shape[1] == 2 and t.kbest_logprob.shape[1] == 2
    want = 1.0 - c.teacher.kbest_logprob[:, :2].double().exp().sum(1)
    torch.testing.assert_close(t.residual_mass.double(), want, rtol=0, atol=1e-6)
    assert torch.equal(t.node, c.teacher.node) and c.teacher.kbest_paths.shape[1] == 5
    moved = c.teacher.to("cpu")
    assert torch.equal(moved.edge, c.teacher.edge) and moved.log_z is None
    cons = case(0, student_crf=True, teacher_crf=True, start_end=True, constrained=True).student
    assert torch.equal(cons.to("cpu").constraints.transitions, cons.constraints.transitions)
    assert moved.tau == c.teacher.tau and moved.kinds == c.teacher.kinds
    empty = TeacherTargets(node=c.teacher.node).select(1)
    assert empty.kbest_paths is None and torch.equal(empty.node, c.teacher.node)


def test_schedules():
    assert [lambda_for("anneal", e, 6, rate=0.3) for e in range(6)] == pytest.approx(
        [1.0, 0.7, 0.4, 0.1, 0.0, 0.0])
    assert [lambda_for("anneal", e, 6, percent=30) for e in range(6)] == pytest.approx(
        [1.0, 0.7, 0.4, 0.1, 0.0, 0.0])  # the official code's unit
    with pytest.raises(ValueError, match="exactly one"):
        lambda_for("anneal", 1, 3, rate=0.3, percent=30)
    assert [lambda_for("anneal", e, 3, rate=0.5) for e in range(3)] == [1.0, 0.5, 0.0]
    assert [lambda_for("kd_then_nll", e, 4) for e in range(4)] == [1.0, 1.0, 1.0, 0.0]
    assert [lambda_for("constant", e, 2, lam=0.25) for e in range(2)] == [0.25, 0.25]
    assert lambda_for("learned", 3, 4) == 1.0
    with pytest.raises(ValueError, match="valid: .*'anneal'"):
        lambda_for("cosine", 0, 3)
    with pytest.raises(ValueError, match="valid: \\['rate', 'percent'\\]"):
        lambda_for("anneal", 0, 3, lam=0.5)
    with pytest.raises(ValueError):
        lambda_for("constant", 3, 3)


def test_combine_reductions():
    kd = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    gold = torch.tensor([3.0, 1.0, 2.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]]).bool()
    loss, parts = combine(kd, gold, 0.25, mask)
    assert loss.item() == pytest.approx((0.25 * 7 + 0.75 * 6) / 3)
    assert parts["kd"].item() == pytest.approx(7 / 3) and parts["nll"].item() == pytest.approx(2.0)
    loss, parts = combine(kd, gold, 0.25, mask, normalize="token")
    assert loss.item() == pytest.approx((0.25 * 7 + 0.75 * 6) / 6)
    loss.backward()
    assert kd.grad.tolist() == pytest.approx([0.25 / 6] * 3)
    loss, _ = combine(torch.full((3,), float("inf")), gold, 0.0, mask)
    assert loss.item() == pytest.approx(2.0)
    loss, parts = combine(kd, None, 1.0, mask)
    assert loss.item() == pytest.approx(7 / 3) and "nll" not in parts
    with pytest.raises(ValueError, match="valid"):
        combine(kd, gold, 0.5, mask, normalize="batch")


def test_posterior_and_gold_nll_share_one_forward_pass(monkeypatch):
    """posterior KD's forward-backward pass leaves the student's log Z cached on its Structure; the
    gold NLL then reuses it: same values and gradients as separate computations. A replaced copy of
    the structure (new emissions) never inherits a cache."""
    from pipeline import crf

    c = case(1, student_crf=True, teacher_crf=True, start_end=True, constrained=True)
    fresh = [c.student.replace(emissions=c.student.emissions.detach().requires_grad_()) for _ in range(2)]
    calls = []
    for name in ("log_partition", "forward_backward"):  # every forward pass of the chain kernels
        original = getattr(crf, name)
        monkeypatch.setattr(crf, name, lambda *a, _f=original, **kw: calls.append(1) or _f(*a, **kw))
    shared = fresh[0]
    total = (build_objective("posterior")(shared, c.teacher, c.hard) + nll(shared, c.hard)).sum()
    assert len(calls) == 1
    separate = fresh[1]
    other = (build_objective("posterior")(separate, c.teacher, c.hard).sum()
             + nll(separate.replace(), c.hard).sum())
    assert len(calls) == 3
    assert "log_partition" not in shared.replace().__dict__ and "log_partition" in shared.__dict__
    torch.testing.assert_close(total, other)
    total.backward()
    other.backward()
    torch.testing.assert_close(shared.emissions.grad, separate.emissions.grad)
