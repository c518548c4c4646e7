"""crf.kbest / crf.viterbi beyond brute force: an independent per-label k-best table on longer
sentences, the chunked D of pipeline.kbest, gradients and the tensors handed back; every test runs
on the C beam (pipeline.native) and on the torch beam (what CUDA tensors and machines
without a C compiler run)."""
from __future__ import annotations

import heapq
import itertools

import pytest
import torch

from pipeline import crf, kbest
from pipeline.potentials import prepare
from tests.crf_oracle import make_batch, random_constraints, use_kernels

NEG_INF = float("-inf")


@pytest.fixture(autouse=True, params=["c", "torch"])
def beam(request, monkeypatch):
    """The k-best backend under test: the C beam, or the torch beam (STRUCTKD_NATIVE=0)."""
    return use_kernels(request.param, monkeypatch)


def table_kbest(em, trans, start, end, k, constraints=None):
    """Classic k-best Viterbi for one sentence in float64: the k best prefixes ending in each label.

    em [n, T]; returns up to k (score, path) pairs of finite score, best first.
    """
    em, trans = em.double(), trans.double()
    n, num_labels = em.shape
    start = torch.zeros(num_labels, dtype=torch.float64) if start is None else start.double()
    end = torch.zeros(num_labels, dtype=torch.float64) if end is None else end.double()
    if constraints is not None:
        trans = trans.masked_fill(~constraints.transitions, NEG_INF)
        start = start.masked_fill(~constraints.start, NEG_INF)
        end = end.masked_fill(~constraints.end, NEG_INF)
    table = [[(float(start[c] + em[0, c]), (c,))] for c in range(num_labels)]
    for i in range(1, n):
        table = [heapq.nlargest(k, ((s + float(trans[path[-1], c] + em[i, c]), path + (c,))
                                    for prefixes in table for s, path in prefixes))
                 for c in range(num_labels)]
    complete = ((s + float(end[c]), path) for c, prefixes in enumerate(table) for s, path in prefixes)
    return [(s, path) for s, path in heapq.nlargest(k, complete) if s > NEG_INF]


