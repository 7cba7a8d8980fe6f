"""Changing the rank of a LoRA adapter's modules: ``resize`` (one rule for every module).

Each module's ΔW = scaling·B·A is decomposed exactly from its factors (``factored_svd``: QRs of
B and Aᵀ and an r×r core, never the dense out×in matrix) and truncated to the rank a rule
picks (``select_rank``: a fixed rank, a fraction of the energy ‖ΔW‖²_F = Σσ², or a ratio to
the largest singular value).  By Eckart–Young the truncation is the best rank-k approximation
of ΔW in the Frobenius norm; at a rank at or above the module's own it is ΔW itself (the
factors zero-padded to the rank asked for), up to the storage dtype's rounding.

The result has scaling 1 in every module (see ``ops.lowrank``): the old scaling is folded into
the new factors and ``lora_B.bias`` (stored as bias·scaling), ``lora_alpha = r``, differing
ranks as anchored ``rank_pattern``/``alpha_pattern`` keys, rsLoRA off.  Tensors that are not
LoRA factors (``modules_to_save``, trained biases) are carried unchanged.  Math in fp32 (fp64
for fp64 factors) on ``device``; results stored in the input's dtype.

``rebalance`` (``ops.rebalancing``) shares the decomposition and the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..adapter import Adapter
from ..devices import resolve_device
from ..errors import ArgumentError
from ..io.recipe import step, with_step
from ..kinds.lora import LoraConfig
from ..linalg import LowRankSVD, factored_svd, select_rank
from ..progress import progress
from ..threads import factor_work, intra_op, matmul_work
from .lowrank import ModuleFactors, _lora_only, module_factors, module_tensors, scaling_one_config


@dataclass(frozen=True)
class ModuleResize:
    """What a rank change did to one module.

    Attributes:
        name: the module.
        rank_before / rank_after: its rank in the input and in the result.
        energy: ‖ΔW‖²_F = Σσ² of the input module (scaling included).
        kept: Σ of the kept σ²; ``energy_kept`` is kept / energy (1 for a zero ΔW).
        error: ‖ΔW − ΔW'‖_F = sqrt(Σ dropped σ²), before the storage dtype's rounding.
        params_before / params_after: numbers of factor parameters, rank × (out + in·kernel).
    """

    name: str
    rank_before: int
    rank_after: int
    energy: float
    kept: float
    error: float
    params_before: int
    params_after: int

    @property
    def energy_kept(self) -> float:
        return 1.0 if self.energy == 0 else self.kept / self.energy


@dataclass(frozen=True)
class ResizeReport:
    """Per-module records and totals of a ``resize`` or ``rebalance``.

    ``rule`` says what chose the ranks (``rank=16``, ``energy=0.9``, ``budget=... (greedy)``).
    """

    modules: tuple[ModuleResize, ...]
    rule: str

    @property
    def params_before(self) -> int:
        return sum(m.params_before for m in self.modules)

    @property
    def params_after(self) -> int:
        return sum(m.params_after for m in self.modules)

    @property
    def energy(self) -> float:
        return sum(m.energy for m in self.modules)

    @property
    def energy_kept(self) -> float:
        """Σ kept σ² / Σ σ² over all modules (1 for an adapter whose ΔW are all zero)."""
        total = self.energy
        return 1.0 if total == 0 else sum(m.kept for m in self.modules) / total

    @property
    def error(self) -> float:
        """sqrt(Σ ‖ΔW − ΔW'‖²_F) over all modules."""
        return sum(m.error**2 for m in self.modules) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "params_before": self.params_before, "params_after": self.params_after,
            "energy_kept": self.energy_kept, "error": self.error,
            "modules": [{"name": m.name, "rank_before": m.rank_before, "rank_after": m.rank_after, "energy_kept": m.energy_kept,
                         "error": m.error, "params_before": m.params_before, "params_after": m.params_after} for m in self.modules],
        }


def decompose(adapter: Adapter, module: str, *, device: Any, what: str) -> tuple[ModuleFactors, LowRankSVD]:
    """The module's factors and the exact SVD of its ΔW = scaling·B·A (B m×r, A r×n)."""
    f = module_factors(adapter, module, device=device, what=what)
    with intra_op(factor_work([f.B.shape, f.A.T.shape])):
        return f, factored_svd([(f.B, f.A)], [f.scaling], device=device)


