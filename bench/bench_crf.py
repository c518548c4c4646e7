"""Benchmark the CRF core (pipeline/crf.py) against torch-struct and pytorch-crf, side by side.

    python bench/bench_crf.py                      # B=32, L in {20, 40, 100}, T in {9, 37}
    python bench/bench_crf.py --threads 1 --clock cpu --lengths 40 --labels 37
    python bench/bench_crf.py --device cuda          # same table on a GPU (wall clock, synchronized)

Prints a markdown table of median milliseconds per call. Every implementation gets the same random
batch (lengths drawn in [L/2, L], one sentence of length L), in the same process. Baselines are
skipped when not importable; a measurement stops after --budget seconds (at least one timed run),
for the very slow ones. On a shared machine use `--threads 1 --clock cpu`: CPU time of a
single-threaded process does not count the time other processes hold the cores (with several
threads, OpenMP barriers make wall-clock time swing by 10-100x under contention).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch

from pipeline import crf
from pipeline.kd.structural import structural_kd

try:
    from torch_struct import LinearChainCRF
except ImportError:
    LinearChainCRF = None
try:
    from torchcrf import CRF as TorchCRF
except ImportError:
    TorchCRF = None


def marginals_by_autograd(emissions, transitions, mask):
    """The alternative to forward-backward: gradients of log Z w.r.t. per-position potentials."""
    with torch.enable_grad():
        em = emissions.detach().requires_grad_()
        batch, length, _ = em.shape
        per_edge = transitions.detach().expand(batch, length - 1, -1, -1).clone().requires_grad_()
        alpha = em[:, 0]
        for i in range(1, length):
            nxt = crf.logsumexp(alpha.unsqueeze(2) + per_edge[:, i - 1], 1) + em[:, i]
            alpha = torch.where(mask[:, i, None], nxt, alpha)
        node, edge = torch.autograd.grad(crf.logsumexp(alpha, 1).sum(), [em, per_edge])
    return node, edge


def inference(fn):
    """Run `fn` under torch.no_grad (all timings except the forward+backward ones)."""
    def run():
        with torch.no_grad():
            return fn()
    return run


def without_native(fn):
    """fn() with the C kernels switched off (pipeline.native: STRUCTKD_NATIVE=0)."""
    os.environ["STRUCTKD_NATIVE"] = "0"
    try:
        return fn()
    finally:
        del os.environ["STRUCTKD_NATIVE"]


def linear_term(node, edge, em, trans):
    """sum of teacher-marginal-weighted student potentials (the structural KD loss minus log Z)."""
    return (node * em).sum() + (edge * trans).sum()


def ours(emissions, transitions, mask, ks, max_elements, teacher, tags):
    fns = {
        "log Z": inference(lambda: crf.log_partition(emissions, transitions, mask)),
        "marginals": inference(lambda: crf.marginals(emissions, transitions, mask)),
        "marginals (autograd alternative)": inference(
            lambda: marginals_by_autograd(emissions, transitions, mask)),
        "Viterbi": inference(lambda: crf.viterbi(emissions, transitions, mask)),
    }
    for k in ks:
        fns[f"k-best k={k}"] = inference(lambda k=k: crf.kbest(emissions, transitions, mask, k))
        if k > 1 and emissions.device.type == "cpu":  # the C beam's fallback, for the record
            fns[f"k-best k={k} (torch beam)"] = inference(
                lambda k=k: without_native(lambda: crf.kbest(emissions, transitions, mask, k)))
    em, trans = emissions.clone().requires_grad_(), transitions.clone().requires_grad_()
    fns["log Z forward+backward"] = lambda: crf.log_partition(em, trans, mask).sum().backward()
    fns["gold NLL forward+backward"] = lambda: (
        crf.log_partition(em, trans, mask) - crf.path_score(em, trans, tags, mask)).sum().backward()
    fns["structural loss forward+backward"] = lambda: structural_kd(
        em, trans, mask, *teacher).sum().backward()
    if emissions.device.type == "cpu":  # log Z in torch (CUDA's kernels), for the record
        for name in ("log Z forward+backward", "gold NLL forward+backward", "structural loss forward+backward"):
            fns[f"{name} (torch)"] = lambda fn=fns[name]: without_native(fn)
    return fns


def torch_struct(emissions, transitions, mask, ks, max_elements, teacher, tags):
    lengths = mask.sum(1)
    batch, length, num_labels = emissions.shape
    # Its k-max semiring scan materialises ~k^2 * B * 2^ceil(log2(L-1))/2 * T^3 floats at once.
    scan = batch * 2 ** (length - 2).bit_length() // 2 * num_labels ** 3

    def dist(em, trans):
        # phi[b, n, c_next, c_prev]; the first emission goes on the first edge.
        pot = em[:, 1:, :, None] + trans.t()
        pot = torch.cat([pot[:, :1] + em[:, :1, None, :], pot[:, 1:]], 1)
        return LinearChainCRF(pot, lengths=lengths)

    fns = {
        "log Z": inference(lambda: dist(emissions, transitions).partition),
        "marginals": inference(lambda: dist(emissions, transitions).marginals),
        "Viterbi": inference(lambda: dist(emissions, transitions).argmax),
    }
    for k in ks:
        if 1 < k and k * k * scan <= max_elements:  # k=1 is its argmax; too big would swap/OOM
            fns[f"k-best k={k}"] = inference(lambda k=k: dist(emissions, transitions).topk(k))
    em, trans = emissions.clone().requires_grad_(), transitions.clone().requires_grad_()
    fns["log Z forward+backward"] = lambda: dist(em, trans).partition.sum().backward()
    node, edge = teacher
    fns["structural loss forward+backward"] = lambda: (
        dist(em, trans).partition.sum() - linear_term(node, edge, em, trans)).backward()
    return fns


def pytorch_crf(emissions, transitions, mask, ks, max_elements, teacher, tags):
    model = TorchCRF(transitions.shape[0], batch_first=True).to(emissions.device)
    with torch.no_grad():
        model.transitions.copy_(transitions)
        model.start_transitions.zero_()
        model.end_transitions.zero_()
    em_t, mask_t = emissions.transpose(0, 1), mask.transpose(0, 1)
    em_grad = emissions.clone().requires_grad_()

    def log_likelihood():  # what its users train with: normalizer and gold score, both learned
        (-model(em_grad, tags, mask)).backward()

    return {
        # _compute_normalizer is pytorch-crf's (private) log Z; its forward adds the gold score.
        "log Z": inference(lambda: model._compute_normalizer(em_t, mask_t)),
        "Viterbi": inference(lambda: model.decode(emissions, mask)),
        "log Z forward+backward": lambda: model._compute_normalizer(
            em_grad.transpose(0, 1), mask_t).sum().backward(),
        # Both loss rows are compared with its log-likelihood, the loss a pytorch-crf user trains.
        "gold NLL forward+backward": log_likelihood,
        "structural loss forward+backward": log_likelihood,
    }


def measure(fn, reps: int, budget: float, clock=time.perf_counter) -> float:
    """Median ms of `reps` consecutive runs after a warm-up, stopping once `budget` s are used.

    A warm-up longer than the budget is kept as the only sample (first-call costs are noise next to
    seconds). Runs of one implementation are consecutive so that a baseline's huge allocations do
    not land inside another's timings.
    """
    start = clock()
    fn()
    spent = clock() - start
    if spent > budget:
        return spent * 1e3
    times = []
    while len(times) < reps and (not times or spent < budget):
        start = clock()
        fn()
        times.append(clock() - start)
        spent += times[-1]
    return statistics.median(times) * 1e3


def fmt(value):
    return "-" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def ratio(other, mine):
    return "-" if other is None or mine is None else f"{other / mine:.1f}x"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 40, 100])
    parser.add_argument("--labels", type=int, nargs="+", default=[9, 37])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per measurement at most")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: wall clock after a sync)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock time, or CPU time of the process (use with --threads 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["torch-struct", "pytorch-crf"],
                        help="baselines to leave out (quick runs)")
    parser.add_argument("--max-struct-elements", type=float, default=1e8,
                        help="skip torch-struct k-best cells whose scan tensor has more floats")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    gen = torch.Generator().manual_seed(args.seed)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    device = torch.device(args.device)
    if device.type == "cuda":  # kernels are asynchronous: time up to their completion
        if args.clock == "cpu":
            parser.error("--clock cpu does not time GPU kernels; use --clock wall with --device cuda")

        def clock():
            torch.cuda.synchronize()
            return time.perf_counter()
    baselines = {"torch-struct": torch_struct if LinearChainCRF else None,
                 "pytorch-crf": pytorch_crf if TorchCRF else None}
    baselines = {name: make for name, make in baselines.items() if name not in args.skip}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{args.clock} clock, {device}; B={args.batch}; median of {args.reps} "
          f"(budget {args.budget:.0f} s per cell); "
          f"missing baselines: {[n for n, b in baselines.items() if b is None] or 'none'}\n")
    print("| L | T | operation | ours ms | torch-struct ms | pytorch-crf ms | torch-struct / ours "
          "| pytorch-crf / ours | ours / our Viterbi |")
    print("|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        for num_labels in args.labels:
            lengths = torch.randint(length // 2, length + 1, (args.batch,), generator=gen)
            lengths[0] = length
            mask = torch.arange(length)[None, :] < lengths[:, None]
            emissions = torch.randn(args.batch, length, num_labels, generator=gen) * 3
            transitions = torch.randn(num_labels, num_labels, generator=gen)
            teacher = crf.marginals(torch.randn(emissions.shape, generator=gen) * 3,
                                    torch.randn(transitions.shape, generator=gen), mask)
            tags = torch.randint(0, num_labels, (args.batch, length), generator=gen)
            mask, emissions, transitions, tags = (x.to(device) for x in (mask, emissions, transitions, tags))
            teacher = tuple(x.to(device) for x in teacher)
            fns = {("ours", op): fn for op, fn in ours(emissions, transitions, mask, args.ks,
                                                      args.max_struct_elements, teacher, tags).items()}
            for lib, make in baselines.items():
                if make is not None:
                    for op, fn in make(emissions, transitions, mask, args.ks,
                                       args.max_struct_elements, teacher, tags).items():
                        fns[(lib, op)] = fn
            ms = {name: measure(fn, args.reps, args.budget, clock) for name, fn in fns.items()}
            viterbi_ms = ms[("ours", "Viterbi")]
            for op in [op for lib, op in fns if lib == "ours"]:
                mine = ms[("ours", op)]
                ts, pc = ms.get(("torch-struct", op)), ms.get(("pytorch-crf", op))
                print(f"| {length} | {num_labels} | {op} | {fmt(mine)} | {fmt(ts)} | {fmt(pc)} | "
                      f"{ratio(ts, mine)} | {ratio(pc, mine)} | {mine / viterbi_ms:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
