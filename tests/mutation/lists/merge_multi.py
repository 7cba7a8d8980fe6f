"""Mutation check of multi-adapter merges, the merge record and --dtype: do tests/test_merge_multi.py and tests/test_merge_record.py catch plausible bugs?

Usage: python tests/mutation/run.py merge_multi [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the named tests then run against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

OPS = "adapterkit/ops/merging.py"
RECORD = "adapterkit/ops/merge_record.py"
LORA = "adapterkit/kinds/lora.py"
MULTI = "tests/test_merge_multi.py"
SHARED = [f"{MULTI}::test_two_adapters_merge_to_peft_with_both_active[{p}-shared-{o}]"
          for p in ("lora+dora", "dora+dora", "dora+ia3", "lora+ia3") for o in ("listed", "reversed")]
CONFLICTS = [f"{MULTI}::test_two_adapters_merge_to_peft_with_both_active[{p}-shared-listed]" for p in ("lora+mts", "mts+mts", "ia3+ia3_ff")]
CONFLICTS += [f"{MULTI}::test_two_modules_to_save_with_equal_base_tensors_are_not_a_conflict", f"{MULTI}::test_ia3_adapters_disagreeing_on_feedforward_are_refused"]
RECORD_TESTS = ["tests/test_merge_record.py"]

# (name, file, old text, new text, tests)
MUTANTS = [
    ("multi: DoRA's norm over the weight the adapters before it made", OPS, "                                        base=base or None)",
     "                                        base=None)", SHARED),
    ("multi: DoRA's norm over the base, but scaling the base too", LORA, '        out = {"weight": factor * (W + delta)}',
     '        out = {"weight": factor * ((W if b is None else b["weight"]) + delta)}', SHARED),
    ("multi: DoRA leaves the bias the adapters before it changed", OPS, '            if weight_key in bias_of and "bias" not in roles:',
     "            if False:", SHARED),
    ("multi: DoRA scales the whole bias", LORA, "            out[\"bias\"] = b0 + factor.reshape(-1) * (targets[\"bias\"].to(device=W.device, dtype=W.dtype) - b0)",
     "            out[\"bias\"] = factor.reshape(-1) * targets[\"bias\"].to(device=W.device, dtype=W.dtype)", SHARED),
    ("multi: only the modules of the tensor that comes up first", OPS, "        order = self._module_group(key)",
     "        order = self.touched.get(key, [])", SHARED),
    ("multi: adapters on a module applied in file order", OPS, "        return sorted(found, key=lambda item: item[0])  # stable: one adapter's targets as listed",
     "        return found", SHARED),
    ("conflict: two modules_to_save of one module allowed", OPS, "                whole = _saved_whole(adapters[j], other) or _saved_whole(adapters[i], akey)",
     "                whole = False", CONFLICTS),
    ("conflict: a module saved whole and adapted by the other allowed", OPS, "            if not _saved_whole(adapters[i], akey):\n                continue",
     "            if True:\n                continue", CONFLICTS),
    ("conflict: different stored base tensors allowed", OPS, "                if not torch.equal(adapters[j].tensors[other], adapters[i].tensors[akey]):",
     "                if False:", CONFLICTS),
    ("conflict: equal stored base tensors refused", OPS, "                if not torch.equal(adapters[j].tensors[other], adapters[i].tensors[akey]):",
     "                if True:", CONFLICTS),
    ("conflict: IA3 feedforward disagreement allowed", OPS, "            if j is not None:\n                raise refuse(min(i, j)",
     "            if False:\n                raise refuse(min(i, j)", CONFLICTS),
    ("record: earlier merges not carried forward", OPS, "    after = kept if unmerge else [*history, *entries]",
     "    after = kept if unmerge else entries", RECORD_TESTS),
    ("record: merging a recorded adapter allowed", RECORD, "            if earlier is not None:", "            if False:", RECORD_TESTS),
    ("record: one adapter listed twice allowed", RECORD, "            if d in digests[:i]:", "            if False:", RECORD_TESTS),
    ("record: unmerge weight 1 instead of the recorded one", RECORD, "            out_weights[i] = recorded", "            out_weights[i] = 1.0", RECORD_TESTS),
    ("record: other weights than merged allowed", RECORD, "            if out_weights[i] != recorded and not force:", "            if False:", RECORD_TESTS),
    ("record: unrecorded adapter unmerged without force", RECORD, "        if j is None:\n            if not force:", "        if j is None:\n            if False:", RECORD_TESTS),
    ("record: order never checked", RECORD, "                if clash:", "                if False:", RECORD_TESTS),
    ("record: additive merges taken for non-commuting", RECORD,
     "                    clash = sorted((mine_changed & (set(later.added) | set(later.changed))) | (mine_added & set(later.changed)))",
     "                    clash = sorted((mine_changed | mine_added) & (set(later.added) | set(later.changed)))", RECORD_TESTS),
    ("record: unmerge in the order listed", RECORD, "    order = sorted(range(n), key=lambda i: (taken.get(i, len(record)), i))",
     "    order = list(range(n))", RECORD_TESTS),
    ("record: unmerged entries kept in the record", RECORD, "    remaining = [e for j, e in enumerate(record) if j not in used]",
     "    remaining = list(record)", RECORD_TESTS),
    ("record: digest of the config as stored ignored", RECORD, "    return combine([config_digest(adapter.config.to_dict(), FORMAT_VERSION)] + [entries[k] for k in sorted(entries)])",
     "    return combine([entries[k] for k in sorted(entries)])", RECORD_TESTS),
    ("record: forced unmerge of an old entry keeps it", RECORD, "                used.add(old)\n", "", RECORD_TESTS),
    ("dtype: integer and bool tensors cast", OPS, "    plan = {k: (out_dtype if out_dtype and dt in FLOAT_DTYPES else dt, shape) for k, (dt, shape) in keys.items()}",
     "    plan = {k: (out_dtype if out_dtype else dt, shape) for k, (dt, shape) in keys.items()}", RECORD_TESTS),
    ("dtype: config.json's torch_dtype left stale", OPS, 'CONFIG_DTYPE_KEYS = ("dtype", "torch_dtype")', 'CONFIG_DTYPE_KEYS = ("dtype",)', RECORD_TESTS),
    ("dtype: sub-configs left stale", OPS, '                rewrite(value, f"{where}{key}.")', "                pass", RECORD_TESTS),
    ("dtype: config.json not written", OPS, "        _config_dtype(ckpt, files, out_dtype, notes)", "        pass", RECORD_TESTS),
]

DEFAULT_TESTS = None
