"""Operations on adapters: plain functions from Adapters (and checkpoints) to new values.

The names below are imported on first use, so that importing one operation's module (say
``adapterkit.ops.export`` for ``check --for``, which needs no torch) does not import them all."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "combine": "combining", "MergePlan": "merge_plan", "ModuleTarget": "merge_plan", "plan_merge": "merge_plan",
    "MergeReport": "merging", "merge_checkpoint": "merging", "PruneReport": "pruning", "prune": "pruning",
    "rebalance": "rebalancing", "ModuleResize": "resizing", "ResizeReport": "resizing", "resize": "resizing",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
