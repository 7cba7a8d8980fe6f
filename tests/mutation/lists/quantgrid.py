"""Mutation check of the grid and FP8 formats (GPTQ, AWQ, their packing, FP8's scales): do the quant tests catch plausible bugs?

Usage: python tests/mutation/run.py quantgrid [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the GPTQ, FP8 and merge-grid test files then run against the
copy.  A mutant is killed when a test fails.  Prints one line per mutant and the score.
bitsandbytes, the view and the merge job have their list: ``quant``.
"""

from __future__ import annotations

TESTS = ["tests/test_quant_gptq.py", "tests/test_quant_fp8.py", "tests/test_quant_merge_grid.py"]
GRID = "adapterkit/quant/grid.py"
GPTQ = "adapterkit/quant/gptq.py"
AWQ = "adapterkit/quant/awq.py"
FP8 = "adapterkit/quant/fp8.py"

# (name, file, old text, new text)
MUTANTS = [
    # -- the packed bit stream
    ("grid: 3-bit code across two words: the next word shifted by the offset, not 32 - offset", GRID,
     "value = value | (stream[:, word + 1] << (32 - shift))", "value = value | (stream[:, word + 1] << shift)"),
    ("grid: 3-bit code across two words written with the wrong shift", GRID,
     "stream[:, word + 1] |= padded[:, k] >> (32 - shift)", "stream[:, word + 1] |= padded[:, k] >> shift"),
    ("grid: words read signed (a negative word's sign spills into a 3-bit code across words)", GRID,
     "return words.to(torch.int64) & (_WORD - 1)", "return words.to(torch.int64)"),
    ("grid: word count floored (a partly used last word refused)", GRID,
     "return -(-codes * bits // 32)", "return codes * bits // 32"),
    ("grid: product left in fp32 (no fp16 rounding as the libraries compute)", GRID,
     "return (diff.to(torch.float32) * scales.to(torch.float32)).to(torch.float16).to(torch.float32)",
     "return diff.to(torch.float32) * scales.to(torch.float32)"),
    ("grid: ties rounded half up, not half to even", GRID,
     "q = torch.round(t).clamp_(0, maxq).to(torch.int32)", "q = torch.floor(t + 0.5).clamp_(0, maxq).to(torch.int32)"),
    ("grid: codes not clamped to [0, maxq] (spill into the neighbouring code)", GRID,
     "q = torch.round(t).clamp_(0, maxq).to(torch.int32)", "q = torch.round(t).to(torch.int32)"),
    # -- GPTQ
    ("gptq v1: zero point not stored minus one (no +1 on read)", GPTQ,
     "            zeros = zeros + 1\n", ""),
    ("gptq v1: the ambiguous zero code 2**bits - 1 accepted", GPTQ,
     "            if bool((zeros == (1 << self.bits) - 1).any()):", "            if False:"),
    ("gptq: gptq_v2 read as v1", GPTQ,
     'self.v1 = layout == "gptq"', 'self.v1 = layout.startswith("gptq")'),
    ("gptq: sym true with other zero points accepted", GPTQ,
     "if self.sym and not bool((zeros == 1 << (self.bits - 1)).all()):", "if False:"),
    ("gptq: an act-order g_idx accepted with desc_act false", GPTQ,
     "        if not self.desc_act:\n", "        if False:\n"),
    ("gptq: group_size -1 checked as g_idx = i // -1", GPTQ,
     "size = n_in if self.group_size == -1 else self.group_size", "size = self.group_size"),
    ("gptq: g_idx range check off by one (group == groups accepted)", GPTQ,
     "if low < 0 or high >= groups:", "if low < 0 or high > groups:"),
    ("gptq: groups floored (a partial last group refused)", GPTQ,
     "groups = 1 if self.group_size == -1 else -(-n_in // self.group_size)", "groups = 1 if self.group_size == -1 else n_in // self.group_size"),
    ("gptq: act-order dequantize takes scales by the sorted g_idx (position's group)", GPTQ,
     "weight = grid.fp16_product(codes - zeros[g_idx], scales[g_idx])",
     "weight = grid.fp16_product(codes - zeros[g_idx], scales[g_idx.sort().values])"),
    ("gptq: act-order x asymmetric: quantize pairs zeros with the sorted g_idx", GPTQ,
     "grid.nearest_codes(weight.t(), scales[g_idx], zeros[g_idx], (1 << self.bits) - 1, codes)",
     "grid.nearest_codes(weight.t(), scales[g_idx], zeros[g_idx.sort().values], (1 << self.bits) - 1, codes)"),
    ("gptq: codes clamped at 2**bits (one past the top code)", GPTQ,
     "scales[g_idx], zeros[g_idx], (1 << self.bits) - 1, codes)", "scales[g_idx], zeros[g_idx], 1 << self.bits, codes)"),
    # -- AWQ
    ("awq: nibbles in plain order, not AWQ's interleave", AWQ,
     "ORDER = (0, 2, 4, 6, 1, 3, 5, 7)", "ORDER = (0, 1, 2, 3, 4, 5, 6, 7)"),
    ("awq: the interleave applied inverted on read (gather, not scatter)", AWQ,
     'codes[:, order] = grid.unpack(tensors["qweight"].to(device), 4, n_out, dim=1)',
     'codes[:] = grid.unpack(tensors["qweight"].to(device), 4, n_out, dim=1)[:, order]'),
    ("awq: qzeros read without the interleave", AWQ,
     'zeros[:, order] = grid.unpack(tensors["qzeros"].to(device), 4, n_out, dim=1)',
     'zeros[:] = grid.unpack(tensors["qzeros"].to(device), 4, n_out, dim=1)'),
    ("awq: qweight written without the interleave", AWQ,
     "qweight = grid.pack(new[:, order], 4, packed.shape[0] // 8, dim=1)", "qweight = grid.pack(new, 4, packed.shape[0] // 8, dim=1)"),
    ("awq: groups tiled, not repeated (input row i in group i % groups)", AWQ,
     "return codes, zeros.repeat_interleave(rows, dim=0), scales.repeat_interleave(rows, dim=0), order",
     "return codes, zeros.repeat(rows, 1), scales.repeat(rows, 1), order"),
    # -- FP8: the scale grid
    ("fp8: block scales x partial edge blocks: scale grid floored", FP8,
     "return [(math.ceil(out / self.block[0]), math.ceil(inp / self.block[1]))]",
     "return [(out // self.block[0], inp // self.block[1])]"),
    ("fp8: weight_block_size read as [cols, rows]", FP8,
     'self.grid = Grid("block", block=(block[0], block[1]))', 'self.grid = Grid("block", block=(block[1], block[0]))'),
    # -- FP8: compressed-tensors
    ("compressed-tensors: dequantized in fp32, not in the scale's dtype", FP8,
     "        values = weight.to(scale.dtype)\n", "        values = weight.to(torch.float32)\n"),
    ("compressed-tensors: a non-zero zero point accepted", FP8,
     'if list(zero.shape) != packed.info["scale_shape"] or bool((zero.to(torch.float32) != 0).any()):',
     'if list(zero.shape) != packed.info["scale_shape"]:'),
    ("compressed-tensors: new weight not rounded to the scale's dtype first", FP8,
     "w = weight.to(device=device, dtype=sdtype)", "w = weight.to(device=device, dtype=torch.float32)"),
    ("compressed-tensors: scale from the positive extreme only", FP8,
     "absmax = torch.max(torch.abs(low), torch.abs(high))", "absmax = torch.abs(high)"),
    ("compressed-tensors: scale over the full range 2*448 (the /2 dropped)", FP8,
     "scale = absmax / (torch.tensor(2 * FP8_MAX, device=device).to(sdtype) / 2)",
     "scale = absmax / torch.tensor(2 * FP8_MAX, device=device).to(sdtype)"),
    # -- FP8: transformers' FineGrainedFP8
    ("finegrained: dequantized in the scale's dtype, not fp32", FP8,
     "return grid.apply(weight.to(torch.float32), scale.to(torch.float32), torch.mul)",
     "return grid.apply(weight.to(scale.dtype), scale, torch.mul).to(torch.float32)"),
    ("finegrained: scale_inv as amax / 448, not the reciprocal of 448 / amax", FP8,
     "inverse = (1.0 / scale).to(torch.float32)", "inverse = (safe / FP8_MAX).to(torch.float32)"),
    ("finegrained: scale_inv planned in the base's dtype (written F32)", FP8,
     '        found[scale] = ("F32", keys[scale][1])  # transformers writes F32 scales whatever the base held\n', ""),
]

DEFAULT_TESTS = TESTS
