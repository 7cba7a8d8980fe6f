"""Mutation check of the merge math and plan_merge: does tests/test_merge_math.py catch plausible bugs?

Usage: python tests/mutation/run.py merge [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the merge tests then run against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_merge_math.py"]
LORA = "adapterkit/kinds/lora.py"
IA3 = "adapterkit/kinds/ia3.py"
PLAN = "adapterkit/ops/merge_plan.py"
COMMON = "adapterkit/kinds/merging.py"
OPS = "adapterkit/ops/merging.py"
TIED_TESTS = ["tests/test_merge.py::test_tied_embeddings_untie", "tests/test_merge.py::test_tied_embeddings_shared_equals_peft",
              "tests/test_merge.py::test_tied_embeddings_without_config_or_with_a_stored_lm_head", "tests/test_merge.py::test_tied_embeddings_refusals",
              "tests/test_merge_math.py::test_find_tied_embeddings", "tests/test_checkpoint.py::test_placement_puts_a_new_tensor_in_the_shard_of_a_base_key",
              "tests/test_extract_roundtrip.py"]

ORIENT = "adapterkit/ops/orientation.py"
ORIENT_TESTS = ["tests/test_orientation.py"]
CKPT_TESTS = ["tests/test_checkpoint.py::test_single_shard_with_index_round_trips_with_its_index",
              "tests/test_checkpoint.py::test_merge_into_single_shard_with_index_is_readable_by_adapterkit_and_transformers",
              "tests/test_checkpoint.py::test_info_names_a_truncated_shard", "tests/test_checkpoint.py::test_info_names_a_missing_shard"]

# (name, file, old text, new text)
MUTANTS = [
    ("lora: fan_in_fan_out shape not transposed", LORA, "shape = (a[1], b[0]) if view.fan_in_fan_out else (b[0], a[1])", "shape = (b[0], a[1])"),
    ("lora: weight ignored", LORA, 'out = {"weight": W + delta * weight}', 'out = {"weight": W + delta}'),
    ("lora: weight applied twice", LORA, 'out = {"weight": W + delta * weight}', 'out = {"weight": W + delta * weight * weight}'),
    ("lora_bias: bias added without scaling", LORA,
     'out["bias"] = t["bias"] + delta_bias(adapter, module, device=W.device, dtype=t["bias"].dtype) * weight',
     'out["bias"] = t["bias"] + view.bias.to(W.device, t["bias"].dtype) * weight'),
    ("lora_bias: bias scaled by weight only once more", LORA,
     'out["bias"] = t["bias"] + delta_bias(adapter, module, device=W.device, dtype=t["bias"].dtype) * weight',
     'out["bias"] = t["bias"] + delta_bias(adapter, module, device=W.device, dtype=t["bias"].dtype)'),
    ("dora: linear norm over the wrong axis", LORA, "return (m / torch.linalg.norm(W + 1 * delta, dim=1).to(W.dtype)).view(-1, 1)",
     "return (m / torch.linalg.norm(W + 1 * delta, dim=0).to(W.dtype)).view(-1, 1)"),
    ("dora: norm of W instead of W + ΔW", LORA, "return (m / torch.linalg.norm(W + 1 * delta, dim=1).to(W.dtype)).view(-1, 1)",
     "return (m / torch.linalg.norm(W, dim=1).to(W.dtype)).view(-1, 1)"),
    ("dora: fan_in_fan_out factor not transposed", LORA, "return (m / norm).view(-1, 1).T", "return (m / norm).view(1, -1).T"),
    ("dora: embedding norm per vocabulary row", LORA,
     "norm = torch.linalg.norm(W.T + 1 * delta.T, dim=1).to(W.dtype)\n        return (m / norm).view(1, -1)",
     "norm = torch.linalg.norm(W + 1 * delta, dim=1).to(W.dtype)\n        return (m[: norm.shape[0]] / norm).view(-1, 1)"),
    ("dora: conv norm over the output channels", LORA, "norm = (W + 1 * delta).norm(p=2, dim=tuple(range(1, W.dim())), keepdim=True).transpose(1, 0)",
     "norm = (W + 1 * delta).norm(p=2, dim=tuple(range(0, W.dim() - 1)), keepdim=True).transpose(1, 0)"),
    ("dora: merged as plain LoRA", LORA, 'out = {"weight": factor * (W + delta)}', 'out = {"weight": W + delta}'),
    ("dora: scaled merge allowed", LORA, "        if weight != 1:\n            raise UnsupportedError(\n                \"DoRA defines", "        if False:\n            raise UnsupportedError(\n                \"DoRA defines"),
    ("lora: unmerge adds", LORA, 'out = {"weight": W - delta_weight(', 'out = {"weight": W + delta_weight('),
    ("lora: delta rounded to the adapter's dtype", LORA, "delta = delta_weight(adapter, module, device=W.device, dtype=W.dtype)", "delta = delta_weight(adapter, module, device=W.device).to(W.dtype)"),
    ("ia3: fan_in_fan_out axis swapped", IA3, "return (s.T if view.fan_in_fan_out else s), s", "return (s if view.fan_in_fan_out else s.T), s"),
    ("ia3: 2-D scale always transposed", IA3, "return (s.T if view.fan_in_fan_out else s), s", "return s.T, s"),
    ("ia3: conv feedforward axis swapped", IA3, "return (s if view.is_feedforward else s.transpose(0, 1)), s", "return (s.transpose(0, 1) if view.is_feedforward else s), s"),
    ("ia3: feedforward bias scaled too", IA3, "    if not view.is_feedforward:\n        out[\"bias\"] = ((size,), False)", "    if True:\n        out[\"bias\"] = ((size,), False)"),
    ("ia3: bias never scaled", IA3, '        out["bias"] = torch.mul(t["bias"], s.reshape(t["bias"].shape))', '        out["bias"] = t["bias"]'),
    ("ia3: weight scales l itself", IA3, "        s = 1 + weight * (s - 1)", "        s = s * weight"),
    ("ia3: unmerge multiplies", IA3, 'out = {"weight": torch.div(W, scale)}', 'out = {"weight": torch.mul(W, scale)}'),
    ("ia3: zero scales not refused", IA3, "    if len(zeros):", "    if False:"),
    ("ia3: expected shape on the wrong axis", IA3, "scaled_dim = 1 if view.is_feedforward else 0", "scaled_dim = 0 if view.is_feedforward else 1"),
    ("targets: shape check ignores sizes", COMMON, "return len(shape) == len(want) and all(w is None or w == s for s, w in zip(shape, want))", "return len(shape) == len(want)"),
    ("targets: computed in the targets' dtype", COMMON, "ct = torch.float64 if t.dtype == torch.float64 else torch.float32", "ct = t.dtype"),
    ("whole tensors: .base_layer kept", COMMON, 'if p != "base_layer"', "if True"),
    ("plan: strip removes two components", PLAN, "lambda n, f=first: n[len(f) + 1:] if n.startswith(f + \".\") else None", "lambda n, f=first: n.split(\".\", 2)[-1] if n.startswith(f + \".\") else None"),
    ("plan: add rule without the dot", PLAN, 'rules.append((f"add {p + \'.\'!r}", lambda n, p=p: f"{p}.{n}"))', 'rules.append((f"add {p + \'.\'!r}", lambda n, p=p: f"{p}{n}"))'),
    ("plan: exact rule never tried", PLAN, 'rules: list[tuple[str, Callable[[str], str | None]]] = [("exact", lambda n: n)]', "rules: list[tuple[str, Callable[[str], str | None]]] = []"),
    ("plan: bf16 base refused", PLAN, 'FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64",', 'FLOAT_DTYPES = frozenset({"F16", "F32", "F64",'),
    ("plan: dtype not checked", PLAN, "        if str(dtype).removeprefix(\"torch.\") not in FLOAT_DTYPES:", "        if False:"),
    ("plan: tied embeddings not detected", PLAN, 'tied = _tied_to(m, checkpoint_keys) if role == "weight" else None', "tied = None"),
    ("plan: missing bias tolerated", PLAN, "                elif required:", "                elif False:"),
    ("plan: replacement shape not checked", PLAN, "elif fits(mapped, tuple(adapter.meta(akey).shape), f\"`{akey}` (stored whole)\"):", "else:"),
    ("tied: config.json said tied ignored", PLAN, "    if said is False or (said is None and outputs):", "    if said is False or outputs:", TIED_TESTS),
    ("tied: config.json saying untied ignored", PLAN, "    if said is False or (said is None and outputs):", "    if said is None and outputs:", TIED_TESTS),
    ("tied: ambiguous input embeddings tolerated", PLAN, "    if len(inputs) != 1 or len(outputs) > 1:", "    if not inputs or len(outputs) > 1:", TIED_TESTS),
    ("tied: config.json not updated", OPS, '        files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\\n").encode("utf-8")\n', "", TIED_TESTS),
    ("tied: untied lm_head starts from the stored bytes", OPS, "        ordered[tie.output_key] = keys[tie.input_key]\n    else:", "        ordered[tie.output_key] = keys[tie.output_key]\n        sources.pop(tie.output_key)\n    else:", TIED_TESTS),
    ("tied: an unknown tie taken as known", PLAN, "known=said is True)", "known=True)", TIED_TESTS),
    ("tied: an unknown tie merged without a policy", OPS, "        if not tie.known and tied_embeddings is None:\n", "        if False:\n", TIED_TESTS),
    ("tied: embeddings replaced alike untied anyway", OPS, "    return torch.equal(adapters[i].tensors[a], adapters[j].tensors[b])", "    return False", TIED_TESTS),
    ("tied: embeddings replaced differently kept tied", OPS, "    return torch.equal(adapters[i].tensors[a], adapters[j].tensors[b])", "    return True", TIED_TESTS),
    ("tied: model whose math depends on the tie untied anyway", OPS, "    if model_type in TIE_CHANGES_MATH:", "    if False:", TIED_TESTS),
    ("tied: saved base layers taken for modules_to_save", OPS, '    return replacement[1].endswith(".base_layer.weight")', "    return False", TIED_TESTS),
    ("tied: shared leaves lm_head's modules unmerged", OPS, "        touched.setdefault(tie.input_key, []).append((i, type(target)(target.module, roles)))", "        pass", TIED_TESTS),
    ("tied: untied lm_head placed in the first shard", "adapterkit/checkpoint/writer.py",
     "by_name[self.base.shard_of(placed.get(key, key)).name].append(key)", "by_name[names[0] if key in placed else self.base.shard_of(key).name].append(key)", TIED_TESTS),
    # per-module orientation (issue 17 point 3) and the checkpoint edges (point 8)
    ("orientation: config.json's model ignored", ORIENT, "        if known is not None:\n            out[name] = short in known", "        if False:\n            out[name] = short in known", ORIENT_TESTS),
    ("orientation: the model's Conv1D names ignored", ORIENT, "            out[name] = short in known", "            out[name] = bool(view.fan_in_fan_out)", ORIENT_TESTS),
    ("orientation: an (in, out) shape read as (out, in)", ORIENT, "        if tuple(shape) == natural[::-1]:\n            return True", "        if tuple(shape) == natural[::-1]:\n            return False", ORIENT_TESTS),
    ("orientation: a square weight's saved flag trusted", ORIENT, "        elif bool(view.fan_in_fan_out) == (short in CONV1D_NAMES):", "        elif True:", ORIENT_TESTS),
    ("orientation: the caller's answer ignored", ORIENT, "        if given is not None:\n            out[name] = given", "        if False:\n            out[name] = given", ORIENT_TESTS),
    ("orientation: a misspelt module tolerated", ORIENT, "            if not any(m == given or m.endswith(\".\" + given) for m in names):", "            if False:", ORIENT_TESTS),
    ("orientation: combine's flag not written", "adapterkit/ops/combining.py", "    if flag is not None and result.config.fan_in_fan_out != flag:", "    if False:", ORIENT_TESTS),
    ("checkpoint: one indexed shard loses its index", "adapterkit/checkpoint/writer.py",
     "self._indexed = len(groups) > 1 or (max_shard_size is None and base.index is not None)", "self._indexed = len(groups) > 1", CKPT_TESTS),
    ("info: a broken checkpoint reported as not an adapter", "adapterkit/api.py", '            if checkpoint_exc.code == "not-a-checkpoint":', "            if True:", CKPT_TESTS),
    ("plan: first problem only", PLAN, "    if problems:\n        raise _base_mismatch(adapter, problems, rule_name)", "    if problems:\n        raise _base_mismatch(adapter, problems[:1], rule_name)"),
]

DEFAULT_TESTS = TESTS
