"""Choosing a rank from singular values: a fixed rank, a fraction of the energy
(‖ΔW‖²_F = Σσ²) to keep, or a ratio to the largest singular value."""

from __future__ import annotations

import torch


def energy_kept(S: torch.Tensor, k: int) -> float:
    """Σ_{i<k} σᵢ² / Σ σᵢ², the fraction of ‖ΔW‖²_F a rank-k truncation keeps (1 for a zero ΔW)."""
    sq = S.double().square()
    total = float(sq.sum())
    return 1.0 if total == 0 else float(sq[:k].sum()) / total


def select_rank(S: torch.Tensor, *, rank: int | None = None, energy: float | None = None, sv_ratio: float | None = None) -> int:
    """The rank to keep for singular values ``S`` (descending), by exactly one rule:

    * ``rank``: that rank (it may exceed ``len(S)``: the factors are then zero-padded);
    * ``energy`` in (0, 1]: the smallest k whose truncation keeps at least that fraction of Σσ²
      (at least 1);
    * ``sv_ratio`` ≥ 1: every σ with σ·sv_ratio ≥ σ₀, as kohya's ``resize_lora.py`` (at least 1).

    Raises:
        ValueError: not exactly one rule, or a value out of range.
    """
    given = [name for name, v in (("rank", rank), ("energy", energy), ("sv_ratio", sv_ratio)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of rank, energy, sv_ratio (got {', '.join(given) or 'none'})")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        return rank
    s = S.double()
    if energy is not None:
        if not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {energy!r}")
        sq = s.square()
        total = float(sq.sum())
        if total == 0:
            return 1
        cum = torch.cumsum(sq, 0) / total
        # the first k whose kept fraction reaches the target (tolerating the sum's rounding)
        k = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1
        return max(1, min(k, int(s.shape[0])))
    if not sv_ratio >= 1:
        raise ValueError(f"sv_ratio must be at least 1, got {sv_ratio!r}")
    if s.numel() == 0 or float(s[0]) == 0:
        return 1
    return max(1, int((s * sv_ratio >= s[0]).sum()))
