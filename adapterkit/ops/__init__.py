"""Operations on adapters: plain functions from Adapters (and checkpoints) to new values."""

from __future__ import annotations

from .combine import combine
from .merge import MergeReport, merge_checkpoint
from .merge_plan import MergePlan, ModuleTarget, plan_merge
from .prune import PruneReport, prune
from .rebalance import rebalance
from .resize import ModuleResize, ResizeReport, resize

__all__ = [
    "MergePlan", "MergeReport", "ModuleResize", "ModuleTarget", "PruneReport", "ResizeReport", "combine", "merge_checkpoint",
    "plan_merge", "prune", "rebalance", "resize",
]
