"""The batched non-projective argmax (``mst.best_trees`` / ``DependencyCRF.argmax``) and the
iterative Chu-Liu-Edmonds against brute-force enumeration and the recursive original."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.structs import DependencyCRF, mst
from tests import enumerated as E

ROOT = Path(__file__).resolve().parents[1]


def _batch(seed, lengths, integer=False, holes=0.0):
    gen = torch.Generator().manual_seed(seed)
    size = max(lengths) + 2
    x = torch.randn(len(lengths), size, size, generator=gen) * 2
    x = x.round() if integer else x
    x = x.masked_fill(torch.rand(x.shape, generator=gen) < holes, float("-inf"))
    for b, n in enumerate(lengths):
        x[b, n + 1:] = torch.randn(size - n - 1, size, generator=gen) * 50
        x[b, :, n + 1:] = float("nan")
    return x


def _check(scores, lengths, single_root):
    crf = DependencyCRF(scores, torch.tensor(lengths), single_root=single_root)
    heads, found = mst.best_trees(crf.parts["arc"], crf.word_lengths, single_root)
    for b, n in enumerate(lengths):
        o = E.trees(scores[b, :n + 1, :n + 1], single_root=single_root)
        best = o.scores.max().item()
        assert (heads[b, n + 1:] == 0).all() and heads[b, 0] == 0
        if best == float("-inf"):
            assert not found[b]
            continue
        assert found[b]
        assert E._is_tree(heads[b, :n + 1].tolist(), False, single_root)
        got = mst.tree_score(E._arc_potentials(scores[b, :n + 1, :n + 1], 1.0).numpy(), heads[b, :n + 1].numpy())
        assert abs(got - best) < 1e-5
    return heads, found


@pytest.mark.parametrize("single_root", [True, False])
@pytest.mark.parametrize("integer", [False, True])
def test_batched_argmax_matches_enumeration(single_root, integer):
    for seed in range(6):
        _check(_batch(seed, [5, 1, 3, 4, 2, 5], integer, holes=0.15 * (seed % 2)), [5, 1, 3, 4, 2, 5], single_root)


def test_argmax_is_a_tree_and_raises_without_one():
    s = _batch(3, [4, 5, 2])
    heads = DependencyCRF(s, torch.tensor([4, 5, 2])).argmax()
    assert mst.is_tree(heads, torch.tensor([4, 5, 2]), True, False).all()
    s[1, 0] = float("-inf")
    with pytest.raises(ValueError, match="batch row 1: no dependency tree"):
        DependencyCRF(s, torch.tensor([4, 5, 2])).argmax()


def _greedy_case(kind):
    """[1, 6, 6] scores of 4 words whose greedy heads are a tree, a cycle 1 <-> 2, or two root children."""
    s = torch.zeros(1, 6, 6)
    heads = {"tree": [0, 0, 1, 2, 3], "cycle": [0, 2, 1, 2, 3], "roots": [0, 0, 0, 2, 3]}[kind]
    for d in range(1, 5):
        s[0, heads[d], d] = 5.0
    return s


@pytest.mark.parametrize("kind", ["tree", "cycle", "roots"])
def test_greedy_tree_cycle_and_multiple_roots(kind):
    s = _greedy_case(kind)
    heads, _ = _check(s, [4], True)
    if kind == "tree":
        assert heads[0, :5].tolist() == [0, 0, 1, 2, 3]
    if kind == "roots":
        assert int((heads[0, 1:5] == 0).sum()) == 1
        _check(s, [4], False)
        assert mst.best_trees(s, torch.tensor([4]), False)[0][0, :5].tolist() == [0, 0, 0, 2, 3]


def _old_mst():
    source = subprocess.run(["git", "show", "HEAD~0:pipeline/structs/mst.py"], cwd=ROOT, capture_output=True, text=True)
    text = source.stdout if "def _find_cycle(heads: np.ndarray) -> list[int]" in source.stdout else None
    if text is None:
        log = subprocess.run(["git", "log", "--format=%H", "--", "pipeline/structs/mst.py"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
        for rev in log:
            text = subprocess.run(["git", "show", f"{rev}:pipeline/structs/mst.py"], cwd=ROOT,
                                  capture_output=True, text=True).stdout
            if "def _find_cycle(heads: np.ndarray) -> list[int]" in text:
                break
        else:
            pytest.skip("the recursive mst.py is not in this checkout's history")
    path = ROOT / ".pytest_cache" / "mst_recursive.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("mst_recursive", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_iterative_cle_scores_as_the_recursive_one():
    old = _old_mst()
    rng = np.random.default_rng(0)
    for t in range(60):
        n = int(rng.integers(30, 61))
        s = rng.normal(size=(n + 1, n + 1))
        s = np.round(s * 2) if t % 3 == 0 else s
        for single_root in (True, False):
            want = old.best_tree(s, single_root)
            for got in (mst.best_tree(s, single_root), mst._cle_tree(s, single_root)):
                assert abs(mst.tree_score(s, got) - old.tree_score(s, want)) < 1e-9
                assert bool(mst.is_tree(torch.from_numpy(got)[None], torch.tensor([n]), single_root, False))


def test_kbest_one_is_the_argmax():
    s = _batch(9, [5, 3, 4])
    crf = DependencyCRF(s, torch.tensor([5, 3, 4]))
    paths, _ = crf.kbest(1)
    assert torch.equal(crf.score(paths[:, 0]), crf.score(crf.argmax()))
    assert sys.modules["pipeline.structs.mst"] is mst
