"""bitsandbytes checkpoints: 4-bit NF4 / FP4 (with or without double quantization) and LLM.int8.

What transformers saves for a ``Linear4bit`` ``X`` (``QuantState.as_dict(packed=True)``):
``X.weight`` (U8, (ceil(n/2), 1): two 4-bit codes per byte, the first in the high nibble),
``X.weight.absmax`` (F32 per block of ``blocksize`` values; U8 codes when double-quantized),
``X.weight.quant_map`` (F32 (16,): the code table), with double quantization
``X.weight.nested_absmax`` (F32 per block of 256 absmax codes) and ``X.weight.nested_quant_map``
(F32 (256,)), and ``X.weight.quant_state.bitsandbytes__<nf4|fp4>``: a JSON record in U8 holding
``quant_type``, ``blocksize``, ``dtype``, ``shape`` and, nested, ``nested_blocksize``,
``nested_dtype`` and ``nested_offset`` (added back to the dequantized absmax).  For a
``Linear8bitLt``: ``X.weight`` (I8 (out, in)), ``X.SCB`` (F32 (out,): each row's absmax) and
``X.weight_format`` (U8 scalar, 0 = row-major; kept as it is).

Dequantization (bitsandbytes 0.50.2, the fp32 output of ``dequantize_4bit`` /
``int8_vectorwise_dequant``): 4-bit ``quant_map[code] * absmax[block]`` in fp32, absmax nested
as ``nested_quant_map[q] * nested_absmax[block] + offset``; 8-bit ``q * SCB[row] * (1/127)``
(the constant 7.874015718698502e-3, as bitsandbytes writes it).  Quantization with fresh scales
follows the quantizer bitsandbytes runs on the CPU: 4-bit ``quantize_4bit`` (absmax per block,
values scaled by its reciprocal, clamped to [-1, 1], bucketed between the code table's sorted
midpoints); the nested absmax as ``quantize_blockwise`` (offset = mean, blocks of 256, absmax
per block, value / absmax to the nearest code by a search from the left, ties to the lower
code); 8-bit as ``Int8Params`` (the weight cast to fp16, each
row scaled by 127 / its absmax, rounded half to even).  tests/test_quant_bnb.py checks all of it
against bitsandbytes itself.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from typing import Any

import numpy as np
import torch

from ..errors import FormatError
from .base import Keys, Packed, QuantFormat

RECORD = "quant_state.bitsandbytes__"
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
INT8_SCALE = 7.874015718698502e-3  # bitsandbytes' 1/127
TORCH_DTYPE_NAMES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


def from_config(qc: dict[str, Any], where=None) -> QuantFormat:
    """The bitsandbytes format a ``quantization_config`` names (4-bit or 8-bit)."""
    four = bool(qc.get("load_in_4bit", qc.get("_load_in_4bit", False)))
    eight = bool(qc.get("load_in_8bit", qc.get("_load_in_8bit", False)))
    if four == eight:
        raise Bnb4(qc, where).unsupported("the config must load the model in exactly one of 4-bit or 8-bit",
                                          "load_in_4bit", expected="one of load_in_4bit / load_in_8bit", actual={"load_in_4bit": four, "load_in_8bit": eight})
    return Bnb4(qc, where) if four else Bnb8(qc, where)


def _skipped(qc: dict[str, Any]) -> list[str]:
    skip = qc.get("llm_int8_skip_modules")
    if skip is None:
        return []
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise FormatError("bitsandbytes: llm_int8_skip_modules must be a list of module names", code="quant-invalid",
                          key="quantization_config.llm_int8_skip_modules", expected="list of strings", actual=skip)
    return skip


class Bnb4(QuantFormat):
    """bitsandbytes 4-bit (NF4, FP4; double quantization optional)."""

    method = "bitsandbytes"
    requantize = "fresh"

    def __init__(self, config: dict[str, Any], where=None) -> None:
        super().__init__(config, where)
        self.quant_type = config.get("bnb_4bit_quant_type", "fp4")
        self.double = bool(config.get("bnb_4bit_use_double_quant", False))
        self.name = f"bnb-{self.quant_type}" if isinstance(self.quant_type, str) else "bnb-4bit"
        if not isinstance(self.quant_type, str) or self.quant_type not in ("nf4", "fp4"):
            raise self.unsupported("a 4-bit quant type bitsandbytes does not define", "bnb_4bit_quant_type",
                                   expected="nf4 | fp4", actual=self.quant_type)
        _skipped(config)
        storage = config.get("bnb_4bit_quant_storage", "uint8")
        if not (storage is None or storage == "uint8"):
            raise self.unsupported("4-bit codes stored in another dtype than uint8 are not read", "bnb_4bit_quant_storage",
                                   expected="uint8", actual=storage)

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "double_quant": self.double,
                "compute_dtype": self.config.get("bnb_4bit_compute_dtype"), "skip_modules": _skipped(self.config)}

    def find(self, keys: Keys, read=None) -> dict[str, Packed]:
        found: dict[str, Packed] = {}
        records = [k for k in keys if RECORD in k]
        for rkey in records:
            weight, _, qtype = rkey.partition("." + RECORD)
            module = weight[: -len(".weight")] if weight.endswith(".weight") else weight
            if not weight.endswith(".weight"):
                raise self.invalid("a quant_state record that does not belong to a weight", module, "quant_state", actual=rkey)
            record = self._record(read(rkey), module)
            if qtype != self.quant_type or record.get("quant_type") != self.quant_type:
                raise self.invalid("the module's quant type disagrees with the config", module, "bnb_4bit_quant_type",
                                   expected=self.quant_type, actual=record.get("quant_type", qtype))
            nested = "nested_offset" in record
            if nested != self.double:
                raise self.invalid("double quantization disagrees with the config", module, "bnb_4bit_use_double_quant",
                                   expected=self.double, actual=nested)
            roles = {"weight": weight, "absmax": weight + ".absmax", "quant_map": weight + ".quant_map", "record": rkey}
            if nested:
                roles |= {"nested_absmax": weight + ".nested_absmax", "nested_quant_map": weight + ".nested_quant_map"}
            for extra in (".nested_absmax", ".nested_quant_map"):
                if not nested and weight + extra in keys:
                    raise self.invalid("a nested statistic without double quantization", module, "bnb_4bit_use_double_quant",
                                       expected="absent", actual=weight + extra)
            for role, key in roles.items():
                if key not in keys:
                    raise self.invalid(f"the quantized weight lacks its {role}", module, role, expected=key, actual="absent")
            info = self._check(module, record, {r: keys[k] for r, k in roles.items()})
            found[module] = Packed(module, weight, roles, info["shape"], info)
        for key in keys:  # a member whose record is missing: never a plain tensor
            for suffix in (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"):
                if key.endswith(".weight" + suffix) and key[: -len(suffix) - len(".weight")] not in found:
                    raise self.invalid("a 4-bit statistic without its quant_state record", key[: -len(suffix) - len(".weight")],
                                       "quant_state", expected=key[: -len(suffix)] + "." + RECORD + self.quant_type, actual="absent")
        return found

    def _record(self, tensor: torch.Tensor, module: str) -> dict[str, Any]:
        try:
            record = json.loads(bytes(tensor.reshape(-1).to(torch.uint8).tolist()).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self.invalid(f"the quant_state record is not JSON: {exc}", module, "quant_state") from None
        if not isinstance(record, dict):
            raise self.invalid("the quant_state record is not a JSON object", module, "quant_state", actual=type(record).__name__)
        return record

    def _check(self, module: str, record: dict[str, Any], have: Keys) -> dict[str, Any]:
        shape, blocksize, dtype = record.get("shape"), record.get("blocksize"), record.get("dtype")
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(s) is int and s > 0 for s in shape)):
            raise self.invalid("the record's shape is not an (out, in) pair of positive integers", module, "quant_state.shape",
                               expected="[out, in]", actual=shape)
        if type(blocksize) is not int or blocksize not in BLOCKSIZES:
            raise self.invalid("a block size bitsandbytes does not use", module, "quant_state.blocksize", expected=BLOCKSIZES, actual=blocksize)
        if not isinstance(dtype, str) or dtype not in TORCH_DTYPE_NAMES:
            raise self.invalid("a dtype the weight cannot have had", module, "quant_state.dtype", expected=sorted(TORCH_DTYPE_NAMES), actual=dtype)
        n = shape[0] * shape[1]
        blocks = -(-n // blocksize)
        want: dict[str, tuple[str, tuple[int, ...]]] = {
            "weight": ("U8", ((n + 1) // 2, 1)),
            "absmax": ("U8" if self.double else "F32", (blocks,)),
            "quant_map": ("F32", (16,)),
        }
        info: dict[str, Any] = {"shape": (shape[0], shape[1]), "blocksize": blocksize, "dtype": TORCH_DTYPE_NAMES[dtype]}
        if self.double:
            nb = record.get("nested_blocksize")
            offset = record.get("nested_offset")
            if type(nb) is not int or nb not in BLOCKSIZES:
                raise self.invalid("a nested block size bitsandbytes does not use", module, "quant_state.nested_blocksize",
                                   expected=BLOCKSIZES, actual=nb)
            if record.get("nested_dtype") != "float32":
                raise self.invalid("nested statistics other than float32 are not read", module, "quant_state.nested_dtype",
                                   expected="float32", actual=record.get("nested_dtype"))
            if type(offset) not in (int, float) or not math.isfinite(offset):
                raise self.invalid("the nested offset is not a finite number", module, "quant_state.nested_offset", actual=offset)
            want["nested_absmax"] = ("F32", (-(-blocks // nb),))
            want["nested_quant_map"] = ("F32", (256,))
            info |= {"nested_blocksize": nb, "offset": float(offset)}
        for role, (dt, sh) in want.items():
            got = have[role]
            if got[0] != dt or tuple(got[1]) != sh:
                raise self.invalid(f"the {role} tensor disagrees with the record (shape {shape}, blocksize {blocksize})", module,
                                   role, expected=f"{dt} {list(sh)}", actual=f"{got[0]} {list(got[1])}")
        return info

    # -- the math ------------------------------------------------------------------------------

    def absmax(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Each block's fp32 absmax (nested ones dequantized and the offset added back)."""
        info = packed.info
        if not self.double:
            return tensors["absmax"].to(device=device, dtype=torch.float32)
        codes = tensors["absmax"].to(device=device).long()
        table = tensors["nested_quant_map"].to(device=device, dtype=torch.float32)
        scales = tensors["nested_absmax"].to(device=device, dtype=torch.float32)
        values = table[codes] * scales.repeat_interleave(info["nested_blocksize"])[: codes.numel()]
        # the offset of these tensors: a rewritten module's record holds its new one
        offset = self._record(tensors["record"], packed.module)["nested_offset"] if "record" in tensors else info["offset"]
        return values + torch.tensor(offset, dtype=torch.float32, device=device)

    def dequantize(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        out, inp = packed.shape
        n, blocksize = out * inp, packed.info["blocksize"]
        values = unpack_4bit(tensors["weight"].to(device=device).reshape(-1), tensors["quant_map"])
        absmax = self.absmax(packed, tensors, device)
        blocks = absmax.numel()
        if values.numel() != blocks * blocksize:  # a partial last block (or an odd count): pad, then cut
            padded = torch.zeros(blocks * blocksize, dtype=torch.float32, device=device)
            padded[:n] = values[:n]
            values = padded
        values.view(blocks, blocksize).mul_(absmax.view(-1, 1))  # code value × its block's absmax: one fp32 product
        return values[:n].reshape(out, inp)

    def row_align(self, packed: Packed) -> int:
        inp, blocksize = packed.shape[1], packed.info["blocksize"]
        return blocksize // math.gcd(inp, blocksize)  # rows whose first element starts a block

    def rows(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device):
        inp = packed.shape[1]
        blocksize = packed.info["blocksize"]
        table = tensors["quant_map"]
        data = tensors["weight"].reshape(-1)
        absmax = self.absmax(packed, tensors, device)

        def fetch(start: int, stop: int) -> torch.Tensor:
            first, last = start * inp, stop * inp  # elements; first starts a block (row_align)
            values = unpack_4bit(data[first // 2: (last + 1) // 2].to(device=device), table)
            blocks = -(-(last - first) // blocksize)
            if values.numel() != blocks * blocksize:
                padded = torch.zeros(blocks * blocksize, dtype=torch.float32, device=device)
                padded[: last - first] = values[: last - first]
                values = padded
            values.view(blocks, blocksize).mul_(absmax[first // blocksize: first // blocksize + blocks].view(-1, 1))
            return values[: last - first].reshape(stop - start, inp)

        return fetch

    def quantize(self, packed: Packed, weight: torch.Tensor, old: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
        rows = self.row_quantizer(packed, old, device)
        rows.add(0, packed.shape[0], weight)
        return rows.finish()

    def row_quantizer(self, packed: Packed, old: dict[str, torch.Tensor], device: torch.device) -> _Rows4:
        return _Rows4(self, packed, old, device)

    def members(self, packed: Packed, codes: torch.Tensor, absmax: torch.Tensor, old: dict[str, torch.Tensor],
                device: torch.device) -> dict[str, torch.Tensor]:
        """The members of a module quantized to ``codes`` (packed U8) and its fp32 ``absmax``:
        the absmax quantized again (double quantization) and the quant_state record."""
        info = packed.info
        new = {"weight": codes.reshape(-1, 1).cpu(), "quant_map": old["quant_map"].clone()}
        record: dict[str, Any] = {"quant_type": self.quant_type, "blocksize": info["blocksize"],
                                  "dtype": {v: k for k, v in TORCH_DTYPE_NAMES.items()}[info["dtype"]], "shape": list(packed.shape)}
        if self.double:
            offset = absmax.mean()
            nested_map = old["nested_quant_map"].to(device=device, dtype=torch.float32)
            q, scales = quantize_blockwise(absmax - offset, nested_map, info["nested_blocksize"])
            new |= {"absmax": q.cpu(), "nested_absmax": scales.cpu(), "nested_quant_map": old["nested_quant_map"].clone()}
            record |= {"nested_blocksize": info["nested_blocksize"], "nested_dtype": "float32", "nested_offset": offset.item()}
        else:
            new["absmax"] = absmax.cpu()
        new["record"] = pack_record(record, self.record_size(packed))
        return new

    def record_size(self, packed: Packed) -> int:
        """The bytes of a rewritten record: the longest any offset could print as, so that the
        output's layout is known before the new offsets are (spaces pad the JSON; see
        :func:`pack_record`)."""
        dtype = {v: k for k, v in TORCH_DTYPE_NAMES.items()}[packed.info["dtype"]]
        record = {"quant_type": self.quant_type, "blocksize": packed.info["blocksize"], "dtype": dtype, "shape": list(packed.shape)}
        if not self.double:
            return len(json.dumps(record).encode())  # no number in it varies: exactly bitsandbytes' bytes
        record |= {"nested_blocksize": packed.info["nested_blocksize"], "nested_dtype": "float32",
                   "nested_offset": -2.2250738585072014e-308}  # as long as a double's repr gets
        return len(json.dumps(record).encode())

    def planned(self, packed: Packed, keys: Keys) -> Keys:
        plan = {key: keys[key] for key in packed.members.values()}
        plan[packed.members["record"]] = ("U8", (self.record_size(packed),))
        return plan


class _Rows4:
    """4-bit quantization a block of rows at a time: codes and absmax per block need only the
    block's own values; the double quantization of the absmax waits for all of them."""

    def __init__(self, fmt: Bnb4, packed: Packed, old: dict[str, torch.Tensor], device: torch.device) -> None:
        self.fmt, self.packed, self.old, self.device = fmt, packed, old, device
        n, self.blocksize = packed.shape[0] * packed.shape[1], packed.info["blocksize"]
        self.table = old["quant_map"].to(device=device, dtype=torch.float32)
        self.codes = torch.empty((n + 1) // 2, dtype=torch.uint8)
        self.absmax = torch.empty(-(-n // self.blocksize), dtype=torch.float32, device=device)

    def add(self, start: int, stop: int, rows: torch.Tensor) -> None:
        first = start * self.packed.shape[1]  # starts a block (row_align), so an even element
        codes, absmax = quantize_4bit(rows.to(device=self.device, dtype=torch.float32).reshape(-1), self.table, self.blocksize)
        self.codes[first // 2: first // 2 + codes.numel()] = codes.cpu()
        self.absmax[first // self.blocksize: first // self.blocksize + absmax.numel()] = absmax

    def finish(self) -> dict[str, torch.Tensor]:
        return self.fmt.members(self.packed, self.codes, self.absmax, self.old, self.device)


def unpack_4bit(data: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The code values (fp32) of packed 4-bit bytes, two per byte, the high nibble first: two
    bytes (four values) per lookup in a table of the 65,536 byte pairs, on the device of ``data``."""
    quads = _quads(tuple(table.tolist())).to(data.device)
    even = data.numel() // 2 * 2
    if data.storage_offset() % 2 or not data.is_contiguous():
        data = data.contiguous().clone()  # an int16 view needs an even offset
    values = torch.nn.functional.embedding(data[:even].view(torch.int16).int() & 0xFFFF, quads).reshape(-1)
    if even == data.numel():
        return values
    last = data[even:].int()
    return torch.cat([values, quads[last * 257, :2].reshape(-1)])  # the pair (b, b): its first two values are byte b's


@functools.lru_cache(maxsize=8)
def _quads(values: tuple[float, ...]) -> torch.Tensor:
    """(65536, 4): for the 16-bit number whose low byte is ``a`` and high byte ``b`` (the byte
    order of ``data.view(int16)`` on a little-endian machine), the values of ``a``'s nibbles
    then ``b``'s."""
    table = torch.tensor(values, dtype=torch.float32)
    pairs = torch.stack([table.repeat_interleave(16), table.repeat(16)], dim=1)  # byte -> (high nibble, low nibble)
    number = torch.arange(1 << 16)
    low, high = (number & 0xFF, number >> 8) if sys.byteorder == "little" else (number >> 8, number & 0xFF)
    return torch.cat([pairs[low], pairs[high]], dim=1)


def pack_record(record: dict[str, Any], size: int) -> torch.Tensor:
    """A quant_state record as bitsandbytes packs it (``json.dumps`` as UTF-8 bytes in a U8
    tensor), padded with trailing spaces to ``size`` bytes (JSON ignores them; bitsandbytes'
    ``unpack_tensor_to_dict`` reads the same dict)."""
    data = json.dumps(record).encode()
    if len(data) > size:
        raise ValueError(f"a quant_state record of {len(data)} bytes does not fit in {size}")
    return torch.tensor(list(data + b" " * (size - len(data))), dtype=torch.uint8)


def quantize_4bit(flat: torch.Tensor, table: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' 4-bit quantizer (its CPU implementation): packed codes (U8) and fp32 absmax."""
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    body = flat[:full].reshape(-1, blocksize)
    absmax = body.abs().amax(dim=-1)
    scaled = torch.clamp_(body * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        last = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / last, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    codes = nearest_codes(scaled, table)
    return (codes[::2] << 4) | codes[1::2], absmax


def nearest_codes(scaled: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each value's code (U8): the table entry it falls to between the sorted table's midpoints,
    ``torch.bucketize`` (right=False) then mapped back to the table's order.

    On the CPU the code is looked up by the value's top 16 bits (sign, exponent, 7 mantissa
    bits): the floats sharing them form one interval, so where both its ends fall to the same
    code every value in it does (:class:`Codebook`); the few intervals a midpoint cuts, and NaN,
    are bucketed value by value.  Same codes, ~4x faster than bucketing everything."""
    book = Codebook.of(table)
    if scaled.device.type != "cpu" or sys.byteorder != "little" or scaled.dtype != torch.float32:
        return book.bucket(scaled)
    values = scaled.contiguous().numpy()
    codes = np.take(book.lut, values.view(np.uint16)[1::2])  # little-endian: the upper half of each fp32
    if codes.max() == CUT:
        where = np.flatnonzero(codes == CUT)
        codes[where] = book.bucket(torch.from_numpy(values[where])).numpy()
    return torch.from_numpy(codes)


CUT = 255  # Codebook.lut's mark of an interval a midpoint cuts


class Codebook:
    """A 4-bit code table's sorted order, the midpoints between its sorted values, and ``lut``:
    for each 16-bit prefix of an fp32, the code every float with that prefix falls to, or
    ``CUT`` where they do not all fall to one (or the interval holds NaN or Inf)."""

    def __init__(self, values: tuple[float, ...]) -> None:
        table = torch.tensor(values, dtype=torch.float32)
        self.order = torch.argsort(table)
        self.bounds = (table[self.order[:-1]] + table[self.order[1:]]) / 2
        prefix = torch.arange(1 << 16, dtype=torch.int64) << 16
        ends = [(prefix | low).to(torch.int32).view(torch.float32) for low in (0, 0xFFFF)]
        first, last = (torch.bucketize(e, self.bounds) for e in ends)
        whole = (first == last) & torch.isfinite(ends[0]) & torch.isfinite(ends[1])
        self.lut = torch.where(whole, self.order[first], torch.full_like(first, CUT)).to(torch.uint8).numpy()

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def _cached(values: tuple[float, ...]) -> Codebook:
        return Codebook(values)

    @classmethod
    def of(cls, table: torch.Tensor) -> Codebook:
        return cls._cached(tuple(table.tolist()))

    def bucket(self, values: torch.Tensor) -> torch.Tensor:
        order, bounds = self.order.to(values.device), self.bounds.to(values.device)
        return order[torch.bucketize(values, bounds)].to(torch.uint8)


def quantize_blockwise(flat: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' 8-bit blockwise quantizer (its CPU kernel): codes (U8) and fp32 absmax per
    block; each value / absmax goes to the nearest code, ties to the lower one."""
    n = flat.numel()
    blocks = -(-n // blocksize)
    padded = torch.nn.functional.pad(flat, (0, blocks * blocksize - n)).reshape(blocks, blocksize)
    absmax = padded.abs().max(dim=1)[0]
    if n % blocksize:  # the last block's absmax over its own values only (pads are zeros: no change)
        absmax[-1] = flat[(blocks - 1) * blocksize:].abs().max()
    normed = (padded / absmax.view(-1, 1)).reshape(-1)[:n]
    left = (torch.searchsorted(code, normed, right=True) - 1).clamp(0, code.numel() - 1)
    right = (left + 1).clamp(max=code.numel() - 1)
    closer = ((normed - code[right]).abs() < (normed - code[left]).abs()) & (left < code.numel() - 1)
    return torch.where(closer, right, left).to(torch.uint8), absmax


class Bnb8(QuantFormat):
    """bitsandbytes LLM.int8 (``Linear8bitLt`` without fp16 weights)."""

    method = "bitsandbytes"
    name = "bnb-int8"
    requantize = "fresh"

    def __init__(self, config: dict[str, Any], where=None) -> None:
        super().__init__(config, where)
        _skipped(config)
        if config.get("llm_int8_has_fp16_weight"):
            raise self.unsupported("8-bit checkpoints that keep fp16 weights are not read", "llm_int8_has_fp16_weight",
                                   expected=False, actual=True)

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "threshold": self.config.get("llm_int8_threshold"), "skip_modules": _skipped(self.config)}

    def find(self, keys: Keys, read=None) -> dict[str, Packed]:
        found: dict[str, Packed] = {}
        for key, (dtype, shape) in keys.items():
            if not key.endswith(".SCB"):
                continue
            module = key[: -len(".SCB")]
            weight = module + ".weight"
            if weight not in keys:
                raise self.invalid("an SCB statistic without its weight", module, "weight", expected=weight, actual="absent")
            wd, ws = keys[weight]
            if wd != "I8" or len(ws) != 2:
                raise self.invalid("an 8-bit weight must be I8 (out, in)", module, "weight", expected="I8 [out, in]", actual=f"{wd} {list(ws)}")
            if dtype != "F32" or tuple(shape) != (ws[0],):
                raise self.invalid("SCB holds one F32 absmax per output row", module, "SCB", expected=f"F32 [{ws[0]}]", actual=f"{dtype} {list(shape)}")
            roles = {"weight": weight, "SCB": key}
            fmt = module + ".weight_format"
            if fmt in keys:
                roles["weight_format"] = fmt
            found[module] = Packed(module, weight, roles, (ws[0], ws[1]), {"dtype": self.dtype_name()})
        for key, (dtype, _) in keys.items():  # an int8 weight without SCB would be copied as integers
            if dtype == "I8" and key.endswith(".weight") and key[: -len(".weight")] not in found:
                raise self.invalid("an I8 weight without its SCB statistic", key[: -len(".weight")], "SCB",
                                   expected=key[: -len(".weight")] + ".SCB", actual="absent")
        return found

    def dtype_name(self) -> str:
        return "F16"  # bitsandbytes' 8-bit layers dequantize towards fp16 (Int8Params quantizes an fp16 copy)

    def dequantize(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        q = tensors["weight"].to(device=device)
        scb = tensors["SCB"].to(device=device, dtype=torch.float32)
        return q * scb.view(-1, 1) * INT8_SCALE

    def rows(self, packed: Packed, tensors: dict[str, torch.Tensor], device: torch.device):
        q, scb = tensors["weight"], tensors["SCB"].to(dtype=torch.float32)
        return lambda start, stop: q[start:stop].to(device=device) * scb[start:stop].to(device=device).view(-1, 1) * INT8_SCALE

    def quantize(self, packed: Packed, weight: torch.Tensor, old: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, torch.Tensor]:
        half = weight.to(device=device, dtype=torch.float16)
        stats = half.abs().max(dim=1).values.float()
        q = torch.round(half * (127.0 / stats.unsqueeze(-1))).to(torch.int8)
        new = {"weight": q.cpu(), "SCB": stats.cpu()}
        if "weight_format" in old:
            new["weight_format"] = old["weight_format"].clone()
        return new


__all__ = ["Bnb4", "Bnb8", "from_config", "pack_record", "quantize_4bit", "quantize_blockwise"]
