"""Attaching prompt-learning adapters (prompt tuning, P-tuning, prefix tuning) to transformers models.

A prompt adapter changes the model's *inputs*, not its weights: prompt tuning and P-tuning
prepend ``num_virtual_tokens`` embeddings to ``inputs_embeds`` (attention mask extended,
labels padded with -100 for causal LMs); prefix tuning hands every attention layer
``num_virtual_tokens`` extra keys and values through the model's cache.  The stored
``prompt_embeddings`` are used as is, as PEFT 0.22.0 uses them after ``from_pretrained``
(for P-tuning and projected prefixes the file holds the encoder's output).

The model instance is patched reversibly: ``forward`` (and ``generate`` /
``prepare_inputs_for_generation``) become methods bound to the instance that wrap what
they replace (the class's method, or an earlier instance patch), and the prompts live in a
:class:`PromptState` on the instance, never registered as submodules, so ``state_dict()``
is unchanged, ``copy.deepcopy`` carries the prompt, and :func:`detach_prompt` of the last
prompt restores the instance exactly.  A classifier's prompt adapter also holds its head
(PEFT's ``modules_to_save``): the head's parameters point at the adapter's copy while that
prompt is active.  Public: :func:`attach_prompt`, :func:`detach_prompt`,
:func:`set_active_prompt` (``None`` disables), :func:`extract_prompt`,
:func:`attached_prompts`, :func:`merge_prompt` (always refused).

Three model families, told apart by the model itself:

- encoder-decoder (``config.is_encoder_decoder``, e.g. T5): the prompt goes before the
  encoder input; prefixes go into the decoder's self-attention cache, as PEFT does;
- causal LM (``can_generate()``): prompt or prefix, labels padded, ``generate`` works;
- anything else (sequence classifiers): prompt with ``token_type_ids`` padded by zeros,
  or prefix through ``past_key_values``.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..adapter import Adapter
from ..errors import ArgumentError, NotFoundError, TensorError, UnsupportedError
from ..kinds.prompt_learning import KEY, PromptLearningConfig
from . import prompt_forward

STATE = "_adapterkit_prompt"  # instance attribute holding the PromptState


@dataclass
class AttachedPrompt:
    """One attached prompt adapter: its config, the virtual-token embeddings and the
    ``modules_to_save`` tensors (adapter key -> (base-relative name, tensor as stored))."""

    config: PromptLearningConfig
    embeddings: nn.Parameter
    whole: dict[str, tuple[str, nn.Parameter]] = field(default_factory=dict)


@dataclass
class PromptState:
    """The prompts attached to one model: name -> AttachedPrompt, the active name, what the
    patched attributes replaced (``None``: the attribute was not in the instance) and the
    original data of the base tensors that ``modules_to_save`` tensors replace."""

    prompts: dict[str, AttachedPrompt] = field(default_factory=dict)
    active: str | None = None
    saved: dict[str, Any] = field(default_factory=dict)
    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    family: str = "causal"  # "causal" | "seq2seq" | "classifier"
    generating: int = 0  # > 0 while generate() runs: forward passes through

    def current(self) -> tuple[PromptLearningConfig, nn.Parameter] | None:
        if self.active is None:
            return None
        attached = self.prompts[self.active]
        return attached.config, attached.embeddings

    def sync_whole(self, model: nn.Module) -> None:
        """Point every replaced base tensor at the active prompt's copy, or back at its original."""
        active = self.prompts.get(self.active) if self.active is not None else None
        values = {target: tensor for target, tensor in active.whole.values()} if active else {}
        for target, original in self.originals.items():
            tensor = model.get_parameter(target)  # it may have moved (model.to) since attach
            new = values.get(target)
            source = original if new is None else new.detach().to(dtype=original.dtype)
            tensor.data = source.to(tensor.device)


def model_family(model: nn.Module) -> str:
    """"seq2seq", "causal" or "classifier": how the prompt reaches this model."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    can_generate = getattr(model, "can_generate", None)
    return "causal" if callable(can_generate) and can_generate() else "classifier"


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _kv_geometry(model: nn.Module) -> tuple[int | None, int | None, int | None]:
    """(layers that take a prefix, key/value heads, head dim) of the model, None where unknown."""
    cfg = _text_config(model)
    layers = getattr(cfg, "num_decoder_layers", None) or getattr(cfg, "num_hidden_layers", None)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    head_dim = getattr(cfg, "head_dim", None) or getattr(cfg, "d_kv", None)
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    return layers, kv_heads, head_dim


def _mismatch(what: str, key: str, expected: Any, actual: Any) -> TensorError:
    return TensorError(f"the model does not fit the adapter: {what}", code="base-mismatch", key=key, expected=expected, actual=actual)


def _takes_cache(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``past_key_values``, by name or through ``**kwargs`` that it
    hands to its backbone (the first child that is itself a transformers model, e.g. BERT's
    ``bert``; PEFT calls that backbone with the cache itself)."""
    params = inspect.signature(model.forward).parameters
    if "past_key_values" in params:
        return True
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return False
    from transformers import PreTrainedModel

    backbone = next((m for m in model.children() if isinstance(m, PreTrainedModel)), None)
    return backbone is not None and "past_key_values" in inspect.signature(backbone.forward).parameters


