"""LoRA's tensor key grammar: ``base_model.model.<module>.<part>`` for the parts PEFT saves.

Apart from ``kinds/lora.py`` so that ``kinds/features.py`` (which ``lora`` imports) can parse
LoRA keys without importing ``lora``: the kinds import each other one way only.
"""

from __future__ import annotations

import re

PREFIX = "base_model.model."
PARTS = ("lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<part>" + "|".join(re.escape(p) for p in PARTS) + r")$")


def parse_key(key: str) -> tuple[str, str] | None:
    """(module, part) of a LoRA factor's key, None for any other key."""
    m = _KEY.match(key)
    return (m["module"], m["part"]) if m else None
