"""Per-module orientation of 2-D weights: (out, in) as ``nn.Linear``, or (in, out) as transformers' ``Conv1D``.

PEFT decides ``fan_in_fan_out`` per layer, not from the saved flag: a transformers ``Conv1D``
is transposed, an ``nn.Linear`` is not, whatever ``adapter_config.json`` says (PEFT 0.22.0,
``tuners/lora/layer.py`` ``dispatch_default`` and ``tuners/ia3/model.py`` ``_create_new_module``
overwrite the flag with a warning; a second adapter added with ``add_adapter`` reuses the
layer's orientation and keeps its own saved ``false``).  So the saved flag is wrong for a
second adapter on GPT-2 and for one adapter targeting both Conv1D and Linear layers.

Offline, with no live model, :func:`decide` finds each module's orientation, first rule that
answers wins:

  1. the caller's ``fan_in_fan_out`` (True / False for every module, or a mapping of module
     names — full name or dot-suffix, PEFT's list rule — to True / False);
  2. the checkpoint's ``config.json``: a ``model_type`` (or ``architectures`` class) of a
     transformers model built on ``Conv1D`` (:data:`CONV1D_MODELS`) makes exactly its
     Conv1D layers transposed; any other transformers model (no ``auto_map``: no remote code)
     has none;
  3. the base weight's shape, where it is not square: (in, out) is transposed, (out, in) is not;
  4. square and undecided: the saved flag, where the module's name agrees with it (``true`` on
     a name transformers gives Conv1D layers — ``c_attn``, ``c_proj``, ``c_fc``, ``q_attn`` —,
     ``false`` on any other name);
  5. otherwise :class:`~adapterkit.errors.UnsupportedError` ``orientation-unknown`` naming the
     module and the option.

Only the merge's reading of the base changes: the factors (A r×in, B out×r) are the same in
either orientation, so combining adapters needs an orientation only to agree on the result's
flag (``combine``'s ``fan_in_fan_out``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ..adapter import Adapter
from ..errors import ArgumentError, UnsupportedError

# transformers models whose layers include Conv1D, model_type -> the short names of those layers
# (transformers 5.x: models/{gpt2,openai,imagegpt,decision_transformer,clvp}); every other layer
# of these models (lm_head, score, wte, Clvp's attention projections) is nn.Linear / nn.Embedding
_GPT2_CONV1D = frozenset({"c_attn", "q_attn", "c_proj", "c_fc"})
CONV1D_MODELS: Mapping[str, frozenset[str]] = MappingProxyType({
    "gpt2": _GPT2_CONV1D,
    "imagegpt": _GPT2_CONV1D,
    "decision_transformer": _GPT2_CONV1D,
    "openai-gpt": frozenset({"c_attn", "c_proj", "c_fc"}),
    "clvp": frozenset({"c_fc", "c_proj"}),
})
# the same models by architecture class-name prefix, for a config.json without model_type
_ARCH_PREFIXES = {"GPT2": "gpt2", "ImageGPT": "imagegpt", "DecisionTransformer": "decision_transformer",
                  "OpenAIGPT": "openai-gpt", "Clvp": "clvp"}
CONV1D_NAMES = frozenset().union(*CONV1D_MODELS.values())
OPTION = "fan_in_fan_out (CLI: --fan-in-fan-out true|false|MODULE=true,...)"

Orientation = bool | Mapping[str, bool] | str | None


def parse_option(value: Orientation) -> bool | dict[str, bool] | None:
    """The caller's orientation: None (``"auto"``: decide), True / False, or {module: bool}.

    Accepts booleans, ``"auto"``, ``"true"``, ``"false"``, a mapping, or the CLI's text
    ``"NAME=true,NAME=false"``.  Raises ArgumentError (``argument-invalid``) otherwise.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            b = v if isinstance(v, bool) else _bool(str(v), str(k))
            out[str(k)] = b
        return out
    text = str(value).strip()
    if text.lower() == "auto":
        return None
    if "=" not in text:
        return _bool(text, None)
    out = {}
    for item in text.split(","):
        name, sep, flag = item.partition("=")
        if not sep or not name.strip():
            raise ArgumentError("fan_in_fan_out entries are MODULE=true|false", key="fan_in_fan_out",
                                expected="auto | true | false | MODULE=true|false,...", actual=item)
        out[name.strip()] = _bool(flag, name.strip())
    return out


