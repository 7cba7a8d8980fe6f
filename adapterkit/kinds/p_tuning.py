"""P-tuning: virtual tokens produced by an MLP/LSTM prompt encoder.

The file stores the encoder's *output* (num_virtual_tokens · submodules,
token_dim), exactly what PEFT saves; the encoder weights are not kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import NUMBER, schema_field
from .prompt_learning import OPT_POS_INT, PromptLearningConfig, make_kind


@dataclass(frozen=True)
class PTuningConfig(PromptLearningConfig):
    peft_type = "P_TUNING"
    encoder_reparameterization_type: Any = schema_field("MLP", {"enum": ["MLP", "LSTM"]}, doc="prompt encoder type")
    encoder_hidden_size: Any = schema_field(None, OPT_POS_INT, doc="prompt encoder hidden size")
    encoder_num_layers: Any = schema_field(2, OPT_POS_INT, doc="prompt encoder layers")
    encoder_dropout: Any = schema_field(0.0, NUMBER, doc="prompt encoder dropout")


KIND = make_kind(PTuningConfig)
