"""The C k-best beam (pipeline.native) against the torch beam on the same batches, and the
fallback to the torch beam when no compiler works."""
from __future__ import annotations

import pytest
import torch

from pipeline import crf, native
from tests.crf_oracle import make_batch, random_constraints

needs_c = pytest.mark.skipif(native.load() is None, reason="no C compiler")


def both(monkeypatch, args, k, constraints=None):
    em, trans, mask, start, end = args
    native = crf.kbest(em, trans, mask, k, start, end, constraints=constraints)
    with monkeypatch.context() as m:
        m.setenv("STRUCTKD_NATIVE", "0")
        beam = crf.kbest(em, trans, mask, k, start, end, constraints=constraints)
    return native, beam


@needs_c
@pytest.mark.parametrize("num_labels,per_sentence,constrained,scale",
                         [(9, False, True, 3.0), (9, True, False, 3.0), (37, False, True, 2.0),
                          (4, True, True, 1.0), (40, True, False, 0.5)])
def test_c_beam_equals_the_torch_beam(monkeypatch, num_labels, per_sentence, constrained, scale):
    """Ragged batches of 1..300 words (the torch beam's RENORM shifts and label pruning), shared
    and per-sentence transitions, constraints, k above the number of paths of short sentences:
    the same scores, and paths that score what they claim."""
    gen = torch.Generator().manual_seed(num_labels + 2 * per_sentence + constrained)
    args = make_batch(gen, [300, 1, 40, 2, 17, 33], num_labels, scale, per_sentence, True)
    constraints = random_constraints(gen, num_labels) if constrained else None
    for k in (2, 10, 40):
        (paths, scores), (_, reference) = both(monkeypatch, args, k, constraints)
        torch.testing.assert_close(scores, reference, atol=1e-3, rtol=1e-5)
        em, trans, mask, start, end = args
        rows = lambda x: x.repeat_interleave(k, 0)  # noqa: E731
        rescored = crf.path_score(rows(em), rows(trans) if per_sentence else trans, paths.flatten(0, 1),
                                  rows(mask), rows(start), end, constraints=constraints).view(-1, k)
        finite = scores > float("-inf")
        torch.testing.assert_close(rescored[finite], scores[finite], atol=1e-2, rtol=1e-5)
        assert (paths[~finite] == 0).all() and (paths.masked_fill(mask.unsqueeze(1), 0) == 0).all()


@needs_c
def test_c_beam_without_any_allowed_path(monkeypatch):
    """A sentence whose every path is forbidden: all ranks -inf, paths 0 (as the torch beam)."""
    gen = torch.Generator().manual_seed(0)
    em, trans, mask, start, end = make_batch(gen, [5, 3], 3, 1.0, False, True)
    em[1, 1] = float("-inf")
    (paths, scores), (_, reference) = both(monkeypatch, (em, trans, mask, start, end), 4)
    torch.testing.assert_close(scores, reference, atol=1e-3, rtol=1e-5)
    assert (scores[1] == float("-inf")).all()
    assert (paths[1] == 0).all()


def test_without_a_compiler_the_torch_beam_runs(monkeypatch, tmp_path):
    """A compiler that fails and an empty cache: load() gives None and crf.kbest still answers."""
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("STRUCTKD_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert native.load() is None
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    gen = torch.Generator().manual_seed(1)
    em, trans, mask, start, end = make_batch(gen, [6, 4], 3, 1.0, False, True)
    paths, scores = crf.kbest(em, trans, mask, 3, start, end)
    assert paths.shape == (2, 3, 6) and bool((scores[:, 0] >= scores[:, 1]).all())


def test_native_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("STRUCTKD_NATIVE", "0")
    assert native.load() is None


@needs_c
def test_c_log_partition_refuses_what_double_cannot_hold():
    """Label 1 starts 800 nats below label 0, so exp() in double flushes it to zero, yet the path
    1 -> 1 -> 1 wins by 300 nats at the last word (label 1 is reachable only from itself): the C
    check refuses the sentence (ok False) and the log-space fallback gives the exact log Z and
    gradient; a plain sentence stays in C. Without the check, log Z would come out ~900."""
    neg = float("-inf")
    em = torch.tensor([[[0.0, -800.0, -5000.0], [-2000.0, 0.0, -600.0], [-3000.0, 2000.0, 1500.0]],
                       [[0.5, -1.0, 0.2], [0.1, 0.3, -0.4], [0.0, 0.2, 0.1]]])
    trans = torch.tensor([[0.0, neg, 0.0], [neg, 0.0, neg], [neg, neg, 0.0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    start, end = torch.zeros(2, 3), torch.zeros(2, 3)
    _, ok, _, _ = native.log_partition(native.load(), em, trans[None], start, end, torch.tensor([3, 3]), False)
    assert ok.tolist() == [False, True]
    paths = torch.cartesian_prod(*[torch.arange(3)] * 3)  # all 27 label sequences
    em64, trans64 = em.double(), trans.double()
    scores = (em64[:, torch.arange(3), paths].sum(2)
              + trans64[paths[:, 0], paths[:, 1]] + trans64[paths[:, 1], paths[:, 2]])  # [2, 27]
    want = torch.logsumexp(scores, 1)
    with torch.no_grad():  # log Z alone: the forward pass's check is all there is
        torch.testing.assert_close(crf.log_partition(em, trans, mask, start, end).double(), want,
                                   atol=1e-3, rtol=1e-6)
    x = em.clone().requires_grad_()
    got = crf.log_partition(x, trans, mask, start, end)
    torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=1e-6)
    got.sum().backward()
    assert torch.isfinite(x.grad).all() and abs(float(x.grad[0, 2, 1]) - 1.0) < 1e-6


@needs_c
def test_native_kernels_refuse_layouts_they_would_misread():
    em, trans = torch.zeros(2, 4, 3), torch.zeros(3, 3)
    ends, lengths = torch.zeros(1, 3), torch.tensor([4, 2])
    for args in ((em, trans, ends, ends, lengths), (em, trans[None], ends, ends, torch.tensor([5, 2])),
                 (em, trans[None], torch.zeros(3), ends, lengths)):
        with pytest.raises(ValueError, match="native CRF kernels"):
            native.log_partition(native.load(), *args, False)
        with pytest.raises(ValueError, match="native CRF kernels"):
            native.kbest(native.load(), *args, 2)
