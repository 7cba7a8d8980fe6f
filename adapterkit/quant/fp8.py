"""FP8 weights: compressed-tensors ``float-quantized``, transformers' FineGrainedFP8, fbgemm.

Three ways a checkpoint stores a linear weight in FP8, told apart by ``quant_method``:

- ``compressed-tensors`` (what llm-compressor writes and vLLM serves), formats
  ``float-quantized`` and ``naive-quantized`` (the same compressor), also as the groups of a
  ``mixed-precision`` config: ``X.weight`` F8_E4M3 (out, in) and ``X.weight_scale`` in the dtype
  of the model that was quantized (F32, BF16, F16, F64), one scale per tensor (``(1,)``, ``()``
  or ``(1, 1)``), output channel ``(out, 1)``, group ``(out, in / group_size)`` or block
  ``(ceil(out / bh), ceil(in / bw))``; a ``X.weight_zero_point`` of zeros (the symmetric
  schemes' leftover) is read and written back as zeros.  Which scheme a module follows is
  decided as compressed-tensors decides it (``match_targets``: exact names, then ``re:``
  patterns, then class names); class names cannot be checked against checkpoint keys, so a
  float8 module no name matches takes the class-name targets' group (refused where two such
  groups quantize differently).
- ``fp8`` (transformers' FineGrainedFP8, DeepSeek-V3 style): ``X.weight`` F8_E4M3 and
  ``X.weight_scale_inv`` (``ceil(out / bh), ceil(in / bw)``) for ``weight_block_size`` [bh, bw]
  (default [128, 128]), or one scale (``()``, ``(1,)``, ``(1, 1)``) where it is null.
- ``fbgemm_fp8``: ``X.weight`` F8_E4M3 and ``X.weight_scale`` F32 ``(out, 1)``; read only.

Dequantization, bit for bit:

- compressed-tensors: ``compressed_tensors.quantization.lifecycle.forward.dequantize`` (what its
  ``FloatQuantizationCompressor.decompress`` calls) computes in **the scale's dtype**: the
  float8 value cast to that dtype (exact), minus the zero point, times the scale, rounded to the
  scale's dtype once.  Ours does the same and upcasts that result to fp32 (exact).
- FineGrainedFP8: transformers' ``Fp8Dequantize`` (the CPU / ``dequantize=True`` load path)
  computes **in fp32**: ``weight.to(fp32) * scale.to(fp32)``, then casts to the model dtype; we
  return the fp32 product.  Its ``_dequantize_one`` derives the block from the scale grid
  (``rows // scale_rows``), which is the configured block only where it divides the weight: on
  edge (partial) blocks it raises or tiles wrongly, and we follow ``FP8Linear``'s own layout
  (``ceil`` blocks, the one its kernels and ``_dequantize_fp8_weight`` use) instead.
- fbgemm: the fp32 product of the float8 value and its row's F32 scale (what the row-wise
  scaled matmul applies; fbgemm has no dequantization of its own on the CPU).

Quantization with fresh scales, bit for bit the library's quantizer on the same input:

- compressed-tensors (llm-compressor's min-max weight observer, then the compressor): the new
  fp32 weight is first rounded to the scale's dtype (the dtype of the model the library
  quantized: it makes its scales in the weight's dtype), then per tile
  ``scale = max(|min(w, 0)|, max(w, 0)) / 448`` in that dtype (``calculate_qparams``), a zero
  scale replaced by that dtype's eps, and ``q = float8(clamp(w / scale + 0, -448, 448))``
  (``quantize`` with the zero point of zeros the library holds while compressing; ``+ 0`` turns
  a -0.0 into +0.0 as it does).  Values beyond the range saturate at ±448.
- FineGrainedFP8 (``Fp8Quantize``): in fp32, per block ``amax = max|w|``,
  ``scale = 448 / amax`` (1 where amax is 0), ``weight_scale_inv = 1 / scale`` (F32) and
  ``q = float8(clamp(w * scale, -448, 448))``.  transformers leaves a weight dense when the
  block does not divide it; an edge block here gets the same formula over its own elements
  (what its quantizer gives on the zero-padded weight).  A checkpoint whose ``weight_scale_inv``
  is not F32 is written with F32 ones (``planned`` says so), as transformers writes them.
- fbgemm: refused (``quant-unsupported``): its quantizer is a CUDA kernel of fbgemm-gpu with no
  CPU reference to match.

Refused by name (``quant-unsupported``): other compressed-tensors formats (``int-quantized``,
``pack-quantized``, ``marlin-24``, ``sparse-*``, ``nvfp4-pack-quantized``, ``mxfp*``, ``dense``),
weights that are not 8-bit float (``num_bits`` 4, ``type`` int), asymmetric schemes, dynamic
weights, ``scale_dtype``, the token / tensor_group / attn_head strategies, a non-empty
``transform_config`` or non-dense ``sparsity_config``, F8_E5M2 weights, FineGrainedFP8's
``scale_fmt: ue8m0``, ``expert_dtype: fp4`` and ``modules_to_convert``.  Tensors that disagree
with the config (``quant-invalid``, naming module and field): a float8 weight without its scale,
a scale without a float8 weight, a float8 weight in a module the config leaves dense (``ignore``
/ ``modules_to_not_convert``) or in no config group, a scale or weight shape or dtype the
strategy does not give, a zero point that is not zero, a float8 tensor that belongs to no
quantized weight.  Activation scales (``input_scale``, ``activation_scale``, ``k_scale``, ...)
are plain tensors: kept as they are, a merge does not change them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import Keys, Packed, QuantFormat, group_members

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
FLOAT8 = ("F8_E4M3", "F8_E5M2", "F8_E8M0")
SCALE_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
TORCH_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
               torch.float8_e4m3fn: "F8_E4M3"}
CT_FORMATS = ("float-quantized", "naive-quantized")  # both are compressed-tensors' NaiveQuantizationCompressor
CT_ARGS = {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic", "actorder",
           "scale_dtype", "zp_dtype", "observer", "observer_kwargs"}
MINMAX_OBSERVERS = (None, "minmax", "memoryless_minmax", "static_minmax", "memoryless")


def from_config(quantization_config: dict[str, Any], where: Path | None = None) -> QuantFormat:
    """The FP8 format a ``quantization_config`` names (``quant_method`` ``compressed-tensors``,
    ``fp8`` or ``fbgemm_fp8``), its settings checked (``quant-unsupported`` naming the field)."""
    method = quantization_config.get("quant_method")
    if method == "compressed-tensors":
        return CompressedTensorsFP8(quantization_config, where)
    if method == "fp8":
        return FineGrainedFP8(quantization_config, where)
    if method == "fbgemm_fp8":
        return FbgemmFP8(quantization_config, where)
    raise QuantFormat(quantization_config, where).unsupported("not an FP8 quantization method", "quant_method",
                                                              expected="compressed-tensors | fp8 | fbgemm_fp8",
                                                              actual=method)


# -- how scales tile a weight -------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """How one module's scales tile its (out, in) weight: one scale per ``tensor``, per output
    ``channel``, per ``group`` of ``group_size`` inputs of a row, or per ``block`` (bh, bw)
    (edge blocks are partial: the scale grid is ``ceil(out / bh), ceil(in / bw)``)."""

    strategy: str
    group_size: int = 0
    block: tuple[int, int] = (0, 0)

    def scale_shapes(self, out: int, inp: int) -> list[tuple[int, ...]]:
        """The scale shapes this grid accepts for an (out, in) weight (the first is canonical)."""
        if self.strategy == "tensor":
            return [(1,), (), (1, 1)]
        if self.strategy == "channel":
            return [(out, 1)]
        if self.strategy == "group":
            return [(out, inp // self.group_size)]
        return [(math.ceil(out / self.block[0]), math.ceil(inp / self.block[1]))]

    def describe(self) -> dict[str, Any]:
        found: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == "group":
            found["group_size"] = self.group_size
        if self.strategy == "block":
            found["block"] = list(self.block)
        return found

    def tiles(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` (out, in) viewed so that each tile is reduced over ``dims``: (view, dims).  Edge
        blocks are zero-padded (zeros change neither a min-max nor an absmax scale)."""
        out, inp = x.shape
        if self.strategy == "tensor":
            return x.reshape(1, -1), (1,)
        if self.strategy == "channel":
            return x, (1,)
        if self.strategy == "group":
            return x.reshape(out, inp // self.group_size, self.group_size), (2,)
        padded = self._pad(x)
        bh, bw = self.block
        return padded.reshape(padded.shape[0] // bh, bh, padded.shape[1] // bw, bw), (1, 3)

    def apply(self, x: torch.Tensor, scale: torch.Tensor, op) -> torch.Tensor:
        """``op(x, scale)`` elementwise, each element of ``x`` (out, in) paired with its tile's
        scale (``scale`` in the grid's canonical shape); the result is (out, in)."""
        out, inp = x.shape
        if self.strategy == "tensor":
            return op(x, scale.reshape(()))
        if self.strategy == "channel":
            return op(x, scale.reshape(out, 1))
        if self.strategy == "group":
            grouped = x.reshape(out, inp // self.group_size, self.group_size)
            return op(grouped, scale.unsqueeze(-1)).reshape(out, inp)
        bh, bw = self.block
        padded = self._pad(x)
        tiled = padded.reshape(padded.shape[0] // bh, bh, padded.shape[1] // bw, bw)
        done = op(tiled, scale[:, None, :, None]).reshape(padded.shape)
        return done if done.shape == x.shape else done[:out, :inp].contiguous()

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        bh, bw = self.block
        rows, cols = (-x.shape[0]) % bh, (-x.shape[1]) % bw
        return torch.nn.functional.pad(x, (0, cols, 0, rows)) if rows or cols else x


# -- the shared reading ---------------------------------------------------------------------------


class _FP8(QuantFormat):
    """What the three FP8 layouts share: a float8 ``weight`` beside a ``scale_role`` tensor."""

    scale_role = "weight_scale"
    zero_points = False  # whether a ``weight_zero_point`` member is read (compressed-tensors)
    skip_field = "modules_to_not_convert"

    # subclasses: which grid a module follows, whether the config leaves it dense
    def grid_for(self, module: str) -> tuple[Grid, str, dict[str, Any]]:
        """(grid, config field that set it, extra info) for a float8 module."""
        raise NotImplementedError

    def skipped(self, module: str) -> bool:
        raise NotImplementedError

    def scale_dtypes(self) -> tuple[str, ...]:
        return tuple(SCALE_DTYPES)

    def find(self, keys: Keys, read: Callable[[str], torch.Tensor] | None = None) -> dict[str, Packed]:
        """module name -> its :class:`Packed`: every module with a float8 ``.weight`` (checked against
        the config, see the module docstring); ``read`` is not needed (FP8 keeps no records in tensors)."""
        roles = ("weight", self.scale_role) + (("weight_zero_point",) if self.zero_points else ())
        found: dict[str, Packed] = {}
        for module, members in sorted(group_members(keys, roles).items()):
            packed = self._module(module, members, keys)
            if packed is not None:
                found[module] = packed
        claimed = {key for packed in found.values() for key in packed.members.values()}
        for key, (dtype, _shape) in keys.items():
            if dtype in FLOAT8 and key not in claimed:
                raise self.invalid(f"`{key}` is {dtype} but is no quantized linear weight (a float8 `.weight` with "
                                   f"its `{self.scale_role}`); it would be copied as raw float8", key, "quant_method",
                                   expected=f"X.weight + X.{self.scale_role}", actual=dtype)
        return found

    def _module(self, module: str, members: dict[str, str], keys: Keys) -> Packed | None:
        weight, scale, zero = members.get("weight"), members.get(self.scale_role), members.get("weight_zero_point")
        wdtype = keys[weight][0] if weight else None
        if wdtype not in FLOAT8:
            if scale is None and zero is None:
                return None  # a dense module
            stray = scale or zero
            raise self.invalid(f"`{stray}` has no float8 weight beside it (`{module}.weight` is {wdtype or 'absent'})",
                               module, self.scale_role, expected="F8_E4M3", actual=wdtype)
        if wdtype != "F8_E4M3":
            raise self.unsupported(f"`{weight}` is {wdtype}; the {self.name} layout stores float8_e4m3fn "
                                   "weights (field weight dtype)",
                                   "weight dtype", expected="F8_E4M3", actual=wdtype, module=module)
        if scale is None:
            raise self.invalid(f"`{weight}` is float8 but `{module}.{self.scale_role}` is absent", module,
                               self.scale_role, expected=f"{module}.{self.scale_role}", actual="absent")
        if self.skipped(module):
            raise self.invalid(f"`{weight}` is float8 but the config leaves `{module}` dense", module, self.skip_field,
                               expected="a dense weight", actual=wdtype)
        shape = keys[weight][1]
        if len(shape) != 2:
            raise self.unsupported(f"`{weight}` has {len(shape)} dimensions; only 2-D linear weights are read "
                                   "(field weight shape)",
                                   "weight shape", expected="(out, in)", actual=list(shape), module=module)
        out, inp = shape
        if out == 0 or inp == 0:
            raise self.invalid(f"`{weight}` is empty {tuple(shape)}", module, "weight shape",
                               expected="(out > 0, in > 0)", actual=list(shape))
        grid, field_name, info = self.grid_for(module)
        if grid.strategy == "group" and inp % grid.group_size:
            raise self.invalid(f"in_features {inp} of `{weight}` is not a multiple of group_size {grid.group_size}",
                               module, field_name, expected=f"a multiple of {grid.group_size}", actual=inp)
        sdtype, sshape = keys[scale]
        if sdtype not in self.scale_dtypes():
            raise self.invalid(f"`{scale}` is {sdtype}", module, self.scale_role,
                               expected=" | ".join(self.scale_dtypes()), actual=sdtype)
        shapes = grid.scale_shapes(out, inp)
        if tuple(sshape) not in shapes:
            raise self.invalid(f"`{scale}` has shape {tuple(sshape)} but a ({out}, {inp}) weight with "
                               f"{grid.strategy} scales{_grid_words(grid)} has {shapes[0]}", module, field_name,
                               expected=list(shapes[0]), actual=list(sshape))
        found = {"weight": weight, self.scale_role: scale}
        if zero is not None:
            zdtype, zshape = keys[zero]
            if zdtype not in ("F8_E4M3", sdtype) or tuple(zshape) != tuple(sshape):
                raise self.invalid(f"`{zero}` ({zdtype}, {tuple(zshape)}) does not fit `{scale}` ({sdtype}, "
                                   f"{tuple(sshape)})", module, "weight_zero_point",
                                   expected=f"F8_E4M3 {tuple(sshape)} zeros", actual=f"{zdtype} {tuple(zshape)}")
            found["weight_zero_point"] = zero
        info = {**info, **grid.describe(), "scale_dtype": sdtype, "scale_shape": list(sshape), "field": field_name}
        return Packed(module=module, weight=weight, members=found, shape=(out, inp), info=info)

    # -- reading the tensors ---------------------------------------------------------------------

    def _tensors(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device):
        """The members on ``device``, checked against what :meth:`find` read off the keys."""
        weight = tensors.get("weight")
        scale = tensors.get(self.scale_role)
        if weight is None or scale is None:
            raise self.invalid("a member tensor was not passed", packed.module, self.scale_role,
                               expected=sorted(packed.members), actual=sorted(tensors))
        if weight.dtype != torch.float8_e4m3fn or tuple(weight.shape) != packed.shape:
            raise self.invalid(f"`{packed.weight}` read as {weight.dtype} {tuple(weight.shape)}", packed.module,
                               "weight", expected=f"F8_E4M3 {packed.shape}", actual=f"{weight.dtype} {tuple(weight.shape)}")
        # the scale's dtype may differ from the base's where quantize writes another (FineGrainedFP8: F32)
        if TORCH_NAMES.get(scale.dtype) not in self.scale_dtypes() or list(scale.shape) != packed.info["scale_shape"]:
            raise self.invalid(f"`{packed.members[self.scale_role]}` read as {scale.dtype} {tuple(scale.shape)}",
                               packed.module, self.scale_role, expected=packed.info["scale_shape"],
                               actual=list(scale.shape))
        grid = _grid_of(packed)
        canonical = grid.scale_shapes(*packed.shape)[0]
        return weight.to(device), scale.to(device).reshape(canonical), grid

    def describe(self) -> dict[str, Any]:
        return {"format": self.name}


def _grid_of(packed: Packed) -> Grid:
    """The grid :meth:`_FP8.find` recorded in ``packed.info`` (plain values, so that ``info`` prints)."""
    block = packed.info.get("block") or (0, 0)
    return Grid(packed.info["strategy"], group_size=packed.info.get("group_size", 0), block=(block[0], block[1]))


def _grid_words(grid: Grid) -> str:
    if grid.strategy == "block":
        return f" of block {list(grid.block)}"
    if grid.strategy == "group":
        return f" of group_size {grid.group_size}"
    return ""


# -- compressed-tensors --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """One of ``config_groups``: its targets, the grid its weights use (None: no weights)."""

    name: str
    targets: tuple[str, ...]
    grid: Grid | None
    observer: str | None
    activations: str | None


class CompressedTensorsFP8(_FP8):
    """compressed-tensors ``float-quantized`` (see the module docstring)."""

    method = "compressed-tensors"
    name = "compressed-tensors-fp8"
    requantize = "fresh"
    zero_points = True
    skip_field = "ignore"

    def __init__(self, config: dict[str, Any], where: Path | None = None) -> None:
        super().__init__(config, where)
        qc = config.get("quantization_config") if isinstance(config.get("quantization_config"), dict) else config
        self.qc = qc
        fmt = qc.get("format")
        if fmt not in (*CT_FORMATS, "mixed-precision"):
            raise self.unsupported(f"compressed-tensors format {fmt!r} is not read (adapterkit reads FP8 weights: "
                                   "float-quantized)", "format", expected=" | ".join(CT_FORMATS), actual=fmt)
        status = qc.get("quantization_status")
        if status not in (None, "compressed"):
            raise self.unsupported(f"quantization_status {status!r}: only compressed checkpoints hold float8 weights",
                                   "quantization_status", expected="compressed", actual=status)
        for field_name in ("transform_config",):
            if qc.get(field_name):
                raise self.unsupported(f"a {field_name} (rotated weights) is not read", field_name, expected="{}",
                                       actual=qc.get(field_name))
        sparsity = qc.get("sparsity_config")
        if sparsity and isinstance(sparsity, dict) and sparsity.get("format") not in (None, "dense"):
            raise self.unsupported(f"sparsity format {sparsity.get('format')!r} is not read", "sparsity_config.format",
                                   expected="dense", actual=sparsity.get("format"))
        ignore = qc.get("ignore") or []
        if not isinstance(ignore, list) or not all(isinstance(item, str) for item in ignore):
            raise self.unsupported("ignore must be a list of module names or re: patterns", "ignore",
                                   expected="list of strings", actual=ignore)
        self.ignore = tuple(ignore)
        groups = qc.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise self.unsupported("config_groups must name at least one group", "config_groups",
                                   expected="an object of groups", actual=groups)
        self.groups = [self._group(name, group, fmt) for name, group in groups.items()]
        if any(g.grid is not None and g.observer not in MINMAX_OBSERVERS for g in self.groups):
            self.requantize = None  # scales an MSE (or other) observer chose need calibration to make again
        # compressed-tensors' apply_quantization_config: a later group listing the same target wins
        self.target_group: dict[str, _Group] = {}
        for group in self.groups:
            for target in group.targets:
                self.target_group[target] = group

    def _group(self, name: str, group: Any, fmt: str) -> _Group:
        where = f"config_groups.{name}"
        if not isinstance(group, dict):
            raise self.unsupported("a config group must be an object", where, expected="object", actual=group)
        targets = group.get("targets")
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise self.unsupported("targets must be a list of names, re: patterns or class names",
                                   f"{where}.targets", expected="list of strings", actual=targets)
        gfmt = group.get("format")
        if fmt == "mixed-precision" and gfmt not in CT_FORMATS and group.get("weights") is not None:
            raise self.unsupported(f"group format {gfmt!r} is not read", f"{where}.format",
                                   expected=" | ".join(CT_FORMATS), actual=gfmt)
        if gfmt is not None and gfmt not in CT_FORMATS and fmt != "mixed-precision":
            raise self.unsupported(f"group format {gfmt!r} is not read", f"{where}.format",
                                   expected=" | ".join(CT_FORMATS), actual=gfmt)
        activations = group.get("input_activations")
        act = None
        if isinstance(activations, dict):
            act = "dynamic" if activations.get("dynamic") else "static"
        weights = group.get("weights")
        if weights is None:
            return _Group(name, tuple(targets), None, None, act)
        return _Group(name, tuple(targets), self._grid(weights, f"{where}.weights"), weights.get("observer"), act)

    def _grid(self, args: Any, where: str) -> Grid:
        """The grid a group's ``weights`` arguments give (compressed-tensors' QuantizationArgs rules)."""
        if not isinstance(args, dict):
            raise self.unsupported("weights must be an object", where, expected="object", actual=args)
        unknown = sorted(set(args) - CT_ARGS)
        if unknown:
            raise self.unsupported(f"unknown weights field {unknown[0]!r}", f"{where}.{unknown[0]}",
                                   expected=" | ".join(sorted(CT_ARGS)), actual=unknown[0])
        kind = str(args.get("type", "int")).lower()
        if kind != "float":
            raise self.unsupported(f"{kind} weights are not read by the FP8 format (only 8-bit float)", f"{where}.type",
                                   expected="float", actual=args.get("type", "int"))
        bits = args.get("num_bits", 8)
        if bits != 8:
            raise self.unsupported(f"{bits}-bit float weights (FP4/FP6) are not read", f"{where}.num_bits",
                                   expected=8, actual=bits)
        if args.get("symmetric", True) is not True:
            raise self.unsupported("asymmetric FP8 weights are not read", f"{where}.symmetric", expected=True,
                                   actual=args.get("symmetric"))
        if args.get("dynamic", False) not in (False, None):
            raise self.unsupported("dynamic weights keep no scales", f"{where}.dynamic", expected=False,
                                   actual=args.get("dynamic"))
        if args.get("scale_dtype") is not None:
            raise self.unsupported("scales rounded to a scale_dtype are not read", f"{where}.scale_dtype",
                                   expected=None, actual=args.get("scale_dtype"))
        actorder = args.get("actorder")
        if actorder not in (None, False, "weight", "static"):
            raise self.unsupported("activation ordering with a g_idx is not read", f"{where}.actorder",
                                   expected="null | weight", actual=actorder)
        strategy, group_size, block = args.get("strategy"), args.get("group_size"), args.get("block_structure")
        if strategy is None:  # QuantizationArgs infers it from group_size
            strategy = "tensor" if group_size is None else "channel" if group_size == -1 else "group"
        strategy = str(strategy).lower()
        if strategy in ("tensor", "channel"):
            return Grid(strategy)
        if strategy == "group":
            if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
                raise self.unsupported("the group strategy needs a positive group_size", f"{where}.group_size",
                                       expected="int > 0", actual=group_size)
            return Grid("group", group_size=group_size)
        if strategy == "block":
            if isinstance(block, str):  # compressed-tensors accepts "128x128"
                try:
                    block = [int(part) for part in block.split("x")]
                except ValueError:
                    block = None
            if (not isinstance(block, list) or len(block) != 2
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
                raise self.unsupported("the block strategy needs block_structure [rows, cols]",
                                       f"{where}.block_structure", expected="[int, int]", actual=block)
            return Grid("block", block=(block[0], block[1]))
        raise self.unsupported(f"weight strategy {strategy!r} is not read", f"{where}.strategy",
                               expected="tensor | channel | group | block", actual=strategy)

    def skipped(self, module: str) -> bool:
        return any(_ct_name_match(module, target) for target in self.ignore)

    def grid_for(self, module: str) -> tuple[Grid, str, dict[str, Any]]:
        # compressed-tensors' match_targets: exact names (sorted), then re: patterns (sorted), then class names
        ordered = sorted(self.target_group, key=lambda target: ("re:" in target, target))
        group = next((self.target_group[t] for t in ordered if _ct_name_match(module, t)), None)
        if group is None:
            classes = [t for t in ordered if _is_class_name(t)]
            candidates = {self.target_group[t].grid for t in classes}
            if len(candidates) > 1:
                raise self.unsupported(f"`{module}` matches no target by name, and the class-name targets "
                                       f"{classes} quantize differently; which applies cannot be told from the keys "
                                       "(field config_groups.*.targets)",
                                       "config_groups", module=module)
            group = self.target_group[classes[0]] if classes else None
        if group is None:
            raise self.invalid("the weight is float8 but no config group targets the module", module,
                               "config_groups.*.targets", expected=sorted(self.target_group), actual=module)
        if group.grid is None:
            raise self.invalid(f"the weight is float8 but config group {group.name} quantizes no weights", module,
                               f"config_groups.{group.name}.weights", expected="weights", actual=None)
        info = {"group": group.name, "observer": group.observer}
        field_name = f"config_groups.{group.name}.weights"
        field_name += {"block": ".block_structure", "group": ".group_size"}.get(group.grid.strategy, ".strategy")
        return group.grid, field_name, info

    def dequantize(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """compressed-tensors' ``dequantize``: ``(q.to(sd) - zp.to(sd)) * scale`` in the scale's dtype
        ``sd`` (rounded once there), returned as fp32 (exact)."""
        weight, scale, grid = self._tensors(packed, tensors, device)
        values = weight.to(scale.dtype)
        zero = tensors.get("weight_zero_point")
        if zero is not None:
            if list(zero.shape) != packed.info["scale_shape"] or bool((zero.to(torch.float32) != 0).any()):
                raise self.invalid("a symmetric scheme's zero point must be zeros shaped as its scale", packed.module,
                                   "weight_zero_point", expected=f"zeros {packed.info['scale_shape']}",
                                   actual=f"{list(zero.shape)}, non-zero or misshapen")
            values = grid.apply(values, zero.to(device).to(scale.dtype).reshape(scale.shape), torch.sub)
        return grid.apply(values, scale, torch.mul).to(torch.float32)

    def quantize(self, packed: Packed, weight: torch.Tensor, old: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
        """Fresh min-max scales in the old scale's dtype and the float8 weight (module docstring)."""
        observer = packed.info.get("observer")
        if observer not in MINMAX_OBSERVERS:
            raise self.unsupported(f"scales chosen by the {observer!r} observer cannot be made again without "
                                   f"calibration; merge with --dtype (field config_groups.{packed.info['group']}.weights.observer)",
                                   f"config_groups.{packed.info['group']}.weights.observer", expected="minmax", actual=observer, module=packed.module)
        grid = _grid_of(packed)
        sdtype = SCALE_DTYPES[packed.info["scale_dtype"]]
        w = weight.to(device=device, dtype=sdtype)
        tiles, dims = grid.tiles(w)
        # llm-compressor's min-max observer, then compressed-tensors' calculate_qparams
        low = torch.amin(tiles, dim=dims)
        high = torch.amax(tiles, dim=dims)
        low = torch.min(low, torch.zeros_like(low))
        high = torch.max(high, torch.zeros_like(high))
        absmax = torch.max(torch.abs(low), torch.abs(high))
        scale = absmax / (torch.tensor(2 * FP8_MAX, device=device).to(sdtype) / 2)
        eps = torch.finfo(sdtype).eps
        scale = torch.where(scale == 0, torch.tensor(eps, dtype=sdtype, device=device), scale)
        scale = scale.reshape(grid.scale_shapes(*packed.shape)[0])
        # compressed-tensors' quantize: x / scale + zero_point (zeros), clamp, cast
        scaled = grid.apply(w, scale, torch.div) + 0.0
        q = torch.clamp(scaled, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        found = {"weight": q.cpu(), "weight_scale": scale.reshape(packed.info["scale_shape"]).cpu()}
        if "weight_zero_point" in packed.members:
            zero = old.get("weight_zero_point")
            found["weight_zero_point"] = (torch.zeros_like(zero, device="cpu") if zero is not None else
                                          torch.zeros(packed.info["scale_shape"], dtype=torch.float8_e4m3fn))
        return found

    def describe(self) -> dict[str, Any]:
        groups = {}
        for group in self.groups:
            entry: dict[str, Any] = {"targets": list(group.targets)}
            if group.grid is not None:
                entry.update(group.grid.describe())
            if group.activations:
                entry["input_activations"] = group.activations
            groups[group.name] = entry
        if len(groups) == 1:  # the common case, printed flat
            return {"format": self.name, **next(iter(groups.values())), "ignore": list(self.ignore)}
        return {"format": self.name, "groups": groups, "ignore": list(self.ignore)}


def _ct_name_match(name: str, target: str) -> bool:
    """compressed-tensors' ``match_name``: ``re:`` patterns with ``re.match``, else equality."""
    if target.startswith("re:"):
        try:
            return re.match(target[3:], name) is not None
        except re.error:
            return False
    return target == name


def _is_class_name(target: str) -> bool:
    return re.fullmatch(r"[A-Z][A-Za-z0-9_]*", target) is not None


# -- transformers' FineGrainedFP8 ------------------------------------------------------------------


def _skip_patterns(format_: QuantFormat, config: dict[str, Any]) -> tuple[str, ...]:
    skip = config.get("modules_to_not_convert")
    if skip is None:
        skip = config.get("ignored_layers")  # MiniMax's name for it, which transformers accepts
    if skip is None:
        return ()
    if not isinstance(skip, list) or not all(isinstance(item, str) for item in skip):
        raise format_.unsupported("modules_to_not_convert must be a list of module names", "modules_to_not_convert",
                                  expected="list of strings", actual=skip)
    return tuple(skip)


def _hf_skipped(name: str, patterns: tuple[str, ...]) -> bool:
    """transformers' ``should_convert_module`` negated: a pattern matches from the start up to a
    module boundary, as a regex with that boundary, or as a suffix."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    for key in patterns:
        if name.endswith(key):
            return True
        try:
            if re.match(rf"(?:{key}){boundary}", name):
                return True
        except re.error:
            continue
    return False


class FineGrainedFP8(_FP8):
    """transformers' FineGrainedFP8 (``quant_method: fp8``, see the module docstring)."""

    method = "fp8"
    name = "finegrained-fp8"
    requantize = "fresh"
    scale_role = "weight_scale_inv"

    def __init__(self, config: dict[str, Any], where: Path | None = None) -> None:
        super().__init__(config, where)
        scheme = config.get("activation_scheme", "dynamic")
        if not isinstance(scheme, str) or scheme.lower() not in ("dynamic", "static"):
            raise self.unsupported("activation_scheme must be dynamic or static", "activation_scheme",
                                   expected="dynamic | static", actual=scheme)
        self.activation_scheme = scheme.lower()
        block = config.get("weight_block_size", [128, 128])
        if block is None:
            self.grid = Grid("tensor")
        elif (isinstance(block, list) and len(block) == 2
              and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
            self.grid = Grid("block", block=(block[0], block[1]))
        else:
            raise self.unsupported("weight_block_size must be two positive integers or null", "weight_block_size",
                                   expected="[int, int] | null", actual=block)
        for field_name, allowed in (("scale_fmt", ("float",)), ("expert_dtype", ("fp8",)), ("fmt", ("e4m3",))):
            value = config.get(field_name, allowed[0])
            if value not in allowed:
                raise self.unsupported(f"{field_name} {value!r} is not read", field_name, expected=allowed[0],
                                       actual=value)
        if config.get("modules_to_convert"):
            raise self.unsupported("FP8 embeddings (modules_to_convert) are not read", "modules_to_convert",
                                   expected=None, actual=config.get("modules_to_convert"))
        self.skip = _skip_patterns(self, config)

    def skipped(self, module: str) -> bool:
        return _hf_skipped(module, self.skip)

    def grid_for(self, module: str) -> tuple[Grid, str, dict[str, Any]]:
        return self.grid, "weight_block_size", {}

    def dequantize(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """transformers' ``Fp8Dequantize``: ``weight.to(fp32) * weight_scale_inv.to(fp32)`` per block."""
        weight, scale, grid = self._tensors(packed, tensors, device)
        return grid.apply(weight.to(torch.float32), scale.to(torch.float32), torch.mul)

    def quantize(self, packed: Packed, weight: torch.Tensor, old: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
        """transformers' ``Fp8Quantize`` in fp32: ``scale = 448 / amax`` per block (1 for a zero
        block), ``weight_scale_inv = 1 / scale`` (F32), ``q = float8(clamp(w * scale))``."""
        grid = _grid_of(packed)
        w = weight.to(device=device, dtype=torch.float32)
        tiles, dims = grid.tiles(w)
        amax = tiles.abs().amax(dim=dims)
        safe = torch.where(amax > 0, amax, torch.ones_like(amax))
        scale = FP8_MAX / safe
        scale = torch.where(amax > 0, scale, torch.ones_like(scale))
        inverse = (1.0 / scale).to(torch.float32)
        scale = scale.reshape(grid.scale_shapes(*packed.shape)[0])
        q = torch.clamp(grid.apply(w, scale, torch.mul), min=-FP8_MAX, max=FP8_MAX).to(torch.float8_e4m3fn)
        return {"weight": q.cpu(), "weight_scale_inv": inverse.reshape(packed.info["scale_shape"]).cpu()}

    def planned(self, packed: Packed, keys: Keys) -> Keys:
        found = super().planned(packed, keys)
        scale = packed.members["weight_scale_inv"]
        found[scale] = ("F32", keys[scale][1])  # transformers writes F32 scales whatever the base held
        return found

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, **self.grid.describe(), "activation_scheme": self.activation_scheme,
                "modules_to_not_convert": list(self.skip)}


# -- fbgemm ---------------------------------------------------------------------------------------


class FbgemmFP8(_FP8):
    """fbgemm_fp8: float8 weights with an F32 scale per output channel; read, never written."""

    method = "fbgemm_fp8"
    name = "fbgemm-fp8"
    requantize = None

    def __init__(self, config: dict[str, Any], where: Path | None = None) -> None:
        super().__init__(config, where)
        self.skip = _skip_patterns(self, config)

    def scale_dtypes(self) -> tuple[str, ...]:
        return ("F32",)

    def skipped(self, module: str) -> bool:
        return _hf_skipped(module, self.skip)

    def grid_for(self, module: str) -> tuple[Grid, str, dict[str, Any]]:
        return Grid("channel"), "weight_scale", {}

    def dequantize(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """``weight.to(fp32) * weight_scale`` (F32, one per row)."""
        weight, scale, grid = self._tensors(packed, tensors, device)
        return grid.apply(weight.to(torch.float32), scale, torch.mul)

    def quantize(self, packed: Packed, weight: torch.Tensor, old: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
        raise self.unsupported("fbgemm's FP8 quantizer (quantize_fp8_per_row) is a CUDA kernel of fbgemm-gpu with "
                               "no CPU reference to match bit for bit; merge with --dtype (field quant_method)", "quant_method",
                               expected="compressed-tensors | fp8", actual="fbgemm_fp8", module=packed.module)

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "strategy": "channel", "modules_to_not_convert": list(self.skip)}
