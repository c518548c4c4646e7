"""KD objectives for dependency and span students against brute-force enumeration (issue 17).

Every (labeled) tree / head vector of each sentence (n <= 4 words) is enumerated in float64
(tests/enumerated.py): padded batches with garbage in every padded slot, projective and
non-projective, tau != 1, k larger than the number of outputs, gradients against autograd of the
enumerated loss; case 4: a BIOES MaxEnt student distilled from a span teacher's BIOES marginals
against the expectation over every span set.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import pytest
import torch

from pipeline.kd import OBJECTIVES, TeacherTargets, build_objective, nll
from pipeline.structs import ArcLabels, DependencyCRF, Factorized, HeadSelection, LabeledArcs, Spans, Structure
from tests import enumerated as E
from tests.enumerated import NEG_INF, Enumerated
from tests.kd_oracle import log1mexp, xlogy

# ---- dependency students (tests/test_kd_trees.py): every (labeled) tree / head vector enumerated ----

def tree_enumerated(kind, arc, label, projective, tau=1.0):
    """The Enumerated distribution of a structure ``kind`` (tree, heads, labeled_tree, labeled_heads)
    of one sentence: arc [n+1, n+1], label [n+1, n+1, R] (labeled kinds), float64."""
    trees_only = kind.endswith("tree")
    if kind.startswith("labeled_"):
        return E.labeled(arc, label, trees_only, projective, True, tau)
    return E.trees(arc, projective, True, tau) if trees_only else E.head_selections(arc, tau)


@dataclass
class TreeSentence:
    """One sentence: the student's and the teacher's enumerated distributions at tau; ``q`` the
    distribution the teacher targets stand for over the student's output type (the teacher's arcs,
    and for a labeled student relations drawn from the given P_t(l | d): the case-1b factorization);
    the float32 targets given to the objectives (upcast), the teacher's k best and the hard output."""

    n: int
    student: Enumerated
    teacher: Enumerated
    q: Enumerated
    arc: torch.Tensor
    rel: torch.Tensor | None
    kbest: list
    kbest_logp: list
    hard: torch.Tensor


@dataclass
class TreeCase:
    student: Structure
    teacher: TeacherTargets
    hard: torch.Tensor
    sentences: list
    leaves: dict


def tree_student(kind, arc, label, lengths, projective):
    arcs = (DependencyCRF(arc, lengths, projective=projective) if kind.endswith("tree")
            else HeadSelection(arc, lengths))
    return LabeledArcs(arcs, ArcLabels(label, lengths)) if kind.startswith("labeled_") else arcs


def make_tree_case(seed, lengths, student, teacher, *, s_projective=False, t_projective=False, num_rels=3,
                   k=4, tau=1.0):
    """A padded batch (NaN / inf / 1e4 in the student's padded arc scores, 1e4 in its relation
    logits, positive garbage in the targets outside each sentence, out-of-range heads and relations
    in surplus k-best rows) and its per-sentence enumerations."""
    gen = torch.Generator().manual_seed(seed)
    batch, size, labeled = len(lengths), max(lengths) + 2, student.startswith("labeled_")
    inside = torch.zeros(batch, size, size, dtype=torch.bool)
    for b, n in enumerate(lengths):
        inside[b, :n + 1, :n + 1] = True
    garbage = torch.tensor([float("nan"), float("inf"), NEG_INF, 1e4])
    s_arc = torch.where(inside, torch.randn(inside.shape, generator=gen) * 1.5,
                        garbage[torch.randint(0, 4, inside.shape, generator=gen)])
    s_rel = torch.where(inside[..., None], torch.randn(*inside.shape, num_rels, generator=gen) * 1.5, 1e4)
    t_arc, t_rel = torch.randn(inside.shape, generator=gen) * 2, torch.randn(*inside.shape, num_rels, generator=gen) * 2
    arc, rel = torch.rand(inside.shape, generator=gen) * 3, torch.rand(batch, size, num_rels, generator=gen) * 3
    paths = torch.randint(0, 100, (batch, k, *((2,) if labeled else ()), size), generator=gen)
    logp, hard = torch.full((batch, k), NEG_INF), torch.randint(0, 2, paths[:, 0].shape, generator=gen)
    sentences, t_labeled = [], teacher.startswith("labeled_")
    for b, n in enumerate(lengths):
        cut = (b, slice(0, n + 1), slice(0, n + 1))
        S = tree_enumerated(student, s_arc[cut].double(), s_rel[cut].double(), s_projective, tau)
        T = tree_enumerated(teacher, t_arc[cut].double(), t_rel[cut].double(), t_projective, tau)
        marg = T.marginals()
        arc[cut] = marg["arc"].float()
        arc_t = arc[cut].double()
        rel_t = None
        if t_labeled:
            rel[b, :n + 1] = marg["rel"].float()
            rel_t = rel[b, :n + 1].double()
        arcs_kind = teacher.replace("labeled_", "")
        if labeled:
            Q = E.labeled(t_arc[cut].double() / tau, rel_t.log().expand(n + 1, -1, -1),
                          arcs_kind.endswith("tree"), t_projective)
        else:
            Q = tree_enumerated(arcs_kind, t_arc[cut].double(), None, t_projective, tau)
        best, best_logp = (T if labeled else Q).kbest(k)
        for j, y in enumerate(best):
            paths[b, j] = 0
            paths[b, j][..., :n + 1] = y
        logp[b, :len(best)] = torch.tensor(best_logp)
        hard[b] = 0
        hard[b][..., :n + 1] = best[0]
        sentences.append(TreeSentence(n, S, T, Q, arc_t, rel_t, best, logp[b, :len(best)].double().tolist(), best[0]))
    targets = TeacherTargets(arc=arc, rel=rel if t_labeled else None, kbest_paths=paths, kbest_logprob=logp,
                             tau=tau, kinds=frozenset({teacher}))
    return TreeCase(tree_student(student, s_arc, s_rel, torch.tensor(lengths), s_projective), targets, hard,
                    sentences, {"arc": s_arc, "label": s_rel})


