"""The inputs a prompt adapter feeds the model, as PEFT 0.22.0 builds them (inference mode).

Plain functions used by :mod:`adapterkit.inject.prompt`'s patched methods: the stored
``prompt_embeddings`` (V, token_dim) or, for prefix tuning, (V, 2 · num_layers · token_dim)
are repeated over the batch; prompts are concatenated before ``inputs_embeds``, prefixes
become a transformers ``DynamicCache`` (``EncoderDecoderCache`` for encoder-decoders, whose
cross-attention part starts empty).  Shapes: batch B, virtual tokens V, heads H.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ArgumentError, UnsupportedError
from ..kinds.prefix_tuning import PrefixTuningConfig
from ..kinds.prompt_learning import PromptLearningConfig


def is_prefix(config: PromptLearningConfig) -> bool:
    """Whether the adapter feeds keys/values through the cache rather than input embeddings."""
    return isinstance(config, PrefixTuningConfig)


def prefix_cache(model: nn.Module, config: PromptLearningConfig, weight: torch.Tensor, batch: int) -> Any:
    """The per-layer prefixes as a fresh transformers cache holding V positions per layer:
    keys/values (B, H, V, token_dim / H), in the model's dtype."""
    from transformers import DynamicCache, EncoderDecoderCache

    v, layers, heads, sub = config.num_virtual_tokens, config.num_layers, config.num_attention_heads, config.num_transformer_submodules
    past = weight.to(model.get_input_embeddings().weight.device).repeat(batch, 1, 1)  # follows model.to()
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        past = past.to(dtype)
    past = past.view(batch, v, layers * 2, heads, config.token_dim // heads)
    if sub == 2:
        past = torch.cat([past, past], dim=2)
    per_layer = past.permute([2, 0, 3, 1, 4]).split(sub * 2)  # L x (2·sub, B, H, V, head_dim)
    if sub == 1:
        return DynamicCache(per_layer)
    cache = EncoderDecoderCache(per_layer)
    cache.cross_attention_cache = DynamicCache()  # the encoder output is new: recompute cross-attention
    for key in cache.is_updated:
        cache.is_updated[key] = False
    return cache


def prompts(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The virtual-token embeddings repeated over the batch of ``like`` (the input embeddings,
    whose dtype and device they take): (B, V · submodules, token_dim)."""
    return weight.to(like.device).repeat(like.shape[0], 1, 1).to(like.dtype)


def _ones(batch: int, v: int, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(batch, v).to(like.device)


def _adjust(config: PromptLearningConfig, kw: dict[str, Any], *, drop_token_types: bool = True) -> None:
    """position_ids shift by V for prefixes and are dropped for prompts; token_type_ids dropped."""
    if kw.get("position_ids") is not None:
        if is_prefix(config):
            kw["position_ids"] = kw["position_ids"] + config.num_virtual_tokens
        else:
            warnings.warn("Position ids are not supported for parameter efficient tuning. Ignoring position ids.", stacklevel=3)
            kw["position_ids"] = None
    if drop_token_types and kw.get("token_type_ids") is not None:
        warnings.warn("Token type ids are not supported for parameter efficient tuning. Ignoring token type ids", stacklevel=3)
        kw["token_type_ids"] = None


def _named(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments of ``fn`` as one dict of names."""
    if not args:
        return dict(kwargs)
    signature = inspect.signature(fn)
    out = {}
    for name, value in signature.bind_partial(*args, **kwargs).arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def forward(
    model: nn.Module, original: Callable[..., Any], family: str, config: PromptLearningConfig, weight: torch.Tensor,
    *args: Any, **kwargs: Any,
) -> Any:
    """One forward pass of ``model`` with the prompt of ``config``/``weight``, as PEFT's
    ``PeftModelFor{CausalLM,Seq2SeqLM,SequenceClassification}.forward`` runs it."""
    kw = _named(original, args, kwargs)
    input_ids, inputs_embeds = kw.pop("input_ids", None), kw.pop("inputs_embeds", None)
    if input_ids is None and inputs_embeds is None:
        raise ArgumentError("a model with a prompt adapter needs input_ids or inputs_embeds", key="input_ids", actual=None)
    batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    v = config.num_virtual_tokens
    mask = kw.get("attention_mask")
    if family == "seq2seq":
        if kw.get("decoder_attention_mask") is not None and is_prefix(config):
            kw["decoder_attention_mask"] = torch.cat((_ones(batch, v, kw["decoder_attention_mask"]), kw["decoder_attention_mask"]), dim=1)
        _adjust(config, kw)
        if is_prefix(config):
            kw["past_key_values"] = prefix_cache(model, config, weight, batch)
            return original(input_ids=input_ids, inputs_embeds=inputs_embeds, **kw)
        if inputs_embeds is None:
            inputs_embeds = model.get_input_embeddings()(input_ids)
        if mask is not None:
            kw["attention_mask"] = torch.cat((_ones(batch, v, mask), mask), dim=1)
        p = prompts(weight, inputs_embeds)
        return original(inputs_embeds=torch.cat((p[:, :v], inputs_embeds), dim=1), **kw)

    if mask is not None:
        kw["attention_mask"] = torch.cat((_ones(batch, v, mask), mask), dim=1)
    _adjust(config, kw, drop_token_types=family == "causal")
    if is_prefix(config):
        kw["past_key_values"] = prefix_cache(model, config, weight, batch)
        return original(input_ids=input_ids, inputs_embeds=inputs_embeds, **kw)
    if family == "classifier" and kw.get("token_type_ids") is not None:
        zeros = torch.zeros(batch, v).to(kw["token_type_ids"].device)
        kw["token_type_ids"] = torch.cat((zeros, kw["token_type_ids"]), dim=1).long()
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    if family == "causal" and kw.get("labels") is not None:
        labels = kw["labels"]
        kw["labels"] = torch.cat((torch.full((batch, v), -100).to(labels.device), labels), dim=1)
    p = prompts(weight, inputs_embeds)
    return original(inputs_embeds=torch.cat((p, inputs_embeds), dim=1), **kw)


def seq2seq_generate_inputs(
    model: nn.Module, config: PromptLearningConfig, weight: torch.Tensor, *args: Any, **kwargs: Any,
) -> dict[str, Any]:
    """``generate`` kwargs of an encoder-decoder: position and token type ids adjusted; for a
    prompt, ``inputs_embeds`` with the prompt before the encoder input and an extended
    ``attention_mask`` replace ``input_ids`` (a prefix enters at the first decoding step)."""
    kw = dict(kwargs)
    if args:
        kw["input_ids"] = args[0]
    if kw.get("input_ids") is None:
        raise ArgumentError("generate() of an encoder-decoder with a prompt adapter needs input_ids", key="input_ids", actual=None)
    _adjust(config, kw)
    if is_prefix(config):
        return kw
    if kw.pop("encoder_outputs", None) is not None:
        warnings.warn("`encoder_outputs` should not be passed to `generate` when using prompt tuning. Ignoring it.", stacklevel=3)
    inputs_embeds = model.get_input_embeddings()(kw.pop("input_ids"))
    batch, v = inputs_embeds.shape[0], config.num_virtual_tokens
    p = prompts(weight, inputs_embeds)
    kw["inputs_embeds"] = torch.cat((p[:, :v], inputs_embeds), dim=1)
    if kw.get("attention_mask") is not None:
        kw["attention_mask"] = torch.cat((_ones(batch, v, kw["attention_mask"]), kw["attention_mask"]), dim=1)
    return kw


def prepare_generation_inputs(
    model: nn.Module, family: str, config: PromptLearningConfig, weight: torch.Tensor,
    model_kwargs: dict[str, Any], call_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """What PEFT's ``prepare_inputs_for_generation`` adds to the base model's: the prefix cache
    at the first step, or (causal LMs) the prompt embeddings and the extended attention mask."""
    from transformers import Cache

    v = config.num_virtual_tokens
    past = model_kwargs.get("past_key_values")
    if family == "seq2seq":
        if is_prefix(config):
            prefill = call_kwargs.get("is_first_iteration")
            if prefill is None:
                prefill = past is None or (isinstance(past, Cache) and past.get_seq_length() == 0)
            if prefill:
                model_kwargs["past_key_values"] = prefix_cache(model, config, weight, model_kwargs["decoder_input_ids"].shape[0])
        return model_kwargs

    is_prefill = model_kwargs.get("cache_position") is not None and model_kwargs["cache_position"][0] == 0
    if past is not None:
        seq_len = past[0][0].shape[-2] if isinstance(past, (tuple, list)) else past.get_seq_length()
        if seq_len >= model_kwargs["input_ids"].shape[1]:
            model_kwargs["input_ids"] = model_kwargs["input_ids"][:, -1:]
    mask = model_kwargs.get("attention_mask")
    if mask is not None:
        if isinstance(mask, dict):
            if len(mask) != 1:
                raise UnsupportedError("generation with several attention masks is not supported with a prompt adapter", actual=len(mask))
            mask = next(iter(mask.values()))
        if mask.dim() != 2:
            raise UnsupportedError("generation with a 4-D attention mask is not supported with a prompt adapter", expected=2, actual=mask.dim())
        ids = model_kwargs["input_ids"]
        model_kwargs["attention_mask"] = torch.cat((torch.ones(ids.shape[0], v).to(ids.device), mask), dim=1)
    _adjust(config, model_kwargs)
    needs_prompt = past is None or (isinstance(past, Cache) and not past.get_seq_length())
    if needs_prompt and is_prefix(config):
        model_kwargs["past_key_values"] = prefix_cache(model, config, weight, model_kwargs["input_ids"].shape[0])
    elif needs_prompt:
        inputs_embeds = model.get_input_embeddings()(model_kwargs["input_ids"])
        p = prompts(weight, inputs_embeds)
        model_kwargs["inputs_embeds"] = torch.cat((p, inputs_embeds), dim=1)
        model_kwargs["input_ids"] = None
    if is_prefill and is_prefix(config):
        model_kwargs["cache_position"] += v  # in place, as PEFT does
    elif not is_prefix(config):
        model_kwargs.pop("cache_position", None)
    return model_kwargs
