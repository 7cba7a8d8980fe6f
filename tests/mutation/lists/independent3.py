"""Third independent mutation batch: plausible bugs written from the code alone, without reading the tests (first line = description).

Usage: python tests/mutation/run.py independent3 [--only SUBSTRING]
"""
from __future__ import annotations

MERGE = ["tests/test_merge.py", "tests/test_merge_multi.py", "tests/test_merge_record.py", "tests/test_orientation.py", "tests/test_merge_math.py", "tests/test_merge_stream.py", "tests/test_export.py", "tests/test_output_guard.py", "tests/test_peft_matrix.py"]
HUB = ["tests/test_hub.py", "tests/test_hub_names.py", "tests/test_paths.py", "tests/test_output_guard.py"]
ATTACH = ["tests/test_attach.py", "tests/test_attach_edges.py", "tests/test_attach_survivors.py", "tests/test_attach_prompt.py", "tests/test_features.py", "tests/test_peft_matrix.py"]
EXTRACT = ["tests/test_extract.py", "tests/test_extract_roundtrip.py", "tests/test_output_guard.py"]
COMBINE = ["tests/test_combine.py", "tests/test_vllm_rules.py", "tests/test_differences.py", "tests/test_peft_matrix.py"]

MUTANTS = [
    # ---- merge
    ("merge: DoRA after another adapter normed over the merged weight", "adapterkit/ops/merging.py",
     'if self.direction == "merge" and len(self.touched.get(key, ())) > 1:',
     'if self.direction == "merge" and len(self.touched.get(key, ())) > 2:', MERGE),
    ("merge: --dtype also casts integer and bool tensors", "adapterkit/ops/merging.py",
     "plan = {k: (out_dtype if out_dtype and dt in FLOAT_DTYPES else dt, shape) for k, (dt, shape) in keys.items()}",
     "plan = {k: (out_dtype or dt, shape) for k, (dt, shape) in keys.items()}", MERGE),
    ("merge: unmerge ignores a later IA3/DoRA change on an added key", "adapterkit/ops/merge_record.py",
     "clash = sorted((mine_changed & (set(later.added) | set(later.changed))) | (mine_added & set(later.changed)))",
     "clash = sorted(mine_changed & (set(later.added) | set(later.changed)))", MERGE),
    ("merge: no config.json taken as a known tie (untie adds lm_head)", "adapterkit/ops/merge_plan.py",
     "known=said is True)",
     "known=said is not False)", MERGE),
    ("merge: one indexed shard written without its index", "adapterkit/checkpoint/writer.py",
     "self._indexed = len(groups) > 1 or (max_shard_size is None and base.index is not None)",
     "self._indexed = len(groups) > 1", [*MERGE, "tests/test_checkpoint.py"]),  # first run 37/40 measured without this file
    ("merge: base's config/README copied over the merge's own files", "adapterkit/checkpoint/writer.py",
     "            self._copy_extra_files()\n"
     "            for name, data in files.items():\n"
     "                dest = staging / name\n"
     "                if dest.resolve().parent != staging.resolve() and not dest.resolve().is_relative_to(staging.resolve()):\n"
     "                    raise _mismatch(\"an extra file must lie inside the output\", self.out, name)\n"
     "                dest.parent.mkdir(parents=True, exist_ok=True)\n"
     "                self._write_file(dest, data)\n",
     "            for name, data in files.items():\n"
     "                dest = staging / name\n"
     "                if dest.resolve().parent != staging.resolve() and not dest.resolve().is_relative_to(staging.resolve()):\n"
     "                    raise _mismatch(\"an extra file must lie inside the output\", self.out, name)\n"
     "                dest.parent.mkdir(parents=True, exist_ok=True)\n"
     "                self._write_file(dest, data)\n"
     "            self._copy_extra_files()\n", MERGE),
    ("merge: DoRA norm of a Conv1D weight taken per input row", "adapterkit/kinds/lora.py",
     "            norm = torch.linalg.norm(W.T + 1 * delta.T, dim=1).to(W.dtype)\n"
     "            return (m / norm).view(-1, 1).T\n",
     "            norm = torch.linalg.norm(W + 1 * delta, dim=1).to(W.dtype)\n"
     "            return (m / norm).view(-1, 1).T\n", MERGE),
    ("merge: square Conv1D with saved false trusted as (out, in)", "adapterkit/ops/orientation.py",
     "elif bool(view.fan_in_fan_out) == (short in CONV1D_NAMES):",
     "elif not view.fan_in_fan_out or short in CONV1D_NAMES:", MERGE),
    # ---- hub
    ("hub: '..' inside a repo id accepted", "adapterkit/hub/repo_id.py",
     r'_PART = r"(?!.*(?:--|\.\.))',
     r'_PART = r"(?!.*--)', HUB),
    ("hub: revision starting with '/' accepted", "adapterkit/hub/repo_id.py",
     "(?:@(?P<rev>(?!/)(?!.*//)",
     "(?:@(?P<rev>(?!.*//)", HUB),
    ("hub: existing first component checked after '@', not '/'", "adapterkit/hub/repo_id.py",
     'first = s.split("/", 1)[0]',
     'first = s.split("@", 1)[0]', HUB),
    ("hub: remote names with DEL or C1 controls accepted", "adapterkit/hub/remote.py",
     'any(unicodedata.category(c) == "Cc" for c in name)',
     'any(c < " " for c in name)', HUB),
    ("hub: hidden folders below the top level not skipped", "adapterkit/hub/remote.py",
     'return any(p.startswith(".") for p in name.split("/"))',
     'return name.startswith(".")', HUB),
    ("hub: HF_HOME used as the cache itself, not HF_HOME/hub", "adapterkit/hub/remote.py",
     'env.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))',
     'env.get("HUGGINGFACE_HUB_CACHE", home)', HUB),
    ("hub: HF_HUB_OFFLINE only honoured when exactly '1'", "adapterkit/hub/remote.py",
     'env.get("TRANSFORMERS_OFFLINE") or "").upper() in _TRUE',
     'env.get("TRANSFORMERS_OFFLINE") or "").strip() == "1"', HUB),
    ("hub: offline lookup reads refs/main whatever the revision", "adapterkit/hub/remote.py",
     'ref_file = folder / "refs" / revision',
     'ref_file = folder / "refs" / "main"', HUB),
    # ---- attach
    ("attach: DoRA on a scaled embedding misses embed_scale", "adapterkit/inject/layers.py",
     "        if embed_scale is not None:\n"
     "            dora = dora * torch.as_tensor(embed_scale).to(dora.dtype)\n",
     "", ATTACH),
    ("attach: DoRA norm on Conv1D uses the (in, out) weight as is", "adapterkit/inject/layers.py",
     "            weight = (base.weight if self.quant is None else dequantized(base)).to(x.dtype)\n"
     "            weight = weight.T if self.kind == \"conv1d_t\" else weight\n",
     "            weight = (base.weight if self.quant is None else dequantized(base)).to(x.dtype)\n", ATTACH),
    ("attach: several active IA3 adapters: only the last one scales", "adapterkit/inject/layers.py",
     "scaling = scaling * (self.ia3_l[name] if conv else self.ia3_l[name].flatten())",
     "scaling = self.ia3_l[name] if conv else self.ia3_l[name].flatten()", ATTACH),
    ("attach: children of a modules_to_save module wrapped too", "adapterkit/inject/plan.py",
     "    saved_modules = [n for n in saved_modules if not any(n.startswith(o + \".\") for o in saved_modules)]\n",
     "", ATTACH),
    ("attach: leaving a nested disabled() re-enables every layer", "adapterkit/inject/attaching.py",
     "        for w, flag in zip(layers, before[1]):\n"
     "            w.disabled = flag\n",
     "        for w in layers:\n"
     "            w.disabled = False\n", ATTACH),
    ("attach: merged DoRA normed over weights other adapters changed", "adapterkit/inject/merge.py",
     'base = (unmerged or current)["weight"]',
     'base = current["weight"]', ATTACH),
    ("attach: unmerge takes adapters out oldest first", "adapterkit/inject/merge.py",
     "    for name in reversed(wrapper.merged):\n",
     "    for name in wrapper.merged:\n", ATTACH),
    ("attach: extract_from_model gives fp16/bf16 tensors back as fp32", "adapterkit/inject/extract.py",
     'tensors[key] = t.detach().to(device="cpu", dtype=record.dtypes[key]).clone()',
     'tensors[key] = t.detach().to(device="cpu").clone()', ATTACH),
    # ---- extract
    ("extract: LoRA module's changed bias stored as <m>.bias", "adapterkit/ops/extract_layout.py",
     "        if module in lora:  # the LoRA layer holds the original module as base_layer\n",
     "        if module in dropped:  # the LoRA layer holds the original module as base_layer\n", EXTRACT),
    ("extract: target_modules misses names one component shorter", "adapterkit/ops/extract_layout.py",
     'suffixes.update(".".join(parts[i:]) for i in range(1, len(parts)))',
     'suffixes.update(".".join(parts[i:]) for i in range(2, len(parts)))', EXTRACT),
    ("extract: energy rank with the rounding slack added, not taken", "adapterkit/ops/extract.py",
     "reached = (cum >= energy * total * (1 - slack)).nonzero()",
     "reached = (cum >= energy * total * (1 + slack)).nonzero()", EXTRACT),
    ("extract: rank not capped at min(out, in)", "adapterkit/ops/extract.py",
     "k = min(rank, small)",
     "k = rank", EXTRACT),
    ("extract: factors stored fp32 whatever the base dtype", "adapterkit/ops/extract.py",
     'tensors[f"{PREFIX}{module}.lora_A.weight"] = A.to(device="cpu", dtype=dtype).contiguous()\n'
     '        tensors[f"{PREFIX}{module}.lora_B.weight"] = B.to(device="cpu", dtype=dtype).contiguous()',
     'tensors[f"{PREFIX}{module}.lora_A.weight"] = A.to(device="cpu", dtype=torch.float32).contiguous()\n'
     '        tensors[f"{PREFIX}{module}.lora_B.weight"] = B.to(device="cpu", dtype=torch.float32).contiguous()', EXTRACT),
    ("extract: tensors stored whole read from the base", "adapterkit/ops/extract.py",
     "else fside.ck.read(fside.src[key])",
     "else bside.ck.read(bside.src[key])", EXTRACT),
    ("extract: non-targets compared on their first 16 MB only", "adapterkit/ops/extract.py",
     "for start in range(0, nbytes, _BLOCK):",
     "for start in range(0, size, _BLOCK):", EXTRACT),
    ("extract: rank-pattern modules get no alpha_pattern (not scale 1)", "adapterkit/ops/lowrank.py",
     "alpha_pattern=dict(pattern),",
     "alpha_pattern={},", EXTRACT),
    # ---- combine
    ("combine: negative weights lose their sign on A (TIES/DARE)", "adapterkit/ops/combining.py",
     "[math.sqrt(abs(w)) * (1 if w >= 0 else -1) for w in ws]",
     "[math.sqrt(abs(w)) for w in ws]", COMBINE),
    ("combine: svd default rank is the smallest input rank", "adapterkit/ops/combining.py",
     "rank = max((f.rank for fs in factors for f in fs.values()), default=adapters[0].config.r)",
     "rank = min((f.rank for fs in factors for f in fs.values()), default=adapters[0].config.r)", COMBINE),
    ("combine: svd_clamp=0 treated as no clamp", "adapterkit/ops/combining.py",
     "return clamp_factors(B, A, clamp) if clamp is not None else (B, A)",
     "return clamp_factors(B, A, clamp) if clamp else (B, A)", COMBINE),
    ("combine: svd_clamp quantile of magnitudes, not signed values", "adapterkit/ops/combining.py",
     "hi = quantile(torch.cat([B.flatten(), A.flatten()]), q)",
     "hi = quantile(torch.cat([B.flatten(), A.flatten()]).abs(), q)", COMBINE),
    ("combine: large-tensor quantile skips the upper neighbour", "adapterkit/ops/combining.py",
     "if above > below and int((x <= low).sum()) <= above:",
     "if above > below and int((x <= low).sum()) < above:", COMBINE),
    ("combine: TIES sign election breaks ties towards minus", "adapterkit/ops/task_arithmetic.py",
     "agrees = signs == torch.where(magnitude >= 0, 1, -1)",
     "agrees = signs == torch.where(magnitude > 0, 1, -1)", COMBINE),
    ("combine: magnitude pruning keeps the largest signed values", "adapterkit/ops/task_arithmetic.py",
     "keep[torch.topk(t.abs().reshape(-1), k=",
     "keep[torch.topk(t.reshape(-1), k=", COMBINE),
    ("combine: rsLoRA scaling uses r, not the rank_pattern rank", "adapterkit/kinds/lora.py",
     "return alpha / math.sqrt(r) if self.use_rslora else alpha / r",
     "return alpha / math.sqrt(self.r) if self.use_rslora else alpha / r", COMBINE),
]

DEFAULT_TESTS = ["tests/test_merge.py"]
