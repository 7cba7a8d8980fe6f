"""Mutation check of the LoHa / LoKr kinds (math, checks, merge shapes, to_lora, attach, combine/diff conversion): do their tests catch plausible bugs?

Usage: python tests/mutation/run.py kinds21 [--only SUBSTRING]

Written from the code, the spec's sections 16 (LoHa) and 17 (LoKr) and PEFT 0.22.0's
``tuners/loha`` / ``tuners/lokr`` alone, before reading the tests.  Each mutant is one textual
patch applied to a temporary copy of the repository; the named test files then run against the
copy (``tests/test_peft_matrix.py`` only where a mutant concerns attach or combine: it is slow).
"""

from __future__ import annotations

LOHA_T = "tests/test_kind_loha.py"
LOKR_T = "tests/test_kind_lokr.py"
ATTACH_T = "tests/test_attach_lycoris.py"
SPEC_T = "tests/test_spec.py"
MATRIX_T = "tests/test_peft_matrix.py"
TESTS = [LOHA_T, LOKR_T, ATTACH_T, SPEC_T, MATRIX_T]
KINDS = [LOHA_T, LOKR_T, ATTACH_T, SPEC_T]
LOHA_ONLY = [LOHA_T, ATTACH_T, SPEC_T]
LOKR_ONLY = [LOKR_T, ATTACH_T, SPEC_T]

LOHA = "adapterkit/kinds/loha.py"
LOKR = "adapterkit/kinds/lokr.py"
MERGING = "adapterkit/kinds/merging.py"
TO_LORA = "adapterkit/ops/to_lora.py"
LAYERS = "adapterkit/inject/layers.py"
PLAN = "adapterkit/inject/plan.py"
COMBINING = "adapterkit/ops/combining.py"
COMPARE = "adapterkit/inspect/compare.py"

