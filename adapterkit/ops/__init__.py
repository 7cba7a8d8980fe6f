"""Operations on adapters: plain functions from Adapters (and checkpoints) to new values."""

from __future__ import annotations

from .combining import combine
from .merge_plan import MergePlan, ModuleTarget, plan_merge
from .merging import MergeReport, merge_checkpoint
from .pruning import PruneReport, prune
from .rebalancing import rebalance
from .resizing import ModuleResize, ResizeReport, resize

__all__ = [
    "MergePlan", "MergeReport", "ModuleResize", "ModuleTarget", "PruneReport", "ResizeReport", "combine", "merge_checkpoint",
    "plan_merge", "prune", "rebalance", "resize",
]
