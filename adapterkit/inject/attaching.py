"""attach, detach, set_active, disabled: putting named adapters into a live torch model.

The model is changed in place.  ``attach`` validates everything first (``plan.plan``) and
mutates only when the whole adapter fits, so a failed attach leaves the model untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from torch import nn

from ..errors import ArgumentError, UnsupportedError
from .layers import AdapterLayer, IA3Layer, ParamLoraLayer, SavedModule, TokenLayer
from .plan import plan, replace, walk, wrappers
from .state import AttachedAdapter, check_name_free, lookup, model_state, registry

if TYPE_CHECKING:
    from ..adapter import Adapter

PROMPT_KINDS = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")


def attach(model: nn.Module, adapter: Adapter, name: str = "default", *, activate: bool = True) -> nn.Module:
    """Attaches ``adapter`` to ``model`` under ``name``, in place, and returns the model.

    LoRA (lora_B.bias, DoRA, rsLoRA, rank/alpha patterns) goes on nn.Linear, transformers'
    Conv1D, nn.Embedding and nn.Conv1d/2d/3d; IA3 on nn.Linear, Conv1D and nn.Conv2d/3d;
    ``modules_to_save`` become per-adapter copies of their module; ``target_parameters`` puts
    LoRA on 2-D parameters and ``trainable_token_indices`` replaces embedding rows, as PEFT does;
    a PEFT feature attach does not implement is refused by name (``kinds/features.py``).  The modules adapted are
    exactly those PEFT would pick from the adapter's config.  With ``activate`` (default) the
    new adapter becomes the only active one; otherwise it waits for ``set_active``.

    Raises:
        ArgumentError: ``adapter-name-taken`` when ``name`` is attached already.
        TensorError: ``model-mismatch`` naming every module that does not fit (model unchanged).
        UnsupportedError: ``not-supported`` for kinds that cannot be attached, or with
            ``activate`` while adapters are merged.
    """
    if adapter.peft_type in PROMPT_KINDS:
        try:
            from .prompt import attach_prompt  # type: ignore[import-not-found]
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.prompt":
                raise
            raise UnsupportedError(f"attaching {adapter.peft_type} adapters is not available in this build", path=adapter.source, key="peft_type") from None
        return _attach_prompt(model, adapter, name, activate, attach_prompt)
    check_name_free(model, name)
    if adapter.peft_type not in ("LORA", "IA3", "LOHA", "LOKR"):
        raise UnsupportedError(f"attaching {adapter.peft_type} adapters is not supported", path=adapter.source, key="peft_type")
    if activate and any(w.merged for _, w in wrappers(model)):
        raise UnsupportedError("activating a new adapter while others are merged; unmerge first or pass activate=False", key=name)
    changes = plan(model, adapter)  # raises before anything changes
    record = AttachedAdapter(name, adapter.config, modules=tuple(w.path for w in changes.wraps), source=adapter.source)
    modules = dict(walk(model))
    for wrap in changes.wraps:
        wrapper = modules[wrap.path]
        if not isinstance(wrapper, AdapterLayer):
            if wrap.param is not None:
                wrapper = ParamLoraLayer(wrapper, wrap.param)
            elif wrap.indices is not None:
                wrapper = TokenLayer(wrapper)
            else:
                wrapper = IA3Layer(wrapper, wrap.is_feedforward) if wrap.layer_cls is IA3Layer else wrap.layer_cls(wrapper)
            replace(model, wrap.path, wrapper)
        tensors = {}
        for key, attr in wrap.keys.items():
            t = adapter.tensors[key]
            record.dtypes[key] = t.dtype
            if attr.startswith("saved:"):
                tensors[attr[6:]] = t
                record.keys[key] = (wrap.path, "saved", attr[6:])
            else:
                tensors[attr] = t
                record.keys[key] = (wrap.path, attr, "")
        wrapper.add(name, tensors)
        if hasattr(wrapper, "bind"):  # LoHa / LoKr: ΔW from the kind's math on the live parameters
            wrapper.bind(name, adapter.config, wrap.path, {key: attr for key, attr in wrap.keys.items()})
        if wrap.scaling is not None:
            wrapper.scaling[name] = wrap.scaling
        if wrap.indices is not None:
            wrapper.set_rows(name, wrap.indices)
    for key, base_name in changes.base_keys.items():
        record.keys[key] = (None, "base", base_name)
        record.dtypes[key] = adapter.tensors[key].dtype
    for key in changes.kept_keys:  # a variant's training state (VeLoRA, MonteCLoRA): unused at inference, given back
        record.keys[key] = (None, "kept", "")
        record.dtypes[key] = adapter.tensors[key].dtype
        record.extra.setdefault("kept", {})[key] = adapter.tensors[key].detach().clone()
    registry(model)[name] = record
    if activate:
        set_active(model, [name])
    return model


def _attach_prompt(model: nn.Module, adapter: Adapter, name: str, activate: bool, attach_prompt) -> nn.Module:
    """A prompt-learning adapter: ``prompt.attach_prompt`` hooks the model's forward; the record
    here lets ``set_active``, ``disabled``, ``detach`` and ``extract_from_model`` reach it."""
    from .prompt import active_prompt, detach_prompt, extract_prompt, set_active_prompt

    check_name_free(model, name)
    before = active_prompt(model)
    attach_prompt(model, adapter, name)
    record = AttachedAdapter(name, adapter.config, source=adapter.source,
                             detach_fn=lambda m: detach_prompt(m, name), extract_fn=lambda m: extract_prompt(m, name))
    record.extra["prompt"] = True
    registry(model)[name] = record
    if activate:
        set_active(model, [name])
    else:
        set_active_prompt(model, before)
    return model


def _prompt_names(model: nn.Module, names: Sequence[str]) -> list[str]:
    return [n for n in names if registry(model)[n].extra.get("prompt")]


def set_active(model: nn.Module, names: str | Sequence[str]) -> None:
    """Makes ``names`` the active adapters (an empty list: none).  The effects of several active
    LoRA adapters add up, as PEFT's ``set_adapter([...])``; IA3 scales multiply.

    Raises:
        NotFoundError: ``adapter-not-attached`` for an unknown name.
        ArgumentError: two active adapters with a ``modules_to_save`` copy of one module.
        UnsupportedError: ``not-supported`` while adapters are merged and the set would change.
    """
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        lookup(model, name)
    state = model_state(model)
    layers = list(wrappers(model))
    if names != state.active and any(w.merged for _, w in layers):
        raise UnsupportedError("the active adapters cannot change while adapters are merged; unmerge first", key="names", expected=state.active, actual=names)
    for path, wrapper in layers:
        if isinstance(wrapper, SavedModule) and len([n for n in names if n in wrapper.names]) > 1:
            raise ArgumentError(f"several active adapters have a modules_to_save copy of `{path}`; at most one may", key=path, actual=[n for n in names if n in wrapper.names])
    prompts = _prompt_names(model, names)
    if len(prompts) > 1:
        raise ArgumentError("at most one prompt-learning adapter can be active (its virtual tokens lead every input)", key="names", actual=prompts)
    if any(r.extra.get("prompt") for r in registry(model).values()):
        from .prompt import set_active_prompt

        set_active_prompt(model, prompts[0] if prompts else None)
    state.active = names
    for _, wrapper in layers:
        wrapper.active = [n for n in names if n in wrapper.names]


@contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes its base outputs.  Merged adapters are unmerged
    first (and stay unmerged), as PEFT's ``disable_adapter`` does."""
    from .merge import unmerge_attached

    state = model_state(model)
    layers = [w for _, w in wrappers(model)]
    if any(w.merged for w in layers):
        unmerge_attached(model)
    before = state.disabled, [w.disabled for w in layers]
    prompted = any(r.extra.get("prompt") for r in registry(model).values())
    if prompted:
        from .prompt import active_prompt, set_active_prompt

        prompt_before = active_prompt(model)
        set_active_prompt(model, None)
    state.disabled = True
    for w in layers:
        w.disabled = True
    try:
        yield model
    finally:
        state.disabled = before[0]
        for w, flag in zip(layers, before[1]):
            w.disabled = flag
        if prompted:
            set_active_prompt(model, prompt_before)


def detach(model: nn.Module, name: str) -> nn.Module:
    """Removes adapter ``name``; a wrapper left without adapters gives way to its plain module.

    Raises:
        NotFoundError: ``adapter-not-attached``.
        UnsupportedError: ``not-supported`` while ``name`` is merged (unmerge first).
    """
    record = lookup(model, name)
    layers = dict(wrappers(model))
    if any(name in layers[p].merged for p in record.modules if p in layers):
        raise UnsupportedError(f"adapter {name!r} is merged into the weights; unmerge first", key=name)
    if record.detach_fn is not None:
        record.detach_fn(model)
    for path in record.modules:
        wrapper = layers.get(path)
        if wrapper is None:
            continue
        wrapper.remove(name)
        if not wrapper.names:
            replace(model, path, wrapper.base_layer)
    state = model_state(model)
    del state.adapters[name]
    state.active = [n for n in state.active if n != name]
    return model
