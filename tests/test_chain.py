"""The scaled kernels behind crf.log_partition / crf.marginals / crf.viterbi: gradients against
brute force and float64 gradcheck, the exactness check and its per-sentence log-space fallback.
Every test runs with log Z in C (pipeline/csrc/partition.c, float32 CPU inputs) and in torch."""
from __future__ import annotations

import itertools

import pytest
import torch

from pipeline import chain_partition, chain_scaled, crf
from pipeline.potentials import Potentials, prepare
from tests.crf_oracle import bio_constraints, brute, make_batch, random_constraints, use_kernels

NEG_INF = float("-inf")


@pytest.fixture(autouse=True, params=["c", "torch"])
def kernels(request, monkeypatch):
    """log Z and its gradient in C, or the torch scaled passes (STRUCTKD_NATIVE=0)."""
    return use_kernels(request.param, monkeypatch)


def leaves(em, trans, mask, start, end, dtype=torch.float32):
    """Fresh leaf copies that need grad (padding zeroed: its gradient is zero anyway)."""
    em = em.masked_fill(~mask[..., None], 0.0)
    return [None if x is None else x.detach().to(dtype).clone().requires_grad_() for x in (em, trans, start, end)]


GRAD_CONFIGS = list(itertools.product((3, 4), (False, True), (False, True), (False, True), (1.0, 1e3)))


@pytest.mark.parametrize("index", range(len(GRAD_CONFIGS)))
def test_log_partition_gradients_are_the_marginals(index):
    """d log Z / d emissions = node, / d transitions = edges summed over positions (and over the
    batch when shared), / d start and end = node at the first and last position; brute force."""
    num_labels, per_sentence, shared_ends, constrained, scale = GRAD_CONFIGS[index]
    gen = torch.Generator().manual_seed(100 + index)
    em, trans, mask, start, end = make_batch(gen, [5, 1, 3, 4], num_labels, scale, per_sentence, True)
    if shared_ends:
        start, end = start[0], end
    constraints = random_constraints(gen, num_labels) if constrained else None
    log_z, node, edge, _ = brute(em, trans, mask, start.expand(4, -1), end, constraints, 1.0)
    x = leaves(em, trans, mask, start, end)
    got = crf.log_partition(x[0], x[1], mask, x[2], x[3], constraints=constraints)
    torch.testing.assert_close(got.double(), log_z, atol=1e-4 * scale, rtol=1e-5)
    weight = torch.tensor([1.0, -2.0, 0.5, 3.0])
    finite = torch.isfinite(log_z)
    (got[finite] * weight[finite]).sum().backward()
    w = torch.where(finite, weight, 0.0).double()
    atol = 1e-5 if scale == 1.0 else 5e-3
    torch.testing.assert_close(x[0].grad.double(), node * w[:, None, None], atol=atol, rtol=1e-4)
    pairs = (edge * w[:, None, None, None]).sum(1)
    torch.testing.assert_close(x[1].grad.double(), pairs if per_sentence else pairs.sum(0), atol=atol, rtol=1e-4)
    lengths = mask.sum(1)
    first, last = node[:, 0] * w[:, None], node[torch.arange(4), lengths - 1] * w[:, None]
    torch.testing.assert_close(x[2].grad.double(), first.sum(0) if shared_ends else first, atol=atol, rtol=1e-4)
    torch.testing.assert_close(x[3].grad.double(), last.sum(0), atol=atol, rtol=1e-4)


