"""A quantized checkpoint seen as the dense one it stands for.

``QuantizedView(ckpt, fmt)`` finds the quantized modules of an open
:class:`~adapterkit.checkpoint.Checkpoint` (``fmt.find``, which checks every member against the
config) and presents:

- ``keys()``: the logical checkpoint, key -> (dtype, shape), in the base's order: each quantized
  module appears once, as its ``.weight`` in the dtype it was quantized from (where its first
  member was), and its other members not at all; every other tensor as it is stored;
- ``read(key, device)``: a logical tensor, dequantized to fp32 on ``device`` for a quantized
  weight (one module's members read at a time), as stored otherwise;
- ``members(key)`` / ``read_members(packed)``: the stored tensors behind a logical weight.

Merge, unmerge and extract work on the logical keys; only the writer sees members again.
"""

from __future__ import annotations

from typing import Any

import torch

from ..checkpoint import Checkpoint
from .base import Keys, Packed, QuantFormat

# stored names and dtypes that only a quantized weight has: one no module claims is refused, never copied as if dense
MEMBER_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx", ".SCB", ".absmax", ".quant_map", ".weight_scale",
                   ".weight_scale_inv", ".weight_zero_point", ".weight_packed", ".weight_shape")
PACKED_DTYPES = ("U8", "I8", "I32", "F8_E4M3", "F8_E5M2")
CONFIG_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


def config_dtype(config: dict[str, Any] | None) -> str | None:
    """The dtype a model config names (``dtype``, or ``torch_dtype`` before transformers 4.56)."""
    if not isinstance(config, dict):
        return None
    for key in ("dtype", "torch_dtype"):
        if config.get(key) in CONFIG_DTYPES:
            return CONFIG_DTYPES[config[key]]
    return None


class QuantizedView:
    """The logical (dequantized) checkpoint over a quantized one (see the module docstring)."""

    def __init__(self, ckpt: Checkpoint, fmt: QuantFormat, config: dict[str, Any] | None = None) -> None:
        self.ckpt, self.fmt = ckpt, fmt
        self.stored: Keys = {k: (ckpt.info(k).dtype, tuple(ckpt.info(k).shape)) for k in ckpt.keys()}
        self.packed: dict[str, Packed] = fmt.find(self.stored, read=ckpt.read)
        self.by_weight = {p.weight: p for p in self.packed.values()}
        self.member_of = {key: p for p in self.packed.values() for key in p.members.values()}
        self.ordered: dict[str, list[str]] = {}  # module -> its member keys in the base's order (the order they are written in)
        for key in self.stored:
            if key in self.member_of:
                self.ordered.setdefault(self.member_of[key].module, []).append(key)
        self.dense_dtype = config_dtype(config) or "BF16"
        self._keys: Keys = {}
        for key, value in self.stored.items():
            p = self.member_of.get(key)
            if p is None:
                if key in self.by_weight:  # a plain tensor under a quantized weight's name: which is meant?
                    raise fmt.invalid("a plain tensor has the quantized weight's name", self.by_weight[key].module, "weight", actual=key)
                if key.endswith(MEMBER_SUFFIXES) or (key.endswith(".weight") and value[0] in PACKED_DTYPES):
                    raise fmt.invalid("a quantized tensor that belongs to no module the config describes",
                                      key.rsplit(".", 1)[0], "quant_method", expected=f"a complete {fmt.name} module", actual=key)
                self._keys[key] = value
            elif p.weight not in self._keys:
                self._keys[p.weight] = (p.info.get("dtype") or self.dense_dtype, tuple(p.shape))

    def keys(self) -> Keys:
        """Logical key -> (dtype, shape), in the base's order."""
        return dict(self._keys)

    def info(self, key: str) -> tuple[str, tuple[int, ...]]:
        """(dtype, shape) of one logical key."""
        return self._keys[key]

    def is_quantized(self, key: str) -> bool:
        return key in self.by_weight

    def read_members(self, packed: Packed) -> dict[str, torch.Tensor]:
        """role -> the stored tensor, for one quantized module."""
        return {role: self.ckpt.read(key) for role, key in packed.members.items()}

    def read(self, key: str, device: torch.device | None = None) -> torch.Tensor:
        """A logical tensor: a quantized weight dequantized to fp32 on ``device`` (default CPU),
        any other tensor as stored."""
        p = self.by_weight.get(key)
        if p is None:
            return self.ckpt.read(key)
        return self.fmt.dequantize(p, self.read_members(p), device or torch.device("cpu"))

    def describe(self) -> dict[str, Any]:
        """What ``info`` prints: the format's settings and the quantized modules' count and bytes."""
        stored = sum(self.ckpt.info(k).nbytes for p in self.packed.values() for k in p.members.values())
        return {**self.fmt.describe(), "quantized_modules": len(self.packed), "quantized_bytes": stored,
                "dense_dtype": self.dense_dtype}