def _bool(text: str, name: str | None) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    raise ArgumentError("fan_in_fan_out must be auto, true, false or MODULE=true|false,...", key="fan_in_fan_out" if name is None else f"fan_in_fan_out[{name}]",
                        expected="auto | true | false", actual=text)


def _given(option: bool | dict[str, bool] | None, module: str) -> bool | None:
    if option is None or isinstance(option, bool):
        return option
    for name, flag in option.items():
        if module == name or module.endswith("." + name):
            return flag
    return None


def conv1d_names(config: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The short names of the Conv1D layers of the model ``config`` (``config.json``) describes:
    empty for a transformers model without them, None where the config does not say (no config,
    remote code — ``auto_map`` —, or no ``model_type``/``architectures``)."""
    if not isinstance(config, Mapping) or config.get("auto_map"):
        return None
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return CONV1D_MODELS.get(model_type, frozenset())
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs):
        for prefix, mt in _ARCH_PREFIXES.items():
            if any(a.startswith(prefix) for a in archs):
                return CONV1D_MODELS[mt]
        return frozenset()
    return None


def oriented_modules(adapter: Adapter) -> list[str]:
    """The modules whose merge reads a 2-D weight in an orientation the adapter does not fix
    (LoRA linear modules, IA3 modules with a 2-D ``ia3_l``): those with a ``fan_in_fan_out`` view."""
    return [name for name, view in adapter.modules.items() if _has_orientation(adapter, view)]


def _has_orientation(adapter: Adapter, view: Any) -> bool:
    if not hasattr(view, "fan_in_fan_out"):
        return False
    layer_type = getattr(view, "layer_type", None)
    if layer_type is not None:
        return layer_type == "linear"
    key = getattr(view, "key", None)
    return key is not None and len(adapter.meta(key).shape) == 2


def _shape_says(adapter: Adapter, view: Any, shape: tuple[int, ...]) -> bool | None:
    """True / False where the base weight's shape fixes the orientation, None where it does not."""
    if len(shape) != 2 or shape[0] == shape[1]:
        return None
    keys = getattr(view, "keys", None)
    if keys is not None:  # LoRA: the factors give (out, in)
        natural = (int(adapter.meta(keys["lora_B"]).shape[0]), int(adapter.meta(keys["lora_A"]).shape[1]))
        if tuple(shape) == natural:
            return False
        if tuple(shape) == natural[::-1]:
            return True
        return None
    vec = tuple(adapter.meta(view.key).shape)  # IA3: (out, 1) scales outputs, (1, in) inputs
    size = vec[1] if view.is_feedforward else vec[0]
    natural_dim = 1 if view.is_feedforward else 0
    if shape[natural_dim] == size and shape[1 - natural_dim] != size:
        return False
    if shape[1 - natural_dim] == size and shape[natural_dim] != size:
        return True
    return None


def decide(adapter: Adapter, base_shapes: Mapping[str, tuple[int, ...] | None], *, config: Mapping[str, Any] | None = None,
           fan_in_fan_out: Orientation = None, where: Any = None) -> dict[str, bool]:
    """module -> whether its base weight is stored transposed ((in, out), Conv1D), for every
    module of ``adapter`` whose merge depends on it (see the module doc for the rules).

    Args:
        base_shapes: module -> the base weight's shape (None where the checkpoint has no weight
            for it: the merge plan reports that; the saved flag is kept).
        config: the checkpoint's ``config.json``, if any.
        fan_in_fan_out: the caller's answer (see :func:`parse_option`); ``"auto"``/None decides.
        where: the checkpoint, named in the error.

    Raises:
        UnsupportedError: ``orientation-unknown`` for the first module no rule decides, naming it
            and the option.
        ArgumentError: ``argument-invalid`` for an unreadable option.
    """
    option = parse_option(fan_in_fan_out)
    known = conv1d_names(config)
    out: dict[str, bool] = {}
    undecided: list[str] = []
    for name in oriented_modules(adapter):
        view = adapter.module(name)
        short = name.rsplit(".", 1)[-1]
        given = _given(option, name)
        if given is not None:
            out[name] = given
            continue
        if known is not None:
            out[name] = short in known
            continue
        shape = base_shapes.get(name)
        if shape is None:
            out[name] = bool(view.fan_in_fan_out)
            continue
        by_shape = _shape_says(adapter, view, tuple(shape))
        if by_shape is not None:
            out[name] = by_shape
        elif bool(view.fan_in_fan_out) == (short in CONV1D_NAMES):
            out[name] = bool(view.fan_in_fan_out)
        else:
            undecided.append(name)
    if undecided:
        first = undecided[0]
        flag = bool(adapter.module(first).fan_in_fan_out)
        why = (f"the adapter saves fan_in_fan_out={str(flag).lower()}, which PEFT ignores (it follows the layer type), and "
               f"`{first.rsplit('.', 1)[-1]}` is {'not ' if not flag else ''}a name transformers gives Conv1D layers"
               if flag else
               f"PEFT saves fan_in_fan_out=false for Conv1D layers too (a second adapter, or one also targeting Linear layers), "
               f"and `{first.rsplit('.', 1)[-1]}` is the name of a Conv1D layer in GPT-2-style models")
        more = f" ({len(undecided)} modules: {', '.join(f'`{m}`' for m in undecided[:4])}{', ...' if len(undecided) > 4 else ''})" if len(undecided) > 1 else ""
        raise UnsupportedError(
            f"cannot tell whether the base weight of `{first}` is stored (out, in) as nn.Linear or (in, out) as transformers' "
            f"Conv1D: it is square, no config.json names a transformers model (remote code does not say), and {why}{more}; "
            f"say which with {OPTION}",
            code="orientation-unknown", path=where if where is not None else adapter.source, key=first,
            expected="fan_in_fan_out=true|false", actual="undecided",
        )
    return out


def for_checkpoint(adapter: Adapter, checkpoint_keys: Mapping[str, tuple[str, tuple[int, ...]]], *,
                   config: Mapping[str, Any] | None = None, fan_in_fan_out: Orientation = None, where: Any = None) -> Adapter:
    """``adapter`` with each module's orientation decided for the checkpoint (:func:`decide`;
    module names mapped onto checkpoint keys by the merge plan's rule), ready for ``plan_merge``
    and the merge.  Raises as :func:`decide`."""
    from .merge_plan import weight_keys

    names = oriented_modules(adapter)
    if not names:
        return adapter
    keys = weight_keys(adapter, checkpoint_keys)
    shapes: dict[str, tuple[int, ...] | None] = {}
    for m in names:
        key = keys[m]
        shapes[m] = tuple(checkpoint_keys[key][1]) if key is not None and key in checkpoint_keys else None
    return with_orientation(adapter, decide(adapter, shapes, config=config, fan_in_fan_out=fan_in_fan_out, where=where))


def for_checkpoints(adapters: Sequence[Adapter], checkpoint_keys: Mapping[str, tuple[str, tuple[int, ...]]], *,
                    config: Mapping[str, Any] | None = None, fan_in_fan_out: Orientation = None, where: Any = None) -> list[Adapter]:
    """:func:`for_checkpoint` of each adapter.  A per-module ``fan_in_fan_out`` whose name matches
    no module with an orientation in any of them is an ArgumentError (``argument-invalid``):
    a misspelt name must not leave the module it meant to the automatic rules."""
    option = parse_option(fan_in_fan_out)
    if isinstance(option, dict):
        names = [m for a in adapters for m in oriented_modules(a)]
        for given in option:
            if not any(m == given or m.endswith("." + given) for m in names):
                raise ArgumentError("fan_in_fan_out names a module that no adapter has (as a Linear or Conv1D module)",
                                    key=f"fan_in_fan_out[{given}]", expected=f"one of {sorted(names)[:4]}{' ...' if len(names) > 4 else ''}",
                                    actual=given)
    return [for_checkpoint(a, checkpoint_keys, config=config, fan_in_fan_out=option, where=where) for a in adapters]


def with_orientation(adapter: Adapter, orientation: Mapping[str, bool]) -> Adapter:
    """``adapter`` with the given modules' ``fan_in_fan_out`` set (its config and tensors
    unchanged: only the per-module views a merge reads).  The adapter itself is returned when
    nothing changes."""
    views = adapter.modules
    changed = {m: v for m, v in orientation.items() if m in views and bool(views[m].fan_in_fan_out) != v}
    if not changed:
        return adapter
    new = dataclasses.replace(adapter)
    modules = {m: (dataclasses.replace(v, fan_in_fan_out=changed[m]) if m in changed else v) for m, v in views.items()}
    new.__dict__["modules"] = MappingProxyType(modules)  # the cached_property's slot
    return new


__all__ = ["CONV1D_MODELS", "CONV1D_NAMES", "conv1d_names", "decide", "for_checkpoint", "for_checkpoints", "oriented_modules", "parse_option", "with_orientation"]