@pytest.mark.parametrize("refuse", [False, True])
@pytest.mark.parametrize("per_sentence", [False, True])
def test_gradcheck_float64(monkeypatch, refuse, per_sentence):
    """The Function itself in float64 (the kernels follow the input dtype): scaled passes, and with
    every sentence refused, the log-space fallback."""
    if refuse:
        monkeypatch.setattr(chain_scaled, "LOG_TINY", float("inf"))
    gen = torch.Generator().manual_seed(7)
    em, trans, mask, start, end = make_batch(gen, [4, 2, 3], 3, 1.0, per_sentence, True)
    em = em.masked_fill(~mask[..., None], 0.0)
    lengths = mask.sum(1)

    def log_z(em, trans, start, end):
        p = Potentials(em, trans if per_sentence else trans.unsqueeze(0), start, end.unsqueeze(0),
                       mask, lengths, int(lengths.min()))
        with torch.no_grad():
            assert bool(chain_scaled.forward(p).ok.all()) != refuse
        return chain_partition.LogPartition.apply(p, p.emissions, p.transitions, p.start, p.end)

    inputs = tuple(x.double().requires_grad_() for x in (em, trans, start, end))
    assert torch.autograd.gradcheck(log_z, inputs)


def test_double_backward_raises():
    gen = torch.Generator().manual_seed(8)
    em, trans, mask, _, _ = make_batch(gen, [3, 2], 3, 1.0, False, False)
    x = leaves(em, trans, mask, None, None)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(crf.log_partition(x[0], x[1], mask).sum(), x[0], create_graph=True)


def test_scaled_check_accepts_realistic_and_refuses_extreme_potentials():
    """Emissions ~ N(0, 3) with BIO constraints stay on the scaled path (the fast one); potentials of
    scale 1e3 underflow exp() and are refused, sentence by sentence."""
    gen = torch.Generator().manual_seed(9)
    for num_labels in (3, 9, 37):
        em, trans, mask, start, end = make_batch(gen, [40, 7, 1, 25], num_labels, 1.0, False, True)
        em = em * 3
        constraints = bio_constraints() if num_labels == 3 else random_constraints(gen, num_labels)
        with torch.no_grad():
            p = prepare(em, trans, mask, start, end, None if num_labels == 37 else constraints, 1.0)
            scaled = chain_scaled.forward(p)
            chain_scaled.backward(scaled)
        assert scaled.ok.all(), num_labels
    em[0] *= 1e3  # a range of ~1e4 between labels: exp() of the gap underflows
    em[2] *= 1e3  # even for a single word
    with torch.no_grad():
        scaled = chain_scaled.forward(prepare(em, trans, mask, start, end, None, 1.0))
    assert scaled.ok.tolist() == [False, True, False, True]


def test_mixed_batch_refused_rows_match_computing_them_alone():
    """A batch where some sentences take the fallback: every output (log Z, marginals, gradients
    of shared and per-sentence factors) equals the same sentences computed one at a time."""
    gen = torch.Generator().manual_seed(10)
    for per_sentence in (False, True):
        em, trans, mask, start, end = make_batch(gen, [6, 3, 5, 2], 4, 2.0, per_sentence, True)
        em = em.masked_fill(~mask[..., None], 0.0)
        em[1] *= 1e3  # refused by the scaled check
        em[3] *= 1e3
        x = leaves(em, trans, mask, start, end)
        log_z = crf.log_partition(x[0], x[1], mask, x[2], x[3])
        log_z.sum().backward()
        node, edge = crf.marginals(em, trans, mask, start, end)
        grad_trans = torch.zeros_like(trans)
        for b in range(4):
            n = int(mask[b].sum())
            tr = trans[b:b + 1] if per_sentence else trans
            one = leaves(em[b:b + 1, :n], tr, mask[b:b + 1, :n], start[b:b + 1], end)
            alone = crf.log_partition(one[0], one[1], mask[b:b + 1, :n], one[2], one[3])
            alone.sum().backward()
            torch.testing.assert_close(log_z[b:b + 1], alone)
            torch.testing.assert_close(x[0].grad[b:b + 1, :n], one[0].grad)
            torch.testing.assert_close(x[2].grad[b:b + 1], one[2].grad)
            if per_sentence:
                torch.testing.assert_close(x[1].grad[b:b + 1], one[1].grad)
            else:
                grad_trans += one[1].grad
            ref_node, ref_edge = crf.marginals(em[b:b + 1, :n], tr, mask[b:b + 1, :n], start[b:b + 1], end)
            torch.testing.assert_close(node[b:b + 1, :n], ref_node)
            torch.testing.assert_close(edge[b:b + 1, :n - 1], ref_edge)
        if not per_sentence:
            torch.testing.assert_close(x[1].grad, grad_trans, rtol=1e-5, atol=1e-5)


