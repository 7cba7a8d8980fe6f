"""AWQ checkpoints (``quant_method: awq``, AutoAWQ's GEMM packing): read as fp32, written back
onto their own grid.

The layout read is AutoAWQ's ``WQLinear_GEMM`` (``version``/``format: gemm``), the one
transformers and vLLM load.  A quantized ``nn.Linear`` named X (out_features × in_features) is
three tensors; its bias, if any, stays a plain tensor ``X.bias``:

==============  =======  =====================  ==================================================
member          dtype    shape                  content
==============  =======  =====================  ==================================================
``X.qweight``   int32    (in, out/8)            4-bit codes packed along the output dimension
``X.qzeros``    int32    (in/group, out/8)      zero points, packed the same way
``X.scales``    float16  (in/group, out)        one scale per group of input rows and output
==============  =======  =====================  ==================================================

Each word holds the codes of 8 consecutive outputs in AWQ's interleaved order: nibble i (bits
4i..4i+3) is output ``8·word + [0, 2, 4, 6, 1, 3, 5, 7][i]``.  Groups are consecutive input rows
(no ``g_idx``; a ``g_idx`` member is refused).

Config fields read: ``bits``/``w_bit`` (4 only), ``group_size``/``q_group_size`` (-1 or > 0,
dividing in), ``zero_point`` (recorded; the GEMM layout stores ``qzeros`` either way),
``version``/``format``/``checkpoint_format`` (``gemm``, any case), ``backend`` (a loader kernel;
``llm-awq``, which is a different packing, is refused), ``desc_act`` (false only),
``pack_dtype`` (``int32``), ``modules_to_not_convert`` (a module named there must be a plain
weight).  Refused by name (``quant-unsupported``): ``version`` ``gemv``, ``gemv_fast``,
``marlin``, ``exllama``, ``ipex``, ``llm-awq`` and anything else but ``gemm``; other bit widths;
the GPTQModel fields ``dynamic``, ``rotation``, ``activation``, ``adapter``; any field that is
neither read nor known to change nothing.

Dequantization equals AutoAWQ 0.2.9's ``awq.utils.packing_utils.dequantize_gemm`` bit for bit:
``(iweight - izeros) * scales`` with int8 codes and fp16 scales, computed in **fp16** (one
rounding per element), here upcast to fp32 and transposed to (out, in).  Non-finite scales or an
fp16 overflow are refused (``quant-invalid``, field ``scales``).

``quantize`` keeps ``qzeros`` and ``scales`` byte for byte and writes a new ``qweight`` with
``clamp(round(w / scale + zero), 0, 15)`` (ties to even, as AutoAWQ's ``from_linear`` rounds
``(w + zero·scale) / scale``), so quantizing a dequantized weight gives the bytes back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import grid
from .base import Keys, Packed, QuantFormat
from .gptq import (
    check_members,
    check_tensors,
    config_error,
    finite_product,
    finite_weight,
    leaves,
    not_converted,
    read_bool,
    read_group_size,
    read_int,
    refuse_common,
)

MEMBERS = ("qweight", "qzeros", "scales")
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds output 8*word + ORDER[i]
BACKENDS = frozenset({"autoawq", "auto", "auto_trainable", "machete", "marlin", "exllama_v2", "exllama_v1", "gemm",
                      "gemm_triton", "gemv", "gemv_fast", "torch_awq", "torch_fused_awq", "exllama", "ipex"})


def _stream_order(n_out: int, device: torch.device) -> torch.Tensor:
    """Output index of each code in the packed stream: code 8w+i is output 8w+ORDER[i]."""
    base = torch.arange(0, n_out, 8, device=device).view(-1, 1)
    return (base + torch.tensor(ORDER, device=device).view(1, -1)).reshape(-1)


class AWQ(QuantFormat):
    """AutoAWQ's GEMM layout (see the module docstring)."""

    method = "awq"
    requantize = "grid"
    bits = 4

    def __init__(self, config: dict[str, Any], where: Path | None = None) -> None:
        super().__init__(config, where)
        self.name = "awq"
        name, bits = read_int(self, config, ("bits", "w_bit"), 4)
        if bits != 4:
            raise self.unsupported(f"{bits}-bit AWQ is not read", name, expected=4, actual=bits)
        self.group_size = read_group_size(self, config, ("group_size", "q_group_size"))
        self.zero_point = read_bool(self, config, "zero_point", True)
        if read_bool(self, config, "desc_act", False):
            raise self.unsupported("act-order AWQ is not read", "desc_act", expected=False, actual=True)
        versions = {n: str(config[n]).lower() for n in ("version", "format", "checkpoint_format")
                    if config.get(n) is not None}
        if len(set(versions.values())) > 1:
            raise config_error(self, "version", "version, format and checkpoint_format disagree", "one value",
                               versions)
        version = next(iter(versions.values()), "gemm")
        if version != "gemm":
            raise self.unsupported(f"the {version} packing is not read", next(iter(versions), "version"),
                                   expected="gemm", actual=config[next(iter(versions))])
        backend = config.get("backend")
        if backend is not None and str(backend).lower() not in BACKENDS:
            raise self.unsupported(f"the {backend} backend's packing is not read", "backend",
                                   expected=" | ".join(sorted(BACKENDS)), actual=backend)
        refuse_common(self, config, frozenset({"bits", "w_bit", "group_size", "q_group_size", "zero_point",
                                               "desc_act", "version", "format", "checkpoint_format", "sym",
                                               "do_fuse", "fuse_max_seq_len", "modules_to_fuse"}))
        self.name = "awq-4bit-gemm"

    def _shapes(self, n_in: int, n_out: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        groups = 1 if self.group_size == -1 else n_in // self.group_size
        return {"qweight": (torch.int32, (n_in, n_out // 8)),
                "qzeros": (torch.int32, (groups, n_out // 8)),
                "scales": (torch.float16, (groups, n_out))}

    def find(self, keys: Keys, read: Callable[[str], torch.Tensor] | None = None) -> dict[str, Packed]:
        """Every packed module among ``keys`` (``read`` is not needed: the layout is in the shapes)."""
        found: dict[str, Packed] = {}
        for module, present in sorted(leaves(keys).items()):
            if not present & set(MEMBERS):
                continue
            check_members(self, keys, module, present, MEMBERS)
            not_converted(self, module)
            n_in = keys[f"{module}.qweight"][1][0]
            n_out = keys[f"{module}.scales"][1][1]
            if n_out % 8:
                raise self.invalid(f"`{module}` has {n_out} outputs, not a multiple of 8", module, "bits",
                                   expected="out divisible by 8", actual=n_out)
            if self.group_size != -1 and n_in % self.group_size:
                raise self.invalid(f"`{module}` has {n_in} inputs, not a multiple of group_size {self.group_size}",
                                   module, "group_size", expected=f"a multiple of {self.group_size}", actual=n_in)
            for role, (_, shape) in self._shapes(n_in, n_out).items():
                actual = tuple(keys[f"{module}.{role}"][1])
                if actual != shape:
                    field_name = "bits" if role == "qweight" or actual[0] == shape[0] else "group_size"
                    raise self.invalid(f"`{module}.{role}` has shape {actual} for a {n_out}×{n_in} weight with "
                                       f"bits=4, group_size={self.group_size}", module, field_name,
                                       expected=list(shape), actual=list(actual))
            found[module] = Packed(module=module, weight=f"{module}.weight",
                                   members={m: f"{module}.{m}" for m in MEMBERS}, shape=(n_out, n_in),
                                   info={"bits": 4, "group_size": self.group_size,
                                         "groups": self._shapes(n_in, n_out)["scales"][1][0],
                                         "zero_point": self.zero_point, "version": "gemm"})
        return found

    def _grid(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device):
        """(codes (in, out), zeros (in, out), scales (in, out)) on ``device``, in output order."""
        n_out, n_in = packed.shape
        check_tensors(self, packed, tensors, self._shapes(n_in, n_out))
        order = _stream_order(n_out, device)
        codes = torch.empty(n_in, n_out, dtype=torch.int32, device=device)
        codes[:, order] = grid.unpack(tensors["qweight"].to(device), 4, n_out, dim=1)
        groups = tensors["scales"].shape[0]
        zeros = torch.empty(groups, n_out, dtype=torch.int32, device=device)
        zeros[:, order] = grid.unpack(tensors["qzeros"].to(device), 4, n_out, dim=1)
        rows = n_in // groups
        scales = tensors["scales"].to(device)
        return codes, zeros.repeat_interleave(rows, dim=0), scales.repeat_interleave(rows, dim=0), order

    def dequantize(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """fp32 (out, in): AutoAWQ's fp16 ``(iweight - izeros) * scales``, upcast and transposed."""
        codes, zeros, scales, _ = self._grid(packed, tensors, device)
        weight = grid.fp16_product(codes - zeros, scales)
        return finite_product(self, packed, scales, weight).t().contiguous()

    def quantize(self, packed: Packed, weight: torch.Tensor, old: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
        """The members for ``weight`` (fp32 (out, in)) on the grid of ``old``: a new ``qweight``, the
        old ``qzeros`` and ``scales``."""
        weight = finite_weight(self, packed, weight).to(device)
        codes, zeros, scales, order = self._grid(packed, old, device)
        new = grid.nearest_codes(weight.t(), scales, zeros, 15, codes)
        qweight = grid.pack(new[:, order], 4, packed.shape[0] // 8, dim=1)
        return {"qweight": qweight.cpu(), "qzeros": old["qzeros"].cpu(), "scales": old["scales"].cpu()}

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "bits": 4, "group_size": self.group_size, "zero_point": self.zero_point,
                "version": "gemm"}
