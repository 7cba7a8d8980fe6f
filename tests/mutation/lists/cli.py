"""Mutation check of the command line, writer and info: does the suite catch plausible bugs?

Usage: python tests/mutation/run.py cli [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the named test files then run against the copy.  A
mutant is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

CLI_TESTS = ["tests/test_cli.py"]
WRITE_TESTS = ["tests/test_errors.py", "tests/test_cli.py"]
MERGE_TESTS = ["tests/test_merge.py", "tests/test_merge_stream.py"]
GUARD_TESTS = ["tests/test_output_guard.py"]

# (name, file, old text, new text, tests)
MUTANTS = [
    ("form: suffix check dropped", "adapterkit/io/forms.py", "    if form != infer_form(path):", "    if False:", WRITE_TESTS),
    ("form: inferred from .bin too", "adapterkit/io/forms.py", 'Path(path).suffix == FILE_SUFFIX', 'Path(path).suffix in (FILE_SUFFIX, ".bin")', WRITE_TESTS),
    ("overwrite ignored", "adapterkit/io/writer.py", "        if not overwrite:", "        if False:", WRITE_TESTS),
    ("overwrite always refused", "adapterkit/io/writer.py", "        if not overwrite:", "        if True:", WRITE_TESTS),
    ("overwrite merges into the old dir", "adapterkit/io/atomic.py", "        try:\n            _swap(staged, path)",
     "        if path.is_dir():\n            shutil.copytree(staged, path, dirs_exist_ok=True)\n            return\n        try:\n            _swap(staged, path)", WRITE_TESTS),
    ("overwrite may replace a folder holding the input", "adapterkit/io/writer.py", '    check_output(path, adapter_inputs(adapter, "input adapter"))',
     "    check_output(path, [])", ["tests/test_output_guard.py"]),
    ("staging folder left beside the output", "adapterkit/io/writer.py", "        discard(staging.parent)", "        discard(staging)", WRITE_TESTS),
    ("convert reads lazily (no value checks)", "adapterkit/api.py", "    adapter = load(src, adapter_name=adapter_name)\n    report = None",
     "    from .io.reader import open_adapter\n    adapter = open_adapter(src, adapter_name=adapter_name)\n    report = None", CLI_TESTS),
    ("convert ignores --form contradiction", "adapterkit/cli/adapters.py", "    if form is not None and form != named:", "    if False:", CLI_TESTS),
    ("convert imports torch before usage checks", "adapterkit/cli/adapters.py", "    from ..io.forms import infer_form\n", "    from ..io.writer import infer_form\n", CLI_TESTS),
    ("package imports torch eagerly", "adapterkit/__init__.py", "from .errors import AdapterkitError, Problem\n",
     "import torch  # noqa\nfrom .errors import AdapterkitError, Problem\n", CLI_TESTS),
    ("validate function shadowed by its module", "adapterkit/__init__.py", "from .errors import AdapterkitError, Problem\n",
     "from .errors import AdapterkitError, Problem\nfrom . import validation as validate  # noqa\n", CLI_TESTS),
    ("--debug exits 1", "adapterkit/cli/conventions.py", "            if _debug():\n                traceback.print_exc()", "            if _debug():\n                raise", CLI_TESTS),
    ("usage errors in click's multi-line form", "adapterkit/cli/conventions.py", "standalone_mode=False, **extra)", "standalone_mode=standalone_mode, **extra)", CLI_TESTS),
    ("missing path imports the library first", "adapterkit/cli/adapters.py", "    path = _require(path)\n    if plot is not None:\n", "    if plot is not None:\n", CLI_TESTS),
    ("validate: a missing named adapter is 'invalid' (exit 1)", "adapterkit/cli/conventions.py", '"ambiguous-adapter", "adapter-not-found"}', '"ambiguous-adapter"}', CLI_TESTS),
    ("info never exits 1", "adapterkit/cli/adapters.py", 'sys.exit(1 if any(p["severity"] == "error" for p in summary.get("problems", [])) else 0)', "sys.exit(0)", CLI_TESTS),
    ("info skips value checks", "adapterkit/summary.py", "        problems += value_problems(held)\n", "", CLI_TESTS),
    ("info counts no whole-module tensors", "adapterkit/summary.py", "    keys = [k for k in adapter.tensors if adapter.kind.parse_key(k) is None and feature_tensor(k) is None]", "    keys = []", CLI_TESTS),
    ("info: other adapters include the one opened", "adapterkit/io/reader.py", "    return [n for n in names if not (root / n).samefile(opened)]", "    return names", CLI_TESTS),
    ("info: no variants", "adapterkit/kinds/lora.py", '"variants": [name for name, on in flags.items() if on],', '"variants": [],', CLI_TESTS),
    ("info prints None base model", "adapterkit/summary.py", "{summary['base_model'] or '(not recorded)'}", "{summary['base_model']}", CLI_TESTS),
    ("plural of 1", "adapterkit/cli/conventions.py", 'return f"{n} {word}" if n == 1 else f"{n} {word}s"', 'return f"{n} {word}s"', CLI_TESTS),
    ("validate: config error stops the tensor checks", "adapterkit/kinds/base.py", "            if problems is None:\n                raise exc",
     "            raise exc", ["tests/test_cli.py", "tests/test_errors.py"]),
    ("validate: invalid r still checked against shapes", "adapterkit/kinds/lora.py", 'rank_unknown = bool({"r", "rank_pattern"} & cfg.unknown)', "rank_unknown = False", CLI_TESTS),
    ("validate: rank agreement unchecked when r is invalid", "adapterkit/kinds/lora.py", "        if a[0] != b[1] and rank_unknown:", "        if False:", CLI_TESTS),
    ("validate: prompt shape checked against an invalid field", "adapterkit/kinds/prompt_learning.py", 'shape_known = not ({"num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_layers"} & cfg.unknown)', "shape_known = True", CLI_TESTS),
    ("device message cut at 120 chars", "adapterkit/devices.py", 'f"device cannot be used here ({_first_sentence(str(exc))})"', 'f"device cannot be used here ({str(exc)[:120]})"', CLI_TESTS),
    ("model checkpoint reported as config-missing", "adapterkit/io/reader.py", "            if not config_path.is_file() and _looks_like_model(header):", "            if False:", CLI_TESTS),
    ("model folder reported as not an adapter dir", "adapterkit/io/reader.py", "    if model_files:", "    if False:", CLI_TESTS),
    ("merge: a module applied once per role (twice)", "adapterkit/ops/merging.py", "            if (i, target.module) in self.applied:\n                continue", "            if False:\n                continue", MERGE_TESTS),
    ("merge: other roles read from the base, not from earlier adapters", "adapterkit/ops/merging.py",
     "            roles = {role: self._current(ck) for role, ck in target.roles.items()}",
     "            roles = {role: (self._current(ck) if ck == key else self.read(ck).float()) for role, ck in target.roles.items()}", MERGE_TESTS),
    ("merge: weights ignored on the whole-tensor path", "adapterkit/ops/merging.py", "new = kind.merge_module(self.adapters[i], target.module, roles, weight=self.weights[i], device=self.device,",
     "new = kind.merge_module(self.adapters[i], target.module, roles, weight=1.0, device=self.device,", MERGE_TESTS),
    ("merge: modules_to_save replacements ignored", "adapterkit/ops/merging.py", '            if key in self.replaced and self.direction == "merge":', "            if False:", MERGE_TESTS),
    ("merge: --safe off on the row path", "adapterkit/ops/merging.py", "            if self.safe and (bad or not math.isfinite(acc.sum().item())):", "            if False:", MERGE_TESTS),
    ("merge: README note not written", "adapterkit/ops/merging.py", "            files.update(_readme(ckpt, direction, record, notes))", "            pass", MERGE_TESTS),
    ("merge: --weight count not checked", "adapterkit/cli/checkpoints.py", "    if weights and len(weights) != len(given):", "    if False:", MERGE_TESTS),
    ("config file given: no hint", "adapterkit/io/reader.py", "    elif path.name == CONFIG_NAME:", "    elif False:", CLI_TESTS),
    # the output guard (adapterkit/io/outputs.py) and the arguments checked before torch (issue 17)
    ("guard: links not resolved", "adapterkit/io/outputs.py", "    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}",
     "    return {Path(os.path.abspath(path))}", GUARD_TESTS),
    ("guard: the folder an adapter was found in is not an input", "adapterkit/io/reader.py",
     '            adapter = replace(adapter, inputs=(("folder holding the adapter", str(path)),))', "            pass", GUARD_TESTS),
    ("guard: an operation's result forgets its inputs", "adapterkit/io/outputs.py",
     "    return replace(result, inputs=tuple(dict.fromkeys(inputs)))", "    return result", GUARD_TESTS),
    ("guard: a Hub snapshot's blobs unprotected", "adapterkit/io/outputs.py", "        found.append((role, source))\n", "", GUARD_TESTS),
    ("guard: merge checks only the base", "adapterkit/ops/merging.py", '                       *(i for n, a in enumerate(loaded, 1) for i in adapter_inputs(a, f"adapter {n}"))])',
     "                       ])", GUARD_TESTS),
    ("prune: layers no module is in ignored", "adapterkit/ops/pruning.py", "        _check_layers(adapter, names, wanted)", "        pass", CLI_TESTS),
    ("merge --no-safe still refuses NaN in the adapter", "adapterkit/ops/merging.py", 'load(locate(item, "adapter"), finite=safe)',
     'load(locate(item, "adapter"))', CLI_TESTS),
    ("combine: --density missing is left to the library (after torch)", "adapterkit/arguments.py", "        if density is None:\n", "        if False:\n", CLI_TESTS),
]

DEFAULT_TESTS = None