def check_fits(model: nn.Module, adapter: Adapter) -> None:
    """Raise unless ``adapter`` (a prompt-learning Adapter) can drive ``model``.

    Raises UnsupportedError (``not-supported``) for a non-prompt adapter, ``modules_to_save``
    tensors or a model without input embeddings / config; TensorError (``base-mismatch``) when
    token_dim, num_layers, heads or num_transformer_submodules disagree with the model.
    """
    cfg = adapter.config
    if not isinstance(cfg, PromptLearningConfig):
        raise UnsupportedError(f"attach_prompt takes prompt-learning adapters, not {adapter.peft_type}", key="peft_type", actual=adapter.peft_type)
    adapter.module(KEY)  # key-not-found when the embeddings are absent
    if getattr(model, "config", None) is None or not hasattr(model, "get_input_embeddings"):
        raise UnsupportedError("prompt adapters attach to transformers models (a `config` and input embeddings)", actual=type(model).__name__)
    whole = adapter.kind.whole_module_tensors(adapter)
    for key in sorted(set(adapter.tensors) - {KEY} - set(whole)):
        raise UnsupportedError("a tensor that is neither the prompt nor a modules_to_save tensor", key=key)
    for key, target in whole.items():
        try:
            have = tuple(model.get_parameter(target).shape)
        except AttributeError:
            raise _mismatch("no such parameter for a modules_to_save tensor", key, target, "absent") from None
        if have != tuple(adapter.meta(key).shape):
            raise _mismatch(f"`{target}` has another shape than the modules_to_save tensor", key, have, tuple(adapter.meta(key).shape))
    try:
        embeddings = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        embeddings = None
    if not isinstance(embeddings, nn.Embedding):
        raise UnsupportedError("the model has no input embedding layer to prepend virtual tokens to", actual=type(embeddings).__name__)
    family = model_family(model)
    submodules = 2 if family == "seq2seq" else 1
    if cfg.num_transformer_submodules != submodules:
        raise _mismatch(f"a {family} model takes num_transformer_submodules={submodules}", "num_transformer_submodules", submodules, cfg.num_transformer_submodules)
    shape = tuple(adapter.meta(KEY).shape)
    if shape != cfg.embedding_shape():
        raise TensorError("prompt_embeddings shape disagrees with the config", key=KEY, expected=cfg.embedding_shape(), actual=shape)
    if prompt_forward.is_prefix(cfg):
        model_type = getattr(_text_config(model), "model_type", "")
        if any(t in model_type for t in ("gemma2", "gemma3_text", "gemma4")):
            raise UnsupportedError("prefix tuning on Gemma 2/3/4 (PEFT builds their hybrid caches by hand) is not supported", actual=model_type)
        layers, kv_heads, head_dim = _kv_geometry(model)
        if cfg.num_layers != layers:
            raise _mismatch("num_layers differs from the model's layers", "num_layers", layers, cfg.num_layers)
        heads = cfg.num_attention_heads
        if heads != kv_heads or not heads or cfg.token_dim != kv_heads * head_dim:
            raise _mismatch(
                "prefix key/value heads differ from the model's (token_dim = heads · head_dim)", "token_dim",
                f"{kv_heads} heads of {head_dim}", f"{heads} heads, token_dim {cfg.token_dim}",
            )
        if family == "classifier" and not _takes_cache(model):
            raise UnsupportedError("prefix tuning needs a model whose forward takes past_key_values", actual=type(model).__name__)
    elif cfg.token_dim != embeddings.embedding_dim:
        raise _mismatch("token_dim differs from the model's embedding size", "token_dim", embeddings.embedding_dim, cfg.token_dim)


def attach_prompt(model: nn.Module, adapter: Adapter, name: str) -> nn.Module:
    """Attach a prompt-learning ``adapter`` to ``model`` under ``name`` and make it active.

    The model is patched in place (and returned); nothing changes when an error is raised.
    Several prompts may be attached; one is active at a time (:func:`set_active_prompt`).

    Raises:
        ArgumentError (``argument-invalid``): ``name`` is already attached.
        UnsupportedError / TensorError: see :func:`check_fits`.
    """
    state: PromptState | None = model.__dict__.get(STATE)
    if state is not None and name in state.prompts:
        raise ArgumentError("a prompt adapter of this name is already attached", key=name, actual=sorted(state.prompts))
    check_fits(model, adapter)
    device = model.get_input_embeddings().weight.device
    weight = nn.Parameter(adapter.tensors[KEY].detach().clone().to(device), requires_grad=False)
    whole = {
        key: (target, nn.Parameter(adapter.tensors[key].detach().clone(), requires_grad=False))
        for key, target in adapter.kind.whole_module_tensors(adapter).items()
    }
    if state is None:
        state = PromptState(family=model_family(model))
        _patch(model, state)
    for target, _ in whole.values():
        state.originals.setdefault(target, model.get_parameter(target).data)
    state.prompts[name] = AttachedPrompt(adapter.config, weight, whole)  # type: ignore[arg-type]
    state.active = name
    state.sync_whole(model)
    return model


