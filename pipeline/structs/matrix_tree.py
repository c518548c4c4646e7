"""log Z over non-projective dependency trees by the matrix-tree theorem (Koo et al. 2007).

Positions 0..L (0 = the root), ``arc[b, h, d]`` the log-potential of h -> d; arcs into the root,
self loops and arcs touching padding must be -inf (``DependencyCRF.parts`` makes them so). With
A[h, d] = exp(arc[h, d]) over the n words, the Laplacian is

    M[h, d] = -A[h, d] (h != d),   M[d, d] = sum_{h word} A[h, d]  (+ A[0, d] when multi-root)

and Z = det(M) (Tutte's theorem with the root's row and column removed). Single root (Koo et al.
2007, section 3.3): the first row of M is replaced by the root weights A[0, 1..n], so each term of
the determinant picks exactly one root child. Each word has exactly one head, so subtracting a
per-dependent constant c_d from column d changes log Z by -c_d: with c_d = max_h arc[h, d] every
entry is <= 1 and log Z = log det(M(arc - c)) + sum_d c_d. Padded words get an identity row and
column (determinant unchanged).

The determinant runs in float64, measured against float64 on 32 sentences with scores N(0, sigma^2):
in float32 the arc marginals are off by 3e-7 / 9e-5 / 8.0
(sigma = 2 / 10 / 20, 40 words) and 3e-4 at sigma = 10 with 100 words, and at sigma = 20 a
determinant comes out negative; peaked scores are what trained parsers and low temperatures give.
In float64 every column of marginals sums to 1 within 2.2e-7 in all those cases (1e-15 at sigma 2).
The cost is nothing that shows: log Z + marginals of 32 x 40 words take 3 ms on one thread.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.potentials import NEG_INF


def log_partition(arc: Tensor, lengths: Tensor, single_root: bool = True) -> Tensor:
    """log Z [B] (in ``arc``'s dtype, computed in float64; differentiable: its gradient with
    respect to ``arc`` is the arc marginals). -inf for a sentence without any tree; raises
    ValueError when rounding makes the determinant negative (never hidden)."""
    x = arc.double()
    batch, size, _ = x.shape
    shift = x.detach().amax(1, keepdim=True)
    shift = shift.masked_fill(shift == NEG_INF, 0.0)
    weights = (x - shift).exp()
    words, root = weights[:, 1:, 1:], weights[:, 0, 1:]
    real = torch.arange(size - 1, device=x.device) < lengths.unsqueeze(1)
    incoming = words.sum(1) if single_root else words.sum(1) + root
    laplacian = torch.diag_embed(incoming + (~real).double()) - words
    if single_root:
        laplacian = torch.cat([root.unsqueeze(1), laplacian[:, 1:]], 1)
    sign, log_abs = torch.linalg.slogdet(laplacian)
    if bool((sign < 0).any()):
        row = int((sign < 0).nonzero()[0])
        raise ValueError(f"batch row {row}: the matrix-tree determinant came out negative (rounding on "
                         f"an ill-conditioned Laplacian); log Z is not representable")
    log_z = torch.where(sign > 0, log_abs, torch.full_like(log_abs, NEG_INF))
    return (log_z + shift[:, 0, 1:].masked_fill(~real, 0.0).sum(1)).to(arc.dtype)
