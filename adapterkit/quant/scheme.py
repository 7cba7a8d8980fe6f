"""Which quantized format a checkpoint's ``config.json`` names, and its checked settings.

``quant_format(config, where)`` returns None for a checkpoint without ``quantization_config``
and otherwise the :class:`~adapterkit.quant.base.QuantFormat` for its ``quant_method``; a
method adapterkit does not read is refused (``quant-unsupported``, naming the field and the
methods it reads), never taken for a dense checkpoint.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import FormatError, UnsupportedError

# quant_method -> module of adapterkit.quant and its class (imported on use: each imports torch)
METHODS: dict[str, tuple[str, str]] = {
    "bitsandbytes": ("bnb", "from_config"),
    "gptq": ("gptq", "GPTQ"),
    "awq": ("awq", "AWQ"),
    "fp8": ("fp8", "from_config"),
    "compressed-tensors": ("fp8", "from_config"),
    "fbgemm_fp8": ("fp8", "from_config"),
}


def quantization_config(config: dict[str, Any] | None, where: Path | None = None) -> dict[str, Any] | None:
    """The ``quantization_config`` member of a model config (None where there is none)."""
    if not isinstance(config, dict) or config.get("quantization_config") is None:
        return None
    qc = config["quantization_config"]
    if not isinstance(qc, dict):
        raise FormatError("quantization_config must be an object", code="quant-invalid", path=where,
                          key="quantization_config", expected="object", actual=type(qc).__name__)
    return qc


def quant_format(config: dict[str, Any] | None, where: Path | None = None):
    """The format of a checkpoint whose ``config.json`` is ``config`` (None: not quantized)."""
    qc = quantization_config(config, where)
    if qc is None:
        return None
    method = qc.get("quant_method")
    if method is None and (qc.get("load_in_4bit") or qc.get("load_in_8bit") or qc.get("_load_in_4bit") or qc.get("_load_in_8bit")):
        method = "bitsandbytes"  # configs written before transformers named the method
    if not isinstance(method, str) or method not in METHODS:
        raise UnsupportedError("a quantization method adapterkit does not read", code="quant-unsupported", path=where,
                               key="quantization_config.quant_method", expected=" | ".join(sorted(METHODS)), actual=method)
    module, name = METHODS[method]
    found = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    return found(qc, where)