def tree_structural(s: TreeSentence, S: Enumerated, tau=1.0):
    """tau^2 (log Z_s - E_q[phi_s(y)]): phi_s(y) the student's part potentials summed over y's
    factors (linear, also for a y the student cannot output); = tau^2 CE(q, P_s) when it can."""
    linear = Enumerated(s.q.outputs, {name: s.q.indicators[name] for name in S.potentials}, S.potentials).scores
    p = s.q.log_probs.exp()
    return tau ** 2 * (torch.logsumexp(S.scores, 0) - torch.where(p > 0, p * linear, torch.zeros_like(p)).sum())


def tree_posterior(s: TreeSentence, S: Enumerated, tau=1.0):
    """-tau^2 sum_d [sum_h P_t(h -> d) log q_s(h -> d) (+ sum_l P_t(l | d) log q_s(rel_d = l))]."""
    marg = S.marginals()
    total = 0.0
    for name, target in (("arc", s.arc), ("rel", s.rel)):
        if name in marg:
            q = marg[name]
            total = total - torch.where(target > 0, target * torch.where(q > 0, q, torch.ones_like(q)).log(),
                                        torch.zeros_like(q)).sum()
    return tau ** 2 * total


def log_prob(S: Enumerated, y) -> float:
    """log P_s(y), -inf for a y that is not an output of S (a non-projective tree, say)."""
    found = (S.outputs == y).flatten(1).all(1)
    return S.log_probs[found][0].item() if bool(found.any()) else NEG_INF


def tree_kbest_parts(s: TreeSentence, k=None):
    """{'topk', 'topwk', 'ce', 'fuzzy', 'hard'} over the teacher's k best (eqs. 6, 7; 4, 6, 7)."""
    logp = [log_prob(s.student, y) for y in s.kbest[:k]]
    probs = [math.exp(x) for x in s.kbest_logp[:k]]
    pt_sum, ps_sum = sum(probs), sum(math.exp(x) for x in logp)
    covered = len(probs) == int(torch.isfinite(s.teacher.scores).sum())
    residual = 0.0 if covered else -xlogy(1.0 - pt_sum, log1mexp(math.log(ps_sum)))
    return {"topk": -sum(logp) / len(logp), "topwk": -sum(xlogy(p / pt_sum, q) for p, q in zip(probs, logp)),
            "ce": -sum(xlogy(p, q) for p, q in zip(probs, logp)) + residual,
            "fuzzy": -xlogy(pt_sum, math.log(ps_sum)) + residual, "hard": -log_prob(s.student, s.hard)}


