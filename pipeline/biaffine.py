"""Scorer modules of the deep biaffine parser (Dozat & Manning 2017) and its sibling scorer.

Positions are 0..L (0 = the root), ``x`` [B, L+1, H] the word vectors with the root vector in front.
Every output is indexed head first, as the dependency structures want (``scores[b, h, d]``: h -> d).

    MLP               Linear -> LeakyReLU(0.1) -> dropout (Dozat & Manning's MLP layers)
    Biaffine          s[b, h, d, o] = [dep_d; 1]^T W_o [head_h; 1]   (``head_bias=False``: W_o's last
                      column dropped, s = dep_d^T U_o head_h + u_o^T head_h, the arc scorer: the
                      head bias term, no dependent-only term, which cannot change a softmax over heads)
    SiblingScorer     sib[b, h, d, s], second-order sibling scores (see the class)

Biaffine weights start at zero (Dozat & Manning; SuPar does the same): the first forward pass gives
every head the same score, and the gradient reaches the MLPs from the second step on.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def with_one(x: Tensor) -> Tensor:
    """[..., H] -> [..., H + 1] with a constant 1 appended (the affine bias input)."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)


class MLP(nn.Sequential):
    """Linear -> LeakyReLU(0.1) -> dropout."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__(nn.Linear(in_dim, out_dim), nn.LeakyReLU(0.1), nn.Dropout(dropout))


class Biaffine(nn.Module):
    """``channels`` biaffine maps of (dependent, head) vector pairs: forward(dep [B, N, I], head
    [B, N, I]) -> [B, N(h), N(d), channels]."""

    def __init__(self, dim: int, channels: int, head_bias: bool = True):
        super().__init__()
        self.head_bias = head_bias
        self.weight = nn.Parameter(torch.zeros(channels, dim + 1, dim + int(head_bias)))

    def forward(self, dep: Tensor, head: Tensor) -> Tensor:
        head = with_one(head) if self.head_bias else head
        return torch.einsum("bdi,oij,bhj->bhdo", with_one(dep), self.weight, head)


class SiblingScorer(nn.Module):
    """Sibling scores of the second-order parser: sib[b, h, d, s], the score of h -> d and h -> s
    both in the parse (d != s, every dependent pair of a head, not just adjacent siblings, as in
    Wang & Tu 2020's mean field).

    Three MLPs give each position a vector in its head, dependent and sibling role (u, v, w, of
    size ``dim``); the trilinear score is the decomposed (rank-``rank``) form of Wang, Huang & Tu
    (2019, "Second-Order Semantic Dependency Parsing with End-to-End Neural Networks"):

        f[h, d, s] = sum_k ([u_h; 1] P)_k ([v_d; 1] Q)_k ([w_s; 1] R)_k

    a triaffine tensor of CP rank ``rank`` (P, Q, R: [dim + 1, rank]). The output is symmetrized,
    sib[h, d, s] = f[h, d, s] + f[h, s, d], with 0 on the diagonal d = s, so that it is the sibling
    factor of one energy over unordered dependent pairs and the parallel updates of
    ``pipeline.structs.second_order.mean_field_heads`` are that energy's exact mean-field updates.
    Memory: [B, L+1, L+1, L+1] float32 (32 sentences of 60 words: 29 MB, plus the mean field's
    copies).
    """

    def __init__(self, in_dim: int, dim: int, rank: int, dropout: float):
        super().__init__()
        self.head, self.dep, self.sib = (MLP(in_dim, dim, dropout) for _ in range(3))
        # P, Q random, R zero: sib starts at 0 (like the biaffine scorers) and every factor gets a
        # gradient (all three at zero would be a saddle point that never moves)
        project = torch.randn(3, dim + 1, rank) / (dim + 1) ** 0.5
        project[2] = 0.0
        self.project = nn.Parameter(project)

    def forward(self, x: Tensor) -> Tensor:
        p, q, r = (with_one(mlp(x)) @ w for mlp, w in zip((self.head, self.dep, self.sib), self.project))
        f = torch.einsum("bhk,bdk,bsk->bhds", p, q, r)
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        return (f + f.transpose(2, 3)).masked_fill(eye, 0.0)
