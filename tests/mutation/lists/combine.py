"""Mutation check of combine: does tests/test_combine.py catch plausible bugs in adapterkit.ops.combining?

Usage: python tests/mutation/run.py combine [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); tests/test_combine.py then runs against the copy.  A
mutant is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_combine.py"]
COMBINE = "adapterkit/ops/combining.py"
OPS = "adapterkit/ops/task_arithmetic.py"
CLI = "adapterkit/cli/surgery.py"

# (name, file, old text, new text)
MUTANTS = [
    ("cat: weight not applied", COMBINE, "A = torch.cat([t.A * (t.weight * t.scaling) for t in terms], dim=0)", "A = torch.cat([t.A * t.scaling for t in terms], dim=0)"),
    ("cat: scaling not applied", COMBINE, "A = torch.cat([t.A * (t.weight * t.scaling) for t in terms], dim=0)", "A = torch.cat([t.A * t.weight for t in terms], dim=0)"),
    ("svd: scaling missing", COMBINE, "svd = factored_svd([(t.B, t.A * t.scaling) for t in terms], [t.weight for t in terms], device=req.device)",
     "svd = factored_svd([(t.B, t.A) for t in terms], [t.weight for t in terms], device=req.device)"),
    ("svd: weights ignored", COMBINE, "svd = factored_svd([(t.B, t.A * t.scaling) for t in terms], [t.weight for t in terms], device=req.device)",
     "svd = factored_svd([(t.B, t.A * t.scaling) for t in terms], None, device=req.device)"),
    ("svd: balanced factors (the clamp sees other values)", COMBINE, "B, A = svd.factors(rank, balanced=False)", "B, A = svd.factors(rank, balanced=True)"),
    ("svd: default rank the smallest", COMBINE, "rank = max((f.rank for fs in factors for f in fs.values()), default=adapters[0].config.r)",
     "rank = min((f.rank for fs in factors for f in fs.values()), default=adapters[0].config.r)"),
    ("factor methods: sign of w·s lost", COMBINE, "[math.sqrt(abs(w)) * (1 if w >= 0 else -1) for w in ws]", "[math.sqrt(abs(w)) for w in ws]"),
    ("factor methods: scaling not in the weights", COMBINE, "ws = [t.weight * t.scaling for t in terms]", "ws = [t.weight for t in terms]"),
    ("dense methods: DARE masks in the factor layout", COMBINE, 'transposed = template.layer_type == "embedding" or', "transposed = False and"),
    ("union: modules of the first adapter only", COMBINE, "names = sorted({n for fs in factors for n in fs})", "names = sorted(factors[0])"),
    ("bias: dropped, as PEFT", COMBINE, "with_bias = any(a.config.lora_bias for a in adapters)", "with_bias = False"),
    ("bias: scaling missing", COMBINE, "biases = [t.bias * t.scaling if t.bias is not None", "biases = [t.bias if t.bias is not None"),
    ("dare: seed ignores the module", COMBINE, 'digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()', 'digest = hashlib.sha256(f"{seed}".encode()).digest()'),
    ("clamp: quantile of magnitudes", COMBINE, "hi = quantile(torch.cat([B.flatten(), A.flatten()]), q)", "hi = quantile(torch.cat([B.flatten(), A.flatten()]).abs(), q)"),
    ("quantile: no interpolation above the limit", COMBINE, "return torch.lerp(low, high, (rank - below).to(x.dtype))", "return low"),
    ("quantile: next order statistic taken as a repeat", COMBINE, "    if above > below and int((x <= low).sum()) <= above:", "    if False:"),
    ("shapes: disagreeing modules not caught", COMBINE, "            elif first[name][0] != sig:", "            elif False:"),
    ("modules_to_save kept", COMBINE, 'if key.endswith(".bias") or matches_modules_to_save(saved, key, PREFIX):', 'if key.endswith(".bias"):'),
    ("targets: regex union without groups", COMBINE, 'return "|".join(f"({_as_regex(v)})" for v in given)', 'return "|".join(_as_regex(v) for v in given)'),
    ("ia3: weights ignored", COMBINE, "term = vec.to(device=req.device, dtype=ct) * w", "term = vec.to(device=req.device, dtype=ct)"),
    ("linear: rank ignored (stored exactly)", COMBINE, '        if method == "svd" or req.rank is not None:', '        if method == "svd":'),
    ("bias under pruning: plain weighted sum", COMBINE, "    bias = merge_tensors(op, biases, [t.weight for t in terms], **kw) if with_bias else None",
     "    bias = sum(t.weight * b for t, b in zip(terms, biases)) if with_bias else None"),
    ("fan_in_fan_out disagreement not caught", COMBINE, "            if name in seen and seen[name][0] != flag:", "            if False:"),
    ("scoping differs: union of targets kept anyway", COMBINE, "        out[\"target_modules\"] = tuple(modules)  # full names", "        pass  # full names"),
    ("saved base layers: disagreement not caught", COMBINE, "            if key in kept and not torch.equal(kept[key][0], tensor):", "            if False:"),
    ("weights: count not checked", COMBINE, "    if len(weights) != len(adapters):", "    if False:"),
    ("dtype: stored in the compute dtype", COMBINE, "tensors.update(module_tensors(template, B, A, bias, dtype=dtype))", "tensors.update(module_tensors(template, B, A, bias, dtype=B.dtype))"),
    ("dora: left to the factor reader (adapter not named)", COMBINE, "        if adapter.config.use_dora:", "        if False:"),
    ("magnitude prune: k rounded", OPS, "k=int(density * t.numel()), largest=True)", "k=round(density * t.numel()), largest=True)"),
    ("ties: sign elected from the weighted tensors", OPS, 'magnitude = pruned.sum(dim=0) if sign_rule == "total"', 'magnitude = _weighted(pruned, weights).sum(dim=0) if sign_rule == "total"'),
    ("ties: total and frequency swapped", OPS, 'if sign_rule == "total" else signs.sum(dim=0)', 'if sign_rule != "total" else signs.sum(dim=0)'),
    ("ties: mean over all adapters, not the agreeing ones", OPS, "return kept / torch.clamp(agrees.sum(dim=0), min=1.0)", "return kept / len(pruned)"),
    ("dare: no rescale by 1/density", OPS, "return t * mask / density", "return t * mask"),
    ("dare: global generator", OPS, "mask = torch.bernoulli(torch.full_like(t, density), generator=generator)", "mask = torch.bernoulli(torch.full_like(t, density))"),
    ("magnitude prune: keeps the smallest", OPS, "k=int(density * t.numel()), largest=True)", "k=int(density * t.numel()), largest=False)"),
    ("clamp: svd_clamp=0 taken as no clamp", COMBINE, "clamp_factors(B, A, clamp) if clamp is not None else (B, A)", "clamp_factors(B, A, clamp) if clamp else (B, A)"),
    ("clamp: svd_clamp=0 not checked", COMBINE, "    if svd_clamp is not None:\n        if isinstance(svd_clamp, bool)", "    if svd_clamp:\n        if isinstance(svd_clamp, bool)"),
    ("clamp: --svd-clamp 0 dropped by the CLI", CLI, "svd_clamp=svd_clamp, device=device", "svd_clamp=svd_clamp or None, device=device"),
]

DEFAULT_TESTS = TESTS
