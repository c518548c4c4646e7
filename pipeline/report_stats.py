"""The arithmetic of ``structkd report`` over seeds (no I/O): which runs make up each method's row,
their mean and sample standard deviation, and the gap closed with its standard deviation."""
from __future__ import annotations

import statistics
from collections.abc import Sequence


def method_runs(methods: Sequence[str], seeds: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """(method, its runs) in ``methods`` order, then the ``seeds`` methods not in ``methods``.

    A method with a ``seeds`` entry is those runs; one without is its own single run. A run that
    is a seed of some method gets no row of its own (``methods`` may list ``none-s14`` as a distill
    run while ``seeds: {none: [none, none-s14]}`` folds it into ``none``)."""
    seed_of = {run: method for method, runs in seeds.items() for run in runs}
    out = []
    for method in [*methods, *(m for m in seeds if m not in methods)]:
        if method in seeds:
            out.append((method, list(seeds[method])))
        elif method not in seed_of:
            out.append((method, [method]))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1); the deviation is None for one value."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or None when any value is missing (a figure not measured for every seed)."""
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def gap_closed(scores: Sequence[float], baseline: float, teacher: float
               ) -> tuple[float | None, float | None]:
    """(gap closed, its standard deviation) of a method's seed ``scores``: the gap closed is
    (mean score - baseline) / (teacher - baseline), ``baseline`` being the mean over the baseline's
    seeds; its deviation is the sample standard deviation over seeds of
    (score - baseline) / (teacher - baseline) (None for one seed). (None, None) when the teacher
    and the baseline score the same."""
    gap = teacher - baseline
    if abs(gap) <= 1e-12:
        return None, None
    return mean_std([(score - baseline) / gap for score in scores])
