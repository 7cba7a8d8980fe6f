"""The per-model registry of attached adapters: which names are attached, which are active.

Every injection kind (LoRA/IA3 in ``layers.py``, prompt learning in ``prompt.py``) records
what it attached here, so that ``set_active``, ``disabled``, ``detach``, ``unload`` and
``extract_from_model`` work on any mix of kinds without knowing how each one hooks the model.

The registry lives on the model object itself (attribute ``_adapterkit_state``), so it goes
wherever the model goes (``copy.deepcopy`` copies it).  A kind that hooks the model in its
own way (not through the wrapper layers) sets ``detach_fn`` and ``extract_fn`` on its
:class:`AttachedAdapter`; the generic functions call them instead of walking wrappers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ArgumentError, NotFoundError

if TYPE_CHECKING:
    from ..adapter import Adapter
    from ..kinds.base import AdapterConfig

_ATTR = "_adapterkit_state"


@dataclass
class AttachedAdapter:
    """What ``attach`` recorded for one adapter name.

    Attributes:
        name: the adapter name on this model.
        config: the adapter's config, given back unchanged by ``extract_from_model``.
        modules: paths of the model modules wrapped for it (empty for kinds that hook otherwise).
        keys: tensor key -> (module path, part, sub-name) telling ``extract_from_model`` where the
            live tensor is: part "lora_A" | "lora_B" | "bias" | "magnitude" | "ia3_l" of a wrapper,
            "saved" (sub-name: the parameter of the module's ``modules_to_save`` copy) or "base"
            (a tensor the adapter stores whole and the model already holds; module path: None,
            sub-name: its base-relative name) or "kept" (a LoRA variant's training state, unused
            at inference, kept in ``extra["kept"]``).
        dtypes: tensor key -> the dtype it was stored in (extract gives that dtype back).
        source: the file the adapter was read from, if any.
        detach_fn / extract_fn: set by kinds that do not use the wrapper layers.
        extra: free room for such kinds' own state.
    """

    name: str
    config: AdapterConfig
    modules: tuple[str, ...] = ()
    keys: dict[str, tuple[str | None, str, str]] = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    source: Path | None = None
    detach_fn: Callable[[nn.Module], None] | None = None
    extract_fn: Callable[[nn.Module], Adapter] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peft_type(self) -> str:
        return self.config.peft_type


@dataclass
class ModelState:
    """The registry proper: attached adapters by name, active names in order, the disabled flag."""

    adapters: dict[str, AttachedAdapter] = field(default_factory=dict)
    active: list[str] = field(default_factory=list)
    disabled: bool = False


def model_state(model: nn.Module) -> ModelState:
    """The model's registry, created empty on first use."""
    state = model.__dict__.get(_ATTR)
    if state is None:
        state = ModelState()
        model.__dict__[_ATTR] = state
    return state


def registry(model: nn.Module) -> dict[str, AttachedAdapter]:
    """name -> :class:`AttachedAdapter` for every adapter attached to ``model`` (live dict)."""
    return model_state(model).adapters


def active_names(model: nn.Module) -> tuple[str, ...]:
    """The active adapter names, in the order given to ``set_active``."""
    return tuple(model_state(model).active)


def check_name_free(model: nn.Module, name: str) -> None:
    """Raises ArgumentError (``adapter-name-taken``) if ``name`` is attached already."""
    if not isinstance(name, str) or not name or "." in name:
        raise ArgumentError("an adapter name is a non-empty string without dots", key="name", expected="e.g. 'default'", actual=repr(name))
    if name in registry(model):
        raise ArgumentError(
            f"an adapter named {name!r} is already attached; detach it or choose another name",
            code="adapter-name-taken", key=name, expected="a new name", actual=sorted(registry(model)),
        )


def lookup(model: nn.Module, name: str) -> AttachedAdapter:
    """The record of ``name``.  Raises NotFoundError (``adapter-not-attached``)."""
    found = registry(model).get(name)
    if found is None:
        raise NotFoundError(
            f"no adapter named {name!r} is attached to this model", code="adapter-not-attached",
            key=name, expected=f"one of {sorted(registry(model))}", actual=name,
        )
    return found
