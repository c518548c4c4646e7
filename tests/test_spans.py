"""Spans (NER as parsing, case 4) against the enumeration of every span set (n <= 5, E <= 2).

Padded batches with NaN / inf / huge values in every padded or impossible (end < start) slot.
"""
from __future__ import annotations

import pytest
import torch

from pipeline.structs import Spans
from pipeline.structs.spans import bioes_allowed
from tests import enumerated as E

LENGTHS = [4, 1, 5, 2, 3]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a).double(), torch.as_tensor(b).double(), **TOL)


def _scores(seed, num_types, scale=1.5):
    gen = torch.Generator().manual_seed(seed)
    width = max(LENGTHS) + 1
    x = torch.randn(len(LENGTHS), width, width, num_types, generator=gen) * scale
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4])[
        torch.randint(0, 4, x.shape, generator=gen)]
    ok = torch.zeros(x.shape[:3], dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        ok[b, :n, :n] = torch.ones(n, n).triu().bool()
    return torch.where(ok[..., None], x, garbage)


def _entry(seed, num_types=2, tau=1.0):
    s = _scores(seed, num_types)
    real = Spans(s, torch.tensor(LENGTHS), tau=tau)
    return real, [E.span_sets(s[b, :n, :n], tau) for b, n in enumerate(LENGTHS)]


ENTRIES = {
    "spans": lambda seed: _entry(seed),
    "spans-one-type": lambda seed: _entry(seed, num_types=1),
    "spans-tau": lambda seed: _entry(seed, tau=0.7),
}


@pytest.fixture(params=sorted(ENTRIES))
def entry(request):
    return ENTRIES[request.param](sum(map(ord, request.param)))


@pytest.fixture
def teacher(request, entry):
    return ENTRIES[request.node.callspec.params["entry"]](99)


def test_segmentation_counts():
    """a(n) = a(n-1) + E sum_{w=1..n} a(n-w): 2, 5, 13, 34, 89 (E = 1), 3, 11, 41, 153, 571 (E = 2)."""
    assert [len(E.span_sets(torch.zeros(n, n, 1)).outputs) for n in range(1, 6)] == [2, 5, 13, 34, 89]
    assert [len(E.span_sets(torch.zeros(n, n, 2)).outputs) for n in range(1, 6)] == [3, 11, 41, 153, 571]


def test_log_partition_and_marginals(entry):
    real, oracles = entry
    close(real.log_partition, [o.log_partition for o in oracles])
    marg = real.marginals()["span"]
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        close(marg[b, :n, :n], o.marginals()["span"])
        assert marg[b, n:].abs().max() == 0 and marg[b, :, n:].abs().max() == 0


def test_bioes_marginals(entry):
    real, oracles = entry
    got = real.bioes_marginals()
    labels = 1 + 4 * real.num_types
    assert got.shape == (len(LENGTHS), real.scores.shape[1], labels)
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        p = o.log_probs.exp()
        want = torch.zeros(n, labels, dtype=torch.float64)
        for j in range(n):
            want[j].index_add_(0, o.outputs[:, j], p)
        close(got[b, :n], want)
        close(got[b, :n].sum(-1), torch.ones(n))
        assert got[b, n:].abs().max() == 0
    assert set(real.store_marginals()) == {"span", "bioes"}


def test_expected_score_and_cross_entropy(entry, teacher):
    real, oracles = entry
    teacher, t_oracles = teacher
    close(real.cross_entropy(teacher.marginals("span")), [o.cross_entropy_to(t) for o, t in zip(oracles, t_oracles)])
    close(real.expected_score(real.marginals()), [o.expected_score(o.marginals()) for o in oracles])


def test_score_log_prob_argmax(entry):
    real, oracles = entry
    gen = torch.Generator().manual_seed(4)
    width = real.scores.shape[1]
    picks = [int(torch.randint(len(o.outputs), (1,), generator=gen)) for o in oracles]
    y = torch.randint(0, 1 + 4 * real.num_types, (len(LENGTHS), width), generator=gen)  # garbage at padding
    for b, (o, j, n) in enumerate(zip(oracles, picks, LENGTHS)):
        y[b, :n] = o.outputs[j]
    lp = real.log_prob(y)
    close(lp, [o.log_probs[j] for o, j in zip(oracles, picks)])
    best = real.argmax()
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        close(o.log_prob(best[b, :n]), o.log_probs.max())
        assert (best[b, n:] == 0).all()
    close(real.log_prob(torch.stack([y, best], 1))[:, 0], lp)


def test_invalid_bioes_scores_minus_inf():
    real, _ = ENTRIES["spans"](1)
    width = real.scores.shape[1]
    b_person, i_person, e_org, s_org = 1, 2, 7, 8   # B-0, I-0, E-1, S-1
    bad = torch.zeros(4, len(LENGTHS), width, dtype=torch.long)
    bad[0, :, 0] = i_person                    # starts inside a span
    bad[1, :, 0] = b_person                    # B with no E (ends open, or B -> O)
    bad[2, :, 0], bad[2, :, 1] = b_person, e_org   # B-0 closed by E-1
    bad[3, :, 0] = s_org                       # valid: one single-word span
    got = real.score(bad.transpose(0, 1))
    assert torch.isinf(got[:, :3]).all() and torch.isfinite(got[:, 3]).all()
    assert bioes_allowed(2)[0].sum() == 5 * 5 + 4 * 2  # (O, E, S) -> (O, B, S); (B, I) -> (I, E) same type
    with pytest.raises(ValueError, match="BIOES labels"):
        real.score(torch.full((len(LENGTHS), width), 9))


@pytest.mark.parametrize("k", [1, 3, "all"])  # all: more than any sentence's number of span sets
def test_kbest_and_summary(entry, k):
    real, oracles = entry
    k = max(len(o.outputs) for o in oracles) + 7 if k == "all" else k
    paths, logprob = real.kbest(k)
    assert paths.shape == (len(LENGTHS), k, real.scores.shape[1])
    for b, (o, n) in enumerate(zip(oracles, LENGTHS)):
        _, want = o.kbest(k)
        close(logprob[b, :len(want)], want)
        assert torch.isinf(logprob[b, len(want):]).all() and (paths[b, len(want):] == 0).all()
        close(torch.tensor([o.log_prob(paths[b, j, :n]) for j in range(len(want))]), want)
    if k == 3:
        summary = real.summary(k)
        close(summary["residual_mass"], [1 - torch.tensor(o.kbest(k)[1]).exp().sum() for o in oracles])


def test_cross_entropy_gradient_matches_autograd_of_enumeration(entry, teacher):
    real, oracles = entry
    teacher, t_oracles = teacher
    scores = real.scores.detach().clone().requires_grad_()
    real.replace(scores=scores).cross_entropy(teacher.marginals("span")).sum().backward()
    for b, (t, n) in enumerate(zip(t_oracles, LENGTHS)):
        leaf = real.scores[b, :n, :n].detach().double().requires_grad_()
        ref = E.span_sets(leaf, real.tau)
        p = t.log_probs.exp()
        (-(torch.where(p > 0, p * ref.log_probs, torch.zeros_like(p))).sum()).backward()
        close(scores.grad[b, :n, :n], torch.nan_to_num(leaf.grad))
        assert scores.grad[b, n:].abs().max() == 0 and scores.grad[b, :, n:].abs().max() == 0


def test_arguments_are_checked():
    s = torch.zeros(1, 3, 3, 2)
    with pytest.raises(ValueError, match="lengths"):
        Spans(s, torch.tensor([4]))
    with pytest.raises(ValueError, match="labels_bioes"):
        Spans(s, torch.tensor([3]), labels_bioes=["O", "B-PER"])
    names = ["O"] + [f"{k}-{e}" for e in ("PER", "ORG") for k in "BIES"]
    assert Spans(s, torch.tensor([3]), labels_bioes=names).replace(tau=2.0).labels_bioes == names
