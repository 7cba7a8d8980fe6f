"""extract_from_model: an attached (possibly trained) adapter read back as an Adapter value.

The result has the attached adapter's config and exactly its tensor keys, each in the dtype it
was stored in, so ``attach`` → ``extract_from_model`` → ``save`` → ``load`` is the identity
when nothing was trained.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapter import Adapter
from .plan import base_module, wrappers
from .state import lookup


def extract_from_model(model: nn.Module, name: str = "default") -> Adapter:
    """The adapter attached as ``name``, from the model's live parameters (on the CPU).

    Raises:
        NotFoundError: ``adapter-not-attached``.
    """
    record = lookup(model, name)
    if record.extract_fn is not None:
        return record.extract_fn(model)
    layers = dict(wrappers(model))
    tensors: dict[str, torch.Tensor] = {}
    for key, (path, part, sub) in record.keys.items():
        if part == "base":
            module_path, _, param = sub.rpartition(".")
            t = getattr(base_module(model, module_path) if module_path else model, param)
        elif part == "kept":
            t = record.extra["kept"][key]
        elif part == "saved":
            t = layers[path].modules_to_save[name].state_dict(keep_vars=True)[sub]
        else:
            t = getattr(layers[path], part)[name]
        tensors[key] = t.detach().to(device="cpu", dtype=record.dtypes[key]).clone()
    return Adapter.from_tensors(record.config, tensors)
