"""Distributing a parameter budget over a LoRA adapter's modules: ``rebalance``.

A uniform ``resize`` gives every module the same rank; modules whose ΔW are large or whose
spectra decay slowly then lose more than the others.  ``rebalance`` spends a total budget of
factor parameters where it keeps the most total energy Σ kept σ² (the energy of ΔW =
scaling·B·A, so the total squared Frobenius error Σ‖ΔW − ΔW'‖²_F is what it minimises).

A rank unit of module i costs cᵢ = mᵢ + nᵢ parameters (a column of B and a row of A) and
keeps σᵢⱼ², so ``allocate`` fills the budget greedily by σ² / c — the best ratio first, each
module keeping at least one rank.  Greedy by ratio is not always optimal (a knapsack), so it
also fills the budget starting from the uniform allocation at the same budget (capped at each
module's own rank, where padding keeps nothing) and keeps whichever keeps more energy: the
result never keeps less than a uniform ``resize`` with the same parameter count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..adapter import Adapter
from ..devices import resolve_device
from ..errors import ArgumentError
from ..io.recipe import step, with_step
from ..progress import progress
from .lowrank import _lora_only
from .resizing import ResizeReport, decompose, finish, truncated


def _kept(energies: Sequence[list[float]], ranks: Sequence[int]) -> float:
    return sum(sum(e[:k]) for e, k in zip(energies, ranks))


def _fill(energies: Sequence[list[float]], costs: Sequence[int], start: Sequence[int], budget: int) -> list[int]:
    """``start`` ranks grown greedily by σ² / cost while the budget lasts (non-zero σ only)."""
    ranks = list(start)
    left = budget - sum(k * c for k, c in zip(ranks, costs))
    steps = sorted(
        (-e[j] / c, i, j)
        for i, (e, c) in enumerate(zip(energies, costs)) for j in range(ranks[i], len(e)) if e[j] > 0
    )
    for _, i, j in steps:
        if j == ranks[i] and costs[i] <= left:
            ranks[i] += 1
            left -= costs[i]
    return ranks


def allocate(spectra: Sequence[torch.Tensor], costs: Sequence[int], budget: int) -> tuple[list[int], str]:
    """Ranks (≥ 1 each) with Σ rankᵢ·costᵢ ≤ ``budget`` keeping the most Σ kept σ² that greedy
    filling from one rank each or from the uniform allocation finds; and which start won
    (``greedy`` or ``uniform``).  ``spectra``: each module's singular values, descending.

    Raises:
        ValueError: a budget below one rank per module (Σ costᵢ).
    """
    floor = sum(costs)
    if budget < floor:
        raise ValueError(f"a budget of {budget} parameters is below one rank per module ({floor})")
    energies = [s.double().square().tolist() for s in spectra]
    uniform = budget // floor if floor else 0
    starts = {"greedy": [1] * len(costs), "uniform": [max(1, min(uniform, len(e))) for e in energies]}
    found = {name: _fill(energies, costs, start, budget) for name, start in starts.items()}
    best = max(found, key=lambda name: (_kept(energies, found[name]), -sum(k * c for k, c in zip(found[name], costs)), name == "greedy"))
    return found[best], best


def rebalance(adapter: Adapter, *, budget: int | None = None, rank: int | None = None, balanced: bool = True,
              device: Any = "cpu") -> tuple[Adapter, ResizeReport]:
    """Per-module ranks that keep the most total energy within a parameter budget.

    Args:
        adapter: a LoRA adapter (not DoRA).
        budget: the total number of factor parameters, Σ rankᵢ·(outᵢ + inᵢ·kernelᵢ); at least
            one rank per module.
        rank: an average rank instead: budget = rank × Σ(outᵢ + inᵢ·kernelᵢ), what a uniform
            ``resize(rank=rank)`` spends.
        balanced: canonical factors B = U·√Σ, A = √Σ·Vᵀ (else B = U·Σ, A = Vᵀ).
        device: where the fp32 math runs.

    Returns:
        (the adapter, a :class:`ResizeReport` whose rule names the budget and the winning start, ``budget=N, greedy``).
        Its ``energy_kept`` is never below a uniform ``resize`` at the same budget, and its
        ``params_after`` never above the budget.  Every module's SVD is held until the ranks are
        chosen (about the adapter's size in fp32).

    Raises:
        ArgumentError: ``argument-invalid`` for not exactly one of budget/rank, a value that is
            not a positive integer, or a budget below one rank per module.
        UnsupportedError: ``not-supported`` for a non-LoRA or DoRA adapter.
    """
    _lora_only(adapter, "rebalance")
    given = {k: v for k, v in (("budget", budget), ("rank", rank)) if v is not None}
    if len(given) != 1:
        raise ArgumentError(f"give exactly one of budget, rank (got {', '.join(given) or 'none'})", path=adapter.source,
                            key="budget/rank", expected="one of them", actual=given or None)
    (key, value), = given.items()
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArgumentError(f"{key} must be a positive integer", path=adapter.source, key=key, expected="> 0", actual=value)
    dev = resolve_device(device)
    parts = [decompose(adapter, name, device=dev, what="rebalance")
             for name in progress(adapter.modules, desc="rebalance", total=len(adapter.modules))]
    costs = [f.shape[0] + f.shape[1] for f, _ in parts]
    total = budget if budget is not None else rank * sum(costs)  # type: ignore[operator]
    try:
        ranks, start = allocate([svd.S for _, svd in parts], costs, total)
    except ValueError as exc:
        raise ArgumentError(str(exc), path=adapter.source, key=key, expected=f">= {sum(costs)} parameters", actual=total) from None
    tensors, records = {}, []
    for (f, svd), k in zip(parts, ranks):
        new, record = truncated(f, svd, k, balanced=balanced)
        tensors.update(new)
        records.append(record)
    result, report = finish(adapter, tensors, records, f"budget={total}, {start}")
    return with_step(result, adapter, step("rebalance", budget=budget, rank=rank, balanced=balanced)), report
