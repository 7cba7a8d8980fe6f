"""adapterkit: a versioned format, strict I/O and offline surgery for PEFT adapters."""

from .adapter import FORMAT_VERSION, Adapter, LazyStore, MemoryStore, TensorStore
from .errors import AdapterkitError, Problem
from .io.reader import load, open_adapter
from .io.writer import save
from .kinds import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PTuningConfig
from .validate import validate

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "Adapter",
    "AdapterkitError",
    "IA3Config",
    "LazyStore",
    "LoraConfig",
    "MemoryStore",
    "PTuningConfig",
    "PrefixTuningConfig",
    "Problem",
    "PromptTuningConfig",
    "TensorStore",
    "load",
    "open_adapter",
    "save",
    "validate",
]
