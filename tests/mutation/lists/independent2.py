"""Second independent mutation batch: plausible bugs written from the code alone (first line = description)."""
from __future__ import annotations

MERGE = ["tests/test_merge.py", "tests/test_merge_multi.py", "tests/test_merge_record.py", "tests/test_orientation.py"]
HUB = ["tests/test_hub.py", "tests/test_hub_names.py", "tests/test_paths.py"]
ATTACH = ["tests/test_attach.py", "tests/test_attach_edges.py", "tests/test_attach_survivors.py", "tests/test_features.py"]
EXTRACT = ["tests/test_extract.py", "tests/test_extract_roundtrip.py"]
COMBINE = ["tests/test_combine.py", "tests/test_vllm_rules.py"]

MUTANTS = [
    # ---- merge
    ("merge: unmerge clash ignores an additive entry changed later", "adapterkit/ops/merge_record.py",
     "clash = sorted((mine_changed & (set(later.added) | set(later.changed))) | (mine_added & set(later.changed)))",
     "clash = sorted(mine_changed & (set(later.added) | set(later.changed)))", MERGE),
    ("merge: fan_in_fan_out mapping matches a bare suffix, no dot", "adapterkit/ops/orientation.py",
     'if module == name or module.endswith("." + name):',
     "if module == name or module.endswith(name):", MERGE),
    ("merge: stored lm_head without config read as tied", "adapterkit/ops/merge_plan.py",
     "if said is False or (said is None and outputs):",
     "if said is False:", MERGE),
    ("merge: keep-tie pops the output replacement when stored", "adapterkit/ops/merging.py",
     "    if not tie.stored:\n        replaced.pop(tie.output_key)",
     "    if tie.stored:\n        replaced.pop(tie.output_key)", [*MERGE, "tests/test_extract_roundtrip.py"]),
    # ---- hub
    ("hub: first component counts as local only when a file", "adapterkit/hub/repo_id.py",
     "if first and os.path.lexists(first):",
     "if first and os.path.isfile(first):", HUB),
    ("hub: repo id ending in .git accepted", "adapterkit/hub/repo_id.py",
     "(?<!\\.git)", "", HUB),
    ("hub: HTTP 500 not read as hub-unavailable", "adapterkit/hub/remote.py",
     "(status >= 500 or status == 429)", "(status > 500 or status == 429)", HUB),
    ("hub: adapter files inside hidden folders fetched", "adapterkit/hub/remote.py",
     "PurePosixPath(n).name in ADAPTER_FILES and not _hidden(n)]",
     "PurePosixPath(n).name in ADAPTER_FILES]", HUB),
    # ---- attach
    ("attach: exclude_modules list matches full names only", "adapterkit/inject/plan.py",
     'elif name in exclude or any(name.endswith("." + e) for e in exclude):',
     "elif name in exclude:", ATTACH),
    ("attach: layers_to_transform=0 treated as all layers", "adapterkit/inject/plan.py",
     "if indexes is None or (isinstance(indexes, (list, tuple)) and not indexes):",
     "if not indexes:", ATTACH),
    ("attach: DoRA rescales the base bias too", "adapterkit/inject/layers.py",
     "base_result = result if bias_view is None else result - bias_view",
     "base_result = result", ATTACH),
    ("attach: several active IA3 adapters: only the last scales", "adapterkit/inject/layers.py",
     "scaling = scaling * (self.ia3_l[name] if conv else self.ia3_l[name].flatten())",
     "scaling = (self.ia3_l[name] if conv else self.ia3_l[name].flatten())", ATTACH),
    # ---- extract
    ("extract: a changed bias alone makes its module modules_to_save", "adapterkit/ops/extract_layout.py",
     'if "." in k and not k.endswith(".bias") and k.rsplit(".", 1)[0] not in extracted})',
     'if "." in k and k.rsplit(".", 1)[0] not in extracted})', EXTRACT),
    ("extract: last-component suffix missed in exact_targets", "adapterkit/ops/extract_layout.py",
     'suffixes.update(".".join(parts[i:]) for i in range(1, len(parts)))',
     'suffixes.update(".".join(parts[i:]) for i in range(1, len(parts) - 1))', EXTRACT),
    ("extract: energy threshold strict, no tolerance", "adapterkit/ops/extract.py",
     "reached = (cum >= energy * total * (1 - slack)).nonzero()",
     "reached = (cum > energy * total).nonzero()", EXTRACT),
    ("extract: rank not capped at min(out, in)", "adapterkit/ops/extract.py",
     "k = min(rank, small)", "k = rank", EXTRACT),
    # ---- combine
    ("combine: lora_bias not multiplied by scaling", "adapterkit/ops/combining.py",
     "biases = [t.bias * t.scaling if t.bias is not None",
     "biases = [t.bias if t.bias is not None", COMBINE),
    ("combine: factor methods lose the sign of a negative weight", "adapterkit/ops/combining.py",
     "[math.sqrt(abs(w)) * (1 if w >= 0 else -1) for w in ws]",
     "[math.sqrt(abs(w)) for w in ws]", COMBINE),
    ("combine: default rank on a tie picks the smaller", "adapterkit/ops/lowrank.py",
     "key=lambda k: (counts[k], k))", "key=lambda k: (counts[k], -k))", COMBINE),
    ("combine: svd default rank is the smallest input rank", "adapterkit/ops/combining.py",
     "rank = max((f.rank for fs in factors for f in fs.values()), default=adapters[0].config.r)",
     "rank = min((f.rank for fs in factors for f in fs.values()), default=adapters[0].config.r)", COMBINE),
]

DEFAULT_TESTS = ['tests/test_merge.py']
