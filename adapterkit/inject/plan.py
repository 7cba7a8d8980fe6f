"""Which modules of a model an adapter goes into, checked before anything is changed.

``plan(model, adapter)`` selects exactly the modules PEFT 0.22.0 would adapt
(``check_target_module_exists``: ``exclude_modules``, ``modules_to_save`` exclusion,
``target_modules`` as a full regex or names/dot-suffixes, ``layers_to_transform`` /
``layers_pattern``; ``target_parameters``; the embeddings of ``trainable_token_indices``),
compares them with the adapter's modules and shapes, and either returns
the complete list of changes or raises one error naming every offender.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import TensorError, UnsupportedError
from ..kinds.features import ATTACH, feature_tensor, require
from ..kinds.patterns import layer_index, matches_modules_to_save
from .layers import AdapterLayer, IA3Layer, LoraLayer, ParamLoraLayer, SavedModule, TokenLayer, features, layer_type
from .quantized import OFFLINE, describe, packed_tensor, quantized, refusal
from .quantized import refuse as refuse_layer

if TYPE_CHECKING:
    from ..adapter import Adapter

PREFIX = "base_model.model."
_LORA_TYPES = {"linear", "conv1d_t", "embedding", "conv1d", "conv2d", "conv3d"}
_IA3_TYPES = {"linear", "conv1d_t", "conv2d", "conv3d"}
_LYCORIS_TYPES = {"linear", "conv1d", "conv2d"}  # PEFT's LoHa / LoKr layers
LYCORIS = ("LOHA", "LOKR")
_LORA_ATTR = {"lora_A": "lora_A", "lora_B": "lora_B", "bias": "lora_bias", "magnitude": "lora_magnitude"}


@dataclass
class Wrap:
    """One module to wrap (or an existing wrapper to extend) with one adapter's tensors."""

    path: str
    layer_cls: type[AdapterLayer]
    keys: dict[str, str]  # tensor key -> wrapper attribute ("saved:<param>" for a modules_to_save copy)
    scaling: float | None = None
    is_feedforward: bool = False
    param: str | None = None  # target_parameters: the parameter of the module LoRA goes on
    indices: tuple[int, ...] | None = None  # trainable tokens: the rows replaced


@dataclass
class Plan:
    wraps: list[Wrap] = field(default_factory=list)
    base_keys: dict[str, str] = field(default_factory=dict)  # tensor key -> base-relative name
    kept_keys: list[str] = field(default_factory=list)  # a variant's training state, kept for extract