def check_against_table(args, k, constraints=None):
    em, trans, mask, start, end = args
    paths, scores = crf.kbest(em, trans, mask, k, start, end, constraints=constraints)
    assert paths.shape == (mask.shape[0], k, mask.shape[1])
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        tr = trans[b] if trans.dim() == 3 else trans
        st = None if start is None else start[b]
        ref = table_kbest(em[b, :n], tr, st, end, k, constraints)
        expected = torch.full((k,), NEG_INF, dtype=torch.float64)
        expected[:len(ref)] = torch.tensor([s for s, _ in ref], dtype=torch.float64)
        torch.testing.assert_close(scores[b].double(), expected, atol=1e-3, rtol=1e-5)
        finite = scores[b] > NEG_INF
        assert len({tuple(p) for p in paths[b, finite, :n].tolist()}) == int(finite.sum())
        assert (paths[b, :, n:] == 0).all() and (paths[b, ~finite] == 0).all()
    rows = mask.shape[0] * k
    rescored = crf.path_score(em.repeat_interleave(k, 0),
                              trans.repeat_interleave(k, 0) if trans.dim() == 3 else trans,
                              paths.flatten(0, 1), mask.repeat_interleave(k, 0),
                              None if start is None else start.repeat_interleave(k, 0), end,
                              constraints=constraints).view(-1, k)
    finite = scores > NEG_INF
    assert rows == rescored.numel()
    torch.testing.assert_close(rescored[finite], scores[finite], atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("num_labels,per_sentence,constrained,chunk",
                         list(itertools.product((2, 3, 5), (False, True), (False, True), (None, 1, 40))))
def test_kbest_matches_a_label_table_on_long_sentences(monkeypatch, num_labels, per_sentence,
                                                       constrained, chunk):
    """Sentences of 1..33 words (ragged, so most positions are padding for some sentence), k up to
    more than the paths of the shortest one; `chunk` forces D to be built a few positions at a time."""
    if chunk is not None:
        monkeypatch.setattr(kbest, "CHUNK_FLOATS", chunk)
    gen = torch.Generator().manual_seed(num_labels * 4 + per_sentence * 2 + constrained)
    args = make_batch(gen, [33, 1, 17, 2, 8], num_labels, 2.0, per_sentence, True)
    constraints = random_constraints(gen, num_labels) if constrained else None
    for k in (2, 7, 13):
        check_against_table(args, k, constraints)


def test_kbest_integer_ties_on_long_sentences():
    gen = torch.Generator().manual_seed(2)
    em, trans, mask, start, end = make_batch(gen, [21, 6, 12], 3, 1.0, False, True)
    args = (em.round(), trans.round(), mask, start.round(), end.round())
    check_against_table(args, 9)


@pytest.mark.parametrize("lengths", [[5, 2, 4], [4]])
def test_decoded_scores_are_differentiable(lengths):
    """With inputs that need grad, scores carry the gradient of the returned paths' scores."""
    gen = torch.Generator().manual_seed(4)
    em, trans, mask, start, end = make_batch(gen, lengths, 4, 1.0, True, True)
    em = em.masked_fill(~mask[..., None], 0.0)
    leaves = [x.clone().requires_grad_() for x in (em, trans, start, end)]
    for k in (1, 3, 50):
        paths, scores = crf.kbest(leaves[0], leaves[1], mask, k, leaves[2], leaves[3])
        finite = scores > NEG_INF
        grads = torch.autograd.grad(scores[finite].sum(), leaves)
        ref = crf.path_score(*(x.repeat_interleave(k, 0) for x in (leaves[0], leaves[1])),
                             paths.flatten(0, 1), mask.repeat_interleave(k, 0),
                             leaves[2].repeat_interleave(k, 0), leaves[3]).view(-1, k)
        torch.testing.assert_close(scores[finite], ref[finite])
        for got, want in zip(grads, torch.autograd.grad(ref[finite].sum(), leaves)):
            torch.testing.assert_close(got, want)
    paths, best = crf.viterbi(leaves[0], leaves[1], mask, leaves[2], leaves[3])
    assert best.requires_grad
    with torch.no_grad():
        paths_ng, best_ng = crf.viterbi(*leaves[:2], mask, *leaves[2:])
    assert not best_ng.requires_grad and torch.equal(paths, paths_ng)
    torch.testing.assert_close(best.detach(), best_ng)


def test_decoded_tensors_are_ordinary():
    """Decoding runs under inference mode inside; what it returns can be written in place and
    used as an index in autograd (inference tensors could not)."""
    gen = torch.Generator().manual_seed(6)
    em, trans, mask, _, _ = make_batch(gen, [4, 3], 3, 1.0, False, False)
    for paths, scores in (crf.kbest(em, trans, mask, 3), crf.viterbi(em, trans, mask)):
        assert not paths.is_inference() and not scores.is_inference() and paths.is_contiguous()
        student = torch.randn(2, 4, 3, requires_grad=True)
        index = paths if paths.dim() == 2 else paths[:, 0]
        student.gather(2, index.unsqueeze(2)).sum().backward()
        paths.add_(0)
        scores.mul_(1.0)


@pytest.mark.parametrize("num_labels,per_sentence,constrained",
                         list(itertools.product((3, 5), (False, True), (False, True))))
def test_kbest_label_pruning_matches_a_label_table(monkeypatch, num_labels, per_sentence,
                                                   constrained):
    """The pruned beam (`kbest._label_sets`, forced on small T) on ragged long sentences."""
    monkeypatch.setattr(kbest, "PRUNE_LABELS", 1)
    gen = torch.Generator().manual_seed(50 + num_labels * 4 + per_sentence * 2 + constrained)
    args = make_batch(gen, [33, 1, 17, 2, 8], num_labels, 2.0, per_sentence, True)
    constraints = random_constraints(gen, num_labels) if constrained else None
    for k in range(2, num_labels + 1):
        check_against_table(args, k, constraints)


def test_kbest_label_pruning_integer_ties(monkeypatch):
    monkeypatch.setattr(kbest, "PRUNE_LABELS", 1)
    gen = torch.Generator().manual_seed(3)
    em, trans, mask, start, end = make_batch(gen, [21, 6, 12], 5, 1.0, False, True)
    check_against_table((em.round(), trans.round(), mask, start.round(), end.round()), 4)


@pytest.mark.parametrize("k", [2, 10])
def test_kbest_label_pruning_at_many_labels(k):
    """T = 40 >= PRUNE_LABELS: labels are pruned (fewer kept than T), the result is the table's."""
    gen = torch.Generator().manual_seed(k)
    args = make_batch(gen, [9, 3, 6], 40, 3.0, False, True)
    em, trans, mask, start, end = args
    p = prepare(em, trans, mask, start, end, None, 1.0)
    with torch.inference_mode():
        *_, mu, offset = kbest._both_passes(p)
        slots, _ = kbest._label_sets(p, mu, offset, k)
    assert 40 >= kbest.PRUNE_LABELS and k <= slots.shape[2] < 40
    check_against_table(args, k)


@pytest.mark.parametrize("num_labels,per_sentence", [(5, True), (40, False)])
def test_kbest_label_pruning_on_renormalized_sentences(monkeypatch, num_labels, per_sentence):
    """Sentences of up to 300 words (RENORM shifts in both passes): pruned == unpruned beam."""
    gen = torch.Generator().manual_seed(num_labels)
    em, trans, mask, start, end = make_batch(gen, [300, 37, 170, 16, 17], num_labels, 2.0,
                                             per_sentence, True)
    monkeypatch.setattr(kbest, "PRUNE_LABELS", 10 ** 9)
    _, full = crf.kbest(em, trans, mask, 4, start, end)
    monkeypatch.setattr(kbest, "PRUNE_LABELS", 1)
    p = prepare(em, trans, mask, start, end, None, 1.0)
    with torch.inference_mode():
        *_, mu, offset = kbest._both_passes(p)
        assert kbest._label_sets(p, mu, offset, 4) is not None
    paths, pruned = crf.kbest(em, trans, mask, 4, start, end)
    torch.testing.assert_close(pruned, full, atol=1e-3, rtol=1e-5)
    rescored = crf.path_score(em.repeat_interleave(4, 0),
                              trans.repeat_interleave(4, 0) if per_sentence else trans,
                              paths.flatten(0, 1), mask.repeat_interleave(4, 0),
                              start.repeat_interleave(4, 0), end).view(-1, 4)
    torch.testing.assert_close(rescored.float(), pruned, atol=1e-2, rtol=1e-5)