def tree_oracle(name, case: TreeCase, tau=1.0, k=None):
    """The oracle loss [B] (float64) of objective ``name`` on every sentence of a TreeCase."""
    def one(s):
        posterior = lambda: tree_posterior(s, s.student, tau).item()  # noqa: E731
        parts = lambda: tree_kbest_parts(s, k)  # noqa: E731
        mg = lambda: parts()["ce"] + parts()["fuzzy"] + parts()["hard"]  # noqa: E731
        return {"none": lambda: 0.0, "structural": lambda: tree_structural(s, s.student, tau).item(),
                "posterior": posterior, "topk": lambda: parts()["topk"], "topwk": lambda: parts()["topwk"],
                "posterior_topwk": lambda: 0.5 * (posterior() + parts()["topwk"]),
                "posterior_topk": lambda: 0.5 * (posterior() + parts()["topk"]),
                "multigrained": mg, "multigrained_posterior": lambda: mg() + posterior(),
                "nll": lambda: -log_prob(s.student, s.hard)}[name]()
    return torch.tensor([one(s) for s in case.sentences], dtype=torch.float64)


TOL = {"rtol": 1e-5, "atol": 2e-4}
LENGTHS = [4, 1, 3, 2]
# (student, teacher, student projective, teacher projective)
CONFIGS = [("tree", "tree", False, False), ("tree", "tree", True, True), ("tree", "tree", False, True),
           ("tree", "tree", True, False), ("heads", "tree", False, False), ("tree", "heads", False, False),
           ("heads", "heads", False, False), ("tree", "labeled_tree", False, False),
           ("labeled_tree", "labeled_tree", False, False), ("labeled_tree", "labeled_tree", True, True),
           ("labeled_heads", "labeled_tree", False, False), ("labeled_tree", "labeled_heads", False, False),
           ("labeled_heads", "labeled_heads", False, False)]
TREE_OBJECTIVES = [name for name in OBJECTIVES if name not in ("token", "emission", "substructure_l2")]
KBEST = {"topk", "topwk", "multigrained", "posterior_topwk", "posterior_topk", "multigrained_posterior"}


def cfg_id(config) -> str:
    student, teacher, s_proj, t_proj = config
    return f"{student}{'-proj' if s_proj else ''}<-{teacher}{'-proj' if t_proj else ''}"


def kbest_defined(config) -> bool:
    """The teacher's k best are outputs of the student (else +inf / refused, see pipeline.kd.sequence)."""
    student, teacher, s_proj, t_proj = config
    tree_student = student.endswith("tree")
    return not (tree_student and teacher.endswith("heads")) and not (tree_student and s_proj and not t_proj)


@functools.lru_cache(maxsize=None)
def case(config, tau=1.0, k=4, seed=0) -> TreeCase:
    student, teacher, s_proj, t_proj = config
    return make_tree_case(seed, LENGTHS, student, teacher, s_projective=s_proj, t_projective=t_proj, k=k, tau=tau)


def close(got, want):
    torch.testing.assert_close(got.double(), want, **TOL)


