"""An adapter of another kind as the LoRA it equals: exact, then (optionally) truncated.

LoHa's ΔW = s·(w1_a·w1_b) ⊙ (w2_a·w2_b) is the rank-r² product s·B·A of the row-wise
Khatri–Rao products of its factors (``kinds.loha.lora_factors``), and LoKr's s·(W1 ⊗ W2) with
W = U·V on each side is s·(U1 ⊗ U2)·(V1 ⊗ V2) (``kinds.lokr.lora_factors``), so either converts
to a LoRA with no approximation: every module's B (with s folded in) and A in fp64, where
the products of two fp32 values are exact, at scaling 1 (``lowrank.scaling_one_config``).
Every factor-space operation (resize, rebalance, combine, diff, spectrum) then applies, and
``rank`` / ``energy`` / ``sv_ratio`` truncate right here with resize's rules, from the factors.

What the file cannot say is asked of the base: a plain-form LoHa module is (out, in'), which is
a Linear's weight or a convolution's flattened (C·k columns), and a CP core (r, r, k, 1) belongs
to a Conv1d or to a Conv2d with a (k, 1) kernel.  PEFT's LoRA keeps a convolution's factors as
convolutions (lora_A (R, C, *k), lora_B (out, R, 1[, 1])), so with ``base`` (a checkpoint) each
module takes its layer's layout; without it plain-form modules are written as Linear LoRA and
the report says so, and a (k, 1) kernel is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..adapter import Adapter
from ..devices import resolve_device
from ..errors import ArgumentError, TensorError, UnsupportedError
from ..io.recipe import step, with_step
from ..kinds import loha, lokr
from ..kinds.lora import LoraConfig
from ..linalg import select_rank
from .lowrank import scaling_one_config
from .resizing import ModuleResize, ResizeReport, _rule, resize

PREFIX = "base_model.model."
DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
FACTORS = {"LOHA": loha.lora_factors, "LOKR": lokr.lora_factors}  # kind -> (B, A) with ΔW = scaling·B·A exactly
CONVERTIBLE = tuple(FACTORS)


@dataclass
class ToLora:
    """What ``to_lora`` did: the source kind, each module's exact rank, the modules written as
    a Linear's LoRA for want of a base, and, when truncated, resize's report."""

    source_kind: str
    ranks: dict[str, int]
    dtype: str
    assumed_linear: list[str] = field(default_factory=list)
    truncated: ResizeReport | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source_kind": self.source_kind, "exact_ranks": self.ranks, "dtype": self.dtype,
                               "assumed_linear": self.assumed_linear}
        if self.truncated is not None:
            out["truncated"] = {"rule": self.truncated.rule, "energy_kept": self.truncated.energy_kept,
                                "modules": {m.name: {"rank": m.rank_after, "energy_kept": (m.kept / m.energy) if m.energy else 1.0}
                                            for m in self.truncated.modules}}
        return out


def _base_shapes(base: str | Path | None) -> tuple[dict[str, tuple[int, ...]] | None, list[tuple[str, Path]]]:
    """The base checkpoint's weight shapes (headers only) and its paths, which the result
    records as inputs (``save`` then never writes over, into or around them)."""
    if base is None:
        return None, []
    from ..checkpoint import open_checkpoint
    from ..io.outputs import checkpoint_inputs

    ckpt = open_checkpoint(base)
    return {key: tuple(ckpt.info(key).shape) for key in ckpt.keys()}, checkpoint_inputs(ckpt)


def _lora_config(cfg: Any, ranks: dict[str, int]) -> LoraConfig:
    template = LoraConfig(target_modules=cfg.target_modules, exclude_modules=cfg.exclude_modules,
                          modules_to_save=cfg.modules_to_save, layers_to_transform=cfg.layers_to_transform,
                          layers_pattern=cfg.layers_pattern, base_model_name_or_path=cfg.base_model_name_or_path,
                          task_type=cfg.task_type)
    return scaling_one_config(template, ranks, lora_bias=False)


def to_lora(adapter: Adapter, *, rank: int | None = None, energy: float | None = None, sv_ratio: float | None = None,
            base: str | Path | None = None, dtype: str | None = None, device: Any = "cpu",
            strict_layout: bool = True) -> tuple[Adapter, ToLora]:
    """The LoRA adapter whose every ΔW equals ``adapter``'s (see the module doc).

    Args:
        rank / energy / sv_ratio: at most one; truncate the exact LoRA with ``resize``'s rule
            (the best rank-k approximation of each ΔW, from the factors).
        base: a checkpoint of the base model (only its headers are read): each module's layer
            decides a convolution's layout.
        dtype: the factors' dtype: ``F64`` (the default without truncation: exact), ``F32``
            (the default with it), ``BF16`` or ``F16``.
        device: where the products (and a truncation's SVDs) run.
        strict_layout: refuse a (k, 1) kernel without ``base`` (False: take it as a Conv2d's,
            for uses that compare ΔW as matrices and write nothing, such as ``diff``).

    Raises:
        UnsupportedError: ``not-supported`` for a kind without an exact LoRA form (naming it),
            and for a CP core (r, r, k, 1) without ``base``.
        TensorError: ``base-shape-mismatch`` for a module whose base weight does not fit.
        ArgumentError: ``argument-invalid`` for two truncation rules or an unknown dtype.
    """
    if adapter.peft_type not in CONVERTIBLE:
        raise UnsupportedError(f"{adapter.peft_type} adapters have no exact LoRA form here", path=adapter.source,
                               key="peft_type", expected=" | ".join(CONVERTIBLE), actual=adapter.peft_type)
    rules = [name for name, v in (("rank", rank), ("energy", energy), ("sv_ratio", sv_ratio)) if v is not None]
    if len(rules) > 1:
        raise ArgumentError("give at most one of rank, energy, sv_ratio", key="rank", expected="one rule", actual=rules)
    dtype = dtype or ("F32" if rules else "F64")
    if dtype not in DTYPES:
        raise ArgumentError("an output dtype of the factors", key="dtype", expected=" | ".join(DTYPES), actual=dtype)
    dev = resolve_device(device)
    shapes, base_inputs = _base_shapes(base)
    tensors: dict[str, torch.Tensor] = {k: adapter.tensors[k] for k in adapter.tensors if adapter.kind.parse_key(k) is None}
    ranks: dict[str, int] = {}
    report = ToLora(adapter.peft_type, ranks, dtype)
    fast = adapter.peft_type == "LOKR" and bool(rules)  # truncated from the Kronecker SVD, no big QR
    records: list[ModuleResize] = []
    if rules:
        _rule(adapter, rank, energy, sv_ratio)  # the rule's value checked before any work
    for name, view in adapter.modules.items():
        if fast:
            B, A, record = _kron_truncated(adapter, name, dev, rank, energy, sv_ratio)
            records.append(record)
        else:
            B, A = FACTORS[adapter.peft_type](adapter, name, device=dev)
            B = B * view.scaling  # scaling 1 in the LoRA form (one fp64 rounding)
        want = shapes.get(f"{name}.weight") if shapes is not None else None
        if shapes is not None and want is None:
            raise TensorError(f"the base has no weight for `{name}`", code="base-shape-mismatch", path=Path(base),
                              key=f"{name}.weight", expected="a tensor", actual="absent")
        B, A = _layout(adapter, name, view, B, A, want, report, strict_layout)
        ranks[name] = B.shape[1]
        tensors[f"{PREFIX}{name}.lora_A.weight"] = A.to(DTYPES[dtype]).cpu().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = B.to(DTYPES[dtype]).cpu().contiguous()
    if fast:
        report.ranks = {r.name: r.rank_before for r in records}
        report.truncated = ResizeReport(tuple(records), _rule(adapter, rank, energy, sv_ratio))
    result = Adapter.from_tensors(_lora_config(adapter.config, ranks), tensors)
    result = with_step(result, adapter, step("to_lora", source_kind=adapter.peft_type, dtype=dtype, rank=rank if fast else None,
                                               energy=energy if fast else None, sv_ratio=sv_ratio if fast else None))
    result = replace(result, inputs=tuple(dict.fromkeys([*result.inputs, *((r, str(p)) for r, p in base_inputs)])))
    if rules and not fast:
        result, report.truncated = resize(result, rank=rank, energy=energy, sv_ratio=sv_ratio, device=device)
    return result, report


def _kron_truncated(adapter: Adapter, name: str, device: torch.device, rank: int | None, energy: float | None,
                    sv_ratio: float | None) -> tuple[torch.Tensor, torch.Tensor, ModuleResize]:
    """A LoKr module's best rank-k LoRA factors (balanced, scaling folded in; A shaped as
    ``lokr.lora_factors`` shapes it) and its record, from ``lokr.kron_svd``."""
    svd, kernel = lokr.kron_svd(adapter, name, device=device)
    k = select_rank(svd.S, rank=rank, energy=energy, sv_ratio=sv_ratio)
    B, A = svd.factors(k)
    if kernel:
        A = A.reshape(k, -1, *kernel)
    sq = svd.S.square()
    R, width = svd.rank, B.shape[0] + A[0].numel()
    record = ModuleResize(name, R, k, float(sq.sum()), float(sq[:k].sum()), float(sq[k:].sum()) ** 0.5, R * width, k * width)
    return B, A, record


def _layout(adapter: Adapter, name: str, view: Any, B: torch.Tensor, A: torch.Tensor, want: tuple[int, ...] | None,
            report: ToLora, strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_B, lora_A) in the layout PEFT's LoRA gives the module's layer."""
    R = B.shape[1]
    if A.dim() > 2:  # a convolution's factors: A (R, C, k1, k2)
        k1, k2 = A.shape[2:]
        if want is None and k2 == 1 and strict:
            raise UnsupportedError(f"`{name}`: a ({k1}, 1) kernel belongs to a Conv1d or to a Conv2d, and the file does not say "
                                   "which: pass the base checkpoint", path=adapter.source, key=name, expected="base", actual=None)
        conv = want if want is not None else (B.shape[0], A.shape[1], k1, k2)
        if len(conv) not in (3, 4) or conv[0] != B.shape[0] or conv[1] != A.shape[1] or conv[2:] not in ((k1, k2), (k1,) if k2 == 1 else ()):
            raise _mismatch(adapter, name, (B.shape[0], A.shape[1], k1, k2), want)
        return B.reshape(B.shape[0], R, *([1] * (len(conv) - 2))), A.reshape(R, *conv[1:])
    if want is None:
        report.assumed_linear.append(name)
        return B, A
    if want[0] != B.shape[0] or int(torch.tensor(want[1:]).prod()) != A.shape[1]:
        raise _mismatch(adapter, name, (B.shape[0], A.shape[1]), want)
    if len(want) == 2:
        return B, A
    return B.reshape(B.shape[0], R, *([1] * (len(want) - 2))), A.reshape(R, *want[1:])


def _mismatch(adapter: Adapter, name: str, have: tuple[int, ...], want: tuple[int, ...] | None) -> TensorError:
    return TensorError(f"the base weight of `{name}` does not fit the adapter's factors", code="base-shape-mismatch",
                       path=adapter.source, key=f"{name}.weight", expected=have, actual=want)
