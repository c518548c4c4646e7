"""DependencyCRF (4 algorithms), HeadSelection, ArcLabels and mean-field heads against enumeration.

Every entry is a padded batch (NaN, inf and huge values in every padded or impossible slot) and,
per sentence, the Enumerated oracle of tests/enumerated.py over all trees / head vectors of n <= 5
words; every method is checked against it.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.structs import ArcLabels, DependencyCRF, HeadSelection, mean_field_heads
from pipeline.structs import mst
from tests import enumerated as E

LENGTHS = [4, 1, 5, 2, 3]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def close(a, b, **tol):
    torch.testing.assert_close(torch.as_tensor(a).double(), torch.as_tensor(b).double(), **(tol or TOL))


def _scores(seed, scale=1.5, lengths=LENGTHS):
    """[B, L+1, L+1] arc scores with garbage (NaN, +-inf, 1e4) outside each sentence (width L = 6,
    one more than the longest sentence)."""
    gen = torch.Generator().manual_seed(seed)
    size = max(lengths) + 2
    x = torch.randn(len(lengths), size, size, generator=gen) * scale
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4])
    inside = torch.zeros_like(x, dtype=torch.bool)
    for b, n in enumerate(lengths):
        inside[b, :n + 1, :n + 1] = True
    fill = garbage[torch.randint(0, 4, x.shape, generator=gen)]
    return torch.where(inside, x, fill)


def _tree_entry(seed, projective=False, single_root=True, tau=1.0):
    s = _scores(seed)
    real = DependencyCRF(s, torch.tensor(LENGTHS), projective=projective, single_root=single_root, tau=tau)
    return real, [E.trees(s[b, :n + 1, :n + 1], projective, single_root, tau) for b, n in enumerate(LENGTHS)]


def _heads_entry(seed, tau=1.0):
    s = _scores(seed)
    return HeadSelection(s, torch.tensor(LENGTHS), tau=tau), [E.head_selections(s[b, :n + 1, :n + 1], tau)
                                                               for b, n in enumerate(LENGTHS)]


ENTRIES = {
    "matrix-tree": lambda seed: _tree_entry(seed),
    "matrix-tree-multiroot": lambda seed: _tree_entry(seed, single_root=False),
    "matrix-tree-tau": lambda seed: _tree_entry(seed, tau=2.5),
    "eisner": lambda seed: _tree_entry(seed, projective=True),
    "eisner-multiroot": lambda seed: _tree_entry(seed, projective=True, single_root=False),
    "eisner-tau": lambda seed: _tree_entry(seed, projective=True, tau=0.5),
    "heads": lambda seed: _heads_entry(seed),
    "heads-tau": lambda seed: _heads_entry(seed, tau=2.0),
}


@pytest.fixture(params=sorted(ENTRIES))
def entry(request):
    return ENTRIES[request.param](sum(map(ord, request.param)))


@pytest.fixture
def teacher(request, entry):
    return ENTRIES[request.node.callspec.params["entry"]](99)


def test_tree_counts():
    """The enumerator itself: n^(n-1) single-root and (n+1)^(n-1) multi-root trees; projective
    ones: A006013 (1, 2, 7, 30, 143) and A001764 (1, 3, 12, 55, 273)."""
    zeros = [torch.zeros(n + 1, n + 1) for n in range(1, 6)]
    assert [len(E.trees(z).outputs) for z in zeros] == [n ** (n - 1) for n in range(1, 6)]
    assert [len(E.trees(z, single_root=False).outputs) for z in zeros] == [(n + 1) ** (n - 1) for n in range(1, 6)]
    assert [len(E.trees(z, projective=True).outputs) for z in zeros] == [1, 2, 7, 30, 143]
    assert [len(E.trees(z, True, False).outputs) for z in zeros] == [1, 3, 12, 55, 273]


@pytest.mark.parametrize("projective,single_root", itertools.product([False, True], repeat=2))
def test_is_tree_matches_the_enumerator(projective, single_root):
    n = 4
    every = torch.tensor([(0, *h) for h in itertools.product(range(n + 1), repeat=n)])
    got = mst.is_tree(every, torch.full((len(every),), n), single_root, projective)
    want = torch.tensor([E._is_tree(tuple(h.tolist()), projective, single_root) for h in every])
    assert torch.equal(got, want)


def test_log_partition(entry):
    real, oracles = entry
    close(real.log_partition, [o.log_partition for o in oracles])


def test_marginals(entry):
    real, oracles = entry
    with torch.no_grad():  # the teacher path: autograd marginals must work without grad mode
        marg = real.marginals()["arc"]
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        close(marg[b, :n + 1, :n + 1], o.marginals()["arc"])
        assert marg[b, n + 1:].abs().max() == 0 and marg[b, :, n + 1:].abs().max() == 0
        close(marg[b, :, 1:n + 1].sum(0), torch.ones(n))
    assert torch.isfinite(real.log_marginals()["arc"]).sum() < marg.numel()  # -inf at impossible arcs


def test_expected_score_and_cross_entropy(entry, teacher):
    real, oracles = entry
    teacher, t_oracles = teacher
    close(real.cross_entropy(teacher.marginals("arc")), [o.cross_entropy_to(t) for o, t in zip(oracles, t_oracles)])
    close(real.expected_score(real.marginals()), [o.expected_score(o.marginals()) for o in oracles])


def test_score_log_prob_argmax(entry):
    real, oracles = entry
    gen = torch.Generator().manual_seed(5)
    size = real.scores.shape[-1]
    y = torch.zeros(len(LENGTHS), size, dtype=torch.long)
    picks = [int(torch.randint(len(o.outputs), (1,), generator=gen)) for o in oracles]
    for b, (o, j, n) in enumerate(zip(oracles, picks, LENGTHS)):
        y[b, :n + 1] = o.outputs[j]
        y[b, n + 1:] = torch.randint(0, size, (size - n - 1,), generator=gen)  # garbage at padding
    lp = real.log_prob(y)
    close(lp, [o.log_probs[j] for o, j in zip(oracles, picks)])
    best = real.argmax()
    assert best.shape == (len(LENGTHS), size) and (best[:, 0] == 0).all()
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        close(o.log_prob(best[b, :n + 1]), o.log_probs.max())
        assert (best[b, n + 1:] == 0).all()
    close(real.log_prob(torch.stack([y, best], 1))[:, 0], lp)  # [B, K, L+1]: one batched call


def test_non_trees_score_minus_inf():
    real, _ = ENTRIES["matrix-tree"](1)
    cycle = torch.zeros(len(LENGTHS), real.scores.shape[-1], dtype=torch.long)
    cycle[:, 1] = 2
    cycle[:, 2] = 1                    # 1 <-> 2 in every sentence with two words or more
    two_roots = torch.zeros_like(cycle)  # every word a root child
    got = real.score(torch.stack([cycle, two_roots], 1))
    multi = [n >= 2 for n in LENGTHS]
    assert torch.isinf(got[torch.tensor(multi)]).all() and torch.isfinite(got[~torch.tensor(multi), 1]).all()
    projective, _ = ENTRIES["eisner"](1)
    crossing = torch.zeros_like(cycle)
    crossing[2, 1:6] = torch.tensor([3, 4, 0, 3, 4])  # 1 <- 3 crosses 2 <- 4 in the 5-word sentence
    assert projective.score(crossing)[2] == float("-inf") and torch.isfinite(real.score(crossing)[2])
    with pytest.raises(ValueError, match="heads must be positions"):
        real.score(torch.full_like(cycle, 99))


@pytest.mark.parametrize("k", [1, 3, "all"])  # all: more than any sentence's number of outputs
def test_kbest_and_summary(entry, k):
    real, oracles = entry
    k = max(len(o.outputs) for o in oracles) + 7 if k == "all" else k
    paths, logprob = real.kbest(k)
    assert paths.shape == (len(LENGTHS), k, real.scores.shape[-1]) and logprob.shape == (len(LENGTHS), k)
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        _, want = o.kbest(k)
        close(logprob[b, :len(want)], want)
        assert torch.isinf(logprob[b, len(want):]).all() and (paths[b, len(want):] == 0).all()
        got = torch.tensor([o.log_prob(paths[b, j, :n + 1]) for j in range(len(want))])
        close(got, want)   # each listed tree has the log-prob it is listed with (so they are distinct)
    if k == 3:
        summary = real.summary(k)
        close(summary["residual_mass"], [1 - torch.tensor(o.kbest(k)[1]).exp().sum() for o in oracles])
        assert set(summary) >= {"log_z", "viterbi", "kbest_paths", "kbest_logprob", "residual_mass", "arc"}


def test_cross_entropy_gradient_matches_autograd_of_enumeration(entry, teacher):
    real, oracles = entry
    teacher, t_oracles = teacher
    scores = real.scores.detach().clone().requires_grad_()
    real.replace(scores=scores).cross_entropy(teacher.marginals("arc")).sum().backward()
    for b, (o, t, n) in enumerate(zip(oracles, t_oracles, LENGTHS)):
        leaf = real.scores[b, :n + 1, :n + 1].detach().double().requires_grad_()
        if real.kind == "tree":
            ref = E.trees(leaf, real.projective, real.single_root, real.tau)
        else:
            ref = E.head_selections(leaf, real.tau)
        p = t.log_probs.exp()
        (-(torch.where(p > 0, p * ref.log_probs, torch.zeros_like(p))).sum()).backward()
        grad = torch.nan_to_num(leaf.grad)        # self loops / root column: -inf potentials
        close(scores.grad[b, :n + 1, :n + 1], grad)
        assert scores.grad[b, n + 1:].abs().max() == 0 and scores.grad[b, :, n + 1:].abs().max() == 0


@pytest.mark.parametrize("name", ["matrix-tree", "eisner"])
def test_marginals_are_differentiable(name):
    """Student marginals carry a graph (posterior-style objectives): d sum(w * mu) / d scores."""
    real, _ = ENTRIES[name](3)
    scores = real.scores.detach().clone().requires_grad_()
    weights = torch.randn(scores.shape, generator=torch.Generator().manual_seed(0))
    (real.replace(scores=scores).marginals()["arc"] * weights).sum().backward()
    for b, n in enumerate(LENGTHS):
        leaf = real.scores[b, :n + 1, :n + 1].detach().double().requires_grad_()
        ref = E.trees(leaf, real.projective, real.single_root)
        (ref.marginals()["arc"] * weights[b, :n + 1, :n + 1].double()).sum().backward()
        close(scores.grad[b, :n + 1, :n + 1], torch.nan_to_num(leaf.grad), rtol=1e-4, atol=1e-4)


def test_chu_liu_edmonds_on_cycle_heavy_sentences():
    """Scores built to make the greedy heads form nested cycles; the argmax is the enumerated best."""
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        n = 5
        s = torch.randn(n + 1, n + 1, generator=gen)
        order = torch.randperm(n, generator=gen) + 1
        for a, c in zip(order, order.roll(1)):
            s[a, c] += 4.0  # a strong cycle through all words
        s[order[0], order[1]] += 6.0
        for single_root in (True, False):
            o = E.trees(s, single_root=single_root)
            heads = mst.best_tree(E._arc_potentials(s, 1.0).numpy(), single_root)
            assert abs(o.scores.max().item() - mst.tree_score(E._arc_potentials(s, 1.0).numpy(), heads)) < 1e-9


def test_no_tree_is_an_error():
    s = torch.zeros(1, 3, 3)
    s[0, 0] = float("-inf")  # the root has no child: no tree
    with pytest.raises(ValueError, match="no dependency tree"):
        DependencyCRF(s, torch.tensor([2])).argmax()
    with pytest.raises(ValueError, match="lengths"):
        DependencyCRF(s, torch.tensor([3]))


def _naive_mean_field(arc, sib, gp, n, iterations):
    """Per-sentence loops over the update equations of pipeline.structs.second_order."""
    size = n + 1
    ok = [[h != d and d >= 1 for d in range(size)] for h in range(size)]

    def softmax(f):
        out = np.zeros((size, size))
        for d in range(1, size):
            col = np.array([f[h][d] if ok[h][d] else -np.inf for h in range(size)])
            out[:, d] = np.exp(col - col.max()) / np.exp(col - col.max()).sum()
        return out

    q = softmax(arc)
    for _ in range(iterations):
        f = arc.copy()
        for h, d in itertools.product(range(size), repeat=2):
            if not ok[h][d]:
                continue
            f[h][d] += sum(q[h, s] * sib[h, d, s] for s in range(1, size) if s not in (h, d))
            f[h][d] += sum(q[g, h] * gp[g, h, d] for g in range(size) if g not in (h, d) and h >= 1)
            f[h][d] += sum(q[d, c] * gp[h, d, c] for c in range(1, size) if c not in (h, d))
        q = softmax(f)
    return q


def test_mean_field_heads():
    gen = torch.Generator().manual_seed(7)
    arc = _scores(11)
    width = arc.shape[-1]
    sib = torch.randn(len(LENGTHS), width, width, width, generator=gen)
    gp = torch.randn(len(LENGTHS), width, width, width, generator=gen)
    sib[0, :, :, -1] = float("nan")  # garbage in padding (the 4-word sentence has width 7)
    mask = torch.arange(width - 1) < torch.tensor(LENGTHS)[:, None]
    local = HeadSelection(arc, torch.tensor(LENGTHS)).marginals()["arc"]
    close(mean_field_heads(arc, torch.zeros_like(sib), mask), local)
    close(mean_field_heads(arc, None, mask, iterations=5), local)
    leaf = arc.detach().clone().requires_grad_()
    q = mean_field_heads(leaf, sib, mask, iterations=3, grandparent=gp)
    for b, n in enumerate(LENGTHS):
        close(q[b, :, 1:n + 1].sum(0), torch.ones(n))
        want = _naive_mean_field(arc[b].double().numpy(), sib[b].double().numpy(), gp[b].double().numpy(), n, 3)
        close(q[b, :n + 1, :n + 1], want)
        assert q[b, n + 1:].abs().max() == 0 and q[b, :, n + 1:].abs().max() == 0
    (q * torch.randn(q.shape, generator=gen)).sum().backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    assert not torch.allclose(q, local)  # the second-order terms do move the marginals


def test_arc_labels():
    gen = torch.Generator().manual_seed(2)
    width = max(LENGTHS) + 2
    lengths = torch.tensor(LENGTHS)
    labels = ArcLabels(torch.randn(len(LENGTHS), width, width, 4, generator=gen), lengths, tau=1.5)
    heads = HeadSelection(_scores(4), lengths)
    mu = heads.marginals()["arc"]
    joint = labels.joint(mu)
    per_word = labels.label_marginals(mu)
    for b, n in enumerate(LENGTHS):
        close(joint[b, :, 1:n + 1].sum((0, 2)), torch.ones(n))
        want = torch.einsum("hd,hdl->dl", mu[b].double(), torch.softmax(labels.scores[b].double() / 1.5, -1))
        close(per_word[b, 1:n + 1], want[1:n + 1])
        assert per_word[b, n + 1:].abs().max() == 0 and per_word[b, 0].abs().max() == 0
    y = heads.argmax()
    best = labels.best(y)
    rel = torch.randint(0, 4, y.shape, generator=gen)
    got = labels.log_prob(y, rel)
    for b, n in enumerate(LENGTHS):
        lp = torch.log_softmax(labels.scores[b].double() / 1.5, -1)
        close(got[b], sum(lp[y[b, d], d, rel[b, d]] for d in range(1, n + 1)))
        assert all(best[b, d] == lp[y[b, d], d].argmax() for d in range(1, n + 1))
    close(labels.log_prob(torch.stack([y, y], 1), torch.stack([rel, rel], 1))[:, 1], got)
