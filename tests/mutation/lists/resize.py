"""Mutation check of resize, rebalance and prune: does tests/test_resize.py catch plausible bugs?

Usage: python tests/mutation/run.py resize [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); tests/test_resize.py then runs against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_resize.py"]
RESIZE = "adapterkit/ops/resizing.py"
REBALANCE = "adapterkit/ops/rebalancing.py"
PRUNE = "adapterkit/ops/pruning.py"
PATTERNS = "adapterkit/kinds/patterns.py"
CLI = "adapterkit/cli/surgery.py"

# (name, file, old text, new text)
MUTANTS = [
    ("resize: scaling not folded into the factors", RESIZE, "factored_svd([(f.B, f.A)], [f.scaling], device=device)", "factored_svd([(f.B, f.A)], [1.0], device=device)"),
    ("resize: lora_B.bias stored without the scaling", RESIZE, "bias = None if f.bias is None else f.bias * f.scaling", "bias = f.bias"),
    ("resize: rank capped at the SVD's (no zero padding)", RESIZE, "B, A = svd.factors(k, balanced=balanced)", "B, A = svd.factors(min(k, svd.rank), balanced=balanced)"),
    ("resize: balanced ignored", RESIZE, "B, A = svd.factors(k, balanced=balanced)", "B, A = svd.factors(k, balanced=False)"),
    ("resize: error from the kept σ", RESIZE, "float(sq[k:].sum()) ** 0.5", "float(sq[:k].sum()) ** 0.5"),
    ("resize: rules applied to √σ", RESIZE, "k = select_rank(svd.S, rank=rank", "k = select_rank(svd.S.sqrt(), rank=rank"),
    ("resize: whole tensors dropped", RESIZE, "out = {key: adapter.tensors[key] for key in adapter.tensors if parse(key) is None}", "out = {}"),
    ("resize: lora_bias reset in the config", RESIZE, "scaling_one_config(cfg, ranks, lora_bias=cfg.lora_bias)", "scaling_one_config(cfg, ranks, lora_bias=False)"),
    ("resize: params counted at the old rank", RESIZE, "f.rank * width, k * width)", "f.rank * width, f.rank * width)"),
    ("resize: arguments not checked up front", RESIZE, "        select_rank(torch.ones(1), rank=rank, energy=energy, sv_ratio=sv_ratio)\n", "        pass\n"),
    ("rebalance: uniform start not tried", REBALANCE, '"uniform": [max(1, min(uniform, len(e))) for e in energies]', '"uniform": [1] * len(costs)'),
    ("rebalance: σ² not weighed by cost", REBALANCE, "(-e[j] / c, i, j)", "(-e[j], i, j)"),
    ("rebalance: allocation by σ, not σ²", REBALANCE, "energies = [s.double().square().tolist() for s in spectra]", "energies = [s.double().tolist() for s in spectra]"),
    ("rebalance: modules may fall to rank 0", REBALANCE, 'starts = {"greedy": [1] * len(costs),', 'starts = {"greedy": [0] * len(costs),'),
    ("rebalance: budget overrun", REBALANCE, "if j == ranks[i] and costs[i] <= left:", "if j == ranks[i]:"),
    ("rebalance: --rank budget counts B only", REBALANCE, "rank * sum(costs)", "rank * sum(f.shape[0] for f, _ in parts)"),
    ("rebalance: a tie keeps the heavier allocation", REBALANCE, "-sum(k * c for k, c in zip(found[name], costs))", "sum(k * c for k, c in zip(found[name], costs))"),
    ("rebalance: budget below the floor accepted", REBALANCE, "    if budget < floor:\n", "    if budget < 0:\n"),
    ("prune: modules regex must match the whole name", PRUNE, "regex.search(name)", "regex.fullmatch(name)"),
    ("prune: exclude_modules not updated", PRUNE, '{"exclude_modules": _exclusion(cfg.exclude_modules, [n for n in names if n in dropped], kept)}', '{"exclude_modules": cfg.exclude_modules}'),
    ("prune: dot-suffix clash ignored", PRUNE, 'clash = any(k.endswith("." + d) for k in kept for d in dropped)', "clash = False"),
    ("prune: pattern keys matching nothing kept", PRUNE, "if any(pattern_key([k], n) == k for n in kept)}", "}"),
    ("prune: wrapper tensors keep .base_layer", PRUNE, 'new = key.replace(WRAPPER, ".", 1)', "new = key"),
    ("prune: keep_fraction rounds down", PRUNE, "math.ceil(keep_fraction * len(names))", "int(keep_fraction * len(names))"),
    ("prune: energy share of ‖ΔW‖, not ‖ΔW‖²", PRUNE, 'energy[name] = stats["delta_norm"] ** 2', 'energy[name] = stats["delta_norm"]'),
    ("prune: layers rule reads no layers_pattern", PRUNE, 'layer_index(name, getattr(cfg, "layers_pattern", None))', "layer_index(name)"),
    ("prune: everything pruned allowed", PRUNE, "    if not kept:\n", "    if False:\n"),
    ("prune: layer index from a greedy match (last number)", PATTERNS, r'm = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)', r'm = re.match(r".*\.[^.]*\.(?P<idx>\d+)\.", module)'),
    ("cli: --layers ranges exclude their end", CLI, "layers += range(int(m[1]), int(m[2] or m[1]) + 1)", "layers += range(int(m[1]), int(m[2] or m[1]))"),
    ("cli: result may be written over the input", CLI, "save(replace(result, source=given.source), out, overwrite=overwrite)", "save(result, out, overwrite=overwrite)"),
]

DEFAULT_TESTS = TESTS
