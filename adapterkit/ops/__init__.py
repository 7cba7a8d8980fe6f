"""Operations on adapters: plain functions from Adapters (and checkpoints) to new values."""

from __future__ import annotations

from .merge_plan import MergePlan, ModuleTarget, plan_merge

__all__ = ["MergePlan", "ModuleTarget", "plan_merge"]
