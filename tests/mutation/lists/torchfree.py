"""Torch-free inspection path (issue 19 point 1): plausible bugs written from the code alone, without reading the tests (first line = description).

Usage: python tests/mutation/run.py torchfree [--only SUBSTRING]
"""
from __future__ import annotations

TESTS = ["tests/test_torch_free.py", "tests/test_diff.py", "tests/test_digest.py", "tests/test_cli.py",
         "tests/test_io_fast.py", "tests/test_errors.py", "tests/test_properties.py", "tests/test_spec.py"]

MUTANTS = [
    # ---- adapterkit/arrays.py: NaN/Inf from the raw bits
    ("arrays: F16 threshold at the quiet-NaN pattern (Inf not counted)", "adapterkit/arrays.py",
     '"F16": ("<u2", 0x7FFF, 0x7C00),',
     '"F16": ("<u2", 0x7FFF, 0x7E00),', TESTS),
    ("arrays: E5M2 mask keeps the sign bit (every negative value non-finite)", "adapterkit/arrays.py",
     '"F8_E5M2": ("u1", 0x7F, 0x7C),',
     '"F8_E5M2": ("u1", 0xFF, 0x7C),', TESTS),
    ("arrays: E4M3 treated as IEEE (exponent all ones = non-finite)", "adapterkit/arrays.py",
     '"F8_E4M3": ("u1", 0x7F, 0x7F),',
     '"F8_E4M3": ("u1", 0x7F, 0x78),', TESTS),
    ("arrays: chunk test with '>' skips a tensor whose worst value is +/-Inf", "adapterkit/arrays.py",
     "if part.max() >= inf:",
     "if part.max() > inf:", TESTS),
    # ---- adapterkit/arrays.py: decode
    ("arrays: BF16 decoded from big-endian halves", "adapterkit/arrays.py",
     '(np.frombuffer(raw, dtype="<u2")',
     '(np.frombuffer(raw, dtype=">u2")', TESTS),
    ("arrays: float8 E4M3 decoded with bias 8 (the fnuz bias)", "adapterkit/arrays.py",
     "exp, man, bias, mbits = (code >> 3) & 0xF, code & 0x7, 7, 3",
     "exp, man, bias, mbits = (code >> 3) & 0xF, code & 0x7, 8, 3", TESTS),
    ("arrays: float8 E5M2 -Inf decoded as +Inf", "adapterkit/arrays.py",
     "np.where(man[top] == 0, sign[top] * np.inf, np.nan)",
     "np.where(man[top] == 0, np.inf, np.nan)", TESTS),
    # ---- adapterkit/arrays.py: math helpers and environment
    ("arrays: numpy principal angles without the clip (arccos(1+eps) = NaN)", "adapterkit/arrays.py",
     "np.arccos(np.clip(np.linalg.svd(x, compute_uv=False), 0.0, 1.0))",
     "np.arccos(np.linalg.svd(x, compute_uv=False))", TESTS),
    ("arrays: OPENBLAS_NUM_THREADS forced to 1 over the user's choice", "adapterkit/arrays.py",
     'os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")',
     'os.environ["OPENBLAS_NUM_THREADS"] = "1"', TESTS),
    ("arrays: quiet() silences divide/overflow but not invalid", "adapterkit/arrays.py",
     'errstate(all="ignore")',
     'errstate(divide="ignore", over="ignore")', TESTS),
    ("arrays: is_fp64 knows only torch's name (numpy F64 factors computed in fp32)", "adapterkit/arrays.py",
     'return str(x.dtype) in ("float64", "torch.float64")',
     'return str(x.dtype) == "torch.float64"', TESTS),
    # ---- adapterkit/io/array_store.py
    ("array_store: raw() spans numel bytes, not nbytes (meta and raw disagree)", "adapterkit/io/array_store.py",
     "return self._data[info.begin : info.end]",
     "return self._data[info.begin : info.begin + info.numel]", TESTS),
    ("array_store: load_arrays hashes the decoded array (BF16/F8 digest wrong)", "adapterkit/io/array_store.py",
     "                now = hasher.entries()\n",
     "                from .digest import tensor_entries\n"
     "                now = tensor_entries((k, i.dtype, i.shape, adapter.tensors[k].tobytes()) for k, i in header.tensors.items())\n",
     TESTS),  # re-pointed when load_arrays began hashing while it reads (same bug: the decoded arrays hashed)
    ("array_store: load_arrays reports NaN before the digest mismatch", "adapterkit/io/array_store.py",
     "raise_first_error([found] if found else [])",
     "raise_first_error(value_problems(adapter) + ([found] if found else []))", TESTS),
    ("array_store: load_arrays checks values of safetensors only (.bin NaN passes)", "adapterkit/io/array_store.py",
     "            raise_first_error([found] if found else [])\n"
     "    raise_first_error(value_problems(adapter))\n",
     "            raise_first_error([found] if found else [])\n"
     "        raise_first_error(value_problems(adapter))\n", TESTS),
    ("array_store: digest mismatch names the tensor file, not the adapter's source", "adapterkit/io/array_store.py",
     "now, str(adapter.source))",
     "now, str(store.header.path))", TESTS),
    # ---- adapterkit/io/checks.py
    ("checks: raw-bits non-finite message counts bytes, not elements", "adapterkit/io/checks.py",
     "store.raw(key)), store.meta(key).numel, source))",
     "store.raw(key)), store.meta(key).nbytes, source))", TESTS),
    ("checks: raw-bits path checks adapter tensors only (modules_to_save NaN missed)", "adapterkit/io/checks.py",
     "return [p for key in store if (p := nonfinite_problem(",
     "return [p for key in store if adapter.kind.parse_key(key) is not None and (p := nonfinite_problem(", TESTS),
    # ---- adapterkit/validation.py
    ("validation: non-finite reported before digest-mismatch", "adapterkit/validation.py",
     "return ([found] if found else []) + sorted(values, key=lambda p: place[p.key])",
     "return sorted(values, key=lambda p: place[p.key]) + ([found] if found else [])", TESTS),
    ("validation: a file without a recorded digest is not read (NaN unchecked)", "adapterkit/validation.py",
     "    if entries is None:\n        for _ in each():\n            pass\n",
     "    if entries is None:\n        pass\n", TESTS),
    # ---- adapterkit/io/digest.py
    ("digest: streamed hashing drops the tensors still pending at the end", "adapterkit/io/digest.py",
     "                out[key] = done.result()\n"
     "        for key, done in pending:\n"
     "            out[key] = done.result()\n",
     "                out[key] = done.result()\n", TESTS),
    # ---- adapterkit/summary.py
    ("summary: numpy path taken for any non-CUDA device (bad device accepted)", "adapterkit/summary.py",
     "    if device is None:\n        from .io.array_store import in_arrays\n",
     '    if device is None or not str(device).startswith("cuda"):\n        from .io.array_store import in_arrays\n',
     [*TESTS, "tests/test_threads.py"]),  # a bad device is refused up front since; --device cpu on numpy shows in test_threads
    # ---- adapterkit/inspect/compare.py
    ("compare: one numpy side and one torch side not refused", "adapterkit/inspect/compare.py",
     'if len(numpy_sides) == 1 or conflict != "off" or str(device or "cpu") != "cpu":',
     'if conflict != "off" or str(device or "cpu") != "cpu":', TESTS),
    # ---- adapterkit/ops/lowrank.py
    ("lowrank: conv lora_B of shape (out, r, 1, 1) refused as a kernel", "adapterkit/ops/lowrank.py",
     "all(d == 1 for d in b_raw.shape[2:])",
     "b_raw.shape[2:] == (1,)", TESTS),
    # ---- adapterkit/kinds/lora.py, ia3.py, prompt_learning.py: stats
    ("lora: delta_norm without the scaling (right only when alpha == r)", "adapterkit/kinds/lora.py",
     '"delta_norm": abs(view.scaling) * factor_norm(view.lora_A, view.lora_B, device)',
     '"delta_norm": factor_norm(view.lora_A, view.lora_B, device)', TESTS),
    ("ia3: size is len(), 1 for a feedforward (1, in) vector", "adapterkit/kinds/ia3.py",
     '"size": numel(vec)',
     '"size": len(vec)', TESTS),
    ("prompt: norm is the sum of the token norms, not the Frobenius norm", "adapterkit/kinds/prompt_learning.py",
     '"norm": norm(emb)',
     '"norm": float(norm(emb, axis=1).sum())', TESTS),
    # ---- adapterkit/api.py
    ("api: check on numpy ignores adapter_name", "adapterkit/api.py",
     'adapter = load_arrays(local_path(adapter, "adapter"), adapter_name=adapter_name)',
     'adapter = load_arrays(local_path(adapter, "adapter"))', TESTS),
    # ---- adapterkit/cli/inspect.py
    ("cli diff: falls back to torch only when both sides are .bin", "adapterkit/cli/inspect.py",
     "            first = load(a)  # the one re-read: b was a .bin\n",
     "            pass\n", TESTS),  # re-pointed when the fallback stopped reading both sides twice (same bug: a mixed pair)
    # ---- adapterkit/dtypes.py
    ("dtypes: torch maps built at import (torch imported by the numpy path)", "adapterkit/dtypes.py",
     '    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")\n',
     '    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")\n\n\n'
     "DTYPES, DTYPE_NAMES = _torch_maps()\n", TESTS),
]
