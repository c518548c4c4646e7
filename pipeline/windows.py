"""Sub-word windows of long sentences (no torch: the ONNX runner uses them too).

A sentence of ``n`` sub-words is cut into windows of ``width`` whose neighbours share ``stride``
sub-words; each sub-word takes its vector from the window in which it is most central.
"""
from __future__ import annotations


def windows(n: int, width: int, stride: int) -> list[int]:
    """Start offsets of windows of ``width`` sub-words covering ``n``, neighbours sharing ``stride``."""
    if n <= width:
        return [0]
    return list(range(0, n - width, width - stride)) + [n - width]


def most_central(j: int, starts: list[int], width: int) -> int:
    """Index of the window (by start) in which sub-word ``j`` is farthest from both edges."""
    best, best_margin = 0, -1
    for w, s in enumerate(starts):
        if s <= j < s + width:
            margin = min(j - s, s + width - 1 - j)
            if margin > best_margin:
                best, best_margin = w, margin
    return best