def truncated(f: ModuleFactors, svd: LowRankSVD, k: int, *, balanced: bool) -> tuple[dict[str, torch.Tensor], ModuleResize]:
    """The module's tensors at rank ``k`` (scaling 1; zero-padded past the SVD's rank) and its record."""
    with intra_op(matmul_work(f.shape[0] + f.shape[1], svd.rank, k)):
        B, A = svd.factors(k, balanced=balanced)
    bias = None if f.bias is None else f.bias * f.scaling
    sq = svd.S.double().square()
    energy, kept = float(sq.sum()), float(sq[:k].sum())
    width = f.shape[0] + f.shape[1]
    record = ModuleResize(f.name, f.rank, k, energy, kept, float(sq[k:].sum()) ** 0.5, f.rank * width, k * width)
    return module_tensors(f, B, A, bias), record


def rebuilt(adapter: Adapter, tensors: Mapping[str, torch.Tensor], ranks: Mapping[str, int]) -> Adapter:
    """The output adapter: the new module tensors, every tensor that is not a LoRA factor
    carried as it is, and the scaling-1 config for ``ranks``."""
    parse = adapter.kind.parse_key
    out = {key: adapter.tensors[key] for key in adapter.tensors if parse(key) is None}
    out.update(tensors)
    cfg: LoraConfig = adapter.config  # type: ignore[assignment]
    return Adapter.from_tensors(scaling_one_config(cfg, ranks, lora_bias=cfg.lora_bias), out)


_RANGES = {"rank": "a positive integer", "energy": "0 < energy <= 1", "sv_ratio": "sv_ratio >= 1"}


def _rule(adapter: Adapter, rank: int | None, energy: float | None, sv_ratio: float | None) -> str:
    """``name=value`` of the one rule given; raises ArgumentError otherwise (select_rank's checks)."""
    given = {k: v for k, v in (("rank", rank), ("energy", energy), ("sv_ratio", sv_ratio)) if v is not None}
    try:
        select_rank(torch.ones(1), rank=rank, energy=energy, sv_ratio=sv_ratio)
    except ValueError as exc:
        if len(given) != 1:
            raise ArgumentError(str(exc), path=adapter.source, key="rank/energy/sv_ratio", expected="exactly one", actual=given or None) from None
        (key, value), = given.items()
        raise ArgumentError(str(exc).split(", got")[0], path=adapter.source, key=key, expected=_RANGES[key], actual=value) from None
    (name, value), = given.items()
    return f"{name}={value}"


def resize(adapter: Adapter, rank: int | None = None, energy: float | None = None, sv_ratio: float | None = None, *,
           balanced: bool = True, device: Any = "cpu") -> tuple[Adapter, ResizeReport]:
    """Every module of a LoRA adapter at the rank one rule picks for it.

    Args:
        adapter: a LoRA adapter (rsLoRA, rank/alpha patterns, lora_bias, Conv1D, embeddings and
            convolutions all work; not DoRA).
        rank: this rank for every module; at or above a module's own rank the module is
            unchanged (zero-padded to ``rank``).
        energy: in (0, 1]: per module, the smallest rank keeping that fraction of ‖ΔW‖²_F.
        sv_ratio: ≥ 1: per module, the singular values within that ratio of the largest
            (kohya's ``resize_lora.py`` rule).
        balanced: canonical factors B = U·√Σ, A = √Σ·Vᵀ (else B = U·Σ, A = Vᵀ).
            ``resize(adapter, rank=r)`` at the adapter's rank r is the canonical-form rewrite.
        device: where the fp32 math runs.

    Returns:
        (the resized adapter, a :class:`ResizeReport`).

    Raises:
        ArgumentError: ``argument-invalid`` for not exactly one rule, or a value out of range.
        UnsupportedError: ``not-supported`` for a non-LoRA or DoRA adapter;
            ``device-unavailable`` for an unusable device.
    """
    _lora_only(adapter, "resize")
    rule = _rule(adapter, rank, energy, sv_ratio)
    dev = resolve_device(device)
    tensors: dict[str, torch.Tensor] = {}
    records = []
    for name in progress(adapter.modules, desc="resize", total=len(adapter.modules)):
        f, svd = decompose(adapter, name, device=dev, what="resize")
        k = select_rank(svd.S, rank=rank, energy=energy, sv_ratio=sv_ratio)
        new, record = truncated(f, svd, k, balanced=balanced)
        tensors.update(new)
        records.append(record)
    result, report = finish(adapter, tensors, records, rule)
    return with_step(result, adapter, step("resize", rank=rank, energy=energy, sv_ratio=sv_ratio, balanced=balanced)), report


def finish(adapter: Adapter, tensors: Mapping[str, torch.Tensor], records: Iterable[ModuleResize], rule: str) -> tuple[Adapter, ResizeReport]:
    """The output adapter (``rebuilt``) and the report of ``records``."""
    records = tuple(records)
    return rebuilt(adapter, tensors, {r.name: r.rank_after for r in records}), ResizeReport(records, rule)
