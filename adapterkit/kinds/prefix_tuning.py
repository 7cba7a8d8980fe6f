"""Prefix tuning: per-layer key/value prefixes, (num_virtual_tokens, 2 · num_layers · token_dim).

With ``prefix_projection`` the file stores the projection's *output*, exactly what
PEFT saves, so the shape is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .base import BOOL, schema_field
from .prompt_learning import OPT_POS_INT, PromptLearningConfig, make_kind


@dataclass(frozen=True)
class PrefixTuningConfig(PromptLearningConfig):
    peft_type = "PREFIX_TUNING"
    prefix_projection: bool = schema_field(False, BOOL, doc="prefixes came from a projection MLP")
    encoder_hidden_size: Any = schema_field(None, OPT_POS_INT, doc="projection hidden size")

    def check(self, *, path: Any = None) -> None:
        if self.num_layers is None:
            raise ConfigError("prefix tuning needs num_layers to define the tensor shape", path=path, key="num_layers", expected="integer >= 1", actual=None)

    def features(self) -> dict[str, Any]:
        return {**super().features(), "prefix_projection": self.prefix_projection}

    def embedding_shape(self) -> tuple[int, ...]:
        return (self.num_virtual_tokens, 2 * self.num_layers * self.token_dim)


KIND = make_kind(PrefixTuningConfig)
