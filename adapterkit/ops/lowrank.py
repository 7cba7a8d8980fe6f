"""LoRA modules as plain matrix factors, and LoRA adapters built back from factors.

Every LoRA module's ΔW is, up to a reshape or transpose that depends only on its layer
type, ``scaling · B·A`` with B of shape m×r and A of shape r×n:

  Linear / Conv1D   B = lora_B (out, r)             A = lora_A (r, in)
  Embedding         B = lora_embedding_B (dim, r)   A = lora_embedding_A (r, vocab)
  ConvNd            B = lora_B (out, r, 1, ...)     A = lora_A (r, in, *k) flattened to (r, in·k)

so combining, resizing and pruning work on (B, A) pairs whatever the layer, and write the
result back in the module's own layout (``module_tensors``).

Adapters these operations build have scaling 1 in every module: ``lora_alpha = r`` and,
for each module whose rank differs from ``r``, a ``rank_pattern`` and an equal
``alpha_pattern`` entry whose key is anchored to the full module name (``^`` + the
escaped name: PEFT's ``(.*\\.)?(key)$`` then matches that module only).  PEFT computes
alpha / r = 1 for every module, and so does a server that reads only ``lora_alpha`` and
``r`` (vLLM).  ``use_rslora`` is off (the scaling is folded into B), ``use_dora`` off.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..adapter import Adapter
from ..arrays import is_fp64, to_float
from ..errors import UnsupportedError
from ..kinds.features import LOWRANK, require
from ..kinds.lora import PREFIX, LoraConfig, LoraModule

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModuleFactors:
    """One LoRA module in factor form: ΔW (as a matrix) = scaling · B·A.

    Attributes:
        name: the module's name (PEFT's, without ``base_model.model.``).
        layer_type: ``linear``, ``embedding``, ``conv1d``, ``conv2d`` or ``conv3d``.
        B: m×r, fp32 (fp64 if stored so), on the device asked for.
        A: r×n, same dtype and device.
        scaling: the module's PEFT scaling (alpha / r, or alpha / √r under rsLoRA).
        bias: ``lora_B.bias`` (m,) or None; PEFT adds ``bias · scaling`` to the output.
        a_tail: lora_A's shape after the rank (``(in,)``, ``(vocab,)``, ``(in, *k)``).
        b_tail: lora_B's shape after the rank (``()``, or ``(1, ...)`` for convolutions).
        dtype: the stored dtype of the factors (results are stored in it).
    """

    name: str
    layer_type: str
    B: torch.Tensor
    A: torch.Tensor
    scaling: float
    bias: torch.Tensor | None
    a_tail: tuple[int, ...]
    b_tail: tuple[int, ...]
    dtype: torch.dtype

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(m, n) of the ΔW matrix."""
        return int(self.B.shape[0]), int(self.A.shape[1])


def _lora_only(adapter: Adapter, what: str) -> LoraConfig:
    if adapter.peft_type != "LORA":
        hint = (f"; a {adapter.peft_type} adapter is a LoRA exactly: convert it first (adapterkit convert SRC OUT --to lora)"
                if adapter.peft_type in ("LOHA", "LOKR") else "")
        raise UnsupportedError(f"{what} works on LoRA adapters{hint}", code="not-supported", path=adapter.source,
                               expected="LORA", actual=adapter.peft_type)
    require(adapter, LOWRANK, what=what)
    cfg: LoraConfig = adapter.config  # type: ignore[assignment]
    if cfg.use_dora:
        raise UnsupportedError(
            f"{what} cannot express DoRA: its magnitude vector rescales W + ΔW by a norm that changes with ΔW",
            code="not-supported", path=adapter.source, key="use_dora", expected=False, actual=True,
        )
    return cfg


def module_factors(adapter: Adapter, module: str, *, device: Any = None, what: str = "this operation") -> ModuleFactors:
    """The factor form of one LoRA module (see the module doc).

    Raises:
        UnsupportedError: ``not-supported`` for a non-LoRA or DoRA adapter.
    """
    _lora_only(adapter, what)
    view: LoraModule = adapter.module(module)
    a_raw, b_raw = view.lora_A, view.lora_B
    fp64 = is_fp64(b_raw) or is_fp64(a_raw)
    r = int(a_raw.shape[0])
    A = to_float(a_raw, fp64=fp64, device=device).reshape(r, -1)
    B = to_float(b_raw, fp64=fp64, device=device).reshape(b_raw.shape[0], r) if b_raw.ndim <= 2 or all(d == 1 for d in b_raw.shape[2:]) else None
    if B is None:
        raise UnsupportedError("lora_B with a kernel larger than 1 has no factor form", code="not-supported",
                               path=adapter.source, key=view.keys["lora_B"], expected="kernel 1", actual=tuple(b_raw.shape))
    bias = view.bias
    return ModuleFactors(
        name=module, layer_type=view.layer_type, B=B, A=A, scaling=float(view.scaling),
        bias=None if bias is None else to_float(bias, fp64=fp64, device=device),
        a_tail=tuple(a_raw.shape[1:]), b_tail=tuple(b_raw.shape[2:]), dtype=a_raw.dtype,
    )


def all_factors(adapter: Adapter, *, device: Any = None, what: str = "this operation") -> dict[str, ModuleFactors]:
    """:func:`module_factors` of every module, by name."""
    _lora_only(adapter, what)
    return {m: module_factors(adapter, m, device=device, what=what) for m in adapter.modules}


def module_tensors(f: ModuleFactors, B: torch.Tensor, A: torch.Tensor, bias: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Adapter tensors (PEFT keys, the module's own layout, stored dtype, on the CPU) for new
    factors B (m×k) and A (k×n) of the module ``f`` describes, with scaling 1."""
    k = int(A.shape[0])
    dt = dtype or f.dtype
    a = A.reshape(k, *f.a_tail).to(device="cpu", dtype=dt).contiguous()
    b = B.reshape(B.shape[0], k, *f.b_tail).to(device="cpu", dtype=dt).contiguous()
    base = PREFIX + f.name
    if f.layer_type == "embedding":
        out = {f"{base}.lora_embedding_A": a, f"{base}.lora_embedding_B": b}
    else:
        out = {f"{base}.lora_A.weight": a, f"{base}.lora_B.weight": b}
    if bias is not None:
        out[f"{base}.lora_B.bias"] = bias.to(device="cpu", dtype=dt).contiguous()
    return out


def anchored(module: str) -> str:
    """A rank_pattern / alpha_pattern key that PEFT matches to ``module`` alone."""
    return "^" + re.escape(module)


def scaling_one_config(template: LoraConfig, ranks: Mapping[str, int], *, lora_bias: bool, default_rank: int | None = None,
                       **changes: Any) -> LoraConfig:
    """``template`` with the ranks of ``ranks`` at scaling 1 (see the module doc): ``r`` is
    ``default_rank`` or the most common rank (the larger on a tie), the others anchored
    patterns; rsLoRA and DoRA off; ``changes`` replace further fields."""
    if default_rank is None:
        counts = Counter(ranks.values())
        default_rank = max(counts, key=lambda k: (counts[k], k)) if counts else template.r
    pattern = {anchored(m): k for m, k in sorted(ranks.items()) if k != default_rank}
    return replace(
        template, r=default_rank, lora_alpha=default_rank, rank_pattern=pattern, alpha_pattern=dict(pattern),
        use_rslora=False, use_dora=False, lora_bias=lora_bias, **changes,
    )
