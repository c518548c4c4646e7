"""Every Structure against its enumerated twin (tests/enumerated.py), method by method.

One table of structures (pytorch-struct's ``test_lookup``): each entry builds a padded batch of a
real Structure (garbage in every padded slot) and, per sentence, the Enumerated oracle of the same
distribution; every test runs over every entry. An entry is ``entry(seed, teacher=False,
leaves=None) -> (structure, oracles, leaves)``: ``leaves`` are its input tensors (given: the
structure and the oracles are built from them, so gradients flow to them); ``teacher`` picks a
distribution whose marginals make ``cross_entropy`` exact (a labeled teacher's relations do not
depend on the head, LabeledArcs' exactness condition).
"""
from __future__ import annotations

import pytest
import torch

from pipeline.structs import ArcLabels, ChainCRF, DependencyCRF, Factorized, HeadSelection, LabeledArcs, residual_mass
from tests import enumerated as E
from tests.kd_oracle import random_constraints

LENGTHS = [4, 1, 3, 2]
NUM_LABELS = 3


def _batch(gen, scale=1.5):
    width = max(LENGTHS) + 1
    mask = torch.arange(width)[None, :] < torch.tensor(LENGTHS)[:, None]
    em = torch.randn(len(LENGTHS), width, NUM_LABELS, generator=gen) * scale
    em = torch.where(mask[..., None], em, torch.randn(em.shape, generator=gen) * 50)
    return em, mask


def chain_entry(seed, *, start_end=True, constrained=False, per_sentence=False, tau=1.0, teacher=False,
                leaves=None):
    gen = torch.Generator().manual_seed(seed)
    em, mask = _batch(gen)
    B, T = len(LENGTHS), NUM_LABELS
    trans = torch.randn(B, T, T, generator=gen) if per_sentence else torch.randn(T, T, generator=gen)
    ends = {"start": torch.randn(T, generator=gen), "end": torch.randn(T, generator=gen)} if start_end else {}
    leaves = leaves or {"emissions": em, "transitions": trans, **ends}
    em, trans, start, end = (leaves.get(name) for name in ("emissions", "transitions", "start", "end"))
    allowed = random_constraints(torch.Generator().manual_seed(1), T) if constrained else None  # shared
    real = ChainCRF(em, trans, mask, start, end, allowed, tau)
    oracles = [E.chain(em[b, :n], trans[b] if per_sentence else trans, start, end, allowed, tau)
               for b, n in enumerate(LENGTHS)]
    return real, oracles, leaves


def factorized_entry(seed, tau=1.0, teacher=False, leaves=None):
    gen = torch.Generator().manual_seed(seed)
    em, mask = _batch(gen)
    leaves = leaves or {"emissions": em}
    em = leaves["emissions"]
    return Factorized(em, mask, tau=tau), [E.factorized(em[b, :n], tau) for b, n in enumerate(LENGTHS)], leaves


def labeled_entry(seed, *, heads=False, projective=False, tau=1.0, teacher=False, leaves=None):
    """LabeledArcs over a DependencyCRF (or HeadSelection): arc scores with NaN / inf / 1e4 garbage
    outside each sentence, and so relation logits."""
    gen = torch.Generator().manual_seed(seed)
    size, lengths = max(LENGTHS) + 2, torch.tensor(LENGTHS)
    inside = torch.zeros(len(LENGTHS), size, size, dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        inside[b, :n + 1, :n + 1] = True
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4])
    arc = torch.where(inside, torch.randn(inside.shape, generator=gen) * 1.5,
                      garbage[torch.randint(0, 4, inside.shape, generator=gen)])
    rel = torch.randn(*inside.shape, NUM_LABELS, generator=gen) * 1.5
    if teacher:
        rel = rel[:, :1].expand_as(rel)  # P_t(l | h -> d) = P_t(l | d)
    rel = torch.where(inside[..., None], rel, garbage[torch.randint(0, 4, rel.shape, generator=gen)])
    leaves = leaves or {"scores": arc, "label_scores": rel}
    arc, rel = leaves["scores"], leaves["label_scores"]
    arcs = HeadSelection(arc, lengths) if heads else DependencyCRF(arc, lengths, projective=projective)
    real = LabeledArcs(arcs, ArcLabels(rel, lengths), tau)
    oracles = [E.labeled(arc[b, :n + 1, :n + 1], rel[b, :n + 1, :n + 1], not heads, projective, True, tau)
               for b, n in enumerate(LENGTHS)]
    return real, oracles, leaves


