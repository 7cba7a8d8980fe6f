"""A summary of an adapter for people and for ``--json``: kind, format, targets, ranks, sizes.

Per-module figures come from the kind's ``stats`` (for LoRA: rank, scaling and
‖ΔW‖_F computed from the factors, never from a dense ΔW).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .adapter import Adapter
from .devices import resolve_device
from .progress import progress


def describe(adapter: Adapter, *, device: Any = None, per_module: bool = True) -> dict[str, Any]:
    """A JSON-ready dict describing ``adapter`` (reads tensors only for per-module stats)."""
    config = adapter.config.to_dict()
    dtypes = Counter(adapter.meta(k).dtype for k in adapter.tensors)
    modules = adapter.modules
    stats: dict[str, dict[str, float]] = {}
    device = resolve_device(device)
    if per_module:
        for name in progress(modules, desc="modules", total=len(modules)):
            stats[name] = adapter.kind.stats(adapter, name, device)
    ranks = Counter(int(s["rank"]) for s in stats.values() if "rank" in s)
    return {
        "path": str(adapter.source) if adapter.source else None,
        "kind": adapter.peft_type,
        "format": f"adapterkit {adapter.format_version}" if adapter.format_version else "PEFT profile",
        "base_model": config.get("base_model_name_or_path"),
        "task_type": config.get("task_type"),
        "target_modules": config.get("target_modules"),
        "modules": len(modules),
        "rank_histogram": {str(r): n for r, n in sorted(ranks.items())},
        "parameters": adapter.parameter_count(),
        "bytes": adapter.nbytes(),
        "dtypes": dict(sorted(dtypes.items())),
        "tensors": len(adapter.tensors),
        "per_module": stats,
    }


def _fmt(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def render(summary: dict[str, Any]) -> str:
    """Human-readable text for :func:`describe`'s dict."""
    lines = [
        f"path:            {summary['path']}",
        f"kind:            {summary['kind']}",
        f"format:          {summary['format']}",
        f"base model:      {summary['base_model']}",
        f"target modules:  {summary['target_modules']}",
        f"modules:         {summary['modules']}",
    ]
    if summary["rank_histogram"]:
        lines.append("ranks:           " + ", ".join(f"r={r}: {n}" for r, n in summary["rank_histogram"].items()))
    lines += [
        f"parameters:      {summary['parameters']:,}",
        "dtypes:          " + ", ".join(f"{d} x{n}" for d, n in summary["dtypes"].items()),
        f"bytes:           {summary['bytes']:,}",
    ]
    if summary["per_module"]:
        lines.append("per module:")
        width = max(len(n) for n in summary["per_module"])
        for name, st in summary["per_module"].items():
            lines.append(f"  {name:<{width}}  " + "  ".join(f"{k}={_fmt(v)}" for k, v in st.items()))
    return "\n".join(lines)
