"""A summary of an adapter for people and for ``--json``: kind, format, content digest (as
recorded; ``validate`` checks it), variants, targets, ranks, sizes, whole-module tensors,
other adapters beside it, and problems found.

Per-module figures come from the kind's ``stats`` (for LoRA: rank, scaling and
‖ΔW‖_F computed from the factors, never from a dense ΔW).  When the tensors are
read for them, their values are checked too (NaN/Inf), so a broken adapter is
never summarised as if it were fine.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from .adapter import Adapter, MemoryStore
from .arrays import quiet
from .devices import resolve_device
from .io.checks import structural_problems, value_problems
from .io.digest import DIGEST_KEY
from .io.lazy_store import LazyStore
from .io.recipe import lines as recipe_lines
from .io.safetensors_file import read_all
from .kinds.features import changes_delta, feature_tensor
from .progress import progress
from .threads import factor_work, intra_op

PEFT_PREFIX = "base_model.model."


def _whole_modules(adapter: Adapter) -> dict[str, Any]:
    """Tensors stored whole (``modules_to_save``, trained biases, saved embeddings): keys the
    kind's grammar does not parse, grouped by module."""
    keys = [k for k in adapter.tensors if adapter.kind.parse_key(k) is None and feature_tensor(k) is None]
    modules = sorted({k.removeprefix(PEFT_PREFIX).rsplit(".", 1)[0] for k in keys})
    return {
        "modules": modules,
        "tensors": len(keys),
        "parameters": sum(adapter.meta(k).numel for k in keys),
        "bytes": sum(adapter.meta(k).nbytes for k in keys),
    }


def _in_memory(adapter: Adapter, device: Any) -> tuple[Adapter, Any]:
    """``adapter`` with its tensors read into memory in one read (as ``load`` does), and the
    device for the statistics: numpy arrays and no device (the torch-free path) for a file
    opened lazily when no ``device`` is asked for; else torch tensors (``device``: checked)."""
    if not isinstance(adapter.tensors, LazyStore):
        return adapter, resolve_device(device)
    if device is None:
        from .io.array_store import in_arrays

        return in_arrays(adapter), None

    tensors = read_all(adapter.tensors.header)
    return Adapter(adapter.config, MemoryStore(tensors), adapter.source, adapter.format_version, adapter.recipe), resolve_device(device)


