#!/usr/bin/env python
"""Run the conformance vectors of ``spec/v1/vectors`` against the ``adapterkit`` on the path.

This is the harness ``tests/test_spec.py`` uses for every vector and the one
``tests/mutation/run.py vectors`` runs against deliberately broken copies of the reader,
so both judge a reader by exactly the same checks (spec §14):

* a valid vector loads (``adapter_name`` passed when the vector names one) with exactly
  the listed peft_type, format version, config, tensors (dtype, shape, SHA-256 of the
  raw bytes), ranks, scalings and ΔW digests; ``validate`` reports no error and exactly
  the listed warnings; a ``canonical`` vector, saved again, gives byte-identical files, and
  any other valid vector, saved in its form, gives files with the ``rewritten`` digests;
* an invalid vector is refused by ``load`` with its code (and, where ``key`` is given, naming
  that part: ``config``, a tensor key, or None), and ``validate`` reports that code as its only
  error (or exactly the codes of ``errors``, for a vector with two defects);
* a vector that ``requires`` ``bin`` may instead be refused with ``bin-unsupported``
  (a reader MAY leave the legacy ``.bin`` unread, §4.1); one that ``requires`` ``recipe`` is
  read as valid by a reader that does not read recipes (``READS_RECIPES``, §5.6).

Usage:
  python scripts/run_vectors.py [VECTORS_DIR] [-q]   # exit 1 and list the failures, if any
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import adapterkit

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "v1" / "vectors"
READS_RECIPES = True  # adapterkit reads adapterkit.recipe; a reader that does not is not checked on it (§14 `requires`)
DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def vectors(root: Path = VECTORS, kind: str | None = None) -> list[Path]:
    """The vector directories under ``root`` (``kind``: "valid", "invalid" or both)."""
    kinds = [kind] if kind else ["valid", "invalid"]
    return [p for k in kinds for p in sorted((root / k).iterdir()) if (p / "expected.json").is_file()]


def expected(vector: Path) -> dict[str, Any]:
    return json.loads((vector / "expected.json").read_text(encoding="utf-8"))


def raw_bytes(t: torch.Tensor) -> bytes:
    """Little-endian row-major bytes, computed independently of the library."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(raw_bytes(t)).hexdigest()


def _bin_skipped(exp: dict[str, Any], exc: Exception) -> bool:
    return exp.get("requires") == "bin" and getattr(exc, "code", None) == "bin-unsupported"


