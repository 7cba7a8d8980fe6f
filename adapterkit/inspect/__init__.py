"""Looking inside adapters without changing them: ``diff`` (how two adapters overlap and
conflict) and ``spectrum`` / ``plot_spectrum`` (the singular values of every LoRA module)."""

from __future__ import annotations

from .compare import DiffReport, ModuleDiff, diff
from .spectra import ModuleSpectrum, Spectrum, plot_spectrum, spectrum

__all__ = ["DiffReport", "ModuleDiff", "ModuleSpectrum", "Spectrum", "diff", "plot_spectrum", "spectrum"]
