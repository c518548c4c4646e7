"""The dynamic programs of pipeline.crf on 3,000- and 20,000-word sentences against float64 references.

Realistic scales (T=9, emissions ~ N(0, 3), transitions ~ N(0, 1)), with and without BIO constraints,
each long sentence batched with a shorter one so that padding is exercised. Without renormalization a
3,000-word sentence had node sums off by 3e-2 and log Z off by 5e-2 (float32 log alphas ~1e4).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline import crf
from pipeline.crf import Constraints

NEG_INF = float("-inf")
T = 9  # O, then B-X / I-X for four types


def bio_constraints() -> Constraints:
    """I-X (odd labels 2, 4, ...) only after B-X or I-X of its own type, never first."""
    allowed = torch.ones(T, T, dtype=torch.bool)
    start = torch.ones(T, dtype=torch.bool)
    for inside in range(2, T, 2):
        allowed[:, inside] = False
        allowed[inside - 1, inside] = allowed[inside, inside] = True
        start[inside] = False
    return Constraints(allowed, start, torch.ones(T, dtype=torch.bool))


def batch(length: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([length, length // 3 + 1])
    mask = torch.arange(length)[None, :] < lengths[:, None]
    em = torch.randn(2, length, T, generator=gen) * 3
    trans, start, end = torch.randn(T, T, generator=gen), torch.randn(T, generator=gen), torch.randn(T, generator=gen)
    return em, trans, mask, start, end


def factors64(trans, start, end, constraints):
    trans, start, end = trans.double(), start.double(), end.double()
    if constraints is not None:
        trans = trans.masked_fill(~constraints.transitions, NEG_INF)
        start = start.masked_fill(~constraints.start, NEG_INF)
        end = end.masked_fill(~constraints.end, NEG_INF)
    return trans, start, end


def reference(em, trans, start, end, constraints):
    """float64 log Z, node marginals [n, T] and Viterbi score of one sentence (em [n, T]), plain loops."""
    em = em.double()
    trans, start, end = factors64(trans, start, end, constraints)
    alphas, best = [start + em[0]], start + em[0]
    for i in range(1, len(em)):
        alphas.append(torch.logsumexp(alphas[-1][:, None] + trans, 0) + em[i])
        best = (best[:, None] + trans).amax(0) + em[i]
    log_z = torch.logsumexp(alphas[-1] + end, 0)
    betas = [end]
    for i in range(len(em) - 1, 0, -1):
        betas.append(torch.logsumexp(trans + (em[i] + betas[-1])[None, :], 1))
    node = (torch.stack(alphas) + torch.stack(betas[::-1]) - log_z).exp()
    return log_z, node, (best + end).max()


def score64(em, trans, start, end, path, constraints):
    """float64 score of one path (em [n, T], path [n])."""
    trans, start, end = factors64(trans, start, end, constraints)
    n = len(path)
    return (em.double()[torch.arange(n), path].sum() + trans[path[:-1], path[1:]].sum()
            + start[path[0]] + end[path[-1]])


@pytest.mark.parametrize("length", [3000, 20000])
@pytest.mark.parametrize("constrained", [False, True])
def test_long_sentences_match_float64(length, constrained):
    em, trans, mask, start, end = batch(length, length + constrained)
    constraints = bio_constraints() if constrained else None
    args, opts = (em, trans, mask, start, end), {"constraints": constraints}
    log_z = crf.log_partition(*args, **opts)
    node, edge = crf.marginals(*args, **opts)
    real = mask.float()
    assert ((node.sum(2) - real).abs() <= 1e-4).all()
    pair = mask[:, 1:, None].float()
    assert ((edge.sum(3) - node[:, :-1] * pair).abs() <= 1e-4).all()
    assert ((edge.sum(2) - node[:, 1:]).abs() <= 1e-4).all()
    viterbi_paths, viterbi = crf.viterbi(*args, **opts)
    paths, scores = crf.kbest(*args[:3], 4, *args[3:], **opts)
    logprob = scores - log_z[:, None]
    assert (logprob <= 0).all() and torch.isfinite(logprob).all()
    for b in range(2):
        n = int(mask[b].sum())
        ref_z, ref_node, ref_best = reference(em[b, :n], trans, start, end, constraints)
        assert abs(float(log_z[b]) - float(ref_z)) <= 1e-6 * abs(float(ref_z))
        assert (node[b, :n].double() - ref_node).abs().max() <= 1e-4
        assert abs(float(viterbi[b]) - float(ref_best)) <= 1e-6 * abs(float(ref_best))
        assert abs(float(logprob[b, 0]) - float(viterbi[b] - log_z[b])) <= 1e-6 * abs(float(ref_z))
        for path, score in zip(paths[b], scores[b]):  # each score is its path's, to float32 rounding
            ref = score64(em[b, :n], trans, start, end, path[:n], constraints)
            assert abs(float(score) - float(ref)) <= 1e-6 * abs(float(ref))
        own = crf.path_score(em[b:b + 1], trans, viterbi_paths[b:b + 1], mask[b:b + 1], start, end, **opts)
        ref = score64(em[b, :n], trans, start, end, viterbi_paths[b, :n], constraints)
        assert float(own) == pytest.approx(float(ref), rel=1e-7)


@pytest.mark.parametrize("length", [3000, 20000])
def test_long_sentence_through_annotate_verify_and_distill(tmp_path, length):
    """One very long sentence among short ones: annotate writes it (its own write-time check passes),
    store verify accepts it, and distill trains on it with a finite loss."""
    import random

    from pipeline.config import DecoderConfig, DistillConfig, EncoderConfig, KDConfig, ModelConfig, OptimConfig
    from store import verify_store
    from store.build import build_store
    from store.feed import distill
    from tests.store_fakes import WORDS, FakeTeacher, config

    cfg = config(tmp_path / "data", sizes={"train": 6, "dev": 3}, k=2, shard_size=8, batch_tokens=30000)
    train = Path(cfg.corpora[0].files["train"])
    rng = random.Random(length)
    long = "\n".join(f"{rng.choice(WORDS)} O" for _ in range(length))
    train.write_text(train.read_text().rstrip("\n") + "\n\n" + long + "\n")
    manifest = build_store(cfg, teachers={"en": FakeTeacher()})
    assert manifest["totals"]["rows"] == 10 and verify_store(cfg.out) == []
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=4, hidden=4, char="none", dropout=0.0),
                        DecoderConfig(kind="crf"))
    run = DistillConfig(store=cfg.out, kd=KDConfig(method="structural"), model=model, device="cpu",
                        optim=OptimConfig(epochs=1, lr=1e-2), batch_tokens=30000, out=str(tmp_path / "run"))
    metrics = distill(run, progress=False)
    assert metrics["train_sentences"] == 7 and metrics["steps"] >= 1
