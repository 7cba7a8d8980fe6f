"""Integer grids packed into int32 words: the arithmetic GPTQ and AWQ share.

Both formats store b-bit codes q in int32 words and a weight as ``scale * (q - zero)``.  The
packing is one rule for every bit width: along the packed dimension, the codes form a
little-endian bit stream (code k occupies bits ``b*k .. b*k+b-1`` of the concatenated words,
word 0 lowest), so 2-, 4- and 8-bit codes sit whole in one word and 3-bit codes run across word
boundaries (GPTQ's 10 | 1 | 10 | 1 | 10 scheme for 32 codes in 3 words is exactly this stream).

Everything here is plain torch on the tensors' device, exact integer work plus the two float
steps the libraries take:

- ``fp16_product``: ``float16(scale * diff)``, the product the reference dequantizers compute in
  fp16 (int8/int16 difference times fp16 scale), returned upcast to fp32.  The fp32 product of an
  fp16 scale and an integer of at most 9 bits is exact, so rounding it once to fp16 gives the
  correctly rounded fp16 product on any device;
- ``nearest_codes``: ``clamp(round(w / scale + zero), 0, maxq)`` in fp64, ties to even (what
  ``torch.round`` does in the libraries' packers, which compute ``round((w + zero*scale) /
  scale)``); fp64 decides every tie exactly for an fp32 weight and an fp16 scale.
"""

from __future__ import annotations

import torch

_WORD = 1 << 32


def words_to_uint(words: torch.Tensor) -> torch.Tensor:
    """int32 words as their unsigned values in int64."""
    return words.to(torch.int64) & (_WORD - 1)


def uint_to_words(values: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values (int64, < 2**32) as int32 words (two's complement)."""
    values = values & (_WORD - 1)
    return torch.where(values >= (1 << 31), values - _WORD, values).to(torch.int32)


def word_count(codes: int, bits: int) -> int:
    """int32 words that hold ``codes`` codes of ``bits`` bits (the last one partly used)."""
    return -(-codes * bits // 32)


def unpack(words: torch.Tensor, bits: int, count: int, dim: int) -> torch.Tensor:
    """The first ``count`` codes (int32) along ``dim`` (0 or 1) of a 2-D tensor of int32 words."""
    if dim == 1:
        return unpack(words.t(), bits, count, 0).t()
    rows, cols = words.shape
    per_block = bits  # 32 codes fill `bits` words exactly
    blocks = -(-rows // per_block)
    stream = words_to_uint(words)
    if blocks * per_block != rows:
        stream = torch.cat([stream, stream.new_zeros(blocks * per_block - rows, cols)])
    stream = stream.view(blocks, per_block, cols)
    mask = (1 << bits) - 1
    out = torch.empty(blocks, 32, cols, dtype=torch.int32, device=words.device)
    for k in range(32):
        offset = bits * k
        word, shift = divmod(offset, 32)
        value = stream[:, word] >> shift
        if shift + bits > 32:
            value = value | (stream[:, word + 1] << (32 - shift))
        out[:, k] = (value & mask).to(torch.int32)
    return out.view(blocks * 32, cols)[:count]


def pack(codes: torch.Tensor, bits: int, count: int, dim: int) -> torch.Tensor:
    """``count`` int32 words along ``dim`` holding ``codes`` (values in [0, 2**bits)); codes past
    the last one are zero."""
    if dim == 1:
        return pack(codes.t(), bits, count, 0).t().contiguous()
    n, cols = codes.shape
    blocks = max(-(-n // 32), -(-count // bits))
    padded = codes.to(torch.int64)
    if blocks * 32 != n:
        padded = torch.cat([padded, padded.new_zeros(blocks * 32 - n, cols)])
    padded = padded.view(blocks, 32, cols)
    stream = torch.zeros(blocks, bits, cols, dtype=torch.int64, device=codes.device)
    for k in range(32):
        offset = bits * k
        word, shift = divmod(offset, 32)
        stream[:, word] |= (padded[:, k] << shift) & (_WORD - 1)
        if shift + bits > 32:
            stream[:, word + 1] |= padded[:, k] >> (32 - shift)
    return uint_to_words(stream.view(blocks * bits, cols)[:count])


def fp16_product(diff: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 of ``float16(scales * diff)``: ``diff`` small integers, ``scales`` fp16 (broadcast)."""
    return (diff.to(torch.float32) * scales.to(torch.float32)).to(torch.float16).to(torch.float32)


def nearest_codes(weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, maxq: int,
                  old: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """Codes (int32) of the grid point nearest to each element of ``weight``.

    All arguments have the same 2-D shape (``scales`` fp16, ``zeros`` and ``old`` integers):
    ``clamp(round_half_even(weight / scales + zeros), 0, maxq)`` computed in fp64, row chunks of
    about ``chunk`` elements at a time.  Where a scale is zero every code gives the same value
    and the old code is kept (so repacking is idempotent).
    """
    rows = max(1, chunk // max(1, weight.shape[1]))
    out = torch.empty(weight.shape, dtype=torch.int32, device=weight.device)
    for start in range(0, weight.shape[0], rows):
        part = slice(start, start + rows)
        s = scales[part].to(torch.float64)
        t = weight[part].to(torch.float64) / torch.where(s == 0, 1.0, s) + zeros[part].to(torch.float64)
        q = torch.round(t).clamp_(0, maxq).to(torch.int32)
        out[part] = torch.where(s == 0, old[part].to(torch.int32), q)
    return out
