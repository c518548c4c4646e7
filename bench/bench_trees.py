"""Non-projective tree decoding: ``DependencyCRF.argmax`` now vs before the batched fast path.

    python bench/bench_trees.py [--threads 1] [--sentences 32] [--lengths 20,40] [--repeats 3]
                                [--old 40c3097^]

"before" is ``pipeline/structs/mst.py`` at ``--old`` (read with ``git show`` into a temporary file
and imported with importlib), run the way the old argmax ran: log Z of the batch, then one
``kbest_trees(k=1)`` per sentence. "after" is ``DependencyCRF(scores, lengths).argmax()`` of this
tree. Scores: ``random`` (N(0, 1) arcs: greedy heads are rarely a tree, most sentences need
Chu-Liu-Edmonds) and ``peaked`` (a random gold tree whose arcs get +5, plus N(0, 1) noise, like a
trained parser: greedy heads are usually the tree). Sentences per second of CPU time
(time.process_time), single root, a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.structs import DependencyCRF  # noqa: E402


def old_module(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:pipeline/structs/mst.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "mst_old.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("mst_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scores(kind: str, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    s = torch.randn(batch, length + 1, length + 1, generator=gen)
    if kind == "peaked":
        for b in range(batch):
            order = (torch.randperm(length, generator=gen) + 1).tolist()
            heads = [0] * (length + 1)
            for i, d in enumerate(order):
                heads[d] = 0 if i == 0 else order[int(torch.randint(i, (1,), generator=gen))]
            s[b, heads[1:], torch.arange(1, length + 1)] += 5.0
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=32)
    parser.add_argument("--lengths", default="20,40")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old", default="40c3097^", help="git revision of the 'before' mst.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    old = old_module(args.old)
    gen = torch.Generator().manual_seed(0)
    print("| scores | words | before sent/s | after sent/s | speed-up |\n|---|---|---|---|---|")
    for kind in ("random", "peaked"):
        for length in (int(x) for x in args.lengths.split(",")):
            s = scores(kind, args.sentences, length, gen)
            lengths = torch.full((args.sentences,), length)
            started = time.process_time()
            for _ in range(args.repeats):
                crf = DependencyCRF(s, lengths)
                crf.log_partition
                arcs = crf.parts["arc"].double().numpy()
                for b in range(args.sentences):
                    old.kbest_trees(arcs[b], 1, True)
            before = args.sentences * args.repeats / (time.process_time() - started)
            started = time.process_time()
            for _ in range(args.repeats):
                DependencyCRF(s, lengths).argmax()
            after = args.sentences * args.repeats / (time.process_time() - started)
            print(f"| {kind} | {length} | {before:.0f} | {after:.0f} | {after / before:.1f}x |")


if __name__ == "__main__":
    main()