STRUCTURES = {
    "chain": lambda seed, **kw: chain_entry(seed, **kw),
    "chain-no-start-end": lambda seed, **kw: chain_entry(seed, start_end=False, **kw),
    "chain-constrained": lambda seed, **kw: chain_entry(seed, constrained=True, **kw),
    "chain-per-sentence": lambda seed, **kw: chain_entry(seed, per_sentence=True, constrained=True, **kw),
    "chain-tau": lambda seed, **kw: chain_entry(seed, tau=2.5, **kw),
    "factorized": lambda seed, **kw: factorized_entry(seed, **kw),
    "factorized-tau": lambda seed, **kw: factorized_entry(seed, tau=0.5, **kw),
    "labeled-tree": lambda seed, **kw: labeled_entry(seed, **kw),
    "labeled-tree-projective-tau": lambda seed, **kw: labeled_entry(seed, projective=True, tau=0.7, **kw),
    "labeled-heads": lambda seed, **kw: labeled_entry(seed, heads=True, **kw),
    "labeled-heads-tau": lambda seed, **kw: labeled_entry(seed, heads=True, tau=2.0, **kw),
}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a).double(), torch.as_tensor(b).double(), **TOL)


def seed_of(name):
    return sum(map(ord, name))


@pytest.fixture(params=sorted(STRUCTURES))
def entry(request):
    return STRUCTURES[request.param](seed_of(request.param))[:2]


@pytest.fixture
def teacher(request, entry):
    """Another distribution of the same entry (a teacher whose marginals cover the parts)."""
    return STRUCTURES[request.node.callspec.params["entry"]](99, teacher=True)[:2]


def region(like: torch.Tensor) -> tuple[slice, ...]:
    """The leading block of a padded per-sentence tensor that an oracle's tensor ``like`` covers."""
    return tuple(slice(0, s) for s in like.shape)


def check_block(got: torch.Tensor, want: torch.Tensor):
    """``got``'s leading block equals ``want`` and everything outside it is zero (padding)."""
    close(got[region(want)], want)
    rest = got.clone()
    rest[region(want)] = 0
    assert rest.abs().max().item() == 0 if rest.numel() else True


def test_log_partition(entry):
    real, oracles = entry
    close(real.log_partition, [o.log_partition for o in oracles])


def test_marginals_of_every_part(entry):
    real, oracles = entry
    marg = real.marginals()
    assert set(marg) == set(real.part_names)
    for b, o in enumerate(oracles):
        want = o.marginals()
        for name in real.part_names:
            check_block(marg[name][b], want[name])


def test_expected_score_and_cross_entropy(entry, teacher):
    """cross_entropy(m) against another distribution's marginals is its enumerated cross entropy;
    expected_score(m) is the enumerated expectation of the student's score under it."""
    real, oracles = entry
    teacher, t_oracles = teacher
    t_marg = teacher.marginals(*real.target_names)
    close(real.cross_entropy(t_marg), [o.cross_entropy_to(t) for o, t in zip(oracles, t_oracles)])
    expected = []
    for o, t in zip(oracles, t_oracles):
        p = t.log_probs.exp()
        expected.append(torch.where(p > 0, p * o.scores, torch.zeros_like(p)).sum())
    close(real.expected_score(t_marg), expected)


def _outputs_of(real, oracles, gen):
    """A padded batch of enumerated outputs (one random output per sentence, garbage 0 / 1
    outside) and their indices."""
    y = torch.randint(0, 2, real.argmax().shape, generator=gen)
    picks = [int(torch.randint(len(o.outputs), (1,), generator=gen)) for o in oracles]
    for b, (o, j) in enumerate(zip(oracles, picks)):
        y[b][region(o.outputs[j])] = o.outputs[j]
    return y, picks


def test_score_log_prob_argmax(entry):
    real, oracles = entry
    y, picks = _outputs_of(real, oracles, torch.Generator().manual_seed(5))
    lp = real.log_prob(y)
    close(lp, [o.log_probs[j] for o, j in zip(oracles, picks)])
    best = real.argmax()
    for b, o in enumerate(oracles):
        close(o.log_prob(best[b][region(o.outputs[0])]), max(o.log_probs).item())
        check_block(best[b], o.argmax())
    paths = torch.stack([y, best], 1)  # [B, K, ...]: one batched call over K outputs
    close(real.log_prob(paths)[:, 0], lp)


