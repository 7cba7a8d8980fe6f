"""Looking inside adapters without changing them: ``diff`` (how two adapters overlap and
conflict) and ``spectrum`` / ``plot_spectrum`` (the singular values of every LoRA module).

The names below are imported on first use (``diff --conflict off`` runs without torch)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DiffReport": "compare", "ModuleDiff": "compare", "diff": "compare",
    "ModuleSpectrum": "spectra", "Spectrum": "spectra", "plot_spectrum": "spectra", "spectrum": "spectra",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
