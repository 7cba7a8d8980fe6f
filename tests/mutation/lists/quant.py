"""Mutation check of quantized checkpoints (bitsandbytes, the dequantized view, merge into / out of them, as_trained, extract, info): do the quant tests catch plausible bugs?

Usage: python tests/mutation/run.py quant [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the quant test files then run against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.  The grid formats
(GPTQ, AWQ) and FP8's own math have their list: ``quantgrid``.
"""

from __future__ import annotations

TESTS = ["tests/test_quant_bnb.py", "tests/test_quant_fuzz.py", "tests/test_quant_merge_grid.py", "tests/test_quant_fp8.py"]
BNB = "adapterkit/quant/bnb.py"
VIEW = "adapterkit/quant/view.py"
MQ = "adapterkit/ops/merge_quantized.py"
OPS = "adapterkit/ops/merging.py"
EXTRACT = "adapterkit/ops/extract.py"
SUMMARY = "adapterkit/summary.py"

# (name, file, old text, new text)
MUTANTS = [
    # -- bitsandbytes 4-bit: reading
    ("bnb4: nibble order swapped on read (first code in the low nibble)", BNB,
     "pairs = torch.stack([table.repeat_interleave(16), table.repeat(16)], dim=1)  # byte -> (high nibble, low nibble)",
     "pairs = torch.stack([table.repeat(16), table.repeat_interleave(16)], dim=1)  # byte -> (high nibble, low nibble)"),
    ("bnb4: the two bytes of a lookup read in the wrong order (big-endian assumed)", BNB,
     'low, high = (number & 0xFF, number >> 8) if sys.byteorder == "little"',
     'low, high = (number >> 8, number & 0xFF) if sys.byteorder == "little"'),
    ("bnb4: streamed rows take the absmax of the wrong blocks (off by one block)", BNB,
     "absmax[first // blocksize: first // blocksize + blocks]", "absmax[first // blocksize + 1: first // blocksize + 1 + blocks]"),
    ("bnb4: nested offset not added back to the absmax", BNB,
     "        return values + torch.tensor(offset, dtype=torch.float32, device=device)", "        return values"),
    ("bnb4: offset of the base's record used for rewritten tensors", BNB,
     'offset = self._record(tensors["record"], packed.module)["nested_offset"] if "record" in tensors else info["offset"]',
     'offset = info["offset"]'),
    ("bnb4: nested absmax spread over blocksize, not nested_blocksize", BNB,
     'values = table[codes] * scales.repeat_interleave(info["nested_blocksize"])[: codes.numel()]',
     'values = table[codes] * scales.repeat_interleave(info["blocksize"])[: codes.numel()]'),
    ("bnb4: blocks counted with floor (a partial last block's absmax refused)", BNB,
     "        blocks = -(-n // blocksize)\n        want", "        blocks = n // blocksize\n        want"),
    ("bnb4: odd element count: the half-used last byte not counted", BNB,
     '"weight": ("U8", ((n + 1) // 2, 1)),', '"weight": ("U8", (n // 2, 1)),'),
    ("bnb4: double quant x partial last nested block: nested absmax count floored", BNB,
     'want["nested_absmax"] = ("F32", (-(-blocks // nb),))', 'want["nested_absmax"] = ("F32", (blocks // nb,))'),
    # -- bitsandbytes 4-bit: writing
    ("bnb4: nibble order swapped on write", BNB,
     "return (codes[::2] << 4) | codes[1::2], absmax", "return (codes[1::2] << 4) | codes[::2], absmax"),
    ("bnb4: nested absmax quantized without subtracting the offset", BNB,
     'q, scales = quantize_blockwise(absmax - offset, nested_map, info["nested_blocksize"])',
     'q, scales = quantize_blockwise(absmax, nested_map, info["nested_blocksize"])'),
    ("bnb4: nested codes truncated to the lower neighbour, not the nearest", BNB,
     "return torch.where(closer, right, left).to(torch.uint8), absmax", "return left.to(torch.uint8), absmax"),
    ("bnb4: double quant record planned at the base's size (the padded record does not fit)", BNB,
     '        plan[packed.members["record"]] = ("U8", (self.record_size(packed),))\n        return plan',
     "        return plan"),
    # -- bitsandbytes LLM.int8
    ("bnb8: divided by 127 instead of times bitsandbytes' 1/127 constant", BNB,
     "return q * scb.view(-1, 1) * INT8_SCALE", "return q * scb.view(-1, 1) / 127"),
    ("bnb8: quantized from the fp32 weight, not its fp16 copy", BNB,
     "half = weight.to(device=device, dtype=torch.float16)", "half = weight.to(device=device, dtype=torch.float32)"),
    ("bnb8: codes truncated, not rounded", BNB,
     "q = torch.round(half * (127.0 / stats.unsqueeze(-1))).to(torch.int8)", "q = (half * (127.0 / stats.unsqueeze(-1))).to(torch.int8)"),
    ("bnb8: absmax per column, not per row", BNB,
     "stats = half.abs().max(dim=1).values.float()", "stats = half.abs().max(dim=0).values.float()"),
    ("bnb8: SCB of the wrong length accepted", BNB,
     'if dtype != "F32" or tuple(shape) != (ws[0],):', 'if dtype != "F32":'),
    # -- the dequantized view, info
    ("view: the record's dtype ignored (every weight in the config's dtype)", VIEW,
     'self._keys[p.weight] = (p.info.get("dtype") or self.dense_dtype, tuple(p.shape))',
     "self._keys[p.weight] = (self.dense_dtype, tuple(p.shape))"),
    ("view: a lone packed .weight passed on as a dense tensor", VIEW,
     'if key.endswith(MEMBER_SUFFIXES) or (key.endswith(".weight") and value[0] in PACKED_DTYPES):',
     "if key.endswith(MEMBER_SUFFIXES):"),
    ("info: dense parameters counted over the stored (packed) tensors", SUMMARY,
     '{"dense_parameters": sum(math.prod(shape) for _, shape in view.keys().values())}',
     '{"dense_parameters": sum(math.prod(shape) for _, shape in view.stored.values())}'),
    # -- merge into a quantized base: plan, survival, config
    ("survival: moved norm taken from the requested weight, not the written one", MQ,
     "moved = frobenius(torch.sub(written, base, out=diff))",
     "moved = frobenius(torch.sub(value, base, out=diff))"),
    ("survival: the lost-ΔW threshold inverted", MQ,
     '"lost_modules": [m.module for m in modules if m.lost >= LOST]', '"lost_modules": [m.module for m in modules if m.lost < LOST]'),
    ("survival: the lost-ΔW warning never added to the notes", OPS,
     "                notes += lost_warning(report.quantized)\n", ""),
    ("requantized plan: untouched modules planned at requantized sizes", MQ,
     "sizes = view.fmt.planned(p, view.stored) if key in changed else view.stored",
     "sizes = view.fmt.planned(p, view.stored)"),
    ("requantized: untouched modules re-quantized instead of copied", MQ,
     "                if changes:\n                    self._requantize(", "                if True:\n                    self._requantize("),
    ("dense output keeps quantization_config", MQ,
     'config = {k: v for k, v in config.items() if k != "quantization_config"}', "config = dict(config)"),
    ("dense output: config.json rebuilt from the base's (the dtype rewrite lost)", MQ,
     '    if "config.json" in files:\n        config = json.loads(files["config.json"])\n    if not isinstance(config, dict) or "quantization_config"',
     '    if not isinstance(config, dict) or "quantization_config"'),
    ("quantized unmerge adds ΔW", OPS,
     "job.run(writer, _Tensors(direction, loaded, weights", 'job.run(writer, _Tensors("merge", loaded, weights'),
    # -- as_trained (QLoRA rounding of a dense base)
    ("as_trained: the output embedding (lm_head) rounded too", MQ,
     'if last in INPUT_EMBEDDINGS or last in OUTPUT_EMBEDDINGS or "embed" in last or "wpe" == last:',
     'if last in INPUT_EMBEDDINGS or "embed" in last or "wpe" == last:'),
    ("as_trained: skip modules matched by full name only (no suffix)", MQ,
     'if any(module == s or module.endswith("." + s) for s in settings.skip):', "if any(module == s for s in settings.skip):"),
    ("as_trained: nested blocks of blocksize, not bitsandbytes' 256", MQ,
     '"nested_blocksize": 256, "offset": 0.0}', '"nested_blocksize": settings.blocksize, "offset": 0.0}'),
    ("as_trained: dynamic map from the split's lower bounds, not its midpoints", MQ,
     "means = (bounds[:-1] + bounds[1:]) / 2.0", "means = bounds[:-1]"),
    ("as_trained: weights no adapter changes copied unrounded", MQ,
     "if p is None and not changes and key not in self.rounded and dtype == self.plan[key][0]:",
     "if p is None and not changes and dtype == self.plan[key][0]:"),
    ("as_trained: accepted on an already quantized base", OPS,
     '    if view is not None:\n        raise ArgumentError("as_trained rounds a 16-bit base',
     '    if False:\n        raise ArgumentError("as_trained rounds a 16-bit base'),
    # -- extract against a quantized side
    ("extract: a quantized non-target compared byte for byte (0 bytes: always unchanged)", EXTRACT,
     "    if base.quantized(key) or ft.quantized(key):\n        return _same_values(base, ft, key)\n", ""),
    ("extract: the dense side upcast instead of the quantized side rounded to its dtype", EXTRACT,
     "        return torch.equal(b.to(f.dtype), f)", "        return torch.equal(b, f.to(b.dtype))"),
    ("extract: a quantized fine-tuned side read as its stored tensor", EXTRACT,
     "        if bside.quantized(key) or fside.quantized(key):\n            b, f = bside.read(key, dev), fside.read(key, dev)",
     "        if bside.quantized(key):\n            b, f = bside.read(key, dev), fside.read(key, dev)"),
]

DEFAULT_TESTS = TESTS
