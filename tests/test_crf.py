"""pipeline.crf against brute-force enumeration of every label sequence (float64 reference)."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import crf
from pipeline.crf import Constraints
from tests.crf_oracle import bio_constraints, brute, check_kbest, close, make_batch, random_constraints

NEG_INF = float("-inf")


CONFIGS = list(itertools.product((2, 3, 4), (False, True), (False, True), (False, True), (1.0, 1e3)))


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_crf_matches_brute_force(index):
    num_labels, per_sentence, start_end, constrained, scale = CONFIGS[index]
    gen = torch.Generator().manual_seed(index)
    tau = 0.7 if index % 3 == 0 else 1.0  # decorrelated from the product's other axes
    lengths = [5, 1, 3, 2] if num_labels < 4 else [4, 5, 1, 3]
    em, trans, mask, start, end = make_batch(gen, lengths, num_labels, scale, per_sentence, start_end)
    constraints = None
    if constrained:
        constraints = bio_constraints() if num_labels == 3 else random_constraints(gen, num_labels)
    log_z, node, edge, ranked = brute(em, trans, mask, start, end, constraints, tau)
    opts = {"constraints": constraints, "tau": tau}
    args, se = (em, trans, mask), {"start": start, "end": end}
    # float32 DP vs float64 enumeration of the same inputs: the absolute error of a float32 score
    # grows with its magnitude (ulp of ~3e4 is 2e-3), so does that of exp(score - log Z).
    atol = 1e-5 if scale == 1.0 else 5e-3

    close(crf.log_partition(*args, **se, **opts), log_z, atol=10 * atol)
    got_node, got_edge = crf.marginals(*args, **se, **opts)
    close(got_node, node, atol=atol)
    close(got_edge, edge, atol=atol)
    for k in (1, 2, 3, min(num_labels ** max(lengths), 64) + 3):  # last: more than exist
        check_kbest(*crf.kbest(*args, k, **se, **opts), ranked, mask, k, 10 * atol)
    paths, best = crf.viterbi(*args, **se, **opts)
    close(best, torch.stack([r[0][0] for r in ranked]), atol=10 * atol)
    assert (paths.masked_fill(mask, 0) == 0).all()
    close(crf.path_score(*args[:2], paths, mask, **se, **opts), best.double(), atol=10 * atol)
    tags = torch.randint(0, num_labels, mask.shape, generator=gen).masked_fill(~mask, -100)
    expected = []
    for b, (ref_scores, ref_seqs) in enumerate(ranked):
        hit = (ref_seqs == tags[b, : int(mask[b].sum())]).all(1).nonzero()[0, 0]
        expected.append(ref_scores[hit])
    close(crf.path_score(*args[:2], tags, mask, **se, **opts), torch.stack(expected), atol=10 * atol)


@pytest.mark.parametrize("num_labels,constrained,tau", [(2, False, 1.0), (3, True, 0.5), (4, False, 2.0)])
def test_maxent_matches_brute_force(num_labels, constrained, tau):
    gen = torch.Generator().manual_seed(num_labels)
    em, _, mask, _, _ = make_batch(gen, [4, 1, 3], num_labels, 3.0, False, False)
    constraints = bio_constraints() if constrained else None
    log_probs = (em.double() / tau).log_softmax(-1).masked_fill(~mask[..., None], 0.0)
    zeros = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    _, node, edge, _ = brute(log_probs, zeros, mask, None, None, None, 1.0)
    _, _, _, ranked = brute(log_probs, zeros, mask, None, None, constraints, 1.0)

    close(crf.maxent_log_probs(em, mask, tau=tau), log_probs, atol=1e-5)
    got_node, got_edge = crf.maxent_marginals(em, mask, tau=tau)
    close(got_node, node, atol=1e-6)
    close(got_edge, edge, atol=1e-6)
    for k in (1, 3, num_labels ** 4 + 2):
        check_kbest(*crf.maxent_kbest(em, mask, k, constraints=constraints, tau=tau),
                    ranked, mask, k)
    tags = torch.randint(0, num_labels, mask.shape, generator=gen)
    tags[0, :2] = torch.tensor([0, 2 % num_labels])  # O then I-X: forbidden under BIO
    expected = []
    for b, (ref_scores, ref_seqs) in enumerate(ranked):
        hit = (ref_seqs == tags[b, : int(mask[b].sum())]).all(1).nonzero()[0, 0]
        expected.append(ref_scores[hit])
    got = crf.maxent_path_score(em, tags, mask, constraints=constraints, tau=tau)
    close(got, torch.stack(expected))
    assert (got[0] == NEG_INF) == constrained


def test_padding_never_changes_results():
    gen = torch.Generator().manual_seed(7)
    em, trans, mask, start, end = make_batch(gen, [3, 7, 5], 4, 2.0, True, True)
    em = torch.cat([em, torch.full_like(em[:, :2], 1e4)], 1)  # two extra all-padding columns
    mask = torch.cat([mask, torch.zeros_like(mask[:, :2])], 1)
    batch = (em, trans, mask, start, end)
    alone = (em[:1, :3], trans[:1], mask[:1, :3], start[:1], end)
    torch.testing.assert_close(crf.log_partition(*batch)[:1], crf.log_partition(*alone))
    node, edge = crf.marginals(*batch)
    assert node.shape == (3, 9, 4) and edge.shape == (3, 8, 4, 4)
    for got, ref in zip((node, edge), crf.marginals(*alone)):
        torch.testing.assert_close(got[:1, :ref.shape[1]], ref)
        assert (got[0, ref.shape[1]:] == 0).all()
    paths, best = crf.viterbi(*batch)
    ref_paths, ref_best = crf.viterbi(*alone)
    assert paths.shape == (3, 9) and torch.equal(paths[:1, :3], ref_paths) and (paths[0, 3:] == 0).all()
    torch.testing.assert_close(best[:1], ref_best)
    paths, scores = crf.kbest(*batch[:3], 4, *batch[3:])
    ref_paths, ref_scores = crf.kbest(*alone[:3], 4, *alone[3:])
    assert paths.shape == (3, 4, 9) and torch.equal(paths[:1, :, :3], ref_paths)
    torch.testing.assert_close(scores[:1], ref_scores)
    paths, scores = crf.maxent_kbest(em, mask, 4)
    ref_paths, ref_scores = crf.maxent_kbest(em[:1, :3], mask[:1, :3], 4)
    assert paths.shape == (3, 4, 9) and torch.equal(paths[:1, :, :3], ref_paths)
    torch.testing.assert_close(scores[:1], ref_scores)


def test_low_precision_inputs_run_in_float32():
    gen = torch.Generator().manual_seed(3)
    em, trans, mask, _, _ = make_batch(gen, [4, 2], 3, 2.0, False, False)
    for dtype in (torch.float16, torch.bfloat16):
        low = (em.to(dtype), trans.to(dtype), mask)
        same = (low[0].float(), low[1].float(), mask)
        assert crf.log_partition(*low).dtype == torch.float32
        torch.testing.assert_close(crf.log_partition(*low), crf.log_partition(*same))
        for got, want in zip(crf.marginals(*low), crf.marginals(*same)):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want)
        for fn in (crf.viterbi, lambda *a: crf.kbest(*a, 3)):
            (paths, scores), (want_paths, want_scores) = fn(*low), fn(*same)
            assert scores.dtype == torch.float32 and torch.equal(paths, want_paths)
            torch.testing.assert_close(scores, want_scores)
        assert crf.maxent_marginals(low[0], mask)[0].dtype == torch.float32


def test_gradients_finite_with_constraints():
    gen = torch.Generator().manual_seed(5)
    em, trans, mask, start, end = make_batch(gen, [5, 2, 4], 3, 1.0, False, True)
    leaves = [t.requires_grad_() for t in (em.masked_fill(~mask[..., None], 0), trans, start, end)]
    em32, trans32, start32, end32 = leaves
    log_z = crf.log_partition(em32, trans32, mask, start32, end32, constraints=bio_constraints())
    (grad_em,) = torch.autograd.grad(log_z.sum(), em32, retain_graph=True)
    log_z.sum().backward()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()
    node, edge = crf.marginals(em32.detach(), trans32.detach(), mask, start32.detach(), end32.detach(),
                               constraints=bio_constraints())
    torch.testing.assert_close(grad_em, node)  # d log Z / d emissions = node marginals
    assert (trans32.grad[0, 2] == 0).all() and (start32.grad[:, 2] == 0).all()
    for leaf in leaves:
        leaf.grad = None
    node, edge = crf.marginals(em32, trans32, mask, start32, end32, constraints=bio_constraints())
    (node.log1p().sum() + edge.pow(2).sum()).backward()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()


def test_sentence_without_allowed_path():
    """Constraints that forbid every path of sentence 1: -inf score, zero marginals, 0 paths."""
    em = torch.randn(2, 3, 3, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    allowed = torch.eye(3, dtype=torch.bool)  # only y_{i+1} = y_i
    constraints = Constraints(allowed, torch.tensor([True, False, False]),
                              torch.tensor([True, True, True]))
    end_forbids = torch.zeros(2, 3)
    end_forbids[1, 0] = NEG_INF  # every path is 0, 0, ... but sentence 1 may not end on 0
    trans = torch.zeros(3, 3)
    log_z = crf.log_partition(em, trans, mask, None, end_forbids, constraints=constraints)
    assert torch.isfinite(log_z[0]) and log_z[1] == NEG_INF
    log_z[0].backward()
    assert torch.isfinite(em.grad).all() and (em.grad[1] == 0).all()
    node, edge = crf.marginals(em, trans, mask, None, end_forbids, constraints=constraints)
    assert (node[1] == 0).all() and (edge[1] == 0).all() and torch.isfinite(node).all()
    paths, best = crf.viterbi(em, trans, mask, None, end_forbids, constraints=constraints)
    assert best[1] == NEG_INF and (paths[1] == 0).all() and (paths[0] == 0).all()
    paths, scores = crf.kbest(em, trans, mask, 3, None, end_forbids, constraints=constraints)
    assert (scores[1] == NEG_INF).all() and (scores[0, 1:] == NEG_INF).all() and (paths == 0).all()


def test_logsumexp_all_neg_inf_is_safe():
    x = torch.tensor([[NEG_INF, NEG_INF], [0.0, NEG_INF], [1.0, 2.0]], requires_grad=True)
    out = crf.logsumexp(x, 1)
    assert out[0] == NEG_INF and out[1] == 0.0
    out[1:].sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.2689414, 0.7310586]]))


def test_marginals_under_inference_mode_and_node_edge_agree():
    gen = torch.Generator().manual_seed(11)
    em, trans, mask, start, end = make_batch(gen, [6, 3, 1], 5, 2.0, True, True)
    args = (em, trans, mask, start, end)
    constraints = random_constraints(gen, 5)
    with torch.inference_mode():
        node, edge = crf.marginals(*args, constraints=constraints)
    pair = mask[:, 1:, None]
    torch.testing.assert_close(edge.sum(3), node[:, :-1] * pair)
    torch.testing.assert_close(edge.sum(2), node[:, 1:])
    with torch.no_grad():
        torch.testing.assert_close(crf.marginals(*args)[0].sum(2), mask.float())
    nodes_only = crf.marginals(*args, constraints=constraints, edges=False)
    assert nodes_only[1] is None and torch.equal(nodes_only[0], node)
    log_node = crf.log_marginals(*args, edges=False)
    assert log_node[1] is None
    torch.testing.assert_close(log_node[0], crf.log_marginals(*args)[0])
    node_fb, edge_fb, log_z = crf.forward_backward(*args, constraints=constraints)
    torch.testing.assert_close(log_z, crf.log_partition(*args, constraints=constraints))
    torch.testing.assert_close(node_fb.exp(), node)
    torch.testing.assert_close(edge_fb.exp(), edge)
    maxent = crf.maxent_marginals(em, mask, edges=False)
    assert maxent[1] is None and torch.equal(maxent[0], crf.maxent_marginals(em, mask)[0])


def test_kbest_exact_under_ties():
    """Integer potentials (and all-zero ones) make many sequences tie: the score multiset must
    still be the enumeration's top k, with distinct paths."""
    gen = torch.Generator().manual_seed(13)
    for scale in (0.0, 1.0):
        em = torch.randint(0, 2, (3, 5, 3), generator=gen).float() * scale
        trans = torch.randint(-1, 2, (3, 3), generator=gen).float() * scale
        mask = torch.arange(5)[None, :] < torch.tensor([5, 4, 2])[:, None]
        for constraints in (None, bio_constraints()):
            _, _, _, ranked = brute(em, trans, mask, None, None, constraints, 1.0)
            for k in (2, 7, 40):
                check_kbest(*crf.kbest(em, trans, mask, k, constraints=constraints), ranked, mask, k)
                check_kbest(*crf.maxent_kbest(em, mask, k, constraints=constraints),
                            brute(em.log_softmax(-1), torch.zeros(3, 3), mask, None, None,
                                  constraints, 1.0)[3], mask, k)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), num_labels=st.sampled_from([5, 9, 37]), k=st.integers(2, 12),
       integer=st.booleans())
def test_kbest_consistent_at_larger_sizes(seed, num_labels, k, integer):
    """Beyond brute force: top k is a prefix of top 2k, best = Viterbi, paths rescore and differ."""
    gen = torch.Generator().manual_seed(seed)
    em, trans, mask, start, end = make_batch(gen, [9, 3, 6], num_labels, 2.0, seed % 2 == 0, True)
    if integer:
        em, trans, start, end = em.round(), trans.round(), start.round(), end.round()
    args = (em, trans, mask, start, end)
    paths, scores = crf.kbest(*args[:3], k, *args[3:])
    _, more = crf.kbest(*args[:3], 2 * k, *args[3:])
    torch.testing.assert_close(scores, more[:, :k])
    torch.testing.assert_close(scores[:, 0], crf.viterbi(*args)[1])
    assert (scores[:, :-1] >= scores[:, 1:]).all()

    def rows(x):
        return x.repeat_interleave(k, 0)

    rescored = crf.path_score(rows(em), rows(trans) if trans.dim() == 3 else trans,
                              paths.flatten(0, 1), rows(mask), rows(start), end)
    torch.testing.assert_close(rescored.view(-1, k), scores)
    for b in range(3):
        assert len({tuple(path) for path in paths[b].tolist()}) == k