def test_no_graph_and_graph_paths_agree():
    """forward_backward without gradients (scaled kernels) = with gradients (log space), logs
    included: -inf at the same places, finite where a probability underflows float32."""
    gen = torch.Generator().manual_seed(11)
    em, trans, mask, start, end = make_batch(gen, [9, 4, 1, 6], 5, 3.0, True, True)
    constraints = random_constraints(gen, 5)
    x = leaves(em, trans, mask, start, end)
    with_graph = crf.forward_backward(x[0], x[1], mask, x[2], x[3], constraints=constraints)
    with torch.inference_mode():
        without = crf.forward_backward(em, trans, mask, start, end, constraints=constraints)
    for got, want in zip(without, with_graph):
        want = want.detach()
        assert torch.equal(torch.isfinite(got), torch.isfinite(want))
        torch.testing.assert_close(got[torch.isfinite(got)], want[torch.isfinite(want)], atol=2e-4, rtol=1e-5)


def test_low_precision_and_forbidden_rows_gradients():
    """fp16 / bf16 inputs get float32-exact gradients in their own dtype; a sentence with no allowed
    path has log Z = -inf and a zero gradient, never NaN."""
    gen = torch.Generator().manual_seed(12)
    em, trans, mask, _, _ = make_batch(gen, [4, 3, 2], 3, 2.0, False, False)
    for dtype in (torch.float16, torch.bfloat16):
        low, same = leaves(em, trans, mask, None, None, dtype), leaves(em, trans, mask, None, None)
        same = [x.detach().to(dtype).float().requires_grad_() for x in same[:2]]
        crf.log_partition(low[0], low[1], mask).sum().backward()
        crf.log_partition(same[0], same[1], mask).sum().backward()
        for got, want in zip(low[:2], same):
            assert got.grad.dtype == dtype
            torch.testing.assert_close(got.grad.float(), want.grad.to(dtype).float())
    end = torch.zeros(3, 3)
    end[1] = NEG_INF  # sentence 1 may not end anywhere
    x = leaves(em, trans, mask, None, end)
    log_z = crf.log_partition(x[0], x[1], mask, None, x[3], constraints=bio_constraints())
    assert log_z[1] == NEG_INF and torch.isfinite(log_z[[0, 2]]).all()
    log_z[[0, 2]].sum().backward()
    for leaf in (x[0], x[1], x[3]):
        assert torch.isfinite(leaf.grad).all()
    assert (x[0].grad[1] == 0).all()


def test_viterbi_matches_brute_force_with_ragged_batches():
    """Viterbi backtracking from each sentence's own last position (lengths 1..7, all ragged)."""
    gen = torch.Generator().manual_seed(13)
    for num_labels, per_sentence in itertools.product((2, 4), (False, True)):
        em, trans, mask, start, end = make_batch(gen, [7, 1, 4, 2, 6], num_labels, 2.0, per_sentence, True)
        constraints = random_constraints(gen, num_labels)
        _, _, _, ranked = brute(em, trans, mask, start, end, constraints, 1.0)
        paths, best = crf.viterbi(em, trans, mask, start, end, constraints=constraints)
        for b, (scores, seqs) in enumerate(ranked):
            n = int(mask[b].sum())
            assert float(best[b]) == pytest.approx(float(scores[0]), abs=1e-4)
            if scores[0] > NEG_INF:
                hit = (seqs == paths[b, :n]).all(1).nonzero()[0, 0]
                assert float(scores[hit]) == pytest.approx(float(scores[0]), abs=1e-4)
            assert (paths[b, n:] == 0).all()
