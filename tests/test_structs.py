"""Every Structure against its enumerated twin (tests/enumerated.py), method by method.

One table of structures (pytorch-struct's ``test_lookup``): each entry builds a padded batch of a
real Structure (garbage in every padded slot) and, per sentence, the Enumerated oracle of the same
distribution; every test runs over every entry.
"""
from __future__ import annotations

import pytest
import torch

from pipeline.structs import ChainCRF, Factorized, residual_mass
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


def chain_entry(seed, *, start_end=True, constrained=False, per_sentence=False, tau=1.0):
    gen = torch.Generator().manual_seed(seed)
    em, mask = _batch(gen)
    B, T = len(LENGTHS), NUM_LABELS
    trans = torch.randn(B, T, T, generator=gen) if per_sentence else torch.randn(T, T, generator=gen)
    start = torch.randn(T, generator=gen) if start_end else None
    end = torch.randn(T, generator=gen) if start_end else None
    allowed = random_constraints(torch.Generator().manual_seed(1), T) if constrained else None  # shared
    real = ChainCRF(em, trans, mask, start, end, allowed, tau)
    oracles = [E.chain(em[b, :n], trans[b] if per_sentence else trans, start, end, allowed, tau)
               for b, n in enumerate(LENGTHS)]
    return real, oracles


def factorized_entry(seed, tau=1.0):
    gen = torch.Generator().manual_seed(seed)
    em, mask = _batch(gen)
    return Factorized(em, mask, tau=tau), [E.factorized(em[b, :n], tau) for b, n in enumerate(LENGTHS)]


STRUCTURES = {
    "chain": lambda seed: chain_entry(seed),
    "chain-no-start-end": lambda seed: chain_entry(seed, start_end=False),
    "chain-constrained": lambda seed: chain_entry(seed, constrained=True),
    "chain-per-sentence": lambda seed: chain_entry(seed, per_sentence=True, constrained=True),
    "chain-tau": lambda seed: chain_entry(seed, tau=2.5),
    "factorized": lambda seed: factorized_entry(seed),
    "factorized-tau": lambda seed: factorized_entry(seed, tau=0.5),
}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a).double(), torch.as_tensor(b).double(), **TOL)


@pytest.fixture(params=sorted(STRUCTURES))
def entry(request):
    return STRUCTURES[request.param](sum(map(ord, request.param)))


@pytest.fixture
def teacher(request, entry):
    """Another distribution of the same entry (a teacher whose marginals cover the parts)."""
    return STRUCTURES[request.node.callspec.params["entry"]](99)


def test_log_partition(entry):
    real, oracles = entry
    close(real.log_partition, [o.log_partition for o in oracles])


def test_marginals_of_every_part(entry):
    real, oracles = entry
    marg = real.marginals()
    assert set(marg) == set(real.part_names)
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        want = o.marginals()
        for name, value in want.items():
            got = marg[name][b]
            got = got[:n] if name == "node" else got[:n - 1] if name == "edge" else got
            close(got, value)
        if "node" in marg:
            assert marg["node"][b, n:].abs().max().item() == 0.0 if n < marg["node"].shape[1] else True


def test_expected_score_and_cross_entropy(entry, teacher):
    """cross_entropy(m) against another distribution's exact marginals is its enumerated cross
    entropy; expected_score of its own marginals is the enumerated expectation."""
    real, oracles = entry
    teacher, t_oracles = teacher
    t_marg = teacher.marginals(*real.target_names)
    close(real.cross_entropy(t_marg), [o.cross_entropy_to(t) for o, t in zip(oracles, t_oracles)])
    close(real.expected_score(real.marginals(*real.target_names)),
          [o.expected_score(o.marginals()) for o in oracles])


def test_score_log_prob_argmax(entry):
    real, oracles = entry
    gen = torch.Generator().manual_seed(5)
    y = torch.randint(0, NUM_LABELS, real.mask.shape, generator=gen)
    lp = real.log_prob(y)
    close(lp, [o.log_prob(y[b, :n]) for b, (o, n) in enumerate(zip(oracles, LENGTHS))])
    best = real.argmax()
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        close(o.log_prob(best[b, :n]), max(o.log_probs).item())
    paths = torch.stack([y, best], 1)  # [B, K, L]: one batched call over K paths
    close(real.log_prob(paths)[:, 0], lp)


@pytest.mark.parametrize("k", [1, 4, 200])  # 200 > the number of outputs of every sentence
def test_kbest_and_summary(entry, k):
    real, oracles = entry
    paths, logprob = real.kbest(k)
    assert paths.shape[:2] == (len(LENGTHS), k) and logprob.shape == (len(LENGTHS), k)
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        _, want = o.kbest(k)
        got = logprob[b]
        close(got[:len(want)], want)
        assert torch.isinf(got[len(want):]).all()
        for j in range(len(want)):  # each returned path has the log-prob it is listed with
            close(o.log_prob(paths[b, j, :n]), want[j])
    summary = real.summary(k)
    close(summary["residual_mass"], [1 - sum(torch.tensor(o.kbest(k)[1]).exp().tolist()) for o in oracles])
    assert set(summary) >= {"log_z", "viterbi", "kbest_paths", "kbest_logprob", "residual_mass", "node"}


def test_cross_entropy_gradient_matches_autograd_of_enumeration(entry, teacher):
    real, oracles = entry
    teacher, t_oracles = teacher
    em = real.emissions.detach().clone().requires_grad_()
    loss = real.replace(emissions=em).cross_entropy(teacher.marginals(*real.target_names)).sum()
    loss.backward()
    for b, (o, t, n) in enumerate(zip(oracles, t_oracles, LENGTHS)):
        leaf = em[b, :n].detach().double().requires_grad_()
        if real.kind == "chain":
            parts = real.parts
            trans = parts["edge"][b] if parts["edge"].dim() == 3 else parts["edge"]
            ref = E.chain(leaf, trans.double() * real.tau, parts["start"].double() * real.tau,
                          parts["end"].double() * real.tau, None, real.tau)
        else:
            ref = E.factorized(leaf, real.tau)
        p = t.log_probs.exp()
        (-(torch.where(p > 0, p * ref.log_probs, torch.zeros_like(p))).sum()).backward()
        close(em.grad[b, :n], leaf.grad)
        assert em.grad[b, n:].abs().max().item() == 0.0 if n < em.shape[1] else True


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
