"""The wrapper modules that put LoRA, IA3 and ``modules_to_save`` into a torch model (and
LoRA on a parameter, PEFT's ``target_parameters``, and trainable tokens, ``trainable_token_indices``).

Each wrapper holds the original module (``base_layer`` / ``original_module``) and, per
adapter name, that adapter's tensors as ``nn.Parameter`` (so they train, and
``extract_from_model`` reads them back).  Forward passes follow PEFT 0.22.0's layers
operation for operation (``peft/tuners/lora/layer.py``, ``lora/dora.py``, ``ia3/layer.py``),
so outputs agree with ``PeftModel`` to float rounding.

On bitsandbytes' ``Linear4bit`` / ``Linear8bitLt`` the LoRA and IA3 wrappers follow PEFT's
bitsandbytes layers instead (``peft/tuners/lora/bnb.py``, ``ia3/bnb.py``: their own dtype casts,
the weight read through bitsandbytes' dequantization); ``quantized.py`` says what differs and
what is refused.

Shapes are the adapter file's: lora_A (r, in[, *k]), lora_B (out, r[, 1...]), embedding
A (r, vocab) and B (dim, r), DoRA magnitude (out,) or (1, out, 1...), ia3_l as stored.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .quantized import bnb_kind, dequantized, refusal

_CONV = {nn.Conv1d: ("conv1d", F.conv1d), nn.Conv2d: ("conv2d", F.conv2d), nn.Conv3d: ("conv3d", F.conv3d)}


def layer_type(module: nn.Module) -> str | None:
    """"linear", "conv1d_t" (transformers' Conv1D, weight (in, out)), "embedding",
    "conv1d"/"conv2d"/"conv3d", or None for modules no adapter kind here adapts (quantized
    layers other than bitsandbytes' ``Linear4bit`` / ``Linear8bitLt`` among them, whatever they
    subclass: ``quantized.refusal``)."""
    if isinstance(module, AdapterLayer):
        module = module.base_layer
    if refusal(module) is not None:
        return None
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    for cls, (name, _) in _CONV.items():
        if isinstance(module, cls):
            return name
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    if pytorch_utils is not None and isinstance(module, getattr(pytorch_utils, "Conv1D", ())):
        return "conv1d_t"
    return None


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a layer of a known ``layer_type``: vocab and dim for embeddings."""
    kind = layer_type(module)
    if kind == "linear":
        return module.in_features, module.out_features
    if kind == "conv1d_t":
        return module.weight.shape[0], module.weight.shape[1]
    if kind == "embedding":
        return module.num_embeddings, module.embedding_dim
    return module.in_channels, module.out_channels


class AdapterLayer(nn.Module):
    """What every wrapper shares: the base layer, active names, merged names, the disabled flag.

    Attribute lookups the wrapper cannot answer go to the base layer (``wrapper.weight``), as
    model code sometimes reads them.
    """

    parts: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active: list[str] = []
        self.merged: list[str] = []
        self.disabled = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "_modules", "_parameters", "_buffers"):
                raise
            return getattr(self._modules["base_layer"], name)

    @property
    def names(self) -> list[str]:
        return list(getattr(self, self.parts[0]).keys())

    def live(self) -> list[str]:
        """Active names whose effect is computed in forward (not merged into the weights)."""
        return [] if self.disabled else [n for n in self.active if n in self.names and n not in self.merged]

    def add(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Adds adapter ``name``: part -> tensor, stored as parameters on the base layer's device
        (fp16/bf16 tensors in fp32, as PEFT's ``autocast_adapter_dtype``)."""
        device = next(self.base_layer.parameters()).device
        for part, t in tensors.items():
            dtype = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
            getattr(self, part)[name] = nn.Parameter(t.detach().to(device=device, dtype=dtype).clone())

    def remove(self, name: str) -> None:
        for part in self.parts:
            store = getattr(self, part)
            if name in store:
                del store[name]
        self.active = [n for n in self.active if n != name]


class LoraLayer(AdapterLayer):
    """LoRA (with lora_B.bias and DoRA) on nn.Linear, transformers' Conv1D, nn.Embedding, nn.ConvNd."""

    parts = ("lora_A", "lora_B", "lora_bias", "lora_magnitude")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.kind = layer_type(base_layer)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_bias = nn.ParameterDict()  # lora_B.bias
        self.lora_magnitude = nn.ParameterDict()  # DoRA's lora_magnitude_vector
        self.conv_fn = dict(_CONV.values()).get(self.kind)
        self.scaling: dict[str, float] = {}
        self.dora_factors: dict[str, torch.Tensor] = {}  # name -> m/‖W+ΔW‖ at merge time, for unmerge
        self.quant = bnb_kind(base_layer)  # "4bit" / "8bit" on bitsandbytes' linears: PEFT's bnb forward
        self.quant_original: dict[str, Any] | None = None  # the packed layer before its first merge

    def remove(self, name: str) -> None:
        super().remove(name)
        self.scaling.pop(name, None)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        live = self.live()
        if not live:
            return result
        if self.quant is not None:
            return self._quantized_forward(live, x, result)
        result_dtype = result.dtype
        for name in live:
            if self.kind == "embedding":
                result = self._embedding(name, x, result)
            else:
                result = self._linear_or_conv(name, x, result)
        return result.to(result_dtype)

    def _quantized_forward(self, live: list[str], x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """PEFT's ``Linear4bit`` / ``Linear8bitLt`` forward: per adapter, the input cast to lora_A's
        dtype and the adapter's term (DoRA: the whole result) cast back to the output's dtype."""
        for name in live:
            cast = not torch.is_autocast_enabled()
            expected = result.dtype
            if cast and x.dtype != self.lora_A[name].dtype:
                x = x.to(self.lora_A[name].dtype)
            if name in self.lora_magnitude:
                result = self._linear_or_conv(name, x, result, cast_input=False)
                result = result.to(expected) if cast else result
            else:
                out = self._lora_out(name, x) * self.scaling[name]
                result = result + (out.to(expected) if cast else out)
        return result

    def _lora_out(self, name: str, x: torch.Tensor) -> torch.Tensor:
        A, B, bias = self.lora_A[name], self.lora_B[name], self.lora_bias.get(name)
        if self.conv_fn is None:
            return F.linear(F.linear(x, A), B, bias)
        base = self.base_layer  # PEFT's lora_A conv: the base's kernel, stride and padding; lora_B 1x1
        return self.conv_fn(self.conv_fn(x, A, None, base.stride, base.padding), B, bias)

    def _linear_or_conv(self, name: str, x: torch.Tensor, result: torch.Tensor, cast_input: bool = True) -> torch.Tensor:
        A, scaling = self.lora_A[name], self.scaling[name]
        x = x.to(A.dtype) if cast_input else x
        lora_out = self._lora_out(name, x)
        if name not in self.lora_magnitude:
            return result + lora_out * scaling
        base = self.base_layer
        magnitude, B = self.lora_magnitude[name], self.lora_B[name]
        if self.kind in ("linear", "conv1d_t"):  # PEFT's DoraLinearLayer
            lora_weight = (A.T @ B.T).T.to(x.dtype)  # = lora_B(lora_A(eye)).T, as PEFT forms it
            weight = (base.weight if self.quant is None else dequantized(base)).to(x.dtype)
            weight = weight.T if self.kind == "conv1d_t" else weight
            norm = torch.linalg.norm(weight + scaling * lora_weight.detach(), dim=1).to(weight.dtype).detach()
            scale = (magnitude / norm).view(1, -1)
            bias_view = base.bias
        else:  # PEFT's _DoraConvNdLayer
            weight = base.weight
            r = A.shape[0]
            lora_weight = torch.mm(B.view([-1, r]), A.view([r, -1])).reshape(weight.shape)
            w = weight + scaling * lora_weight.detach()
            norm = w.norm(p=2, dim=tuple(range(1, w.dim())), keepdim=True).transpose(1, 0).detach()
            scale = magnitude / norm
            bias_view = None if base.bias is None else base.bias.view((1, -1) + (1,) * (result.dim() - 2))
        base_result = result if bias_view is None else result - bias_view
        return result + ((scale - 1) * base_result + scale * lora_out * scaling)

    def _embedding(self, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        A, B, scaling = self.lora_A[name].T, self.lora_B[name].T, self.scaling[name]  # (vocab, r), (r, dim)
        after_A = F.embedding(x, A, padding_idx=base.padding_idx, max_norm=base.max_norm, norm_type=base.norm_type,
                              scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)
        embed_scale = getattr(base, "embed_scale", None)
        if name not in self.lora_magnitude:
            out = (after_A @ B) * scaling
            return result + (out if embed_scale is None else out * torch.as_tensor(embed_scale).to(out.dtype))
        lora_weight = (A @ B).T  # PEFT's DoraEmbeddingLayer, (dim, vocab)
        norm = torch.linalg.norm(base.weight.T + scaling * lora_weight.detach(), dim=1).to(base.weight.dtype).detach()
        scale = self.lora_magnitude[name] / norm
        dora = scale * (after_A @ B) * scaling
        if embed_scale is not None:
            dora = dora * torch.as_tensor(embed_scale).to(dora.dtype)
        return scale * result + dora


class ParamLoraLayer(LoraLayer):
    """LoRA on one 2-D parameter of a module (PEFT's ``target_parameters``, its ``ParamWrapper``):
    the module runs with ``param + Σ ΔW`` over the live adapters, ΔW = (B·A)·scaling in the
    parameter's shape and dtype, as PEFT's parametrization computes it."""

    def __init__(self, base_layer: nn.Module, param_name: str) -> None:
        super().__init__(base_layer)
        self.kind = "param"
        self.param_name = param_name

    def delta(self, name: str) -> torch.Tensor:
        param = getattr(self.base_layer, self.param_name)
        A, B = self.lora_A[name], self.lora_B[name]
        return ((B @ A) * self.scaling[name]).to(param.device, param.dtype)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        live = self.live()
        if not live:
            return self.base_layer(*args, **kwargs)
        delta = None
        for name in live:
            delta = self.delta(name) if delta is None else delta + self.delta(name)
        param = getattr(self.base_layer, self.param_name)
        return torch.func.functional_call(self.base_layer, {self.param_name: param + delta}, args, kwargs)


class TokenLayer(AdapterLayer):
    """Trainable tokens on nn.Embedding or nn.Linear (PEFT's ``TrainableTokensLayer``): the
    module computes with its weight whose rows ``indices[name]`` are replaced by the adapter's
    values (``index_copy``), live adapters in order.  The replaced rows are kept to unmerge."""

    parts = ("tokens",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.kind = layer_type(base_layer)
        self.tokens = nn.ParameterDict()
        self.indices: dict[str, tuple[int, ...]] = {}
        self.originals: dict[str, torch.Tensor] = {}

    def set_rows(self, name: str, indices: tuple[int, ...]) -> None:
        self.indices[name] = tuple(indices)
        weight = self.base_layer.weight
        self.originals[name] = weight.detach()[torch.tensor(indices, dtype=torch.long, device=weight.device)].clone()

    def remove(self, name: str) -> None:
        super().remove(name)
        self.indices.pop(name, None)
        self.originals.pop(name, None)

    def weight_with(self, names: list[str]) -> torch.Tensor:
        W = self.base_layer.weight
        seen: set[int] = set()
        for name in names:
            if seen & set(self.indices[name]):
                from ..errors import UnsupportedError

                raise UnsupportedError("active trainable-token adapters replace the same rows (PEFT refuses this too)",
                                       key="trainable_token_indices", actual=sorted(seen & set(self.indices[name])))
            seen |= set(self.indices[name])
            index = torch.tensor(self.indices[name], dtype=torch.long, device=W.device)
            W = W.index_copy(0, index, self.tokens[name].to(W))
        return W

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        live = self.live()
        if not live:
            return self.base_layer(x, *args, **kwargs)
        base, W = self.base_layer, self.weight_with(live)
        if self.kind == "linear":
            return F.linear(x, W, base.bias)
        result = F.embedding(x, W, padding_idx=base.padding_idx, max_norm=base.max_norm, norm_type=base.norm_type,
                             scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)
        embed_scale = getattr(base, "embed_scale", None)
        return result if embed_scale is None else result * torch.as_tensor(embed_scale).to(result.dtype)


class IA3Layer(AdapterLayer):
    """IA3 on nn.Linear, transformers' Conv1D and nn.Conv2d/3d: scales the output, or the input
    of a feedforward module."""

    parts = ("ia3_l",)

    def __init__(self, base_layer: nn.Module, is_feedforward: bool) -> None:
        super().__init__(base_layer)
        self.kind = layer_type(base_layer)
        self.is_feedforward = is_feedforward
        self.ia3_l = nn.ParameterDict()
        self.quant = bnb_kind(base_layer)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        live = self.live()
        if not live:
            return self.base_layer(x, *args, **kwargs)
        if self.quant is not None:
            return self._quantized_forward(live, x, *args, **kwargs)
        dtype = previous_dtype = x.dtype
        scaling: Any = 1
        conv = self.kind not in ("linear", "conv1d_t")
        for name in live:
            dtype = self.ia3_l[name].dtype
            scaling = scaling * (self.ia3_l[name] if conv else self.ia3_l[name].flatten())
        if self.is_feedforward:
            interm = (x.to(dtype) * scaling).to(self.base_layer.weight.dtype if conv else previous_dtype)
            result = self.base_layer(interm, *args, **kwargs)
        elif conv:
            result = self.base_layer(x, *args, **kwargs).to(dtype) * scaling
        else:
            result = self.base_layer(x, *args, **kwargs)
            result = (result * scaling).to(result.dtype)
        return result.to(previous_dtype) if conv else result

    def _quantized_forward(self, live: list[str], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """PEFT's bitsandbytes IA3 forward: a non-fp32 input upcast to fp32; the output keeps the
        dtype the base layer returns for it (bitsandbytes gives its input's)."""
        scaling: Any = 1
        for name in live:
            scaling = scaling * self.ia3_l[name].flatten()
        cast = not torch.is_autocast_enabled() and x.dtype != torch.float32
        x = x.float() if cast else x
        if self.is_feedforward:  # the input scaled, in fp32
            result = self.base_layer(x * scaling, *args, **kwargs)
            expected = result.dtype
        else:
            result = self.base_layer(x, *args, **kwargs)
            expected = result.dtype
            result = result * scaling
        return result.to(expected) if cast else result


class LycorisLayer(AdapterLayer):
    """LoHa and LoKr on nn.Linear, nn.Conv1d and nn.Conv2d: the base output plus, per live
    adapter, the layer's operation with ΔW as its weight (PEFT's ``_get_delta_activations``:
    ``get_delta_weight`` reshaped to the base weight, the input cast to its dtype, F.linear or
    the convolution without bias), the sum cast back to the input's dtype."""

    parts = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
             "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.kind = layer_type(base_layer)
        for part in self.parts:
            setattr(self, part, nn.ParameterDict())
        self.bound: dict[str, tuple[Any, str, dict[str, str]]] = {}  # name -> (config, module path, key -> part)

    @property
    def names(self) -> list[str]:
        return [n for n in self.bound if any(n in getattr(self, p) for p in self.parts)]

    def bind(self, name: str, config: Any, path: str, keys: dict[str, str]) -> None:
        self.bound[name] = (config, path, keys)

    def remove(self, name: str) -> None:
        super().remove(name)
        self.bound.pop(name, None)

    def delta(self, name: str) -> torch.Tensor:
        """ΔW of adapter ``name`` from the live parameters, in their dtype, shaped as the weight."""
        from ..adapter import Adapter

        config, path, keys = self.bound[name]
        adapter = Adapter.from_tensors(config, {key: getattr(self, part)[name] for key, part in keys.items()})
        return adapter.kind.delta_weight(adapter, path).reshape(self.base_layer.weight.shape)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        result = self.base_layer(x, *args, **kwargs)
        for name in self.live():
            delta = self.delta(name)
            inp = x.to(delta.dtype) if x.dtype != delta.dtype else x
            if self.kind == "linear":
                result = result + F.linear(inp, delta)
            else:
                result = result + self.base_layer._conv_forward(inp, delta, bias=None)
        return result.to(previous_dtype)


class SavedModule(AdapterLayer):
    """``modules_to_save``: per adapter name a trained copy of the module, used in place of the
    original while that adapter is active (at most one active adapter may have a copy here)."""

    parts = ("modules_to_save",)

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__(original_module)
        self.modules_to_save = nn.ModuleDict()

    def add(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Adds a copy of the original module holding ``tensors`` (parameter/buffer name -> tensor)."""
        module = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            for key, t in module.state_dict(keep_vars=True).items():
                if key in tensors:
                    t.copy_(tensors[key])
        for p in module.parameters():
            p.requires_grad_(True)
        self.modules_to_save[name] = module

    def current(self) -> nn.Module:
        """The module forward uses: the active adapter's copy, else the original."""
        live = [n for n in self.live() if n in self.modules_to_save]
        return self.modules_to_save[live[0]] if live else self.base_layer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.current()(*args, **kwargs)
