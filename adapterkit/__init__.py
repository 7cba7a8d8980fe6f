"""adapterkit: a versioned format, strict I/O and offline surgery for PEFT adapters.

The public names are imported on first use (PEP 562), so that ``import adapterkit``
and the command line's ``--help``/``--version`` do not pay for importing torch.

Every command of the CLI has a function of the same name here, with the command's options:
``info``, ``validate``, ``convert``, ``check``, ``merge``, ``unmerge``, ``extract`` (paths or
Hub repo ids in: ``adapterkit.api``), ``combine``, ``resize``, ``rebalance``, ``prune``, ``diff``,
``plot_spectrum`` (on Adapters), ``push`` and ``pull``.  Live models (``adapterkit.inject``):
``attach``, ``detach``, ``set_active``, ``disabled``, ``merge_attached``, ``unmerge_attached``,
``merge_and_unload``, ``unload``, ``extract_from_model``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import AdapterkitError, Problem
from .lazy import lazy_names

# public name -> the submodule that defines it
_LAZY = {
    "FORMAT_VERSION": "adapter",
    "Adapter": "adapter",
    "LazyStore": "io.lazy_store",
    "MemoryStore": "adapter",
    "TensorStore": "adapter",
    "load": "hub.paths",  # io.reader's, accepting a Hub repo id (org/name[@revision]) too
    "open_adapter": "hub.paths",
    "save": "io.writer",
    "IA3Config": "kinds",
    "LoraConfig": "kinds",
    "LoHaConfig": "kinds",
    "PrefixTuningConfig": "kinds",
    "PromptTuningConfig": "kinds",
    "PTuningConfig": "kinds",
    # one function per CLI command; those taking paths resolve repo ids (adapterkit.api)
    "info": "api",
    "validate": "api",
    "convert": "api",
    "check": "api",
    "merge": "api",
    "unmerge": "api",
    "extract": "api",
    "combine": "ops.combining",
    "resize": "ops.resizing",
    "to_lora": "ops.to_lora",
    "rebalance": "ops.rebalancing",
    "prune": "ops.pruning",
    "export": "ops.export",
    "push": "hub.publish",
    "pull": "hub.download",
    "diff": "inspect.compare",
    "plot_spectrum": "inspect.spectra",
    # model injection: a separate layer over the Adapter value
    "attach": "inject", "detach": "inject", "set_active": "inject", "disabled": "inject", "merge_attached": "inject",
    "unmerge_attached": "inject", "merge_and_unload": "inject", "unload": "inject", "extract_from_model": "inject",
}

__all__ = [
    "FORMAT_VERSION", "Adapter", "AdapterkitError", "IA3Config", "LazyStore", "LoHaConfig", "LoraConfig", "MemoryStore",
    "PTuningConfig", "PrefixTuningConfig", "Problem", "PromptTuningConfig", "TensorStore", "__version__",
    "attach", "check", "combine", "convert", "detach", "diff", "disabled", "export", "extract", "extract_from_model", "info",
    "load", "merge", "merge_and_unload", "merge_attached", "open_adapter", "plot_spectrum", "prune", "pull", "push",
    "rebalance", "resize", "save", "set_active", "to_lora", "unload", "unmerge", "unmerge_attached", "validate",
]

if TYPE_CHECKING:
    from .adapter import FORMAT_VERSION, Adapter, MemoryStore, TensorStore
    from .api import check, convert, extract, info, merge, unmerge, validate
    from .hub.download import pull
    from .hub.paths import load, open_adapter
    from .hub.publish import push
    from .inject import (
        attach,
        detach,
        disabled,
        extract_from_model,
        merge_and_unload,
        merge_attached,
        set_active,
        unload,
        unmerge_attached,
    )
    from .inspect.compare import diff
    from .inspect.spectra import plot_spectrum
    from .io.lazy_store import LazyStore
    from .io.writer import save
    from .kinds import IA3Config, LoHaConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PTuningConfig
    from .ops.combining import combine
    from .ops.export import export
    from .ops.pruning import prune
    from .ops.rebalancing import rebalance
    from .ops.resizing import resize
    from .ops.to_lora import to_lora


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