@pytest.mark.parametrize("config", CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("name", TREE_OBJECTIVES)
def test_tree_objective_matches_enumeration(name, config):
    if name in KBEST and not kbest_defined(config):
        pytest.skip("the teacher's k best are not all outputs of this student")
    c = case(config)
    got = build_objective(name)(c.student, c.teacher, c.hard)
    assert got.shape == (len(LENGTHS),) and got.dtype == torch.float32 and torch.isfinite(got).all()
    close(got, tree_oracle(name, c))


@pytest.mark.parametrize("config", [CONFIGS[i] for i in (0, 1, 4, 8, 10)], ids=cfg_id)
@pytest.mark.parametrize("name,k", [("topk", 2), ("topwk", 1), ("multigrained", 2), ("topwk", 500),
                                    ("multigrained", 500)])  # 500: more than every sentence's outputs
def test_kbest_options_match_enumeration(name, k, config):
    c = case(config, k=min(k, 50))
    close(build_objective(name, k=k)(c.student, c.teacher, c.hard), tree_oracle(name, c, k=k))


@pytest.mark.parametrize("config", CONFIGS, ids=cfg_id)
def test_nll_and_structural_is_the_cross_entropy(config):
    """The hard loss is -log P_s(hard) (hard in the student's output format); where the student can
    output everything the teacher targets stand for, structural KD is tau^2 CE(q, P_s) itself."""
    close(nll(case(config).student, case(config).hard), tree_oracle("nll", case(config)))
    c = case(config, tau=2.0)
    student, teacher, s_proj, t_proj = config
    if (student.endswith("tree") and teacher.endswith("heads")) or (s_proj and not t_proj):
        return
    got = build_objective("structural", tau=2.0)(c.student, c.teacher, c.hard)
    for b, s in enumerate(c.sentences):
        row = {tuple(y.flatten().tolist()): i for i, y in enumerate(s.student.outputs)}
        lp = s.student.log_probs[[row[tuple(y.flatten().tolist())] for y in s.q.outputs]]
        p = s.q.log_probs.exp()
        torch.testing.assert_close(got[b].double(), 4.0 * -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(), **TOL)


@pytest.mark.parametrize("config", CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("tau", [0.5, 2.0])
@pytest.mark.parametrize("name", ["structural", "posterior"])
def test_temperature_rule(name, tau, config):
    """Teacher targets at tau, student tempered, tau^2; targets at another tau are refused."""
    c = case(config, tau=tau)
    close(build_objective(name, tau=tau)(c.student, c.teacher, c.hard), tree_oracle(name, c, tau=tau))
    with pytest.raises(ValueError, match="temperature"):
        build_objective(name)(c.student, c.teacher, c.hard)


@pytest.mark.parametrize("config", CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("name", ["structural", "posterior"])
def test_gradients_match_autograd_of_enumeration(name, config):
    """d loss / d student arc scores and relation logits (padding included: zero there) against
    autograd of the enumerated loss in float64."""
    tau = 1.5
    c = case(config, tau=tau)
    student_kind, _, s_proj, _ = config
    mine = {key: value.clone().requires_grad_() for key, value in c.leaves.items()}
    student = tree_student(student_kind, mine["arc"], mine["label"], torch.tensor(LENGTHS), s_proj)
    build_objective(name, tau=tau)(student, c.teacher, c.hard).sum().backward()
    ref = {key: value.double().requires_grad_() for key, value in c.leaves.items()}
    total = 0.0
    for b, s in enumerate(c.sentences):
        cut = (b, slice(0, s.n + 1), slice(0, s.n + 1))
        S = tree_enumerated(student_kind, ref["arc"][cut], ref["label"][cut], s_proj, tau)
        total = total + (tree_structural if name == "structural" else tree_posterior)(s, S, tau)
    total.backward()
    labeled = student_kind.startswith("labeled_")
    for key in ("arc", "label") if labeled else ("arc",):
        torch.testing.assert_close(mine[key].grad.double(), torch.nan_to_num(ref[key].grad), rtol=1e-4, atol=1e-5)
    assert labeled or mine["label"].grad is None


@pytest.mark.parametrize("config", [CONFIGS[i] for i in (0, 1, 5, 8, 11)], ids=cfg_id)
@pytest.mark.parametrize("name", TREE_OBJECTIVES)
def test_padding_never_changes_results(name, config):
    """Each sentence alone (no padding, no garbage) gives its row of the padded batch."""
    if name in KBEST and not kbest_defined(config):
        pytest.skip("the teacher's k best are not all outputs of this student")
    c = case(config)
    base = build_objective(name)(c.student, c.teacher, c.hard)
    student_kind, _, s_proj, _ = config
    t = c.teacher
    for b, n in enumerate(LENGTHS):
        w = n + 1
        alone = TeacherTargets(arc=t.arc[b:b + 1, :w, :w], rel=None if t.rel is None else t.rel[b:b + 1, :w],
                               kbest_paths=t.kbest_paths[b:b + 1, ..., :w], kbest_logprob=t.kbest_logprob[b:b + 1],
                               kinds=t.kinds)
        student = tree_student(student_kind, c.leaves["arc"][b:b + 1, :w, :w], c.leaves["label"][b:b + 1, :w, :w],
                               torch.tensor([n]), s_proj)
        got = build_objective(name)(student, alone, c.hard[b:b + 1, ..., :w])
        torch.testing.assert_close(got, base[b:b + 1], rtol=1e-6, atol=1e-5)


def test_refusals():
    c = case(("tree", "heads", False, False))
    for name in ("token", "emission", "substructure_l2"):
        with pytest.raises(ValueError, match="defined for"):
            build_objective(name)(c.student, c.teacher, c.hard)
    with pytest.raises(ValueError, match="need not be trees"):
        build_objective("topwk")(c.student, c.teacher, c.hard)
    labeled = case(("labeled_heads", "labeled_tree", False, False))
    heads_only = dataclasses.replace(labeled.teacher, kbest_paths=labeled.teacher.kbest_paths[:, :, 0])
    with pytest.raises(ValueError, match="not outputs of a 'labeled_heads' student"):
        build_objective("topk")(labeled.student, heads_only, labeled.hard)
    with pytest.raises(ValueError, match=r"needs teacher field\(s\) \['rel'\]"):
        build_objective("structural")(labeled.student, dataclasses.replace(labeled.teacher, rel=None), labeled.hard)
    with pytest.raises(ValueError, match="unknown teacher structure kind"):
        build_objective("posterior")(c.student, dataclasses.replace(c.teacher, kinds=frozenset({"tre"})), c.hard)


# ---- case 4: NER as parsing -> a BIOES MaxEnt student ----

SPAN_LENGTHS = [4, 1, 3]
NUM_TYPES = 2


def span_case(tau):
    gen = torch.Generator().manual_seed(4)
    width, T = max(SPAN_LENGTHS) + 1, 1 + 4 * NUM_TYPES
    lengths = torch.tensor(SPAN_LENGTHS)
    mask = torch.arange(width) < lengths[:, None]
    t_scores = torch.randn(len(SPAN_LENGTHS), width, width, NUM_TYPES, generator=gen) * 2
    teacher = Spans(t_scores, lengths, tau=tau)
    node = teacher.bioes_marginals()
    node = torch.where(mask[..., None], node, torch.rand(node.shape, generator=gen))  # garbage at padding
    em = torch.where(mask[..., None], torch.randn(len(SPAN_LENGTHS), width, T, generator=gen) * 1.5,
                     torch.randn(len(SPAN_LENGTHS), width, T, generator=gen) * 50)
    span = torch.where(teacher.allowed[..., None], teacher.marginals()["span"],
                       torch.rand(t_scores.shape, generator=gen))
    targets = TeacherTargets(node=node, span=span, tau=tau, kinds=frozenset({"spans"}))
    return em, t_scores, targets


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("name", ["posterior", "structural"])
def test_bioes_maxent_student_from_a_span_teacher(name, tau):
    """tau^2 * -sum over every span set P_t(set) log P_s(BIOES(set)), value and gradient."""
    em, t_scores, targets = span_case(tau)
    leaf = em.clone().requires_grad_()
    mask = torch.arange(em.shape[1]) < torch.tensor(SPAN_LENGTHS)[:, None]
    got = build_objective(name, tau=tau)(Factorized(leaf, mask), targets, torch.zeros(mask.shape, dtype=torch.long))
    got.sum().backward()
    ref = em.double().requires_grad_()
    want = []
    for b, n in enumerate(SPAN_LENGTHS):
        sets = E.span_sets(t_scores[b, :n, :n], tau)
        student = E.factorized(ref[b, :n], tau)
        p = sets.log_probs.exp()
        lp = torch.stack([student.log_probs[student.index(y)] for y in sets.outputs])
        want.append(tau ** 2 * -(p * lp).sum())
    torch.stack(want).sum().backward()
    close(got, torch.stack(want).detach())
    torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=1e-4, atol=1e-5)


def test_span_student_from_a_span_teacher():
    """Structural KD between span sets: the exact cross entropy over every span set."""
    em, t_scores, targets = span_case(1.0)
    gen = torch.Generator().manual_seed(8)
    s_scores = torch.randn(t_scores.shape, generator=gen)
    lengths = torch.tensor(SPAN_LENGTHS)
    got = build_objective("structural")(Spans(s_scores, lengths), targets, torch.zeros(em.shape[:2], dtype=torch.long))
    want = [E.span_sets(s_scores[b, :n, :n]).cross_entropy_to(E.span_sets(t_scores[b, :n, :n]))
            for b, n in enumerate(SPAN_LENGTHS)]
    close(got, torch.tensor(want, dtype=torch.float64))
    with pytest.raises(ValueError, match="defined for"):
        build_objective("posterior")(Spans(s_scores, lengths), targets, torch.zeros(em.shape[:2], dtype=torch.long))
