"""Looking inside adapters without changing them: ``diff`` (how two adapters overlap and
conflict) and ``spectrum`` / ``plot_spectrum`` (the singular values of every LoRA module).

The names below are imported on first use (``diff --conflict off`` runs without torch)."""

from __future__ import annotations

from ..lazy import lazy_names

_LAZY = {
    "DiffReport": "compare", "ModuleDiff": "compare", "diff": "compare",
    "ModuleSpectrum": "spectra", "Spectrum": "spectra", "plot_spectrum": "spectra", "spectrum": "spectra",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_names(__name__, _LAZY)
