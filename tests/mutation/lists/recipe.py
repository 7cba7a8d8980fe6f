"""Mutation check of recipes (adapterkit.recipe): does tests/test_recipe.py catch plausible bugs?

Usage: python tests/mutation/run.py recipe [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); tests/test_recipe.py then runs against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_recipe.py"]
RECIPE = "adapterkit/io/recipe.py"
READER = "adapterkit/io/reader.py"
WRITER = "adapterkit/io/writer.py"
COMBINE = "adapterkit/ops/combining.py"
RESIZE = "adapterkit/ops/resizing.py"
REBALANCE = "adapterkit/ops/rebalancing.py"
PRUNE = "adapterkit/ops/pruning.py"
EXTRACT = "adapterkit/ops/extract.py"
EXPORT = "adapterkit/ops/export.py"
CARD = "adapterkit/hub/card.py"
INFO = "adapterkit/summary.py"
CLI = "adapterkit/cli/surgery.py"
ADAPTER = "adapterkit/adapter.py"

# (name, file, old text, new text)
MUTANTS = [
    # the step and its encoding
    ("step: None parameters kept", RECIPE, "        if value is None:\n            continue\n", "        if value is None:\n            pass\n"),
    ("step: no adapterkit version", RECIPE, '    out["adapterkit"] = __version__\n', ""),
    ("step: Path inputs not turned into strings", RECIPE, "value = [str(v) if isinstance(v, Path) else v for v in value]", "value = list(value)"),
    ("chain: the input's steps are dropped", RECIPE, "derived(replace(result, recipe=(*source.recipe, s)),", "derived(replace(result, recipe=(s,)),"),
    ("chain: the new step goes first", RECIPE, "derived(replace(result, recipe=(*source.recipe, s)),", "derived(replace(result, recipe=(s, *source.recipe)),"),
    # reading and checking
    ("decode: lenient JSON (NaN accepted)", RECIPE, "        data = loads_strict(text)\n", "        data = json.loads(text)\n"),
    ("decode: an object is taken as one step", RECIPE, "    if not isinstance(data, list):\n", "    if isinstance(data, dict):\n        data = [data]\n    if not isinstance(data, list):\n"),
    ("decode: a non-object step accepted", RECIPE, "        if not isinstance(item, dict):\n", "        if not isinstance(item, (dict, str)):\n"),
    ("decode: empty op accepted", RECIPE, ' or (member == "op" and not value):', "):"),
    ("decode: adapterkit member not checked", RECIPE, 'for member in ("op", "adapterkit"):', 'for member in ("op",):'),
    ("decode: only the first step checked", RECIPE, "    for i, item in enumerate(data):\n", "    for i, item in enumerate(data[:1]):\n"),
    ("decode: wrong code", RECIPE, 'raise FormatError(f"{RECIPE_KEY} is not valid JSON ({exc})", code="metadata-invalid"',
     'raise FormatError(f"{RECIPE_KEY} is not valid JSON ({exc})", code="config-invalid"'),
    ("decode: the step index is not named", RECIPE, '        where = f"{key}[{i}]"\n', "        where = key\n"),
    ("reader: the recipe is not read (directory form)", READER, "    return Adapter(config, LazyStore(header), weights, version, _recipe(header, weights))",
     "    return Adapter(config, LazyStore(header), weights, version)"),
    ("reader: the recipe is not read (single file)", READER, "adapter = Adapter(config, LazyStore(header), path, version, _recipe(header, path))",
     "adapter = Adapter(config, LazyStore(header), path, version)"),
    ("reader: load drops the recipe", READER, "adapter.source, adapter.format_version, adapter.recipe, adapter.inputs)", "adapter.source, adapter.format_version, (), adapter.inputs)"),
    ("reader: a malformed recipe ignored", READER, "    return () if text is None else decode(text, path=path)",
     "    try:\n        return () if text is None else decode(text, path=path)\n    except Exception:\n        return ()"),
    ("writer: the recipe is not written", WRITER, "    if adapter.recipe:  # provenance (spec §5.6), in both forms; not part of the digest\n", "    if False:\n"),
    ("writer: the recipe written only in the single-file form", WRITER, "    if adapter.recipe:  # provenance (spec §5.6), in both forms; not part of the digest\n",
     '    if adapter.recipe and form == "file":\n'),
    ("writer: an empty recipe written as []", WRITER, "    if adapter.recipe:  # provenance (spec §5.6), in both forms; not part of the digest\n", "    if True:\n"),
    ("adapter: == compares the recipe", ADAPTER, "        if self.config != other.config or set(self.tensors) != set(other.tensors):",
     "        if self.config != other.config or set(self.tensors) != set(other.tensors) or self.recipe != other.recipe:"),
    # what each operation records
    ("combine: inputs are the sources, not the names given", COMBINE, "    return [str(n) for n in names]", "    return [_label(a, i) for i, a in enumerate(adapters)]"),
    ("combine: a count mismatch of names accepted", COMBINE, "len(names) != len(adapters):", "len(names) < len(adapters):"),
    ("combine: a PEFT folder named by its weights file", COMBINE, 'a.source.name.startswith("adapter_model.")', "False"),
    ("combine: seed recorded for every method", COMBINE, 'seed=req.seed if "dare" in method else None', "seed=req.seed"),
    ("combine: majority_sign never recorded", COMBINE, 'majority_sign=req.sign_rule if "ties" in method else None', "majority_sign=None"),
    ("combine: density recorded as the default 1.0", COMBINE, "weights=weights, rank=req.rank, density=density,", "weights=weights, rank=req.rank, density=req.density,"),
    ("combine: svd_clamp not recorded", COMBINE, "        svd_clamp=req.svd_clamp, input_recipes=", "        input_recipes="),
    ("combine: input recipes not kept", COMBINE, "input_recipes=[list(a.recipe) for a in adapters] if any(a.recipe for a in adapters) else None",
     "input_recipes=None"),
    ("combine: rank not recorded", COMBINE, "weights=weights, rank=req.rank,", "weights=weights,"),
    ("resize: balanced not recorded", RESIZE, 'sv_ratio=sv_ratio, balanced=balanced)), report', "sv_ratio=sv_ratio)), report"),
    ("resize: energy recorded as rank", RESIZE, 'step("resize", rank=rank, energy=energy,', 'step("resize", rank=rank or energy,'),
    ("rebalance: budget not recorded", REBALANCE, 'step("rebalance", budget=budget, rank=rank,', 'step("rebalance", rank=rank,'),
    ("prune: layers recorded unsorted with repeats", PRUNE, "layers=None if layers is None else sorted(wanted)", "layers=None if layers is None else list(layers)"),
    ("prune: keep_fraction not recorded", PRUNE, "min_energy=min_energy, keep_fraction=keep_fraction)", "min_energy=min_energy)"),
    ("extract: paths recorded after resolving", EXTRACT, 'recorded = step("extract", base=str(base), finetuned=str(finetuned),',
     'recorded = step("extract", base=str(Path(base).resolve()), finetuned=str(finetuned),'),
    ("extract: no recipe", EXTRACT, "return replace(Adapter.from_tensors(cfg, tensors), recipe=(recorded,), inputs=", "return replace(Adapter.from_tensors(cfg, tensors), inputs="),
    ("export: no step", EXPORT, "    return with_step(_export(adapter, consumer, max_rank), adapter, step(", "    return (lambda r, *_: r)(_export(adapter, consumer, max_rank), adapter, step("),
    ("export: max_rank not recorded", EXPORT, 'step("export", consumer=consumer, max_rank=max_rank)', 'step("export", consumer=consumer)'),
    ("cli combine: the inputs' cache paths recorded", CLI, "svd_clamp=svd_clamp, device=device, names=[str(p) for p in adapters], base=base)", "svd_clamp=svd_clamp, device=device, base=base)",
     ["tests/test_hub.py::test_card_of_a_combined_then_resized_adapter_says_how_it_was_made"]),
    # showing it
    ("card: recipe not shown", CARD, "    if not adapter.recipe:\n        return [\"How", "    if True:\n        return [\"How"),
    ("card: steps numbered from 0", RECIPE, "    for i, s in enumerate(recipe, 1):", "    for i, s in enumerate(recipe):"),
    ("card: weights not shown", RECIPE, 'named = ", ".join(f"{_value(n)} ×{_value(w)}" for n, w in zip(inputs, weights))', 'named = ", ".join(_value(n) for n in inputs)'),
    ("card: combine parameters not shown", RECIPE, "return f\"combine by {s.get('method')}{_params(s, ('method', 'inputs', 'weights', 'input_recipes'))} of {named}{tail}\"",
     "return f\"combine by {s.get('method')} of {named}{tail}\""),
    ("card: unbalanced never said", RECIPE, 'return ", unbalanced factors (B = U·Σ, A = Vᵀ)" if s.get("balanced") is False else ""', 'return ""'),
    ("card: resize energy shown as a rank", RECIPE, '("energy", "keeping energy")', '("energy", "to rank")'),
    ("card: nested input recipes not shown", RECIPE, "            if sub and isinstance(sub, list) and all(isinstance(x, dict) for x in sub):",
     "            if False:"),
    ("card: a step's version not shown", RECIPE, '    tail = f" [adapterkit {version}]"', '    tail = ""'),
    ("card: crashes on a non-list inputs member", RECIPE, "    return value if isinstance(value, list) else []", "    return value or []"),
    # the exact words (issue 17: plausible bugs in these texts survived the suite)
    ("words: floats shown with repr (1e-05 as 1e-05, 0.1+0.2 as 0.30000000000000004)", RECIPE, '        return f"{value:g}"', "        return repr(value)"),
    ("words: booleans shown as True/False", RECIPE, '        return "yes" if value else "no"', "        return str(value)"),
    ("words: strings without backticks", RECIPE, '        return f"`{value}`"', "        return value"),
    ("words: parameter names keep their underscores", RECIPE, "f\"{k.replace('_', ' ')} {_value(v)}\"", "f\"{k} {_value(v)}\""),
    ("words: parameters sorted by name, not in recorded order", RECIPE,
     'for k, v in s.items() if k not in ("op", "adapterkit", *skip)]', 'for k, v in sorted(s.items()) if k not in ("op", "adapterkit", *skip)]'),
    ("words: weights paired with the inputs in reverse", RECIPE, "for n, w in zip(inputs, weights))", "for n, w in zip(inputs, reversed(weights)))"),
    ("words: weight written with x instead of ×", RECIPE, 'f"{_value(n)} ×{_value(w)}"', 'f"{_value(n)} x{_value(w)}"'),
    ("words: extract base − finetuned (operands swapped)", RECIPE, "return f\"extract {_value(s.get('finetuned'))} − {_value(s.get('base'))}",
     "return f\"extract {_value(s.get('base'))} − {_value(s.get('finetuned'))}"),
    ("words: unbalanced said for any falsy balanced (absent too)", RECIPE, 'if s.get("balanced") is False else ""', 'if not s.get("balanced") else ""'),
    ("words: sv_ratio described as energy", RECIPE, '("sv_ratio", "by σ ratio")', '("sv_ratio", "keeping energy")'),
    ("words: rebalance budget without its unit", RECIPE, 'f"to a budget of {_value(s[\'budget\'])} parameters"', 'f"to a budget of {_value(s[\'budget\'])}"'),
    ("words: export's consumer repeated among the parameters", RECIPE, 'return f"export for {s.get(\'consumer\')}{_params(s, (\'consumer\',))}{tail}"',
     'return f"export for {s.get(\'consumer\')}{_params(s, ())}{tail}"'),
    ("words: nested recipe not indented", RECIPE, '                out += ["     " + line for line in lines(sub)]', '                out += lines(sub)'),
    ("words: nested recipe under the wrong input", RECIPE, 'for name, sub in zip(_list(s.get("inputs")), _list(s.get("input_recipes"))):',
     'for name, sub in zip(reversed(_list(s.get("inputs"))), _list(s.get("input_recipes"))):'),
    ("words: info's recipe lines not indented", INFO, '        lines += ["  " + line for line in recipe_lines(summary["recipe"])]', '        lines += recipe_lines(summary["recipe"])'),
    ("words: the card's section without its heading", CARD, '    return ["## How it was made", "", *lines(adapter.recipe), ""]', '    return [*lines(adapter.recipe), ""]'),
    ("info: recipe missing from --json", INFO, '        "recipe": [dict(step) for step in adapter.recipe],', '        "recipe": [],'),
    ("info: recipe not in the text", INFO, '    if summary["recipe"]:\n        lines.append("made by:")', '    if False:\n        lines.append("made by:")'),
]

DEFAULT_TESTS = TESTS