def walk(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` that stops at adapterkit wrappers (yielded, not entered); the root is skipped."""
    for child_name, child in model.named_children():
        path = f"{prefix}{child_name}"
        yield path, child
        if not isinstance(child, AdapterLayer):
            yield from walk(child, path + ".")


def replace(model: nn.Module, path: str, module: nn.Module) -> None:
    """Puts ``module`` at ``path`` (a ``walk`` path: no wrapper above it)."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def wrappers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """(path, wrapper) for every adapterkit wrapper in ``model``."""
    for path, module in walk(model):
        if isinstance(module, AdapterLayer):
            yield path, module


def base_module(model: nn.Module, path: str) -> nn.Module:
    """The module at ``path``, seen through wrappers (their base layer)."""
    module = model
    for part in path.split("."):
        if isinstance(module, AdapterLayer):
            module = module.base_layer
        module = getattr(module, part)
    return module.base_layer if isinstance(module, AdapterLayer) else module


def is_targeted(config: Any, name: str) -> bool:
    """PEFT's ``check_target_module_exists`` for a LoRA/IA3 config."""
    exclude = getattr(config, "exclude_modules", None)
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, name):
                return False
        elif name in exclude or any(name.endswith("." + e) for e in exclude):
            return False
    saved = getattr(config, "modules_to_save", None)
    if saved and any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in saved):
        return False
    targets = config.target_modules
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    if not any(name.endswith("." + t) for t in targets):
        return False
    indexes = getattr(config, "layers_to_transform", None)
    if indexes is None or (isinstance(indexes, (list, tuple)) and not indexes):
        return True
    index = layer_index(name, getattr(config, "layers_pattern", None) or None)
    if index is None:
        return False
    return index == indexes if isinstance(indexes, int) else index in indexes


def _lora_shapes(module: nn.Module, view: Any) -> dict[str, tuple[int, ...]]:
    """role -> the shape the module needs, for the roles the adapter's module has."""
    kind = layer_type(module)
    n_in, n_out = features(module)
    r = view.rank
    if kind == "embedding":
        want = {"lora_A": (r, n_in), "lora_B": (n_out, r), "magnitude": (n_out,)}
    elif kind in ("linear", "conv1d_t"):
        want = {"lora_A": (r, n_in), "lora_B": (n_out, r), "bias": (n_out,), "magnitude": (n_out,)}
    else:
        ones = (1,) * (module.weight.dim() - 2)
        want = {"lora_A": (r, n_in, *module.kernel_size), "lora_B": (n_out, r, *ones), "bias": (n_out,), "magnitude": (1, n_out, *ones)}
    return {role: want.get(role, ()) for role in view.keys}


def _ia3_shape(module: nn.Module, feedforward: bool) -> tuple[int, ...]:
    n_in, n_out = features(module)
    if layer_type(module) in ("linear", "conv1d_t"):
        return (1, n_in) if feedforward else (n_out, 1)
    return (1, n_in if feedforward else n_out) + (1,) * (module.weight.dim() - 2)


def _existing(module: nn.Module, cls: type[AdapterLayer], path: str, offenders: list[str]) -> None:
    if isinstance(module, AdapterLayer) and not isinstance(module, cls):
        offenders.append(f"`{path}` already carries an adapter of another kind ({type(module).__name__})")


def plan(model: nn.Module, adapter: Adapter) -> Plan:
    """The changes attaching ``adapter`` makes to ``model``, all checked.

    Raises:
        TensorError: ``model-mismatch`` listing every offender — an adapter module the model
            lacks or the config does not target, a module PEFT would target for which the
            adapter has no tensors, a module of a type the kind cannot adapt, a shape mismatch,
            a ``modules_to_save`` entry the model lacks.
        UnsupportedError: ``not-supported`` for ``target_modules="all-linear"`` (PEFT expands it
            before saving, so files never hold it), for a PEFT feature attach does not
            implement (``adapterkit.kinds.features``), naming its config field, and for targeted
            quantized layers other than bitsandbytes' ``Linear4bit`` / ``Linear8bitLt`` (GPTQ,
            AWQ, ...: ``quantized.refusal``), naming each module and its layer type.
    """
    cfg = adapter.config
    require(adapter, ATTACH, what="attach")
    if isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == "all-linear":
        raise UnsupportedError("target_modules='all-linear' is expanded by PEFT before saving; name the modules", key="target_modules", path=adapter.source)
    lora = adapter.peft_type == "LORA"
    modules = dict(walk(model))
    targeted = [n for n in modules if is_targeted(cfg, n)]
    views = adapter.modules
    offenders: list[str] = []
    result = Plan()
    params = _targeted_parameters(adapter, modules, targeted) if lora else {}
    for name, param in params.items():
        _plan_parameter(adapter, modules[name], name, param, result, offenders)
    tokens = {n for n, v in views.items() if getattr(v, "layer_type", None) == "tokens"}
    for name in sorted(tokens):
        _plan_tokens(model, adapter, modules, name, result, offenders)
    for name in sorted(set(views) - set(targeted) - set(params) - tokens):
        where = "the model has no module" if name not in modules else "the config does not target the model's module"
        offenders.append(f"{where} `{name}`, which the adapter has tensors for")
    refused: list[tuple[str, nn.Module, str]] = []
    for name in targeted:
        module = modules[name]
        base = module.base_layer if isinstance(module, AdapterLayer) else module
        why = refusal(base)
        if why is not None:
            refused.append((name, base, why))
            continue
        kind = layer_type(base)
        if kind not in (_LORA_TYPES if lora else _LYCORIS_TYPES if adapter.peft_type in LYCORIS else _IA3_TYPES):
            offenders.append(f"`{name}` is a {type(base).__name__}, which {adapter.peft_type} cannot adapt")
            continue
        if name not in views:
            offenders.append(f"the config targets `{name}` but the adapter has no tensors for it")
            continue
        view = views[name]
        if adapter.peft_type in LYCORIS:
            _plan_lycoris(adapter, module, base, kind, name, result, offenders)
        elif lora:
            _existing(module, LoraLayer, name, offenders)
            family = {"conv1d_t": "linear"}.get(kind, kind)
            if view.layer_type != family:
                offenders.append(f"`{name}`: the adapter holds {view.layer_type} LoRA tensors but the model's module is a {type(base).__name__}")
                continue
            if kind.startswith("conv") and kind != "conv1d_t" and base.groups != 1:
                offenders.append(f"`{name}` is a grouped convolution (groups={base.groups}); LoRA on it is not defined")
                continue
            want = _lora_shapes(base, view)
            bad = [f"{view.keys[role]} has shape {tuple(adapter.meta(view.keys[role]).shape)}, the model's {type(base).__name__} needs {shape}"
                   for role, shape in want.items() if tuple(adapter.meta(view.keys[role]).shape) != shape]
            offenders.extend(f"`{name}`: {b}" for b in bad)
            if not bad:
                keys = {view.keys[role]: _LORA_ATTR[role] for role in view.keys}
                result.wraps.append(Wrap(name, LoraLayer, keys, scaling=view.scaling))
        else:
            _existing(module, IA3Layer, name, offenders)
            shape = _ia3_shape(base, view.is_feedforward)
            actual = tuple(adapter.meta(view.key).shape)
            if isinstance(module, IA3Layer) and module.is_feedforward != view.is_feedforward:
                offenders.append(f"`{name}` is wrapped as {'' if module.is_feedforward else 'not '}feedforward by another adapter")
            elif actual != shape:
                offenders.append(f"`{name}`: {view.key} has shape {actual}, the model's {type(base).__name__} needs {shape}")
            else:
                result.wraps.append(Wrap(name, IA3Layer, {view.key: "ia3_l"}, is_feedforward=view.is_feedforward))
    if refused:
        raise UnsupportedError(
            f"attaching {adapter.peft_type} to quantized layers other than bitsandbytes' Linear4bit / Linear8bitLt is not "
            "supported: " + "; ".join(f"`{n}` is {why}" for n, _, why in refused) + f"; {OFFLINE}, or attach to the dense model",
            code="not-supported", path=adapter.source, key=refused[0][0], expected="dense layers or bitsandbytes Linear4bit / Linear8bitLt",
            actual=sorted({describe(b) for _, b, _ in refused}),
        )
    overwrites: list[str] = []
    _plan_whole(model, adapter, modules, result, offenders, overwrites)
    result.kept_keys = [k for k in adapter.tensors if feature_tensor(k) is not None]
    if offenders:
        raise TensorError(
            f"the model does not fit the adapter ({len(offenders)} problem(s)): " + "; ".join(offenders),
            code="model-mismatch", path=adapter.source, expected="the modules and shapes the adapter was trained on",
            actual=f"{type(model).__name__}",
        )
    if overwrites:  # the model fits; what attach does not do is replace its base tensors
        raise UnsupportedError(
            f"the adapter stores {len(overwrites)} base tensor(s) whole with other values than the model's (a trained bias, "
            "bias='all'|'lora_only', or extract's `base_layer.bias`): PEFT overwrites the model's tensors with them on "
            "loading; attach never overwrites base weights (disabled() could not restore them): merge the adapter into "
            "the checkpoint with `adapterkit merge`, or load it with PEFT: " + ", ".join(overwrites),
            code="not-supported", path=adapter.source, key=overwrites[0], expected="base tensors equal to the model's",
            actual="trained base tensors",
        )
    return result


def _plan_lycoris(adapter: Adapter, module: nn.Module, base: nn.Module, kind: str, name: str, result: Plan,
                  offenders: list[str]) -> None:
    """A LoHa / LoKr module: its base weight must have the shape the factors imply (the kind's
    ``merge_shapes``, a convolution flattened or not as the file's form says)."""
    from ..kinds.merging import shape_fits, shape_text
    from .layers import LycorisLayer

    _existing(module, LycorisLayer, name, offenders)
    if kind != "linear" and base.groups != 1:
        offenders.append(f"`{name}` is a grouped convolution (groups={base.groups}); {adapter.peft_type} on it is not defined")
        return
    want = adapter.kind.merge_shapes(adapter, name)["weight"][0]
    if not shape_fits(tuple(base.weight.shape), want):
        offenders.append(f"`{name}`: the adapter's factors need a weight {shape_text(want)}, the model's {type(base).__name__} "
                         f"has {tuple(base.weight.shape)}")
        return
    view = adapter.module(name)
    result.wraps.append(Wrap(name, LycorisLayer, {key: part for part, key in view.keys.items()}))


def _targeted_parameters(adapter: Adapter, modules: dict[str, nn.Module], targeted: list[str]) -> dict[str, str]:
    """module path -> the parameter ``target_parameters`` puts LoRA on (PEFT's match: the
    parameter's full name equals an entry or ends with ``.`` + entry).

    Raises:
        UnsupportedError: ``not-supported`` (key ``target_parameters``) for what attach does not
            implement: several parameters of one module (PEFT nests its wrappers), a module that
            ``target_modules`` adapts too, a parameter that is not 2-D (expert stacks).
    """
    entries = tuple(adapter.config.extra.get("target_parameters") or ())
    if not entries:
        return {}
    found: dict[str, list[str]] = {}
    for path, module in modules.items():
        base = module.base_layer if isinstance(module, AdapterLayer) else module
        for pname, _ in base.named_parameters(recurse=False):
            full = f"{path}.{pname}"
            if full in entries or any(full.endswith("." + e) for e in entries):
                found.setdefault(path, []).append(pname)

    def refuse(message: str, actual: Any) -> UnsupportedError:
        return UnsupportedError(f"attach does not implement LoRA on parameters (`target_parameters`) {message}", path=adapter.source,
                                key="target_parameters", expected="one 2-D parameter per module, in no module target_modules adapts", actual=actual)

    for path, names in found.items():
        base = modules[path].base_layer if isinstance(modules[path], AdapterLayer) else modules[path]
        if quantized(base):
            raise refuse_layer(path, base, "LoRA on its parameters (`target_parameters`)", path=adapter.source)
        if len(names) > 1:
            raise refuse(f"on several parameters of one module (`{path}`)", names)
        if path in targeted:
            raise refuse(f"on a module target_modules adapts too (`{path}`)", path)
        base = modules[path].base_layer if isinstance(modules[path], AdapterLayer) else modules[path]
        if getattr(base, names[0]).dim() != 2:
            raise refuse(f"on a {getattr(base, names[0]).dim()}-D parameter (`{path}.{names[0]}`)", tuple(getattr(base, names[0]).shape))
    return {path: names[0] for path, names in found.items()}


def _plan_parameter(adapter: Adapter, module: nn.Module, name: str, param: str, result: Plan, offenders: list[str]) -> None:
    """One ``target_parameters`` module: LoRA factors of the parameter's (out, in) shape."""
    views = adapter.modules
    if isinstance(module, AdapterLayer) and not (isinstance(module, ParamLoraLayer) and module.param_name == param):
        offenders.append(f"`{name}` already carries an adapter on something else than its parameter {param!r}")
        return
    if name not in views:
        offenders.append(f"target_parameters names `{name}.{param}` but the adapter has no tensors for it")
        return
    view = views[name]
    base = module.base_layer if isinstance(module, AdapterLayer) else module
    out_f, in_f = getattr(base, param).shape
    want = {"lora_A": (view.rank, in_f), "lora_B": (out_f, view.rank)}
    bad = [f"{view.keys[role]} has shape {tuple(adapter.meta(view.keys[role]).shape)}, the parameter `{name}.{param}` needs {want.get(role, 'no such tensor')}"
           for role in view.keys if tuple(adapter.meta(view.keys[role]).shape) != want.get(role)]
    offenders.extend(f"`{name}`: {b}" for b in bad)
    if not bad:
        result.wraps.append(Wrap(name, ParamLoraLayer, {view.keys[role]: _LORA_ATTR[role] for role in view.keys}, scaling=view.scaling, param=param))


def _plan_tokens(model: nn.Module, adapter: Adapter, modules: dict[str, nn.Module], name: str, result: Plan, offenders: list[str]) -> None:
    """Trainable tokens on ``name``: an nn.Embedding (or nn.Linear) with at least the rows named.

    Raises:
        UnsupportedError: ``not-supported`` (key ``trainable_token_indices``) when another module
            shares the weight (a tied lm_head: PEFT ties a token adapter to it, attach does not).
    """
    view = adapter.modules[name]
    module = modules.get(name)
    if module is None:
        offenders.append(f"the model has no module `{name}`, which the adapter has trainable tokens for")
        return
    if isinstance(module, AdapterLayer) and not isinstance(module, TokenLayer):
        offenders.append(f"`{name}` already carries an adapter of another kind ({type(module).__name__})")
        return
    base = module.base_layer if isinstance(module, AdapterLayer) else module
    if quantized(base):
        raise refuse_layer(name, base, "trainable tokens (`trainable_token_indices`)", path=adapter.source)
    kind = layer_type(base)
    if kind not in ("embedding", "linear"):
        offenders.append(f"`{name}` is a {type(base).__name__}; trainable tokens go on an nn.Embedding or nn.Linear")
        return
    shared = [p for p, m in modules.items() if p != name and getattr(m.base_layer if isinstance(m, AdapterLayer) else m, "weight", None) is base.weight]
    if shared:
        raise UnsupportedError(
            f"attach does not implement trainable tokens (`trainable_token_indices`) on `{name}`, whose weight `{shared[0]}` shares "
            "(PEFT ties a token adapter to it)", path=adapter.source, key="trainable_token_indices",
            expected="an embedding no other module shares", actual=shared,
        )
    rows, dim = base.weight.shape
    shape = tuple(adapter.meta(view.key).shape)
    if shape != (len(view.indices), dim) or (view.indices and max(view.indices) >= rows):
        offenders.append(f"`{name}`: {view.key} has shape {shape} for rows up to {max(view.indices, default=0)}, "
                         f"the model's {type(base).__name__} has weight {tuple(base.weight.shape)}")
        return
    result.wraps.append(Wrap(name, TokenLayer, {view.key: "tokens"}, indices=view.indices))


def _plan_whole(model: nn.Module, adapter: Adapter, modules: dict[str, nn.Module], result: Plan, offenders: list[str],
                overwrites: list[str]) -> None:
    """``modules_to_save`` copies, and the tensors PEFT stores whole (saved base layers, trained
    biases), which must equal what the model holds: attach never overwrites base weights (the
    keys of those that differ go to ``overwrites``, a refusal by name, not a model mismatch)."""
    cfg = adapter.config
    saved_names = tuple(cfg.modules_to_save or ())
    whole = adapter.kind.whole_tensors(adapter)
    saved_modules = [n for n, m in modules.items() if saved_names and any(n.endswith(s) for s in saved_names)]
    saved_modules = [n for n in saved_modules if not any(n.startswith(o + ".") for o in saved_modules)]
    claimed: set[str] = set()
    for name in saved_modules:
        module = modules[name]
        original = module.base_layer if isinstance(module, SavedModule) else module
        inner = next(((f"{name}.{p}".rstrip("."), m) for p, m in original.named_modules() if quantized(m)), None)
        if inner is not None:
            raise refuse_layer(inner[0], inner[1], f"a modules_to_save copy (`{name}`)", path=adapter.source)
        if isinstance(module, AdapterLayer) and not isinstance(module, SavedModule):
            offenders.append(f"`{name}` is in modules_to_save but carries an adapter layer")
            continue
        state = original.state_dict()
        keys = {k: k[len(PREFIX) + len(name) + 1:] for k in whole if k.startswith(PREFIX + name + ".")}
        claimed.update(keys)
        if not keys:
            offenders.append(f"modules_to_save names `{name}` but the adapter has no tensors for it")
            continue
        for key, param in keys.items():
            if param not in state:
                offenders.append(f"{key}: `{name}` ({type(original).__name__}) has no tensor {param!r}")
            elif tuple(state[param].shape) != tuple(adapter.meta(key).shape):
                offenders.append(f"{key} has shape {tuple(adapter.meta(key).shape)}, the model's `{name}.{param}` is {tuple(state[param].shape)}")
        result.wraps.append(Wrap(name, SavedModule, {k: "saved:" + p for k, p in keys.items()}))
    for key, base_name in whole.items():
        if key in claimed:
            continue
        if matches_modules_to_save(saved_names, key, PREFIX):
            offenders.append(f"{key} belongs to modules_to_save but the model has no such module")
            continue
        path, _, param = base_name.rpartition(".")
        try:
            held = getattr(base_module(model, path), param) if path else getattr(model, param)
        except AttributeError:
            offenders.append(f"{key}: the model has no tensor `{base_name}`")
            continue
        owner = base_module(model, path) if path else model
        if packed_tensor(held) and quantized(owner):
            raise refuse_layer(path, owner, f"an adapter storing its `{param}` whole ({key})", path=adapter.source)
        if not isinstance(held, torch.Tensor) or tuple(held.shape) != tuple(adapter.meta(key).shape) or not torch.equal(
            held.detach().cpu(), adapter.tensors[key].to(held.dtype)
        ):
            if isinstance(held, torch.Tensor) and tuple(held.shape) == tuple(adapter.meta(key).shape):
                overwrites.append(key)
            else:
                offenders.append(f"{key} (stored whole: a trained bias or a saved base layer) does not fit the model's `{base_name}`")
            continue
        result.base_keys[key] = base_name
