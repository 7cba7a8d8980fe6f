"""Mutation check of the PEFT feature table and what uses it (adapterkit.kinds.features, the
trainable-token and target_parameters paths): does tests/test_features.py catch plausible bugs?

Usage: python tests/mutation/run.py features [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the tests named for it then run against the copy.  A
mutant is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

FEATURES = "adapterkit/kinds/features.py"
LORA = "adapterkit/kinds/lora.py"
LAYERS = "adapterkit/inject/layers.py"
PLAN = "adapterkit/inject/plan.py"
MERGE = "adapterkit/inject/merge.py"
TESTS = ["tests/test_features.py"]

# (name, file, old text, new text, tests)
MUTANTS = [
    ("table: a feature in use is not reported", FEATURES, "        if f.refused_by:\n            found.append(Use(f, key=name))",
     "        if False:\n            found.append(Use(f, key=name))", TESTS),
    ("table: a variant's tensors are not recognised", FEATURES,
     '            if ("." + part in key) if part.endswith(".") else key.endswith("." + part):', "            if False:", TESTS),
    ("MultiheadAttention not detected", FEATURES,
     '        if name.endswith(".base_layer.out_proj") and name[: -len(".base_layer.out_proj")] in names:', "        if False:", TESTS),
    ("expert stacks not detected", FEATURES,
     "            if rows != r and r > 0 and rows % r == 0 and _param_targeted(cfg, name):", "            if False:", TESTS),
    ("attach does not ask the table", PLAN, '    require(adapter, ATTACH, what="attach")\n', "", TESTS),
    ("low-rank operations do not ask the table", "adapterkit/ops/lowrank.py", "    require(adapter, LOWRANK, what=what)\n", "", TESTS),
    ("prune by energy does not ask the table", "adapterkit/ops/pruning.py", '        require(adapter, LOWRANK, what="prune by energy")\n', "        pass\n", TESTS),
    ("target_parameters: scaling forgotten", LAYERS, "        return ((B @ A) * self.scaling[name]).to(param.device, param.dtype)",
     "        return (B @ A).to(param.device, param.dtype)", TESTS),
    ("target_parameters: the last active adapter only", LAYERS,
     "            delta = self.delta(name) if delta is None else delta + self.delta(name)", "            delta = self.delta(name)", TESTS),
    ("tokens: in-model unmerge keeps the new rows", MERGE,
     "        rows = wrapper.originals[record.name] if undo else wrapper.tokens[record.name].detach()",
     "        rows = wrapper.tokens[record.name].detach()", TESTS),
    ("tokens: rows added, not replaced", LORA, "    return W.index_copy(0, index, view.values.to(device=W.device, dtype=W.dtype))",
     "    return W.index_add(0, index, view.values.to(device=W.device, dtype=W.dtype))", TESTS),
    ("tokens: dict form matched by the full name only", LORA, '            if module == name or module.endswith("." + name):',
     "            if module == name:", TESTS),
    ("tokens: untied merge of a tied embedding", "adapterkit/ops/merging.py",
     "                require_separable(loaded[i], target.module)  # trainable tokens change the tied rows of both",
     "                pass", TESTS),
    ("tokens: attach ignores a weight shared with lm_head", PLAN, "    if shared:\n        raise UnsupportedError(",
     "    if False:\n        raise UnsupportedError(", TESTS),
    ("info: factor norms shown for KaSA", "adapterkit/summary.py", "modules if not changes_delta(adapter) else []", "modules", TESTS),
]

DEFAULT_TESTS = None
