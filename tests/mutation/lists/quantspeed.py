"""Mutation check of the faster requantize (4-bit codes by lookup, two bytes per unpack, rows a block at a time, survival in a second pass, finiteness and norms): do the tests catch plausible bugs?

Usage: python tests/mutation/run.py quantspeed [--only SUBSTRING]

Written from the code alone (bitsandbytes' semantics, the docstrings, docs/quantized.md), before
reading the tests, so that the bugs are not chosen by what the tests already check.  Each mutant
is one textual patch (a plausible bug) applied to a temporary copy of the repository (never the
real files); the test files then run against the copy with ``-x``.  A mutant is killed when a
test fails.  Each mutant lists every test file of the list, the most relevant first (``-x``
stops at the first failure).  Covers: ``quant.bnb`` (``unpack_4bit`` / ``_quads``,
``nearest_codes`` / ``Codebook``, ``quantize_4bit``, ``_Rows4``, ``Bnb4.rows`` / ``row_align`` /
``members``), ``quant.base`` (the default ``rows()``'s copy), ``linalg.norms`` (``all_finite``,
``nonfinite_count``, ``frobenius``), ``ops.merge_quantized`` (``_fills``, ``_spans``, ``_adder``,
``_requantize_rows``, ``_requantize``) and the finiteness checks of merge, extract and attach.
"""

from __future__ import annotations

BNB = "adapterkit/quant/bnb.py"
BASE = "adapterkit/quant/base.py"
NORMS = "adapterkit/linalg/norms.py"
MQ = "adapterkit/ops/merge_quantized.py"
OPS = "adapterkit/ops/merging.py"
EXTRACT = "adapterkit/ops/extract.py"
INJECT = "adapterkit/inject/merge.py"

_ALL = ["tests/test_quant_bnb.py", "tests/test_quant_merge_grid.py", "tests/test_linalg.py", "tests/test_quant_fuzz.py",
        "tests/test_merge.py", "tests/test_extract.py", "tests/test_attach_bnb.py"]
TESTS = _ALL


def _first(*files: str) -> list[str]:
    """Every test file of the list, ``files`` first (``-x`` stops at the first failure)."""
    return [*files, *(f for f in _ALL if f not in files)]


QB = _first("tests/test_quant_bnb.py", "tests/test_quant_fuzz.py")  # the bitsandbytes math
QM = _first("tests/test_quant_merge_grid.py", "tests/test_quant_bnb.py")  # merge into a quantized base
LA = _first("tests/test_linalg.py")  # the norms

