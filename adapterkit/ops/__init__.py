"""Operations on adapters: plain functions from Adapters (and checkpoints) to new values.

The names below are imported on first use, so that importing one operation's module (say
``adapterkit.ops.export`` for ``check --for``, which needs no torch) does not import them all."""

from __future__ import annotations

from ..lazy import lazy_names

_LAZY = {
    "combine": "combining", "MergePlan": "merge_plan", "ModuleTarget": "merge_plan", "plan_merge": "merge_plan",
    "MergeReport": "merging", "merge_checkpoint": "merging", "PruneReport": "pruning", "prune": "pruning",
    "rebalance": "rebalancing", "ModuleResize": "resizing", "ResizeReport": "resizing", "resize": "resizing",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_names(__name__, _LAZY)
