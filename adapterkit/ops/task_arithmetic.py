"""Merging task tensors: task arithmetic, magnitude pruning, TIES and DARE.

Each operator takes same-shape tensors T₁..Tₙ (one per adapter: dense ΔW's, or lora_A's, or
lora_B's) and their weights w₁..wₙ, and returns one tensor, with the definitions of PEFT's
``peft.utils.merge_utils`` (0.22.0), in PEFT's order of operations:

  linear            Σ wᵢ·Tᵢ                                  (task arithmetic)
  magnitude_prune   Σ wᵢ·prune(Tᵢ): keep the int(density·numel) entries of largest |Tᵢ|
  dare_linear       Σ wᵢ·(Tᵢ·maskᵢ)/density, maskᵢ ~ Bernoulli(density) per entry
  ties              magnitude-prune each Tᵢ, elect a sign per entry from the unweighted pruned
                    tensors ("total": sign of Σ Pᵢ; "frequency": sign of Σ sign(Pᵢ); ties to +),
                    then Σ wᵢ·Pᵢ over the entries that agree with it, divided by how many agree
  dare_ties         as ties, with DARE's random pruning and rescaling instead of magnitude pruning

A density of 1 (or more) prunes nothing and draws no random numbers, as in PEFT.  DARE draws
one Bernoulli mask per tensor, in the order given, from ``generator`` (``torch.bernoulli`` on a
tensor filled with the density: the same draws as PEFT's from a global generator in that state).

References: TIES-Merging, Yadav et al. 2023, https://arxiv.org/abs/2306.01708;
DARE, Yu et al. 2023, https://arxiv.org/abs/2311.03099.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

OPERATORS = ("linear", "magnitude_prune", "dare_linear", "ties", "dare_ties")
SIGN_RULES = ("total", "frequency")


def magnitude_prune(t: torch.Tensor, density: float) -> torch.Tensor:
    """``t`` with all but its int(density·numel) largest-magnitude entries set to zero."""
    if density >= 1:
        return t
    keep = torch.zeros_like(t).reshape(-1)
    keep[torch.topk(t.abs().reshape(-1), k=int(density * t.numel()), largest=True).indices] = 1
    return t * keep.reshape(t.shape)


def random_prune(t: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE: each entry kept with probability ``density`` and the kept ones divided by it."""
    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full_like(t, density), generator=generator)
    return t * mask / density


def _weighted(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return stacked * weights.reshape(weights.shape + (1,) * (stacked.dim() - 1))


def _disjoint_merge(pruned: torch.Tensor, weights: torch.Tensor, sign_rule: str) -> torch.Tensor:
    """TIES' sign election and disjoint mean over the stacked pruned tensors."""
    signs = pruned.sign()
    magnitude = pruned.sum(dim=0) if sign_rule == "total" else signs.sum(dim=0)
    agrees = signs == torch.where(magnitude >= 0, 1, -1)
    kept = (_weighted(pruned, weights) * agrees).sum(dim=0)
    return kept / torch.clamp(agrees.sum(dim=0), min=1.0)


def merge_tensors(
    operator: str, tensors: Sequence[torch.Tensor], weights: Sequence[float], *, density: float = 1.0,
    sign_rule: str = "total", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One of :data:`OPERATORS` applied to ``tensors`` (same shape, dtype and device) with
    ``weights`` (see the module doc).  The weights become a tensor of the tensors' dtype first,
    as PEFT does.  Raises ValueError for an unknown operator or sign rule."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; one of {OPERATORS}")
    if sign_rule not in SIGN_RULES:
        raise ValueError(f"unknown sign rule {sign_rule!r}; one of {SIGN_RULES}")
    w = torch.tensor([float(x) for x in weights], dtype=tensors[0].dtype, device=tensors[0].device)
    if operator in ("magnitude_prune", "ties"):
        tensors = [magnitude_prune(t, density) for t in tensors]
    elif operator in ("dare_linear", "dare_ties"):
        tensors = [random_prune(t, density, generator) for t in tensors]
    stacked = torch.stack(list(tensors), dim=0)
    if operator in ("ties", "dare_ties"):
        return _disjoint_merge(stacked, w, sign_rule)
    return _weighted(stacked, w).sum(dim=0)
