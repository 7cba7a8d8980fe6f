"""Mutation check of extract and the serving profiles: do tests/test_extract.py and tests/test_export.py catch plausible bugs?

Usage: python tests/mutation/run.py extract [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the two test files then run against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_extract.py", "tests/test_export.py", "tests/test_extract_roundtrip.py"]
EXTRACT = "adapterkit/ops/extract.py"
LAYOUT = "adapterkit/ops/extract_layout.py"
EXPORT = "adapterkit/ops/export.py"

# (name, file, old text, new text)
MUTANTS = [
    # extract
    ("extract: ΔW sign flipped", EXTRACT, "delta.sub_(b.to(device=dev))", "delta.sub_(b.to(device=dev)).neg_()"),
    ("extract: unbalanced factors", EXTRACT, "B, A = svd.factors(k, balanced=True)", "B, A = svd.factors(k, balanced=False)"),
    ("extract: rank off by one", EXTRACT, "        k = min(rank, small)\n", "        k = min(rank + 1, small)\n"),
    ("extract: rank not capped at min(m, n)", EXTRACT, "        k = min(rank, small)\n", "        k = rank\n"),
    ("extract: energy picks one rank too few", EXTRACT, "int(reached[0]) + 1 if len(reached)", "int(reached[0]) if len(reached)"),
    ("extract: energy measured against the sketch, not ‖ΔW‖²", EXTRACT, "reached = (cum >= energy * total * (1 - slack)).nonzero()", "reached = (cum >= energy * cum[-1] * (1 - slack)).nonzero()"),
    ("extract: sketch accepted without reaching the energy", EXTRACT, "if rank is not None or float(found.S.double().square().sum()) >= energy * total * (1 - slack):", "if True:"),
    ("extract: sketch never grows", EXTRACT, "            sketch *= 2\n", "            break\n"),
    ("extract: dense limit ignored (always randomized)", EXTRACT, "    if small > DENSE_LIMIT:\n", "    if True:\n"),
    ("extract: randomized for a rank above a quarter", EXTRACT, "        while sketch * 4 <= small:\n", "        while sketch <= small:\n"),
    ("extract: unseeded randomized SVD", EXTRACT, "found = randomized_svd(delta, sketch, generator=gen)", "found = randomized_svd(delta, sketch)"),
    ("extract: residual adds B·A instead of subtracting it", EXTRACT, "torch.addmm(delta[i:i + 256], B[i:i + 256], A, alpha=-1)", "torch.addmm(delta[i:i + 256], B[i:i + 256], A, alpha=1)"),
    ("extract: Σ|x| instead of Σx²", EXTRACT, "return float(block.square().sum(dim=1).double().sum())", "return float(block.abs().sum(dim=1).double().sum())"),
    ("extract: residual only over the first block", EXTRACT, "B[i:i + 256], A, alpha=-1)) for i in range(0, m, 256))", "B[i:i + 256], A, alpha=-1)) for i in range(0, min(m, 256), 256))"),
    ("extract: error from the factors' energy skipped", EXTRACT, "max(total - residual, 0.0), method)", "total, method)"),
    ("extract: unchanged targets kept", EXTRACT, "            if torch.equal(b.reshape(-1).view(torch.uint8), f.reshape(-1).view(torch.uint8)):  # bitwise: NaNs, -0.0\n                unchanged.append(key)\n                continue\n", "            if False:\n                continue\n"),
    ("extract: value equality instead of bytes", EXTRACT, "if torch.equal(b.reshape(-1).view(torch.uint8), f.reshape(-1).view(torch.uint8)):", "if torch.equal(b, f):"),
    ("extract: block compare reads only the first block", EXTRACT, "    for start in range(0, nbytes, _BLOCK):\n", "    for start in range(0, min(nbytes, _BLOCK), _BLOCK):\n"),
    ("extract: changed non-targets dropped silently", EXTRACT, "                not_extracted[key] = info.nbytes\n", "                pass\n"),
    ("extract: save_changed ignored", EXTRACT, "            elif save_changed:\n", "            elif False:\n"),
    ("extract: embeddings targeted by default", EXTRACT, '_EXCLUDED_LAST = re.compile(r"embed|^(lm_head|wte|wpe|shared)$")', '_EXCLUDED_LAST = re.compile(r"^(lm_head|wte|wpe|shared)$")'),
    ("extract: targets matched from the start only", EXTRACT, "pattern.search(module) is not None", "pattern.match(module) is not None"),
    ("extract: 1-D weights targeted", EXTRACT, "is_target = (len(info.shape) == 2 and", "is_target = (len(info.shape) >= 1 and"),
    ("extract: biases saved as modules_to_save", LAYOUT, 'if "." in k and not k.endswith(".bias") and', 'if "." in k and'),
    ("extract: a LoRA module's bias under its own key (PEFT ignores it)", LAYOUT, 'whole[f"{PREFIX}{module}.base_layer.{param}"] = k', "whole[PREFIX + k] = k"),
    ("extract: modules_to_save namesakes not stored whole", LAYOUT, "wrapped = sorted(n for n in modules if any(_ends_with(n, m) for m in roots))", "wrapped = list(roots)"),
    ("extract: modules_to_save without their unchanged tensors", LAYOUT, "whole = {PREFIX + k: k for k in keys if k.startswith(inside)}", "whole = {PREFIX + k: k for k in keys if k.startswith(inside) and k in changed}"),
    ("extract: target_modules always a list of names", LAYOUT, "    if chosen & suffixes:\n", "    if False:\n"),
    ("extract: LoRA kept inside a modules_to_save module", LAYOUT, 'dropped = sorted(t for t in extracted if any(re.match(rf"(^|.*\\.){m}($|\\..*)", t) for m in roots))', "dropped: list[str] = []"),
    ("extract: a tied output embedding not seen", EXTRACT, "        if tie is not None and tie.known and key == tie.input_key:\n", "        if False:\n"),
    ("extract: an embedding of unknown tie stored anyway", EXTRACT, "        if side.tie is not None and not side.tie.known and side.tie.input_key in whole:\n", "        if False:\n"),
    ("validate: a LoRA module's own bias/weight key not reported", "adapterkit/kinds/lora.py", '        if PREFIX + name + "." + param in adapter.tensors:\n', "        if False:\n"),
    ("extract: a tied embedding extracted as LoRA", EXTRACT, "        if is_target and key in tied:\n", "        if False:\n"),
    ("extract: embedding-like targets extracted as Linear LoRA", EXTRACT, "        if _EMBEDDING_LIKE.search(module.rsplit(\".\", 1)[-1]):\n", "        if False:\n"),
    ("extract: NaN check skipped", EXTRACT, "            if bad := nonfinite_count(delta):\n", "            if bad := 0 * nonfinite_count(delta):\n"),
    ("extract: factors stored in fp32 always", EXTRACT, "A.to(device=\"cpu\", dtype=dtype).contiguous()", "A.to(device=\"cpu\", dtype=torch.float32).contiguous()"),
    ("extract: dtype mismatch accepted", EXTRACT, "        if b.dtype != f.dtype and not (base.quantized(key) or ft.quantized(key)):", "        if False:"),
    ("extract: both rank and energy accepted", EXTRACT, "    if len(given) != 1:\n        raise ArgumentError(\"give exactly one of rank, energy\"", "    if len(given) > 1 and False:\n        raise ArgumentError(\"give exactly one of rank, energy\""),
    # export / check
    ("check: TGI rank_pattern not flagged", EXPORT, 'if consumer == "tgi" and rank != cfg.r:', 'if False and rank != cfg.r:'),
    ("check: vLLM said to read r for every module (it reads ranks from tensors)", EXPORT, 'if consumer == "tgi" and rank != cfg.r:', 'if consumer != "llama.cpp" and rank != cfg.r:', ["tests/test_export.py", "tests/test_vllm_rules.py"]),
    ("check: vLLM scaling taken per tensor rank", EXPORT, 'if consumer == "llama.cpp":  # one global alpha', 'if consumer in ("llama.cpp", "vllm"):  # one global alpha', ["tests/test_export.py", "tests/test_vllm_rules.py"]),
    ("check: vLLM --max-lora-rank warning missing", EXPORT, 'if consumer == "vllm" and max_rank is None and top[0] > cfg.r:', "if False:", ["tests/test_export.py", "tests/test_vllm_rules.py"]),
    ("export: vLLM padded to one rank", EXPORT, 'PADDED = ("tgi", "llama.cpp")  # engines', "PADDED = ENGINES  # engines", ["tests/test_export.py", "tests/test_vllm_rules.py"]),
    ("export: vLLM r not the largest rank", EXPORT, "lora_bias=cfg.lora_bias, default_rank=target, **changes)", "lora_bias=cfg.lora_bias, default_rank=pad_to, **changes)", ["tests/test_export.py", "tests/test_vllm_rules.py"]),
    ("check: vLLM said to read lora_B.bias", EXPORT, "    if cfg.lora_bias:  # vLLM too", '    if cfg.lora_bias and consumer != "vllm":  # vLLM too', ["tests/test_export.py", "tests/test_vllm_rules.py"]),
    ("export: vLLM keeps lora_B.bias", EXPORT, '            if "bias" in view.keys:\n                refuse("lora_B.bias', '            if consumer != "vllm" and "bias" in view.keys:\n                refuse("lora_B.bias', ["tests/test_export.py", "tests/test_vllm_rules.py"]),
    ("cli check: a warning fails the check", "adapterkit/cli/adapters.py", "    sys.exit(1 if violations else 0)", "    sys.exit(1 if problems else 0)", ["tests/test_export.py", "tests/test_vllm_rules.py"]),
    ("check: llama.cpp divides alpha by the global r", EXPORT, "        return cfg.lora_alpha / rank\n", "        return cfg.lora_alpha / cfg.r\n"),
    ("check: rsLoRA scaling taken as alpha / r", EXPORT, "return cfg.lora_alpha / math.sqrt(cfg.r) if cfg.use_rslora else cfg.lora_alpha / cfg.r", "return cfg.lora_alpha / cfg.r"),
    ("check: DoRA not flagged", EXPORT, "    if cfg.use_dora:\n        add(", "    if False:\n        add("),
    ("check: modules_to_save not flagged", EXPORT, "    if cfg.modules_to_save:\n        fatal", "    if False:\n        fatal"),
    ("check: TGI mixed ranks per type not flagged", EXPORT, "            if len(ranks) > 1:\n", "            if len(ranks) > 2:\n"),
    ("check: llama.cpp rsLoRA not flagged", EXPORT, 'if consumer == "llama.cpp" and cfg.use_rslora:', 'if consumer == "tgi" and cfg.use_rslora:'),
    ("check: max_rank off by one", EXPORT, "if max_rank is not None and rank > max_rank:", "if max_rank is not None and rank > max_rank + 1:"),
    ("check: conv layers served", EXPORT, '        if view.layer_type.startswith("conv"):\n            add(', '        if False:\n            add('),
    ("check: vLLM bias rule missing", EXPORT, 'if consumer == "vllm" and cfg.bias != "none":', 'if consumer == "tgi" and cfg.bias != "none":'),
    ("export: scaling not folded into B", EXPORT, "B, A = f.B.double() * f.scaling, f.A.double()", "B, A = f.B.double(), f.A.double()"),
    ("export: lora_B.bias not scaled", EXPORT, "        bias = None if f.bias is None else f.bias.double() * f.scaling\n        tensors.update(module_tensors(f, B, A, bias))", "        bias = None if f.bias is None else f.bias.double()\n        tensors.update(module_tensors(f, B, A, bias))"),
    ("export: no zero padding to the largest rank", EXPORT, "    target = max(ranks.values(), default=cfg.r) if consumer in ENGINES else None\n", "    target = None\n"),
    ("export: padding with ones", EXPORT, "A = torch.cat([A, A.new_zeros(k - f.rank, A.shape[1])], dim=0)", "A = torch.cat([A, A.new_ones(k - f.rank, A.shape[1])], dim=0)"),
    ("export: max_rank truncates silently", EXPORT, "    if target is not None and max_rank is not None and target > max_rank:\n", "    if False:\n"),
    ("export: modules_to_save tensors dropped", EXPORT, "            if adapter.kind.parse_key(key) is None and feature_tensor(key) is None:  # VeLoRA's: training state only\n                refuse(", "            if False:\n                refuse("),
    ("export: DoRA folded for engines", EXPORT, "        if cfg.use_dora:\n            first =", "        if False:\n            first ="),
    ("export: TGI keeps lora_B.bias", EXPORT, '            if "bias" in view.keys:\n                refuse("lora_B.bias', '            if consumer == "llama.cpp" and "bias" in view.keys:\n                refuse("lora_B.bias'),
    ("export: peft DoRA loses the magnitude", EXPORT, "            tensors[mag] = adapter.tensors[mag]\n", "            pass\n"),
    ("export: vllm bias not reset", EXPORT, 'changes: dict[str, Any] = {"bias": "none"} if consumer == "vllm" else {}', "changes: dict[str, Any] = {}"),
]

DEFAULT_TESTS = TESTS
