"""Prompt tuning: learned virtual-token embeddings, (num_virtual_tokens · submodules, token_dim)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import OPT_STR, schema_field
from .prompt_learning import PromptLearningConfig, make_kind


@dataclass(frozen=True)
class PromptTuningConfig(PromptLearningConfig):
    peft_type = "PROMPT_TUNING"
    prompt_tuning_init: Any = schema_field("RANDOM", {"enum": ["RANDOM", "TEXT", "SAMPLE_VOCAB"]}, doc="how the embeddings were initialised")
    prompt_tuning_init_text: Any = schema_field(None, OPT_STR, doc="text used for TEXT init")
    tokenizer_name_or_path: Any = schema_field(None, OPT_STR, doc="tokenizer used for TEXT init")


KIND = make_kind(PromptTuningConfig)