# (name, file, old text, new text[, tests])
MUTANTS = [
    # -- LoHa: ΔW
    ("loha: CP rebuild1 with the core's two rank indices swapped (einsum i<->j on one side)", LOHA,
     'rebuild1 = torch.einsum("i j k l, j r, i p -> p r k l", f["hada_t1"], f["hada_w1_b"], f["hada_w1_a"])',
     'rebuild1 = torch.einsum("i j k l, i r, j p -> p r k l", f["hada_t1"], f["hada_w1_b"], f["hada_w1_a"])', LOHA_ONLY),
    ("loha: plain ΔW without the scaling", LOHA,
     'out = ((f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])) * scale',
     'out = ((f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]))', LOHA_ONLY),
    ("lycoris: scaling divides by the config's r (rank_pattern ignored for the scaling)", "adapterkit/kinds/lycoris.py",
     "        return self.alpha_for(module)[0] / self.rank_for(module)[0]",
     "        return self.alpha_for(module)[0] / self.r", LOHA_ONLY),
    ("loha: a lone hada_t2 (or t1) not reported missing (CP detected only with both cores)", LOHA,
     '        if "hada_t1" in parts or "hada_t2" in parts:\n            required +=',
     '        if "hada_t1" in parts and "hada_t2" in parts:\n            required +=', LOHA_ONLY),
    ("loha: a CP core (r, r, k, 1) wants a 4-D weight (a Conv1d base refused)", LOHA,
     'return {"weight": ((out, inp, k1, k2) if k2 != 1 else (out, inp, Flat(k1)), True)}',
     'return {"weight": ((out, inp, k1, k2), True)}', LOHA_ONLY),
    ("loha: row_delta leaves the scaling out", LOHA,
     "        out.mul_(torch.tensor(view.scaling, dtype=out.dtype, device=out.device))\n", "", LOHA_ONLY),
    # -- LoHa: the exact LoRA form
    ("loha: lora_factors A's Khatri-Rao in (b, a) order, B's in (a, b)", LOHA,
     "A = (b1[:, None, :] * b2[None, :, :]).reshape(r * r, b1.shape[1])",
     "A = (b2[:, None, :] * b1[None, :, :]).reshape(r * r, b1.shape[1])", LOHA_ONLY),
    ("loha: CP lora_factors A's Khatri-Rao in (b, a) order", LOHA,
     "A = (m1[:, None] * m2[None, :]).reshape(r * r, *m1.shape[1:])",
     "A = (m2[:, None] * m1[None, :]).reshape(r * r, *m1.shape[1:])", LOHA_ONLY),
    ("loha: lora_factors reshape with the config's r (CP + rank_pattern)", LOHA,
     "    r = view.rank\n    if view.cp:", "    r = adapter.config.r\n    if view.cp:", LOHA_ONLY),
    # -- LoKr: ΔW, factorization, checks
    ("lokr: kron(W2, W1) instead of kron(W1, W2)", LOKR,
     "out = _kron(w1, w2).mul_(view.scaling)", "out = _kron(w2, w1).mul_(view.scaling)", LOKR_ONLY),
    ("lokr: W1 unsqueezed beside a 3-D (Conv1d) W2 too", LOKR,
     "    if w2.dim() == 4:\n        w1 = w1.unsqueeze(2).unsqueeze(2)", "    if w2.dim() > 2:\n        w1 = w1.unsqueeze(2).unsqueeze(2)", LOKR_ONLY),
    ("lokr: factorization without the final (small, large) swap", LOKR,
     "    return (n, m) if m > n else (m, n)", "    return m, n", LOKR_ONLY),
    ("lokr: flattened W2 product rule with > (r == max(b, d')/2 accepted as a product)", LOKR,
     'elif r >= max(b, shape["lokr_w2_b"][1]) / 2:', 'elif r > max(b, shape["lokr_w2_b"][1]) / 2:', LOKR_ONLY),
    ("lokr: a CP core (r, r, k, 1) tested on k1 for the Conv1d shape", LOKR,
     "    if len(kernel) == 2 and kernel[1] == 1:", "    if len(kernel) == 2 and kernel[0] == 1:", LOKR_ONLY),
    # -- LoKr: the exact LoRA form and the Kronecker SVD
    ("lokr: lora_factors keeps the larger side of a whole W1 (rank max(a, c))", LOKR,
     "U1, V1 = (w1, _eye(w1.shape[1], w1)) if w1.shape[1] <= w1.shape[0] else (_eye(w1.shape[0], w1), w1)",
     "U1, V1 = (w1, _eye(w1.shape[1], w1)) if w1.shape[1] >= w1.shape[0] else (_eye(w1.shape[0], w1), w1)", LOKR_ONLY),
    ("lokr: CP lora_factors contract the core's wrong rank index", LOKR,
     'V2 = einsum("ijkl,jc->ickl", t, f["lokr_w2_b"]).reshape(t.shape[0], -1)',
     'V2 = einsum("ijkl,ic->jckl", t, f["lokr_w2_b"]).reshape(t.shape[0], -1)', LOKR_ONLY),
    ("lokr: kron_svd singular values sorted ascending", LOKR,
     "order = torch.argsort(S, descending=True, stable=True)", "order = torch.argsort(S, descending=False, stable=True)", LOKR_ONLY),
    ("lokr: kron_svd drops the sign of a negative scaling", LOKR,
     "sign = -1.0 if view.scaling < 0 else 1.0", "sign = 1.0", LOKR_ONLY),
    # -- Flat
    ("Flat: a convolution's product taken over its last two dimensions only", MERGING,
     "return shape_fits(shape[:head], want[:head]) and math.prod(shape[head:]) == want[-1]",
     "return shape_fits(shape[:head], want[:head]) and math.prod(shape[-2:]) == want[-1]", KINDS),
    # -- to_lora
    ("to_lora: scaling not folded into B", TO_LORA,
     "            B = B * view.scaling  # scaling 1", "            B = B  # scaling 1", KINDS),
    ("to_lora: the (k, 1) refusal tests k1", TO_LORA,
     "if want is None and k2 == 1 and strict:", "if want is None and k1 == 1 and strict:", KINDS),
    ("to_lora: a plain-form module on a convolution base kept as Linear factors", TO_LORA,
     "    if len(want) == 2:\n        return B, A\n", "    if len(want) >= 2:\n        return B, A\n", KINDS),
    # -- attach
    ("LycorisLayer: the input not cast to ΔW's dtype", LAYERS,
     "inp = x.to(delta.dtype) if x.dtype != delta.dtype else x", "inp = x", [ATTACH_T, MATRIX_T]),
    ("LycorisLayer: the sum not cast back to the input's dtype", LAYERS,
     "                result = result + self.base_layer._conv_forward(inp, delta, bias=None)\n        return result.to(previous_dtype)",
     "                result = result + self.base_layer._conv_forward(inp, delta, bias=None)\n        return result", [ATTACH_T, MATRIX_T]),
    ("LycorisLayer: a convolution's bias added twice", LAYERS,
     "self.base_layer._conv_forward(inp, delta, bias=None)", "self.base_layer._conv_forward(inp, delta, bias=self.base_layer.bias)",
     [ATTACH_T, MATRIX_T]),
    ("plan: a LoHa/LoKr module's weight shape never checked", PLAN,
     "    if not shape_fits(tuple(base.weight.shape), want):\n        offenders.append(f\"`{name}`: the adapter's factors",
     "    if False:\n        offenders.append(f\"`{name}`: the adapter's factors", [ATTACH_T]),
    # -- combine / diff conversion
    ("combine: LoHa/LoKr converted to F32 even from F64 factors", COMBINING,
     'a = replace(to_lora(a, dtype="F64" if fp64 else "F32", base=base, device=device)[0], source=a.source)',
     'a = replace(to_lora(a, dtype="F32", base=base, device=device)[0], source=a.source)', [LOHA_T, LOKR_T, MATRIX_T]),
    ("diff: LoHa/LoKr converted with the strict layout ((k, 1) kernels refused)", COMPARE,
     "return replace(to_lora(adapter, strict_layout=False)[0], source=adapter.source)",
     "return replace(to_lora(adapter)[0], source=adapter.source)", KINDS),
]

DEFAULT_TESTS = TESTS
