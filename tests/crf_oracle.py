"""Brute-force oracle of the CRF tests: random potentials with garbage padding, enumeration of
every label sequence in float64, and the k-best check (shared by tests/test_crf.py,
tests/test_kbest.py and tests/test_chain.py; a test file never imports another)."""
from __future__ import annotations

import itertools

import pytest
import torch

from pipeline import native
from pipeline.crf import Constraints

NEG_INF = float("-inf")


def bio_constraints() -> Constraints:
    """Labels O, B-X, I-X: I-X only after B-X or I-X and never first."""
    trans = torch.ones(3, 3, dtype=torch.bool)
    trans[0, 2] = False
    return Constraints(trans, torch.tensor([True, True, False]), torch.ones(3, dtype=torch.bool))


def random_constraints(gen: torch.Generator, num_labels: int) -> Constraints:
    def draw(*shape):
        return torch.rand(*shape, generator=gen) > 0.3

    return Constraints(draw(num_labels, num_labels), draw(num_labels), draw(num_labels))


def make_batch(gen, lengths, num_labels, scale, per_sentence, start_end):
    """Random float32 potentials with NaN / huge garbage in the padded emissions.

    The brute force works on the same values in float64, so only the DP's own rounding is measured.
    """
    batch, longest = len(lengths), max(lengths)
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    em = torch.randn(batch, longest, num_labels, generator=gen) * scale
    garbage = torch.full_like(em, float("nan"))
    garbage[..., 0] = 1e30
    em = torch.where(mask[..., None], em, garbage)
    shape = (batch, num_labels, num_labels) if per_sentence else (num_labels, num_labels)
    trans = torch.randn(*shape, generator=gen) * scale
    start = end = None
    if start_end:
        start = torch.randn(batch, num_labels, generator=gen) * scale
        end = torch.randn(num_labels, generator=gen) * scale
    return em, trans, mask, start, end


def enumerate_scores(em, trans, start, end, constraints, tau):
    """Every sequence of one sentence ([n, T] emissions) and its score (-inf if forbidden)."""
    n, num_labels = em.shape
    seqs = torch.tensor(list(itertools.product(range(num_labels), repeat=n))).view(-1, n)
    first, last = seqs[:, 0], seqs[:, -1]
    score = em[torch.arange(n), seqs].sum(1) + trans[seqs[:, :-1], seqs[:, 1:]].sum(1)
    if start is not None:
        score = score + start[first] + end[last]
    if constraints is not None:
        allowed = constraints.transitions[seqs[:, :-1], seqs[:, 1:]].all(1)
        allowed &= constraints.start[first] & constraints.end[last]
        score = score.masked_fill(~allowed, NEG_INF)
    return seqs, score / tau


def brute(em, trans, mask, start, end, constraints, tau):
    """Per-sentence reference: log Z, node, edge, and the sorted (score, sequence) list."""
    em, trans = em.double(), trans.double()
    start, end = (None, None) if start is None else (start.double(), end.double())
    batch, longest, num_labels = em.shape
    log_z = torch.empty(batch, dtype=torch.float64)
    node = torch.zeros(batch, longest, num_labels, dtype=torch.float64)
    edge = torch.zeros(batch, max(longest - 1, 0), num_labels, num_labels, dtype=torch.float64)
    ranked = []
    for b in range(batch):
        n = int(mask[b].sum())
        tr = trans[b] if trans.dim() == 3 else trans
        st_, en = (None, None) if start is None else (start[b], end)
        seqs, score = enumerate_scores(em[b, :n], tr, st_, en, constraints, tau)
        log_z[b] = score.logsumexp(0)
        order = score.argsort(descending=True)
        ranked.append((score[order], seqs[order]))
        if log_z[b] == NEG_INF:
            continue
        prob = (score - log_z[b]).exp()
        for i in range(n):
            node[b, i].index_add_(0, seqs[:, i], prob)
        for i in range(n - 1):
            flat = torch.zeros(num_labels * num_labels, dtype=torch.float64)
            flat.index_add_(0, seqs[:, i] * num_labels + seqs[:, i + 1], prob)
            edge[b, i] = flat.view(num_labels, num_labels)
    return log_z, node, edge, ranked


def close(actual, expected, atol=1e-4, rtol=1e-5):
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def check_kbest(paths, scores, ranked, mask, k, atol=1e-4):
    """Scores = the enumeration's top k (-inf padded); every finite row is a distinct sequence whose
    enumerated score is its score; surplus rows and padding are 0."""
    assert paths.shape == (mask.shape[0], k, mask.shape[1]) and paths.dtype == torch.long
    for b, (ref_scores, ref_seqs) in enumerate(ranked):
        n = int(mask[b].sum())
        expected = torch.full((k,), NEG_INF, dtype=torch.float64)
        top = ref_scores[:k]
        expected[: len(top)] = top
        close(scores[b], expected, atol=atol)
        assert (paths[b, :, n:] == 0).all()
        finite = scores[b] > NEG_INF
        assert (paths[b, ~finite] == 0).all()
        # Enumeration order is itertools.product: the first position is the most significant digit.
        num_labels = int(ref_seqs.max()) + 1
        digits = num_labels ** torch.arange(n - 1, -1, -1)
        by_code = torch.empty_like(ref_scores)
        by_code[(ref_seqs * digits).sum(1)] = ref_scores
        codes = (paths[b, finite, :n] * digits).sum(1)
        assert len(set(codes.tolist())) == len(codes)
        close(scores[b, finite], by_code[codes], atol=atol)


def use_kernels(which: str, monkeypatch) -> str:
    """Run a test on the C kernels (pipeline/csrc, skipped without a compiler) or on the torch ones
    (STRUCTKD_NATIVE=0); ``which`` is "c" or "torch"."""
    if which == "torch":
        monkeypatch.setenv("STRUCTKD_NATIVE", "0")
    elif native.load() is None:
        pytest.skip("no C compiler to build pipeline/csrc/*.c")
    return which