def _patch(model: nn.Module, state: PromptState) -> None:
    """Set the instance's ``forward`` (and ``generate``, ``prepare_inputs_for_generation``) to
    methods bound to it that find the state on the instance: ``copy.deepcopy`` rebinds them."""
    model.__dict__[STATE] = state
    for attr, impl in (("forward", _forward), ("generate", _generate), ("prepare_inputs_for_generation", _prepare)):
        if attr == "forward" or hasattr(model, attr):
            state.saved[attr] = model.__dict__.get(attr)
            model.__dict__[attr] = types.MethodType(_method(type(model), attr, impl), model)


def _method(cls: type, attr: str, impl: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(getattr(cls, attr))  # transformers inspects forward's signature
    def method(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: PromptState = self.__dict__[STATE]
        previous = state.saved[attr]
        original = previous if previous is not None else getattr(type(self), attr).__get__(self)
        return impl(self, state, original, *args, **kwargs)

    return method


def _forward(model: nn.Module, state: PromptState, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    current = state.current()
    if current is None or state.generating:  # generate() feeds the prompt through _prepare
        return original(*args, **kwargs)
    return prompt_forward.forward(model, original, state.family, *current, *args, **kwargs)


def _generate(model: nn.Module, state: PromptState, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    current = state.current()
    if current is None:
        return original(*args, **kwargs)
    state.generating += 1
    try:
        if state.family == "seq2seq":
            kwargs = prompt_forward.seq2seq_generate_inputs(model, *current, *args, **kwargs)
            args = ()
        return original(*args, **kwargs)
    finally:
        state.generating -= 1


def _prepare(model: nn.Module, state: PromptState, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    current = state.current()
    model_kwargs = original(*args, **kwargs)
    if current is None or not state.generating:
        return model_kwargs
    return prompt_forward.prepare_generation_inputs(model, state.family, *current, model_kwargs, kwargs)


def _state(model: nn.Module, name: str | None = None) -> PromptState:
    state: PromptState | None = model.__dict__.get(STATE)
    if state is None or (name is not None and name not in state.prompts):
        raise NotFoundError(
            "no prompt adapter of this name is attached to the model", code="key-not-found", key=name,
            expected=f"one of {sorted(state.prompts) if state else []}", actual=name,
        )
    return state


def set_active_prompt(model: nn.Module, name: str | None) -> None:
    """Make the attached prompt ``name`` active; ``None`` runs the base model (prompts kept).
    Raises NotFoundError (``key-not-found``) for a name not attached."""
    state = _state(model, name)
    state.active = name
    state.sync_whole(model)


def active_prompt(model: nn.Module) -> str | None:
    """The active prompt's name (None: none attached, or none active)."""
    state: PromptState | None = model.__dict__.get(STATE)
    return state.active if state else None


def attached_prompts(model: nn.Module) -> list[str]:
    """Names of the prompt adapters attached to ``model``, in attach order."""
    state: PromptState | None = model.__dict__.get(STATE)
    return list(state.prompts) if state else []


def extract_prompt(model: nn.Module, name: str) -> Adapter:
    """The attached prompt ``name`` as an Adapter: the same config and tensors (on CPU, in the
    stored dtype) that were attached.  Raises NotFoundError (``key-not-found``)."""
    attached = _state(model, name).prompts[name]
    tensors = {KEY: attached.embeddings.detach().to("cpu").clone()}
    tensors.update({key: tensor.detach().to("cpu").clone() for key, (_, tensor) in attached.whole.items()})
    return Adapter.from_tensors(attached.config, tensors)


def detach_prompt(model: nn.Module, name: str) -> nn.Module:
    """Remove the prompt ``name``; removing the last one restores the instance exactly (the
    patched attributes and the state are gone).  Raises NotFoundError (``key-not-found``)."""
    state = _state(model, name)
    del state.prompts[name]
    if state.active == name:
        state.active = next(reversed(state.prompts), None) if state.prompts else None
    state.sync_whole(model)
    if not state.prompts:
        for attr, value in state.saved.items():
            if value is None:
                model.__dict__.pop(attr, None)
            else:
                model.__dict__[attr] = value
        del model.__dict__[STATE]
    return model


def merge_prompt(model: nn.Module, name: str) -> nn.Module:
    """Always raises UnsupportedError (``not-supported``): a prompt adapter has no weights to merge
    into; its virtual tokens or prefixes are inputs to every forward pass."""
    config = _state(model, name).prompts[name].config
    raise UnsupportedError(
        f"{config.peft_type} adapters cannot be merged: they have no weights to merge into, "
        "the virtual tokens are prepended to every input (keep the adapter attached)",
        key=name,
    )