def check_valid(vector: Path) -> list[str]:
    exp = expected(vector)
    path = vector / exp["path"]
    kw = {"adapter_name": exp["adapter_name"]} if "adapter_name" in exp else {}
    try:
        adapter = adapterkit.load(path, **kw)
    except Exception as exc:
        return [] if _bin_skipped(exp, exc) else [f"load failed: {type(exc).__name__}: {exc}"]
    out: list[str] = []
    if adapter.peft_type != exp["peft_type"]:
        out.append(f"peft_type {adapter.peft_type} != {exp['peft_type']}")
    if adapter.format_version != exp["format_version"]:
        out.append(f"format_version {adapter.format_version!r} != {exp['format_version']!r}")
    if READS_RECIPES and [dict(step) for step in getattr(adapter, "recipe", ())] != exp.get("recipe", []):
        out.append(f"recipe {list(getattr(adapter, 'recipe', ()))} != {exp.get('recipe', [])}")
    if adapter.config.to_dict() != exp["config"]:
        out.append("config differs")
    got = {k: adapter.tensors[k] for k in adapter.tensors}
    if sorted(got) != sorted(exp["tensors"]):
        out.append(f"tensor keys {sorted(got)} != {sorted(exp['tensors'])}")
    for key, want in exp["tensors"].items():
        t = got.get(key)
        if t is None:
            continue
        if DTYPE_NAMES.get(t.dtype) != want["dtype"] or list(t.shape) != want["shape"] or sha(t) != want["sha256"]:
            out.append(f"tensor {key}: {DTYPE_NAMES.get(t.dtype)} {list(t.shape)} differs from the expected dtype/shape/bytes")
    deltas = exp.get("delta_weights", {})
    try:
        if adapter.peft_type in ("LORA", "LOHA", "LOKR") and sorted(adapter.modules) != sorted(deltas):
            out.append(f"modules {sorted(adapter.modules)} != {sorted(deltas)}")
        for module, want in deltas.items():
            view = adapter.module(module)
            if view.rank != want["rank"] or view.scaling != want["scaling"]:
                out.append(f"{module}: rank/scaling {view.rank}/{view.scaling!r} != {want['rank']}/{want['scaling']!r}")
            delta = adapter.delta_weight(module, dtype=torch.float32)
            if list(delta.shape) != want["shape"] or sha(delta) != want["sha256"]:
                out.append(f"{module}: ΔW {list(delta.shape)} differs from the expected shape/digest")
    except Exception as exc:
        out.append(f"module views / ΔW failed: {type(exc).__name__}: {exc}")
    problems = adapterkit.validate(path, **kw)
    errors = [str(p) for p in problems if p.severity == "error"]
    if errors:
        out.append(f"validate reports errors: {errors}")
    warnings = sorted(p.code for p in problems if p.severity == "warning")
    if warnings != sorted(exp["warnings"]):
        out.append(f"warnings {warnings} != {sorted(exp['warnings'])}")
    if exp.get("canonical"):
        out += _check_canonical(vector, exp, adapter)
    if "rewritten" in exp:
        out += _check_rewritten(exp, adapter)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_again(adapter: adapterkit.Adapter, form: str, name: str) -> dict[str, bytes] | str:
    """The files ``save`` writes for ``adapter`` (``name``: the single file's name), or why it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        try:
            if form == "dir":
                adapterkit.save(adapter, out, form="dir")
            else:
                out.mkdir()
                adapterkit.save(adapter, out / name, form="file")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return _files(out)


def _check_canonical(vector: Path, exp: dict[str, Any], adapter: adapterkit.Adapter) -> list[str]:
    """A conforming writer writes this adapter as exactly these bytes (§4.1, §4.2, §5.4)."""
    want = {k: v for k, v in _files(vector).items() if k != "expected.json"}
    got = _write_again(adapter, exp["form"], exp["path"])
    if isinstance(got, str):
        return [f"writing it again failed: {got}"]
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        return [f"writing it again does not reproduce the vector's bytes: {diff}"]
    return []


def _check_rewritten(exp: dict[str, Any], adapter: adapterkit.Adapter) -> list[str]:
    """A conforming writer saves this (non-canonical) adapter as files with these digests."""
    files = _write_again(adapter, exp["form"], "adapter.safetensors")
    if isinstance(files, str):
        return [f"writing it failed: {files}"]
    got = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    return [] if got == exp["rewritten"] else [f"writing it gives other files or bytes: {sorted(got)} vs {sorted(exp['rewritten'])}"]


def check_invalid(vector: Path) -> list[str]:
    exp = expected(vector)
    path = vector / exp["path"]
    kw = {"adapter_name": exp["adapter_name"]} if "adapter_name" in exp else {}
    try:
        adapterkit.load(path, **kw)
    except adapterkit.AdapterkitError as exc:
        if _bin_skipped(exp, exc):
            return []
        if exc.code != exp["code"]:
            return [f"refused with {exc.code}, expected {exp['code']}: {exc}"]
        if "key" in exp and exc.key != exp["key"]:
            return [f"refused with {exc.code} naming {exc.key!r}, expected {exp['key']!r}: {exc}"]
    except Exception as exc:
        return [f"load raised {type(exc).__name__} instead of {exp['code']}: {exc}"]
    else:
        return [] if exp.get("requires") == "recipe" and not READS_RECIPES else [f"load succeeded, expected {exp['code']}"]
    try:
        codes = {p.code for p in adapterkit.validate(path, **kw) if p.severity == "error"}
    except Exception as exc:
        return [f"validate raised {type(exc).__name__}: {exc}"]
    want = set(exp.get("errors", [exp["code"]]))
    return [] if codes == want else [f"validate reports {sorted(codes)}, expected {sorted(want)}"]


def check_vector(vector: Path) -> list[str]:
    """Every way ``vector`` is not read as the spec says (empty: conforming)."""
    try:
        return check_valid(vector) if vector.parent.name == "valid" else check_invalid(vector)
    except Exception as exc:
        return [f"crashed: {type(exc).__name__}: {exc}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vectors", nargs="?", type=Path, default=VECTORS)
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the names of failing vectors")
    args = parser.parse_args(argv)
    failed = 0
    for vector in vectors(args.vectors):
        problems = check_vector(vector)
        if problems:
            failed += 1
            name = f"{vector.parent.name}/{vector.name}"
            print(name if args.quiet else f"FAIL {name}: " + "; ".join(problems))
    if not args.quiet:
        print(f"{failed} of {len(vectors(args.vectors))} vectors failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