# (name, file, old text, new text, tests)
MUTANTS = [
    # -- unpack_4bit / _quads: two bytes per lookup
    ("unpack: an odd trailing byte dropped (odd byte count)", BNB,
     "    return torch.cat([values, quads[last * 257, :2].reshape(-1)])  # the pair (b, b)",
     "    return values  # the pair (b, b)", QB),
    ("unpack: a slice at an odd byte offset viewed as int16 as it is", BNB,
     "    if data.storage_offset() % 2 or not data.is_contiguous():",
     "    if not data.is_contiguous():", QB),
    # -- nearest_codes / Codebook: the 65,536-entry lookup and its fallback
    ("codes: the lower 16 bits of each fp32 used as its prefix", BNB,
     "codes = np.take(book.lut, values.view(np.uint16)[1::2])",
     "codes = np.take(book.lut, values.view(np.uint16)[::2])", QB),
    ("codes: cut intervals bucketed only when every value is cut (min, not max)", BNB,
     "    if codes.max() == CUT:", "    if codes.min() == CUT:", QB),
    ("codebook: lut holds sorted positions, not table codes (FP4 unmapped)", BNB,
     "self.lut = torch.where(whole, self.order[first], torch.full_like(first, CUT))",
     "self.lut = torch.where(whole, first, torch.full_like(first, CUT))", QB),
    ("codebook: an interval's upper end taken at low bits 0x7FFF (cut intervals seen whole)", BNB,
     "for low in (0, 0xFFFF)]", "for low in (0, 0x7FFF)]", QB),
    ("codebook: interval ends bucketed right=True (FP4's -0/+0 midpoint: exact zeros)", BNB,
     "first, last = (torch.bucketize(e, self.bounds) for e in ends)",
     "first, last = (torch.bucketize(e, self.bounds, right=True) for e in ends)", QB),
    ("codebook: the fallback's buckets not mapped back to the table's order", BNB,
     "        return order[torch.bucketize(values, bounds)].to(torch.uint8)",
     "        return torch.bucketize(values, bounds).to(torch.uint8)", QB),
    ("codebook: cached (and built) under the table rounded to fp16", BNB,
     "        return cls._cached(tuple(table.tolist()))",
     "        return cls._cached(tuple(table.half().tolist()))", QB),
    # -- quantize_4bit
    ("quantize_4bit: full blocks divided by absmax, not times its fp32 reciprocal", BNB,
     "scaled = torch.clamp_(body * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1)",
     "scaled = torch.clamp_(body / absmax.clamp(min=1e-38).view(-1, 1), -1, 1)", QB),
    ("quantize_4bit: absmax without abs (the signed maximum)", BNB,
     "    absmax = body.abs().amax(dim=-1)", "    absmax = body.amax(dim=-1)", QB),
    ("quantize_4bit: odd count padded with the last value, not zero (the pad nibble)", BNB,
     "        scaled = torch.nn.functional.pad(scaled, (0, 1))",
     "        scaled = torch.cat([scaled, scaled[-1:]])", QB),
    # -- _Rows4: quantization a block of rows at a time
    ("rows4: codes placed at the element offset, not the byte offset", BNB,
     "self.codes[first // 2: first // 2 + codes.numel()] = codes.cpu()",
     "self.codes[first: first + codes.numel()] = codes.cpu()", QM),
    ("rows4: absmax placed at the row index, not the block index", BNB,
     "self.absmax[first // self.blocksize: first // self.blocksize + absmax.numel()] = absmax",
     "self.absmax[start: start + absmax.numel()] = absmax", QM),
    ("rows4: first element from out_features, not in_features", BNB,
     "        first = start * self.packed.shape[1]  # starts a block",
     "        first = start * self.packed.shape[0]  # starts a block", QM),
    ("rows4: one absmax too many when blocks divide the weight (double quant's mean)", BNB,
     "self.absmax = torch.empty(-(-n // self.blocksize), dtype=torch.float32",
     "self.absmax = torch.empty(n // self.blocksize + 1, dtype=torch.float32", QM),
    ("members: nested offset the fp64 mean of the absmax, not bitsandbytes' fp32 mean", BNB,
     "            offset = absmax.mean()", "            offset = absmax.double().mean()", QB),
    # -- Bnb4.rows / row_align
    ("rows: the odd last element's byte not read (odd element count, last block of rows)", BNB,
     "values = unpack_4bit(data[first // 2: (last + 1) // 2].to(device=device), table)",
     "values = unpack_4bit(data[first // 2: last // 2].to(device=device), table)", QB),
    ("rows: a short last block of values not counted (floor)", BNB,
     "            blocks = -(-(last - first) // blocksize)", "            blocks = (last - first) // blocksize", QB),
    ("row_align: blocksize // in_features, not blocksize / gcd", BNB,
     "        return blocksize // math.gcd(inp, blocksize)  # rows whose first element starts a block",
     "        return max(1, blocksize // inp)  # rows whose first element starts a block", QM),
    # -- the default rows(): a copy the caller may change
    ("default rows(): rows of the cached whole returned without a copy", BASE,
     "        return lambda start, stop: whole[start:stop].clone()",
     "        return lambda start, stop: whole[start:stop]", QM),
    # -- linalg.norms
    ("all_finite: a sum that overflowed taken as a non-finite value", NORMS,
     "    return bool(torch.isfinite(t).all())", "    return False", LA),
    ("all_finite: only NaN makes the sum fail (±Inf missed)", NORMS,
     "    if math.isfinite(t.sum(dtype=torch.float32 if t.element_size() < 4 else None).item()):",
     "    if not math.isnan(t.sum(dtype=torch.float32 if t.element_size() < 4 else None).item()):", LA),
    ("all_finite: the sum compared below +Inf (-Inf missed)", NORMS,
     "    if math.isfinite(t.sum(dtype=torch.float32 if t.element_size() < 4 else None).item()):",
     "    if t.sum(dtype=torch.float32 if t.element_size() < 4 else None).item() < math.inf:", LA),
    ("all_finite: bf16 / fp16 tensors taken as finite (only fp32 / fp64 checked)", NORMS,
     "    if t.numel() == 0 or not t.is_floating_point():",
     "    if t.numel() == 0 or t.dtype not in (torch.float32, torch.float64):",
     _first("tests/test_linalg.py", "tests/test_attach_bnb.py")),
    ("nonfinite_count: counts NaN only", NORMS,
     "    return 0 if all_finite(t) else int((~torch.isfinite(t)).sum())",
     "    return 0 if all_finite(t) else int(torch.isnan(t).sum())", LA),
    ("frobenius: the values after the last full run dropped", NORMS,
     "                       torch.linalg.vector_norm(flat[cut:], dtype=wide).double().reshape(1)])",
     "                       torch.zeros(1, dtype=torch.float64)])", LA),
    ("frobenius: partial norms summed, not combined as a root of squares", NORMS,
     "    return float(torch.linalg.vector_norm(parts))", "    return float(parts.sum())", LA),
    ("frobenius: bf16 / fp16 runs accumulated in their own dtype", NORMS,
     "    wide = torch.float32 if t.element_size() < 4 else None", "    wide = None", LA),
    # -- merge_quantized: fills, spans, the adder
    ("fills: unmerge subtracts the adapters in merge order (not reversed)", MQ,
     '(reversed(self.touched.get(key, [])) if self.direction == "unmerge" else self.touched.get(key, []))',
     "self.touched.get(key, [])", QM),
    ("fills: row form built for merge in an unmerge (ΔW added back)", MQ,
     '                                               unmerge=self.direction == "unmerge", device=self.device)',
     "                                               unmerge=False, device=self.device)", QM),
    ("row blocks: the last block of rows not clipped at the row count", MQ,
     "    return [(start, starts[i + 1] if i + 1 < len(starts) else rows) for i, start in enumerate(starts)]",
     "    return [(start, starts[i + 1] if i + 1 < len(starts) else start + per) for i, start in enumerate(starts)]", QM),
    ("spans: rows per block not rounded to the alignment", MQ,
     "        per = max(align, CHUNK_ELEMENTS // max(inp, 1) // align * align)",
     "        per = max(align, CHUNK_ELEMENTS // max(inp, 1))", QM),
    ("spans: the sgemm row tile (ROW_ALIGN) left out of the alignment", MQ,
     "        align = math.lcm(self.view.fmt.row_align(p), ROW_ALIGN)",
     "        align = self.view.fmt.row_align(p)", QM),
    ("adder: every adapter added to the base rows (two adapters into out: only the last kept)", MQ,
     "                torch.add(rows if i == 0 else out, term, out=out)",
     "                torch.add(rows, term, out=out)", QM),
    ("adder: the first adapter added to out (a stale buffer), not to the rows", MQ,
     "                torch.add(rows if i == 0 else out, term, out=out)",
     "                torch.add(out, term, out=out)", QM),
    # equivalent today: the LoRA row form (the only one) fills the term by torch.mm(..., out=term),
    # which resizes a term of the wrong shape (torch's deprecated resize, a UserWarning)
    ("adder: the term buffer kept for a shorter last block of rows", MQ,
     "            term = torch.empty_like(rows) if term is None or term.shape != rows.shape else term",
     "            term = torch.empty_like(rows) if term is None else term", QM),
    # -- merge_quantized: _requantize_rows / _requantize
    ("requantize rows: a non-finite count reset by a later finite block (NaN written)", MQ,
     "                bad += nonfinite_count(rows)", "                bad = nonfinite_count(rows)", QM),
    ("requantize rows: second pass's value and diff share one buffer", MQ,
     "                value, diff = torch.empty_like(base), torch.empty_like(base)",
     "                value = diff = torch.empty_like(base)", QM),
    ("survival (rows): norms of blocks summed, not their squares", MQ,
     "                squares[i] += frobenius(torch.sub(a, b, out=diff)) ** 2",
     "                squares[i] += frobenius(torch.sub(a, b, out=diff))", QM),
    ("survival (rows): error measured against Q(W), not W+ΔW", MQ,
     "            for i, (a, b) in enumerate(((value, base), (written, base), (written, value))):",
     "            for i, (a, b) in enumerate(((value, base), (written, base), (written, base))):", QM),
    ("survival (rows): the written rows dequantized from the base's members", MQ,
     "        new_rows = fmt.rows(p, {r: t.to(self.device) for r, t in new.items()}, self.device)",
     "        new_rows = fmt.rows(p, old, self.device)", QM),
    ("requantize: a replaced weight requantized from the base's rows", MQ,
     "        if key not in self.replaced and self._requantize_rows(writer, key, p, advance):",
     "        if self._requantize_rows(writer, key, p, advance):", QM),
    # -- finiteness checks of merge, extract, attach
    ("merge: --no-safe still refuses a non-finite tensor", OPS,
     "            if self.safe and (bad := nonfinite_count(value)):",
     "            if bad := nonfinite_count(value):", _first("tests/test_merge.py")),
    ("extract: the non-finite count bound to a bool (walrus precedence)", EXTRACT,
     "            if bad := nonfinite_count(delta):", "            if bad := nonfinite_count(delta) > 0:",
     _first("tests/test_extract.py")),
    ("attach: only the last staged sum of a quantized layer checked", INJECT,
     "            if safe and not all(all_finite(v) for v in stage.sums):",
     "            if safe and not all_finite(stage.sums[-1]):", _first("tests/test_attach_bnb.py")),
    # found by this list's survivors' review: a short last block of rows took another sgemm path
    ("row blocks: a short last block merged alone", MQ,
     "    if len(starts) > 1 and rows - starts[-1] < align:", "    if False:", ["tests/test_merge_stream.py"]),
    ("row blocks: buffers sized for per rows, not the tallest block", "adapterkit/ops/merging.py",
     "                size = max(r.most * r.cols for r in self.rows.values())",
     "                size = max(r.per * r.cols for r in self.rows.values())", ["tests/test_merge_stream.py"]),
]

DEFAULT_TESTS = TESTS
