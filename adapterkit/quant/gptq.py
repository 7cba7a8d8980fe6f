"""GPTQ checkpoints (``quant_method: gptq``): read as fp32, written back onto their own grid.

The layout read is the one GPTQModel, AutoGPTQ and optimum write and transformers and vLLM
load.  A quantized ``nn.Linear`` named X (out_features × in_features) is four tensors; its
bias, if any, stays a plain tensor ``X.bias``:

==============  =======  ==============================  =========================================
member          dtype    shape                           content
==============  =======  ==============================  =========================================
``X.qweight``   int32    (ceil(in·bits/32), out)         codes, packed along the input dimension
``X.qzeros``    int32    (groups, ceil(out·bits/32))     zero points, packed along the output one
``X.scales``    float16  (groups, out)                   one scale per group and output
``X.g_idx``     int32    (in,)                           the group of each input column
==============  =======  ==============================  =========================================

``groups = ceil(in / group_size)`` (1 for ``group_size: -1``).  Codes are a little-endian bit
stream along the packed dimension (``grid.unpack``): 2/4/8 bits sit whole in a word, 3 bits run
across words (32 codes in 3 words; 3-bit needs in and out divisible by 32).

Config fields read (``quantization_config``): ``bits`` (2, 3, 4, 8), ``group_size`` (-1 or > 0),
``desc_act`` (default false), ``sym`` (default true, as GPTQModel and transformers assume),
``checkpoint_format`` / ``format`` (``gptq``: v1, the zero point stored minus one, the default;
``gptq_v2``: stored as is), ``pack_dtype`` (``int32`` only), ``modules_to_not_convert``.
Refused by name (``quant-unsupported``): any other ``checkpoint_format``/``format`` (``marlin``,
``bitblas``, ``gptq_p`` planar, ``qqq``, ...), ``is_marlin_format: true``, other ``bits`` (GPTQModel's
planar 5/6/7), ``pack_dtype`` other than ``int32``, a non-empty ``dynamic`` (per-module
overrides), a ``rotation``, an ``activation`` quantizer, an ``adapter`` (EoRA) and any field not
listed in ``_IGNORED`` (settings of the calibration run and of the loader, which change no tensor).

Dequantization equals GPTQModel 7.7.0's ``TorchLinear.dequantize_weight`` (a v1 file first
through ``convert_gptq_v1_to_v2_format_module``, as GPTQModel loads it) bit for bit: that
computes ``scales[g_idx] * (q - zero[g_idx])`` in **fp16** (an int8/int16 difference times the
fp16 scale, one fp16 rounding per element); the result here is that fp16 value upcast to fp32.
Checks made on the values, at dequantize (``quant-invalid`` naming the module and the field):

- ``g_idx`` within [0, groups); with ``desc_act: false`` it must be ``i // group_size`` (vLLM's
  kernels ignore ``g_idx`` then, so any other map would read differently there);
- ``sym: true``: every zero point is ``2**(bits-1)`` (vLLM's Marlin kernels assume it and ignore
  ``qzeros``);
- v1 files: a stored zero code ``2**bits - 1`` (zero point 0) is refused (``quant-unsupported``,
  field ``checkpoint_format``): GPTQModel adds one to the whole packed word (carrying into the
  next code), AutoGPTQ and vLLM add one per code, so the readers disagree on that module;
- non-finite scales, or products that overflow fp16.

``quantize`` rounds a new fp32 weight onto the old grid (``requantize = "grid"``): ``scales``,
``qzeros`` and ``g_idx`` are kept byte for byte and ``qweight`` is rewritten with
``clamp(round(w / scale + zero), 0, 2**bits - 1)`` (``grid.nearest_codes``: ties to even, as the
libraries' packers round; codes past ``in`` in the last word are kept).  So quantizing a
dequantized weight gives the checkpoint's bytes back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import FormatError
from . import grid
from .base import Keys, Packed, QuantFormat

BITS = (2, 3, 4, 8)
MEMBERS = ("qweight", "qzeros", "scales", "g_idx")

# Fields that describe the calibration run or the loader, not the tensors (transformers'
# GPTQConfig/AwqConfig, optimum, AutoGPTQ, AutoAWQ and GPTQModel write them).
_IGNORED = frozenset({
    "quant_method", "method", "tokenizer", "dataset", "damp_percent", "damp_auto_increment", "true_sequential",
    "static_groups", "act_group_aware", "mse", "model_name_or_path", "model_file_base_name", "batch_size",
    "pad_token_id", "use_exllama", "disable_exllama", "exllama_config", "max_input_length", "cache_block_outputs",
    "use_cuda_fp16", "model_seqlen", "block_name_to_quantize", "module_name_preceding_first_block",
    "modules_in_block_to_quantize", "backend", "meta", "lm_head", "v2", "v2_alpha", "hyb_act", "mock_quantization",
    "offload_to_disk", "offload_to_disk_path", "pack_impl", "fallback", "hessian", "gptaq", "foem", "moe",
    "quantize_config", "parallel_packing", "true_sequential_depth", "failsafe", "rotation_config",
})


def config_error(fmt: QuantFormat, field_name: str, message: str, expected: Any, actual: Any) -> FormatError:
    """``quant-invalid`` for a config value that is not a setting at all (wrong type or range)."""
    return FormatError(f"{fmt.method}: {message}", code="quant-invalid", path=fmt.where,
                       key=f"quantization_config.{field_name}", expected=expected, actual=actual)


def read_int(fmt: QuantFormat, config: dict[str, Any], names: tuple[str, ...], default: int | None) -> tuple[str, int]:
    """The first of ``names`` present (its name and integer value), else ``default``."""
    for name in names:
        if name in config and config[name] is not None:
            value = config[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise config_error(fmt, name, "must be an integer", "integer", value)
            return name, value
    if default is None:
        raise config_error(fmt, names[0], "is required", "integer", None)
    return names[0], default


def read_bool(fmt: QuantFormat, config: dict[str, Any], name: str, default: bool) -> bool:
    value = config.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise config_error(fmt, name, "must be true or false", "boolean", value)
    return value


def read_group_size(fmt: QuantFormat, config: dict[str, Any], names: tuple[str, ...]) -> int:
    name, value = read_int(fmt, config, names, 128)
    if value != -1 and value <= 0:
        raise config_error(fmt, name, "must be -1 (one group) or positive", "-1 or > 0", value)
    return value


def refuse_common(fmt: QuantFormat, config: dict[str, Any], read: frozenset[str]) -> None:
    """Refuse the GPTQModel/transformers fields that change what the tensors mean, and every
    field that is neither read (``read``) nor known to change nothing (``_IGNORED``)."""
    dynamic = config.get("dynamic")
    if dynamic:
        raise fmt.unsupported("per-module overrides are not read", "dynamic", expected="null or {}",
                              actual=sorted(dynamic) if isinstance(dynamic, dict) else dynamic)
    for name, what in (("rotation", "rotated weights (an input rotation outside the stored weights)"),
                       ("activation", "activation quantization"),
                       ("adapter", "an accuracy-recovery adapter applied on top of the stored weights")):
        if config.get(name) not in (None, {}, "", False):
            raise fmt.unsupported(f"{what} is not read", name, expected="null", actual=config[name])
    if config.get("is_marlin_format"):
        raise fmt.unsupported("Marlin-repacked weights are not read", "is_marlin_format", expected=False, actual=True)
    pack_dtype = config.get("pack_dtype")
    if pack_dtype is not None and str(pack_dtype).lower().removeprefix("torch.") != "int32":
        raise fmt.unsupported("only int32 packing words are read", "pack_dtype", expected="int32", actual=pack_dtype)
    skip = config.get("modules_to_not_convert")
    if skip is not None and not (isinstance(skip, list) and all(isinstance(s, str) for s in skip)):
        raise config_error(fmt, "modules_to_not_convert", "must be a list of module names", "list of strings", skip)
    for name in config:
        if name not in read and name not in _IGNORED and name not in (
                "dynamic", "rotation", "activation", "adapter", "is_marlin_format", "pack_dtype",
                "modules_to_not_convert"):
            raise fmt.unsupported("a quantization_config field adapterkit does not read", name,
                                  actual=config[name])


def leaves(keys: Keys) -> dict[str, set[str]]:
    """module -> the last name parts of its keys (``X.qweight`` -> ``X``: {``qweight``})."""
    found: dict[str, set[str]] = {}
    for key in keys:
        module, _, leaf = key.rpartition(".")
        found.setdefault(module, set()).add(leaf)
    return found


def check_members(fmt: QuantFormat, keys: Keys, module: str, present: set[str], members: tuple[str, ...]) -> None:
    """Every member there, nothing beside them but the bias; each an integer or fp16 tensor as
    its role says, 1-D ``g_idx`` and 2-D otherwise."""
    missing = [m for m in members if m not in present]
    if missing:
        raise fmt.invalid(f"`{module}` has {', '.join(sorted(present & set(members)))} but no {', '.join(missing)}",
                          module, missing[0], expected=list(members), actual=sorted(present))
    extra = sorted(present - set(members) - {"bias"})
    if extra:
        raise fmt.invalid(f"`{module}` has {', '.join(extra)} beside its packed weight", module, extra[0],
                          expected=[*members, "bias"], actual=sorted(present))
    for member in members:
        dtype, shape = keys[f"{module}.{member}"]
        want = "F16" if member == "scales" else "I32"
        if dtype != want:
            raise fmt.invalid(f"`{module}.{member}` is {dtype}", module, member, expected=want, actual=dtype)
        rank = 1 if member == "g_idx" else 2
        if len(shape) != rank or any(n == 0 for n in shape):
            raise fmt.invalid(f"`{module}.{member}` has shape {tuple(shape)}", module, member,
                              expected=f"{rank}-D, not empty", actual=list(shape))


def not_converted(fmt: QuantFormat, module: str) -> None:
    """A packed module that ``modules_to_not_convert`` names (AutoAWQ's and transformers' rule:
    the entry is a substring of the module name) is refused."""
    for entry in fmt.config.get("modules_to_not_convert") or ():
        if entry and entry in module:
            raise fmt.invalid(f"`{module}` is packed but modules_to_not_convert lists `{entry}`", module,
                              "modules_to_not_convert", expected="a plain weight", actual="packed")


def check_tensors(fmt: QuantFormat, packed: Packed, tensors: dict[str, torch.Tensor],
                  expect: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
    """The tensors handed to dequantize/quantize are those ``find`` described."""
    for role, (dtype, shape) in expect.items():
        tensor = tensors.get(role)
        if tensor is None:
            raise fmt.invalid(f"`{packed.module}.{role}` was not given", packed.module, role, expected=role)
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise fmt.invalid(f"`{packed.module}.{role}` is {tensor.dtype} {tuple(tensor.shape)}", packed.module,
                              role, expected=f"{dtype} {shape}", actual=f"{tensor.dtype} {tuple(tensor.shape)}")


def finite_product(fmt: QuantFormat, packed: Packed, scales: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(scales).all()):
        raise fmt.invalid(f"`{packed.module}.scales` holds NaN or Inf", packed.module, "scales",
                          expected="finite", actual="NaN/Inf")
    if not bool(torch.isfinite(weight).all()):
        raise fmt.invalid(f"`{packed.module}`: scale × (code - zero) overflows fp16", packed.module, "scales",
                          expected="finite fp16 weights", actual="Inf")
    return weight


def finite_weight(fmt: QuantFormat, packed: Packed, weight: torch.Tensor) -> torch.Tensor:
    if tuple(weight.shape) != packed.shape:
        raise fmt.invalid(f"the weight for `{packed.module}` has shape {tuple(weight.shape)}", packed.module,
                          "weight", expected=list(packed.shape), actual=list(weight.shape))
    if not bool(torch.isfinite(weight).all()):
        raise fmt.invalid(f"the weight for `{packed.module}` holds NaN or Inf", packed.module, "weight",
                          expected="finite", actual="NaN/Inf")
    return weight.to(torch.float32)


class GPTQ(QuantFormat):
    """GPTQ's packed int32 layout (see the module docstring)."""

    method = "gptq"
    requantize = "grid"

    def __init__(self, config: dict[str, Any], where: Path | None = None) -> None:
        super().__init__(config, where)
        self.name = "gptq"
        _, bits = read_int(self, config, ("bits",), None)
        if bits not in BITS:
            raise self.unsupported(f"{bits}-bit GPTQ is not read", "bits", expected=list(BITS), actual=bits)
        self.bits = bits
        self.group_size = read_group_size(self, config, ("group_size",))
        self.desc_act = read_bool(self, config, "desc_act", False)
        self.sym = read_bool(self, config, "sym", True)
        formats = {name: str(config[name]).lower() for name in ("checkpoint_format", "format")
                   if config.get(name) is not None}
        if len(set(formats.values())) > 1:
            raise config_error(self, "format", "checkpoint_format and format disagree", formats["checkpoint_format"],
                               formats["format"])
        layout = next(iter(formats.values()), "gptq")
        if layout not in ("gptq", "gptq_v2"):
            raise self.unsupported(f"the {layout} packing is not read", next(iter(formats), "checkpoint_format"),
                                   expected="gptq | gptq_v2", actual=layout)
        self.v1 = layout == "gptq"
        refuse_common(self, config, frozenset({"bits", "group_size", "desc_act", "sym", "checkpoint_format",
                                               "format"}))
        self.name = f"gptq-{bits}bit"

    # -- layout ----------------------------------------------------------------------------------

    def _shapes(self, n_in: int, n_out: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        groups = 1 if self.group_size == -1 else -(-n_in // self.group_size)
        return {"qweight": (torch.int32, (grid.word_count(n_in, self.bits), n_out)),
                "qzeros": (torch.int32, (groups, grid.word_count(n_out, self.bits))),
                "scales": (torch.float16, (groups, n_out)),
                "g_idx": (torch.int32, (n_in,))}

    def find(self, keys: Keys, read: Callable[[str], torch.Tensor] | None = None) -> dict[str, Packed]:
        """Every packed module among ``keys`` (``read`` is not needed: the layout is in the shapes)."""
        found: dict[str, Packed] = {}
        parts = leaves(keys)
        for module, present in sorted(parts.items()):
            if not present & set(MEMBERS):
                continue
            check_members(self, keys, module, present, MEMBERS)
            not_converted(self, module)
            n_in = keys[f"{module}.g_idx"][1][0]
            n_out = keys[f"{module}.scales"][1][1]
            if self.bits == 3 and (n_in % 32 or n_out % 32):
                raise self.invalid(f"3-bit `{module}` is {n_out}×{n_in}; 3-bit packing needs both divisible by 32",
                                   module, "bits", expected="in and out divisible by 32", actual=[n_out, n_in])
            for role, (_, shape) in self._shapes(n_in, n_out).items():
                actual = tuple(keys[f"{module}.{role}"][1])
                if actual != shape:
                    field_name = {"qweight": "bits", "qzeros": "bits", "scales": "group_size"}.get(role, role)
                    if role == "qzeros" and actual[0] != shape[0]:
                        field_name = "group_size"
                    raise self.invalid(f"`{module}.{role}` has shape {actual} for a {n_out}×{n_in} weight with "
                                       f"bits={self.bits}, group_size={self.group_size}", module, field_name,
                                       expected=list(shape), actual=list(actual))
            found[module] = Packed(module=module, weight=f"{module}.weight",
                                   members={m: f"{module}.{m}" for m in MEMBERS}, shape=(n_out, n_in),
                                   info={"bits": self.bits, "group_size": self.group_size,
                                         "groups": self._shapes(n_in, n_out)["scales"][1][0],
                                         "desc_act": self.desc_act, "sym": self.sym,
                                         "checkpoint_format": "gptq" if self.v1 else "gptq_v2"})
        return found

    # -- the grid --------------------------------------------------------------------------------

    def _grid(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device):
        """(codes (in, out), zeros (groups, out), g_idx (in,) int64, scales) on ``device``, checked."""
        n_out, n_in = packed.shape
        check_tensors(self, packed, tensors, self._shapes(n_in, n_out))
        groups = tensors["scales"].shape[0]
        g_idx = tensors["g_idx"].to(device=device, dtype=torch.int64)
        low, high = int(g_idx.min()), int(g_idx.max())
        if low < 0 or high >= groups:
            raise self.invalid(f"`{packed.module}.g_idx` holds groups {low}..{high} of {groups}", packed.module,
                               "g_idx", expected=f"0..{groups - 1}", actual=[low, high])
        if not self.desc_act:
            size = n_in if self.group_size == -1 else self.group_size
            if not torch.equal(g_idx, torch.arange(n_in, device=device) // size):
                raise self.invalid(f"`{packed.module}.g_idx` is not i // group_size but desc_act is false",
                                   packed.module, "desc_act", expected=False, actual="an act-order g_idx")
        zeros = grid.unpack(tensors["qzeros"].to(device), self.bits, n_out, dim=1)
        if self.v1:
            if bool((zeros == (1 << self.bits) - 1).any()):
                raise self.unsupported(
                    f"`{packed.module}.qzeros` stores the v1 zero code {(1 << self.bits) - 1} (zero point 0), which "
                    "GPTQModel and AutoGPTQ/vLLM read differently (field checkpoint_format)", "checkpoint_format",
                    expected=f"v1 zero codes below {(1 << self.bits) - 1}", actual="gptq", module=packed.module)
            zeros = zeros + 1
        if self.sym and not bool((zeros == 1 << (self.bits - 1)).all()):
            raise self.invalid(f"`{packed.module}` has zero points other than {1 << (self.bits - 1)} but sym is true",
                               packed.module, "sym", expected=1 << (self.bits - 1), actual="other zero points")
        codes = grid.unpack(tensors["qweight"].to(device), self.bits, n_in, dim=0)
        return codes, zeros, g_idx, tensors["scales"].to(device)

    def dequantize(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """fp32 (out, in): GPTQModel's fp16 ``scales[g] * (q - zero[g])``, upcast (module docstring)."""
        codes, zeros, g_idx, scales = self._grid(packed, tensors, device)
        weight = grid.fp16_product(codes - zeros[g_idx], scales[g_idx])
        return finite_product(self, packed, scales, weight).t().contiguous()

    def quantize(self, packed: Packed, weight: torch.Tensor, old: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
        """The members for ``weight`` (fp32 (out, in)) on the grid of ``old``: a new ``qweight``,
        the old ``qzeros``, ``scales`` and ``g_idx`` (module docstring)."""
        weight = finite_weight(self, packed, weight).to(device)
        codes, zeros, g_idx, scales = self._grid(packed, old, device)
        n_in = packed.shape[1]
        rows = old["qweight"].shape[0]
        full = grid.unpack(old["qweight"].to(device), self.bits, rows * 32 // self.bits, dim=0)
        full[:n_in] = grid.nearest_codes(weight.t(), scales[g_idx], zeros[g_idx], (1 << self.bits) - 1, codes)
        qweight = grid.pack(full, self.bits, rows, dim=0)
        return {"qweight": qweight.cpu(), **{m: old[m].cpu() for m in ("qzeros", "scales", "g_idx")}}

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act,
                "sym": self.sym, "checkpoint_format": "gptq" if self.v1 else "gptq_v2"}