@pytest.mark.parametrize("k", [1, 4, "all"])  # all: more than any sentence's number of outputs
def test_kbest_and_summary(entry, k):
    real, oracles = entry
    k = max(len(o.outputs) for o in oracles) + 7 if k == "all" else k
    paths, logprob = real.kbest(k)
    assert paths.shape[:2] == (len(LENGTHS), k) and logprob.shape == (len(LENGTHS), k)
    for b, o in enumerate(oracles):
        want_paths, want = o.kbest(k)
        got = logprob[b]
        close(got[:len(want)], want)
        assert torch.isinf(got[len(want):]).all() and (paths[b, len(want):] == 0).all()
        for j in range(len(want)):  # each returned output has the log-prob it is listed with
            close(o.log_prob(paths[b, j][region(want_paths[j])]), want[j])
            check_block(paths[b, j], paths[b, j][region(want_paths[j])])
    summary = real.summary(min(k, 4))
    close(summary["residual_mass"], [1 - sum(torch.tensor(o.kbest(min(k, 4))[1]).exp().tolist()) for o in oracles])
    assert set(summary) >= {"log_z", "viterbi", "kbest_paths", "kbest_logprob", "residual_mass",
                            *real.target_names}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_cross_entropy_gradient_matches_autograd_of_enumeration(name):
    """d cross_entropy / d every input tensor (padding included: zero there) against autograd of
    the enumerated cross entropy in float64."""
    _, _, leaves = STRUCTURES[name](seed_of(name))
    teacher, t_oracles, _ = STRUCTURES[name](99, teacher=True)
    mine = {key: value.detach().clone().requires_grad_() for key, value in leaves.items()}
    student = STRUCTURES[name](seed_of(name), leaves=mine)[0]
    student.cross_entropy(teacher.marginals(*student.target_names)).sum().backward()
    ref = {key: value.detach().double().requires_grad_() for key, value in leaves.items()}
    total = 0.0
    for o, t in zip(STRUCTURES[name](seed_of(name), leaves=ref)[1], t_oracles):
        p = t.log_probs.exp()
        total = total - torch.where(p > 0, p * o.log_probs, torch.zeros_like(p)).sum()
    total.backward()
    for key in mine:
        close(mine[key].grad, torch.nan_to_num(ref[key].grad))


def test_residual_mass_refuses_inconsistent_kbest():
    with pytest.raises(ValueError, match="sum to"):
        residual_mass(torch.tensor([[-0.1, -0.2]]), torch.tensor([1.0]), torch.tensor([3]))


def test_restricted_factorized_is_the_conditioned_distribution():
    gen = torch.Generator().manual_seed(3)
    em, mask = _batch(gen)
    allowed = random_constraints(gen, NUM_LABELS)
    restricted = Factorized(em, mask).restricted(allowed)
    for b, n in enumerate(LENGTHS):
        product = E.factorized(em[b, :n])
        ok = torch.isfinite(E.chain(torch.zeros(n, NUM_LABELS), torch.zeros(NUM_LABELS, NUM_LABELS),
                                    allowed=allowed).scores)
        want = torch.where(ok, product.log_probs, torch.full_like(product.log_probs, E.NEG_INF))
        want = want - torch.logsumexp(want, 0)
        batch = torch.zeros(mask.shape, dtype=torch.long)
        for j in range(len(product.outputs)):
            batch[b, :n] = product.outputs[j]
            close(restricted.log_prob(batch)[b], want[j])


def test_labeled_cross_entropy_with_a_head_dependent_teacher():
    """A teacher whose relations depend on the head: cross_entropy(arc, rel) is exactly the cross
    entropy against Q(heads, rels) = P_t(heads) prod_d P_t(rels_d | d) (the case-1b factorization),
    enumerated, and not the teacher's own cross entropy."""
    real, oracles, _ = STRUCTURES["labeled-tree"](3)
    teacher, t_oracles, t_leaves = STRUCTURES["labeled-tree"](4)
    got = real.cross_entropy(teacher.marginals("arc", "rel"))
    rel = teacher.marginals("rel")["rel"]
    want, exact = [], []
    for b, (o, t, n) in enumerate(zip(oracles, t_oracles, LENGTHS)):
        head_free = rel[b, :n + 1].log().unsqueeze(0).expand(n + 1, -1, -1)   # logits log P_t(l | d)
        q = E.labeled(t_leaves["scores"][b, :n + 1, :n + 1], head_free)
        want.append(o.cross_entropy_to(q))
        exact.append(o.cross_entropy_to(t))
    close(got, want)
    assert (got.double() - torch.tensor(exact)).abs().max() > 1e-3


def test_labeled_interface():
    real, _, leaves = STRUCTURES["labeled-heads"](1)
    assert real.kind == "labeled_heads" and real.tempered(2.0).kind == "labeled_heads"
    hot = real.tempered(2.0)
    assert hot.arcs.tau == 2.0 and hot.labels.tau == 2.0 and real.tempered(real.tau) is real
    close(real.to("cpu").log_partition, real.log_partition)
    y = real.argmax()
    with pytest.raises(ValueError, match="relation ids"):
        real.score(torch.stack([y[:, 0], torch.full_like(y[:, 1], NUM_LABELS)], 1))
    with pytest.raises(ValueError, match=r"\[B, 2, 6\]"):
        real.score(y[:, 0])
    with pytest.raises(ValueError, match="do not match"):
        LabeledArcs(real.arcs, ArcLabels(leaves["label_scores"][:, :-1, :-1], torch.tensor(LENGTHS)))
    with pytest.raises(ValueError, match="needs the marginals"):
        real.cross_entropy({"arc": real.marginals("arc")["arc"]})
