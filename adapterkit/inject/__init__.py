"""Attaching adapters to live torch models: the layer that consumes an Adapter.

    model = adapterkit.attach(model, adapterkit.load("adapter_dir"))   # in place
    adapterkit.set_active(model, ["a", "b"]); with adapterkit.disabled(model): ...
    adapterkit.merge_attached(model); adapterkit.unmerge_attached(model)
    plain = adapterkit.merge_and_unload(model)
    adapter = adapterkit.extract_from_model(model, "default")

Parts: ``state`` (the per-model registry every kind records into), ``plan`` (PEFT's module
selection and the checks run before anything changes), ``layers`` (the wrapper modules),
``attaching`` / ``merge`` / ``extract`` (the public functions), ``quantized`` (bitsandbytes'
layers as PEFT runs and merges them; other quantized layers refused by name).  Prompt-learning
kinds live in ``prompt`` and are reached through ``attach`` by ``peft_type``.
"""

from __future__ import annotations

from .attaching import attach, detach, disabled, set_active
from .extract import extract_from_model
from .merge import merge_and_unload, merge_attached, unload, unmerge_attached
from .state import AttachedAdapter, active_names, registry

__all__ = [
    "AttachedAdapter", "active_names", "attach", "detach", "disabled", "extract_from_model", "merge_and_unload",
    "merge_attached", "registry", "set_active", "unload", "unmerge_attached",
]
