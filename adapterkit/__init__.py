"""adapterkit: a versioned format, strict I/O and offline surgery for PEFT adapters.

The public names are imported on first use (PEP 562), so that ``import adapterkit``
and the command line's ``--help``/``--version`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AdapterkitError, Problem
from .validate import validate  # eager: the submodule's name would otherwise shadow the function

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "FORMAT_VERSION": "adapter",
    "Adapter": "adapter",
    "LazyStore": "adapter",
    "MemoryStore": "adapter",
    "TensorStore": "adapter",
    "load": "hub.paths",  # io.reader's, accepting a Hub repo id (org/name[@revision]) too
    "open_adapter": "hub.paths",
    "push": "hub.push",
    "pull": "hub.pull",
    "save": "io.writer",
    "combine": "ops.combine",
    "check": "ops.export",
    "export": "ops.export",
    "IA3Config": "kinds",
    "LoraConfig": "kinds",
    "PrefixTuningConfig": "kinds",
    "PromptTuningConfig": "kinds",
    "PTuningConfig": "kinds",
    "extract": "ops.extract",
    "prune": "ops.prune",
    "rebalance": "ops.rebalance",
    "resize": "ops.resize",
    "diff": "inspect.diff",
    "plot_spectrum": "inspect.spectrum",
    # model injection: a separate layer over the Adapter value
    "attach": "inject", "detach": "inject", "set_active": "inject", "disabled": "inject", "merge": "inject",
    "unmerge": "inject", "merge_and_unload": "inject", "unload": "inject", "extract_from_model": "inject",
}

__all__ = [
    "FORMAT_VERSION", "Adapter", "AdapterkitError", "IA3Config", "LazyStore", "LoraConfig", "MemoryStore",
    "PTuningConfig", "PrefixTuningConfig", "Problem", "PromptTuningConfig", "TensorStore", "__version__",
    "attach", "check", "combine", "detach", "diff", "disabled", "export", "extract", "extract_from_model", "load", "merge", "merge_and_unload", "open_adapter",
    "plot_spectrum", "prune", "pull", "push", "rebalance", "resize", "save", "set_active", "unload", "unmerge", "validate",
]

if TYPE_CHECKING:
    from .adapter import FORMAT_VERSION, Adapter, LazyStore, MemoryStore, TensorStore
    from .hub.paths import load, open_adapter
    from .hub.pull import pull
    from .hub.push import push
    from .inject import (
        attach,
        detach,
        disabled,
        extract_from_model,
        merge,
        merge_and_unload,
        set_active,
        unload,
        unmerge,
    )
    from .inspect.diff import diff
    from .inspect.spectrum import plot_spectrum
    from .io.writer import save
    from .kinds import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PTuningConfig
    from .ops.combine import combine
    from .ops.export import check, export
    from .ops.extract import extract
    from .ops.prune import prune
    from .ops.rebalance import rebalance
    from .ops.resize import resize


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
