"""Singular value decompositions of adapter deltas.

``factored_svd`` takes ΔW = Σᵢ wᵢ·Bᵢ·Aᵢ as its factors (Bᵢ: m×rᵢ, Aᵢ: rᵢ×n) and returns
its exact thin SVD without forming the m×n matrix: with B = [w₁B₁ | w₂B₂ | ...] and
A = [A₁; A₂; ...] (R = Σrᵢ columns / rows), the reduced QRs B = Q_B·R_B and Aᵀ = Q_A·R_A
give ΔW = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ, so the SVD of the small core R_B·R_Aᵀ (at most R×R,
computed in fp64) rotated by Q_B and Q_A is the SVD of ΔW.  Cost O((m + n)·R²) instead
of the dense SVD's O(m·n·min(m, n)): for two r=16 adapters on a 4096×4096 module, a
32×32 SVD instead of a 4096×4096 one.

``dense_svd`` and ``randomized_svd`` are for deltas that only exist densely (after
elementwise operations such as TIES or DARE).  All of them compute in fp32 at least (fp64
inputs stay fp64) on the device asked for, and return fp32 (or fp64) factors there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..devices import resolve_device


@dataclass(frozen=True)
class LowRankSVD:
    """M = U · diag(S) · Vh, singular values in descending order.

    Attributes:
        U: m×k with orthonormal columns.
        S: k non-negative singular values, largest first.
        Vh: k×n with orthonormal rows.
    """

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @property
    def rank(self) -> int:
        """k, the number of singular triplets held (zeros included)."""
        return int(self.S.shape[0])

    def truncate(self, k: int) -> LowRankSVD:
        """The first ``k`` triplets (the best rank-k approximation, Eckart–Young)."""
        return LowRankSVD(self.U[:, :k], self.S[:k], self.Vh[:k])

    def factors(self, k: int | None = None, *, balanced: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) with B·A = the rank-``k`` truncation (default: all k), padded with zero
        columns / rows when ``k`` exceeds the triplets held (a lossless higher rank).

        ``balanced``: B = U·√S, A = √S·Vh (both factors carry the same norm; canonical);
        otherwise B = U·S, A = Vh (PEFT's ``add_weighted_adapter`` convention).
        """
        k = self.rank if k is None else k
        t = self.truncate(min(k, self.rank))
        if balanced:
            root = t.S.sqrt()
            B, A = t.U * root, root[:, None] * t.Vh
        else:
            B, A = t.U * t.S, t.Vh
        if k > t.rank:
            B = torch.cat([B, B.new_zeros(B.shape[0], k - t.rank)], dim=1)
            A = torch.cat([A, A.new_zeros(k - t.rank, A.shape[1])], dim=0)
        return B, A

    def dense(self, k: int | None = None) -> torch.Tensor:
        """U·diag(S)·Vh (truncated to ``k``): for tests and small matrices."""
        t = self if k is None else self.truncate(k)
        return (t.U * t.S) @ t.Vh


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def factored_svd(
    terms: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float] | None = None, *, device: Any = None,
) -> LowRankSVD:
    """The exact thin SVD of Σᵢ wᵢ·Bᵢ·Aᵢ from its factors (see the module doc).

    Args:
        terms: (Bᵢ, Aᵢ) pairs, Bᵢ of shape m×rᵢ and Aᵢ of shape rᵢ×n, any float dtype.
        weights: wᵢ (default 1 each); folded into Bᵢ.
        device: where to compute (default: the first B's device).

    Returns:
        k = min(m, n, Σrᵢ) triplets, exact zeros included (the rank of the sum may be lower).

    Raises:
        ValueError: no terms, mismatched shapes, or a weight count that differs from the terms'.
    """
    if not terms:
        raise ValueError("factored_svd needs at least one (B, A) pair")
    weights = [1.0] * len(terms) if weights is None else list(weights)
    if len(weights) != len(terms):
        raise ValueError(f"{len(weights)} weights for {len(terms)} terms")
    m, n = terms[0][0].shape[0], terms[0][1].shape[1]
    for i, (B, A) in enumerate(terms):
        if B.ndim != 2 or A.ndim != 2 or B.shape[0] != m or A.shape[1] != n or B.shape[1] != A.shape[0]:
            raise ValueError(f"term {i}: B {tuple(B.shape)} and A {tuple(A.shape)} do not make an {m}×{n} product")
    dev = resolve_device(device) or terms[0][0].device
    ct = _compute_dtype(*(t for pair in terms for t in pair))
    B = torch.cat([b.to(device=dev, dtype=ct) * w for (b, _), w in zip(terms, weights)], dim=1)
    A = torch.cat([a.to(device=dev, dtype=ct) for _, a in terms], dim=0)
    Qb, Rb = torch.linalg.qr(B)  # m×p, p×R   (p = min(m, R))
    Qa, Ra = torch.linalg.qr(A.T)  # n×q, q×R   (q = min(n, R))
    core = Rb.double() @ Ra.double().T  # p×q, small: fp64 costs nothing here
    Uc, S, Vhc = torch.linalg.svd(core, full_matrices=False)
    U = Qb @ Uc.to(ct)
    Vh = Vhc.to(ct) @ Qa.T
    return LowRankSVD(U, S.to(ct), Vh)


def dense_svd(M: torch.Tensor, *, device: Any = None) -> LowRankSVD:
    """The thin SVD of a dense matrix, in fp32 (fp64 stays fp64) on ``device``."""
    dev = resolve_device(device) or M.device
    U, S, Vh = torch.linalg.svd(M.to(device=dev, dtype=_compute_dtype(M)), full_matrices=False)
    return LowRankSVD(U, S, Vh)


def randomized_svd(
    M: torch.Tensor, rank: int, *, oversample: int = 10, power_iters: int = 4,
    generator: torch.Generator | None = None, device: Any = None,
) -> LowRankSVD:
    """The leading ``rank`` singular triplets of a dense matrix by randomized range finding
    (Halko, Martinsson & Tropp 2011, algorithm 4.4: subspace iteration with re-orthonormalised
    power steps), in fp32 (fp64 stays fp64) on ``device``.

    Accurate when the spectrum decays past ``rank``; each power iteration sharpens a flat
    one.  Exact (to rounding) when M's rank is at most ``rank + oversample``.  ``generator``
    makes it reproducible (a CPU generator works for any device).
    """
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    dev = resolve_device(device) or M.device
    ct = _compute_dtype(M)
    X = M.to(device=dev, dtype=ct)
    m, n = X.shape
    k = min(rank + oversample, m, n)
    omega = torch.randn(n, k, generator=generator, dtype=ct).to(dev)
    Q, _ = torch.linalg.qr(X @ omega)
    for _ in range(power_iters):
        Q, _ = torch.linalg.qr(X.T @ Q)
        Q, _ = torch.linalg.qr(X @ Q)
    small = Q.T @ X  # k×n
    Ub, S, Vh = torch.linalg.svd(small, full_matrices=False)
    keep = min(rank, S.shape[0])
    return LowRankSVD((Q @ Ub)[:, :keep], S[:keep], Vh[:keep])
