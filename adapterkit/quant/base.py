"""What every quantized-weight format provides: find its modules, dequantize, quantize.

A quantized checkpoint stores some linear weights as several tensors (packed integers, scales,
zeros, a record of the quantizer's settings).  Each format module (``bnb``, ``gptq``, ``awq``,
``fp8``) is a :class:`QuantFormat` with the same parts:

- built from the ``quantization_config`` of ``config.json`` (every field it reads is checked;
  an unknown value raises ``quant-unsupported`` naming the field);
- ``find(keys, read)``: the quantized modules among a checkpoint's keys (key -> (dtype, shape)),
  each a :class:`Packed` naming its member tensors and the logical (out, in) shape; every
  member's dtype and shape is checked against the config (``quant-invalid`` names the module
  and the field), and a module with members missing or left over is refused, never passed on
  as a plain tensor;
- ``dequantize(packed, tensors, device)``: the fp32 weight (out, in) on ``device``, equal bit
  for bit to the owning library's own dequantization (upcast to fp32 where the library stops at
  its compute dtype);
- ``quantize(packed, weight, old, device)``: the member tensors for a new fp32 weight, either
  with fresh scales (bitsandbytes, FP8: bit for bit the library's quantizer on the same input)
  or onto the grid of the old tensors (GPTQ, AWQ: scales, zeros and ``g_idx`` kept); None
  where the format cannot be written without calibration.

Formats import torch at module level: they are only imported where a quantized checkpoint is
read (``quant.scheme.quant_format``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FormatError, UnsupportedError

Keys = dict[str, tuple[str, tuple[int, ...]]]  # checkpoint key -> (safetensors dtype name, shape)


@dataclass(frozen=True)
class Packed:
    """One quantized linear weight as a checkpoint stores it.

    Attributes:
        module: the module's name (``model.layers.0.mlp.down_proj``).
        weight: the logical weight key adapters target (``module + ".weight"``).
        members: role -> checkpoint key of every stored tensor of the quantized weight (the
            bias is not a member: it is a plain tensor).
        shape: the logical weight's (out_features, in_features).
        info: what the format read off the tensors for this module (bits, group size, ...).
    """

    module: str
    weight: str
    members: dict[str, str]
    shape: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)


class QuantFormat:
    """A quantized-weight format (see the module docstring).  Subclasses set ``method`` (the
    config's ``quant_method``), ``name`` (what ``info`` prints, e.g. ``bnb-nf4``) and
    ``requantize`` (``"fresh"``, ``"grid"`` or None)."""

    method: str = ""
    name: str = ""
    requantize: str | None = None

    def __init__(self, config: dict[str, Any], where: Path | None = None) -> None:
        self.config = config
        self.where = where

    # -- what a format implements --------------------------------------------------------------

    def find(self, keys: Keys, read: Callable[[str], torch.Tensor] | None = None) -> dict[str, Packed]:
        """module name -> its :class:`Packed`, for every quantized module among ``keys``;
        ``read(key)`` gives a stored tensor, for formats that keep records in tensors
        (bitsandbytes' quant_state)."""
        raise NotImplementedError

    def dequantize(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """The fp32 (out, in) weight from the member tensors (role -> tensor, as read)."""
        raise NotImplementedError

    def quantize(self, packed: Packed, weight: torch.Tensor, old: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
        """role -> new member tensor (on the CPU) for the fp32 ``weight``; ``old`` are the base's
        members (the grid for ``"grid"`` formats)."""
        raise UnsupportedError(f"{self.name} weights cannot be written without calibration", code="quant-unsupported",
                               path=self.where, key=packed.module)

    def row_quantizer(self, packed: Packed, old: dict[str, torch.Tensor], device: torch.device) -> RowQuantizer:
        """What quantizes the weight a block of rows at a time (``add(start, stop, rows)``, rows
        starting at multiples of :meth:`row_align`, then ``finish()`` -> the members that
        :meth:`quantize` gives for the whole).  The default gathers the whole fp32 weight and
        quantizes it at the end; formats whose scales stay within blocks of rows override it."""
        return RowQuantizer(self, packed, old, device)

    def row_align(self, packed: Packed) -> int:
        """Row blocks for :meth:`rows` start at multiples of this many rows."""
        return 1

    def rows(self, packed: Packed, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[[int, int], torch.Tensor]:
        """``fetch(start, stop)``: the fp32 rows ``start:stop`` of the dequantized weight (starts
        at multiples of :meth:`row_align`), equal to those rows of :meth:`dequantize`, in a new
        tensor the caller may change.  The default dequantizes the whole weight once; formats
        override it to hold one block only."""
        whole = self.dequantize(packed, tensors, device)
        return lambda start, stop: whole[start:stop].clone()

    def planned(self, packed: Packed, keys: Keys) -> Keys:
        """member key -> (dtype, shape) that :meth:`quantize` writes (default: the base's)."""
        return {key: keys[key] for key in packed.members.values()}

    def describe(self) -> dict[str, Any]:
        """The settings ``info`` prints for the checkpoint (format name and its parameters)."""
        return {"format": self.name}

    # -- errors with context -------------------------------------------------------------------

    def invalid(self, message: str, module: str, field_name: str, expected: Any = None, actual: Any = None) -> FormatError:
        """``quant-invalid``: the tensors of ``module`` disagree with the config at ``field_name``."""
        return FormatError(f"{self.name}: {message} (field {field_name})", code="quant-invalid", path=self.where,
                           key=module, expected=expected, actual=actual)

    def unsupported(self, message: str, field_name: str, expected: Any = None, actual: Any = None,
                    module: str | None = None) -> UnsupportedError:
        """``quant-unsupported``: a setting adapterkit does not read, named by its config field."""
        return UnsupportedError(f"{self.name or self.method}: {message}", code="quant-unsupported", path=self.where,
                                key=module or f"quantization_config.{field_name}", expected=expected, actual=actual)


class RowQuantizer:
    """The default :meth:`QuantFormat.row_quantizer`: the rows gathered, quantized whole."""

    def __init__(self, fmt: QuantFormat, packed: Packed, old: dict[str, torch.Tensor], device: torch.device) -> None:
        self.fmt, self.packed, self.old, self.device = fmt, packed, old, device
        self.weight = torch.empty(packed.shape, dtype=torch.float32, device=device)

    def add(self, start: int, stop: int, rows: torch.Tensor) -> None:
        self.weight[start:stop] = rows

    def finish(self) -> dict[str, torch.Tensor]:
        return self.fmt.quantize(self.packed, self.weight, self.old, self.device)


def group_members(keys: Keys, suffixes: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """module -> {suffix: key} for keys ending in ``.suffix``, longest suffix first (so that
    ``weight.absmax`` is not read as the module ``X.weight`` with suffix ``absmax``)."""
    found: dict[str, dict[str, str]] = {}
    ordered = sorted(suffixes, key=len, reverse=True)
    for key in keys:
        for suffix in ordered:
            if key.endswith("." + suffix):
                found.setdefault(key[: -len(suffix) - 1], {})[suffix] = key
                break
    return found