def describe(adapter: Adapter, *, device: Any = None, per_module: bool = True, path: str | Path | None = None) -> dict[str, Any]:
    """A JSON-ready dict describing ``adapter``.  Reads tensor data only with ``per_module``
    (then also checking values); ``path`` is what the user named, to list other adapters there.
    An adapter opened from a safetensors file is measured without torch unless ``device`` is
    given (``adapterkit.arrays``: the same figures, fp64 products summed in another order)."""
    from .io.reader import other_adapters

    config = adapter.config.to_dict()
    dtypes = Counter(adapter.meta(k).dtype for k in adapter.tensors)
    modules = adapter.modules
    stats: dict[str, dict[str, float]] = {}
    if device is not None:
        resolve_device(device)  # a device that cannot be used is refused even where nothing is computed (--no-modules)
    problems = [p for p in structural_problems(adapter) if p.severity == "warning"]
    if per_module:
        held, device = _in_memory(adapter, device)  # one read of the data serves the value checks and the statistics
        problems += value_problems(held)
        # ‖ΔW‖ from the factors would be wrong for a feature that changes ΔW (KaSA's lora_diag, BD-LoRA's blocks)
        work = factor_work(held.meta(k).shape for k in held.tensors if held.kind.parse_key(k) is not None)
        # numpy (the torch-free path) computes NaN silently, as torch; torch's threads follow the policy (adapterkit.threads)
        with quiet() if hasattr(held.tensors, "raw") else intra_op(work):  # the numpy store holds the raw bytes
            for name in progress(modules if not changes_delta(adapter) else [], desc="modules", total=len(modules)):
                stats[name] = held.kind.stats(held, name, device)
    ranks = Counter(int(s["rank"]) for s in stats.values() if "rank" in s)
    whole = _whole_modules(adapter)
    return {
        "path": str(adapter.source) if adapter.source else None,
        "kind": adapter.peft_type,
        "format": f"adapterkit {adapter.format_version}" if adapter.format_version else "PEFT profile",
        "digest": adapter.tensors.header.metadata.get(DIGEST_KEY) if isinstance(adapter.tensors, LazyStore) else None,
        "base_model": config.get("base_model_name_or_path"),
        "task_type": config.get("task_type"),
        "features": adapter.config.features(),
        "target_modules": config.get("target_modules"),
        "modules": len(modules),
        "rank_histogram": {str(r): n for r, n in sorted(ranks.items())},
        "parameters": adapter.parameter_count(),
        "bytes": adapter.nbytes(),
        "dtypes": dict(sorted(dtypes.items())),
        "tensors": len(adapter.tensors),
        "saved_whole": whole,
        "other_adapters": other_adapters(path if path is not None else adapter.source, adapter) if adapter.source else [],
        "recipe": [dict(step) for step in adapter.recipe],
        "values_checked": per_module,
        "problems": [
            {"severity": p.severity, "code": p.code, "message": str(p.to_error()), "key": p.key} for p in problems
        ],
        "per_module": stats,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def render(summary: dict[str, Any]) -> str:
    """Human-readable text for :func:`describe`'s dict."""
    features = dict(summary["features"])
    variants = features.pop("variants", None)
    lines = [
        f"path:            {summary['path']}",
        f"kind:            {summary['kind']}",
        f"format:          {summary['format']}",
        f"digest:          {summary['digest'] or 'none recorded'}",
        f"base model:      {summary['base_model'] or '(not recorded)'}",
    ]
    if summary["task_type"]:
        lines.append(f"task type:       {summary['task_type']}")
    if variants is not None:
        lines.append(f"variants:        {', '.join(variants) if variants else 'plain LoRA'}")
    if features:
        lines.append("settings:        " + ", ".join(f"{k}={_fmt(v)}" for k, v in features.items() if v is not None))
    if summary["target_modules"] is not None:
        lines.append(f"target modules:  {summary['target_modules']}")
    lines.append(f"modules:         {summary['modules']:,}")
    if summary["rank_histogram"]:
        lines.append("ranks:           " + ", ".join(f"r={r}: {n}" for r, n in summary["rank_histogram"].items()))
    whole = summary["saved_whole"]
    lines += [
        f"tensors:         {summary['tensors']:,} ({', '.join(f'{d} x{n}' for d, n in summary['dtypes'].items())})",
        f"parameters:      {summary['parameters']:,}",
        f"bytes:           {summary['bytes']:,}",
    ]
    if whole["tensors"]:
        lines.append(
            f"saved whole:     {_plural(whole['tensors'], 'tensor')}, {_plural(whole['parameters'], 'parameter')}, "
            f"{whole['bytes']:,} bytes ({', '.join(whole['modules'])}); included above"
        )
    if summary["recipe"]:
        lines.append("made by:")
        lines += ["  " + line for line in recipe_lines(summary["recipe"])]
    if summary["other_adapters"]:
        names = ", ".join("the top-level adapter" if n == "." else n for n in summary["other_adapters"])
        lines.append(f"also here:       {names} (open a subfolder's with --adapter-name NAME)")
    if not summary["values_checked"]:
        lines.append("values:          not read (--no-modules): NaN/Inf not checked")
    for p in summary["problems"]:
        lines.append(f"{p['severity']}: {p['message']}")
    if summary["per_module"]:
        lines.append("per module:")
        width = max(len(n) for n in summary["per_module"])
        for name, st in summary["per_module"].items():
            lines.append(f"  {name:<{width}}  " + "  ".join(f"{k}={_fmt(v)}" for k, v in st.items()))
    return "\n".join(lines)


def _record_entry(entry: Any) -> dict[str, Any]:
    """A merge record entry for display: the tensors it changed counted, not listed."""
    out = {"adapter": entry.adapter, "kind": entry.kind, "weight": entry.weight, "base_model": entry.base_model,
           "digest": entry.digest}
    if not entry.legacy:
        out["tensors_changed"] = len(entry.added) + len(entry.changed)
    return out


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """A JSON-ready dict describing the local model checkpoint ``path``: shards, tensors, dtypes,
    parameters, bytes, and what adapterkit merged into it (from the shards' metadata).  A
    quantized checkpoint (``quantization_config`` in its ``config.json``) also gets
    ``quantization``: the format and its settings, the quantized modules and their bytes, and the
    parameters of the dense model it stands for; its packed tensors are checked against the
    config as a merge would (``quant-invalid`` / ``quant-unsupported``).  Reads no tensor data but
    bitsandbytes' small quant_state records."""
    from .checkpoint import open_checkpoint
    from .ops import merge_record
    from .ops.merge_quantized import open_quantized
    from .ops.merging import _read_config

    ckpt = open_checkpoint(path)
    view = open_quantized(ckpt, _read_config(ckpt))
    infos = [ckpt.info(k) for k in ckpt.keys()]
    merged: dict[str, Any] = {}
    for key in (merge_record.MERGED_KEY, merge_record.UNMERGED_KEY):
        text = next((ckpt.metadata(s)[key] for s in ckpt.shards if key in ckpt.metadata(s)), None)
        if text is not None:
            merged[key.split(".")[1]] = [_record_entry(e) for e in merge_record.parse(text, ckpt.shards[0])]
    quantization = None
    if view is not None:
        quantization = view.describe() | {"dense_parameters": sum(math.prod(shape) for _, shape in view.keys().values())}
    return {
        "path": str(ckpt.path),
        "kind": "model checkpoint",
        "shards": [s.name for s in ckpt.shards],
        "tensors": len(infos),
        "parameters": sum(i.numel for i in infos),
        "bytes": sum(i.nbytes for i in infos),
        "dtypes": dict(sorted(Counter(i.dtype for i in infos).items())),
        "files": [str(p.relative_to(ckpt.path)) for p in ckpt.extra_files()] if ckpt.path.is_dir() else [],
        "adapterkit": merged,
        "quantization": quantization,
        "problems": [],
    }


def render_checkpoint(summary: dict[str, Any]) -> str:
    """Human-readable text for :func:`describe_checkpoint`'s dict."""
    lines = [
        f"path:            {summary['path']}",
        f"kind:            {summary['kind']}",
        f"shards:          {len(summary['shards'])} ({', '.join(summary['shards'][:3])}{', ...' if len(summary['shards']) > 3 else ''})",
        f"tensors:         {summary['tensors']:,} ({', '.join(f'{d} x{n}' for d, n in summary['dtypes'].items())})",
        f"parameters:      {summary['parameters']:,}",
        f"bytes:           {summary['bytes']:,}",
    ]
    if summary["files"]:
        lines.append(f"other files:     {', '.join(summary['files'])}")
    quantization = summary.get("quantization")
    if quantization:
        settings = ", ".join(f"{k} {_fmt(v)}" for k, v in quantization.items()
                             if k not in ("format", "quantized_modules", "quantized_bytes", "dense_parameters") and v not in (None, [], {}))
        lines.append(f"quantization:    {quantization['format']}{' (' + settings + ')' if settings else ''}")
        lines.append(f"quantized:       {quantization['quantized_modules']:,} modules, {quantization['quantized_bytes']:,} bytes; "
                     f"{quantization['dense_parameters']:,} parameters dense")
    for what, record in summary["adapterkit"].items():
        for r in record:
            digest = f", digest {r['digest']}" if r.get("digest") else ", no digest (recorded by an older adapterkit)"
            changed = f", {r['tensors_changed']} tensors" if "tensors_changed" in r else ""
            lines.append(f"{what + ':':<16} {r['kind']} adapter {r['adapter']}, weight {r['weight']:g}{digest}{changed}")
    return "\n".join(lines)


def render_survival(quantized: dict[str, Any]) -> str:
    """The survival table of a re-quantized merge (``MergeReport.quantized``): in total, then per
    module kept / error, the modules mostly rounded away marked."""
    survival = quantized["survival"]
    lines = [f"re-quantized to {quantized['format']}: of ‖ΔW‖, {survival['kept']:.1%} moved the stored weights, "
             f"{survival['error']:.1%} error (per module: kept / error)"]
    for m in survival["modules"]:
        flag = "  <- mostly rounded away" if m["module"] in survival["lost_modules"] else ""
        lines.append(f"  {m['module']}: {m['kept']:.1%} / {m['error']:.1%}{flag}")
    return "\n".join(lines)
