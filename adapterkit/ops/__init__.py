"""Operations on adapters: plain functions from Adapters (and checkpoints) to new values."""

from __future__ import annotations

from .combine import combine
from .merge import MergeReport, merge_checkpoint
from .merge_plan import MergePlan, ModuleTarget, plan_merge

__all__ = ["MergePlan", "MergeReport", "ModuleTarget", "combine", "merge_checkpoint", "plan_merge"]
