"""Mutation check of attaching adapters to live models (adapterkit.inject): do
tests/test_attach.py, tests/test_attach_prompt.py and tests/test_attach_bnb.py catch plausible bugs?

Usage: python tests/mutation/run.py inject [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the tests named for it then run against the copy.  A
mutant is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

LAYERS = "adapterkit/inject/layers.py"
PLAN = "adapterkit/inject/plan.py"
MERGE = "adapterkit/inject/merge.py"
ATTACH = "adapterkit/inject/attaching.py"
PROMPT = "adapterkit/inject/prompt_forward.py"
LORA_TESTS = ["tests/test_attach.py"]
PROMPT_TESTS = ["tests/test_attach_prompt.py"]
QUANT = "adapterkit/inject/quantized.py"
BNB_TESTS = ["tests/test_attach_bnb.py"]
EDGE_TESTS = ["tests/test_attach_edges.py"]  # scaled embeddings, targets inside modules_to_save, nested disabled()

# (name, file, old text, new text, tests)
MUTANTS = [
    ("lora: scaling forgotten", LAYERS, "            return result + lora_out * scaling\n", "            return result + lora_out\n", LORA_TESTS),
    ("lora: conv A without the base's stride/padding", LAYERS, "self.conv_fn(x, A, None, base.stride, base.padding)", "self.conv_fn(x, A, None)", LORA_TESTS),
    ("lora: lora_B.bias dropped", LAYERS, "return F.linear(F.linear(x, A), B, bias)", "return F.linear(F.linear(x, A), B)", LORA_TESTS),
    ("dora: linear norm over the wrong axis", LAYERS,
     "norm = torch.linalg.norm(weight + scaling * lora_weight.detach(), dim=1).to(weight.dtype).detach()",
     "norm = torch.linalg.norm(weight + scaling * lora_weight.detach(), dim=0).to(weight.dtype).detach()", LORA_TESTS),
    ("dora: base bias rescaled too", LAYERS, "        base_result = result if bias_view is None else result - bias_view\n", "        base_result = result\n", LORA_TESTS),
    ("embedding: embed_scale ignored", LAYERS,
     "            return result + (out if embed_scale is None else out * torch.as_tensor(embed_scale).to(out.dtype))",
     "            return result + out", LORA_TESTS),
    ("embedding: padding_idx ignored", LAYERS, "after_A = F.embedding(x, A, padding_idx=base.padding_idx,", "after_A = F.embedding(x, A, padding_idx=None,", LORA_TESTS),
    ("ia3: feedforward scales the output", LAYERS, "        if self.is_feedforward:\n", "        if False:\n", LORA_TESTS),
    ("ia3: several adapters: last scale only", LAYERS,
     "            scaling = scaling * (self.ia3_l[name] if conv else self.ia3_l[name].flatten())",
     "            scaling = self.ia3_l[name] if conv else self.ia3_l[name].flatten()", LORA_TESTS),
    ("plan: exclude_modules ignored", PLAN, "        elif name in exclude or any(name.endswith(\".\" + e) for e in exclude):\n            return False",
     "        elif False:\n            return False", LORA_TESTS),
    ("plan: list targets match without the dot boundary", PLAN, '    if not any(name.endswith("." + t) for t in targets):', "    if not any(name.endswith(t) for t in targets):", LORA_TESTS),
    ("plan: layers_to_transform ignored", PLAN, "    indexes = getattr(config, \"layers_to_transform\", None)\n", "    indexes = None\n", LORA_TESTS),
    ("plan: regex targets searched, not fully matched", PLAN, "        return re.fullmatch(targets, name) is not None", "        return re.search(targets, name) is not None", LORA_TESTS),
    ("merge: safe mode writes before checking", MERGE, "        if not safe:\n            _write(wrapper, current)", "        if True:\n            _write(wrapper, current)", LORA_TESTS),
    ("merge: merged adapters still computed in forward", LAYERS, "        live = self.live()\n        if not live:\n            return result",
     "        live = list(self.active)\n        if not live:\n            return result", LORA_TESTS),
    ("attach: name clash not checked", ATTACH, "    check_name_free(model, name)\n    if adapter.peft_type not in", "    if adapter.peft_type not in", LORA_TESTS),
    ("attach: an unactivated adapter becomes active", ATTACH, "    if activate:\n        set_active(model, [name])\n    return model\n\n\ndef _attach_prompt",
     "    set_active(model, [name])\n    return model\n\n\ndef _attach_prompt", LORA_TESTS),
    ("prompt: attention mask not extended", PROMPT, "    if mask is not None:\n        kw[\"attention_mask\"] = torch.cat((_ones(batch, v, mask), mask), dim=1)\n    _adjust(",
     "    _adjust(", PROMPT_TESTS),
    ("prompt: labels not padded with -100", PROMPT, "torch.full((batch, v), -100)", "torch.full((batch, v), 0)", PROMPT_TESTS),
    ("prompt: prompts appended instead of prepended", PROMPT, "    return original(inputs_embeds=torch.cat((p, inputs_embeds), dim=1), **kw)",
     "    return original(inputs_embeds=torch.cat((inputs_embeds, p), dim=1), **kw)", PROMPT_TESTS),
    ("prefix: position ids not shifted", PROMPT, "            kw[\"position_ids\"] = kw[\"position_ids\"] + config.num_virtual_tokens", "            kw[\"position_ids\"] = kw[\"position_ids\"]", PROMPT_TESTS),
    ("classifier: token type ids not padded", PROMPT, "    if family == \"classifier\" and kw.get(\"token_type_ids\") is not None:", "    if False:", PROMPT_TESTS),
    ("dora embedding: embed_scale ignored", LAYERS, "        if embed_scale is not None:\n            dora = dora * torch.as_tensor(embed_scale).to(dora.dtype)\n", "", EDGE_TESTS),
    ("dora embedding: embed_scale inside the weight norm", LAYERS,
     "norm = torch.linalg.norm(base.weight.T + scaling * lora_weight.detach(), dim=1)",
     "norm = torch.linalg.norm((base.weight.T + scaling * lora_weight.detach()) * (1 if embed_scale is None else torch.as_tensor(embed_scale)), dim=1)", EDGE_TESTS),
    ("plan: a trained base tensor blamed on the model", PLAN, "                overwrites.append(key)\n", "                offenders.append(key)\n",
     ["tests/test_extract_roundtrip.py"]),
    ("embedding: embed_scale only as a buffer", LAYERS, 'embed_scale = getattr(base, "embed_scale", None)\n        if name not in self.lora_magnitude:',
     'embed_scale = base._buffers.get("embed_scale")\n        if name not in self.lora_magnitude:', EDGE_TESTS),
    ("plan: children of modules_to_save targeted", PLAN, 'rf"(^|.*\\.){m}($|\\..*)", name)', 'rf"(^|.*\\.){m}$", name)', EDGE_TESTS),
    ("plan: modules_to_save excluded by suffix only", PLAN, 'if saved and any(re.match(rf"(^|.*\\.){m}($|\\..*)", name) for m in saved):',
     "if saved and any(name.endswith(m) for m in saved):", EDGE_TESTS),
    ("disabled: an inner exit re-enables", ATTACH, "            w.disabled = flag", "            w.disabled = False", EDGE_TESTS),
    # bitsandbytes layers (quantized.py): PEFT's bnb layers bit for bit
    ("bnb: adapter term rounded after the add", LAYERS, "                result = result + (out.to(expected) if cast else out)\n",
     "                result = (result + out).to(expected)\n", BNB_TESTS),
    ("bnb: DoRA norm over the packed weight", LAYERS, "(base.weight if self.quant is None else dequantized(base))", "base.weight", BNB_TESTS),
    ("bnb: IA3 input not upcast", LAYERS, "        x = x.float() if cast else x\n", "", BNB_TESTS),
    ("bnb: unmerge leaves quantized layers merged", MERGE, "            quantized.restore(wrapper)\n", "", BNB_TESTS),
    ("bnb: merge adds ΔW in the dequantized dtype", QUANT, "dense = output.to(delta.dtype).to(delta.device) + delta",
     "dense = output + delta.to(output.dtype)", BNB_TESTS),
    ("bnb: re-quantized without double quantization", QUANT, "kwargs.update(bnb_quantized=False,",
     "kwargs.update(compress_statistics=False, bnb_quantized=False,", BNB_TESTS),
    ("bnb: pre-merge weights kept again at each merge", QUANT, "    if not wrapper.merged:\n        wrapper.quant_original", "    if True:\n        wrapper.quant_original", BNB_TESTS),
    ("bnb: int8 scales read from the weight only", QUANT, 'scb = getattr(state, "SCB", None) if weight is module.weight else None',
     "scb = None", BNB_TESTS),
    ("bnb: DoRA norm from the merged weight", QUANT, "(i > 0 or wrapper.merged)", "(False)", BNB_TESTS),
    ("plan: GPTQ layers reported as a model mismatch", PLAN, "        if why is not None:\n            refused.append", "        if False:\n            refused.append", BNB_TESTS),
]

DEFAULT_TESTS = None
