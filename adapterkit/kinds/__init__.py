"""The registry of adapter kinds, keyed by PEFT's ``peft_type``."""

from __future__ import annotations

from ..errors import ConfigError
from . import ia3, loha, lokr, lora, p_tuning, prefix_tuning, prompt_tuning
from .base import AdapterConfig, Kind
from .ia3 import IA3Config
from .loha import LoHaConfig
from .lokr import LoKrConfig
from .lora import LoraConfig
from .p_tuning import PTuningConfig
from .prefix_tuning import PrefixTuningConfig
from .prompt_tuning import PromptTuningConfig

KINDS: dict[str, Kind] = {m.KIND.peft_type: m.KIND for m in (lora, ia3, loha, lokr, prompt_tuning, prefix_tuning, p_tuning)}


def kind_of(peft_type: str, *, path: object = None) -> Kind:
    """The Kind for ``peft_type``.  Raises ConfigError (``peft-type-unsupported``)."""
    try:
        return KINDS[peft_type]
    except (KeyError, TypeError):
        raise ConfigError(
            "unsupported peft_type", code="peft-type-unsupported", path=path, key="peft_type",
            expected=" | ".join(KINDS), actual=peft_type,
        ) from None


def config_from_dict(data: object, *, path: object = None, problems: list | None = None) -> AdapterConfig:
    """Parse a PEFT config dict into the kind's config dataclass.  Raises ConfigError; with
    ``problems`` (a list), invalid fields are recorded there instead (see ``from_dict``)."""
    if not isinstance(data, dict):
        raise ConfigError("adapter config must be a JSON object", path=path, expected="object", actual=type(data).__name__)
    if "peft_type" not in data:
        raise ConfigError("config has no peft_type", path=path, key="peft_type", expected=" | ".join(KINDS), actual="absent")
    return kind_of(data["peft_type"], path=path).config.from_dict(data, path=path, problems=problems)


__all__ = [
    "KINDS", "AdapterConfig", "IA3Config", "Kind", "LoHaConfig", "LoKrConfig", "LoraConfig", "PTuningConfig",
    "PrefixTuningConfig", "PromptTuningConfig", "config_from_dict", "kind_of",
]
