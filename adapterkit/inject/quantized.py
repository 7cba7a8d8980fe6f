"""Adapters on quantized layers: bitsandbytes' ``Linear4bit`` / ``Linear8bitLt`` as PEFT runs them,
every other quantized layer refused by name.

PEFT 0.22.0's bitsandbytes layers (``peft/tuners/lora/bnb.py``, ``peft/tuners/ia3/bnb.py``) are the
oracle; the wrappers in ``layers.py`` follow them operation for operation, so outputs and merged
weights are PEFT's bit for bit (``tests/test_attach_bnb.py``):

- LoRA forward (rsLoRA, lora_bias, DoRA, several adapters): the base layer's output, then per
  active adapter the input cast to lora_A's dtype and the adapter's term cast back to the base
  output's dtype before the add — on a plain ``nn.Linear`` PEFT adds in fp32 and rounds once, on
  these layers it rounds once per adapter.  Under autocast nothing is cast, as in PEFT.
- DoRA reads the weight through bitsandbytes' own dequantization (:func:`dequantized`:
  ``dequantize_4bit``, in the quant state's dtype; ``int8_vectorwise_dequant``, fp32), never the
  packed bytes, and changes nothing on the module (PEFT's replaces an 8-bit weight on CPU, which
  loses its scales: its second forward fails).
- IA3 forward: a non-fp32 input is upcast to fp32 and the output keeps the dtype the base layer
  returns for it (bitsandbytes returns its input's dtype, so fp32), as PEFT's bnb IA3 layers do.
- LoRA merge (:func:`stage_merge`, :func:`write`): dequantize with bitsandbytes, add
  ΔW = (B·A)·scaling (DoRA: m/‖W + ΔW‖·(W + ΔW), rounded to the dequantized dtype), quantize again
  into a new ``Params4bit`` / ``Int8Params`` built as PEFT builds it, adapter after adapter; a
  lora_bias adds B.bias·scaling to the bias.  A warning names the layers re-quantized (PEFT warns
  per layer).
- unmerge (:func:`restore`) puts back the packed weight, bias and 8-bit state kept at the first
  merge, bit for bit; PEFT quantizes dequant(W') − ΔW again (deliberate difference
  ``bnb-unmerge-restores``).  ``disabled`` and ``unload`` unmerge the same way.

Refused by name (``not-supported``): merging IA3 into these layers (PEFT refuses too); a DoRA
merge into a layer that already holds a merged adapter (PEFT computes that norm from a weight it
un-merged by re-quantizing); a 4-bit weight in bitsandbytes' CPU-packed layout; an 8-bit layer
with fp16 weights or a 4-bit one not quantized yet; LoRA on their parameters, trainable tokens,
``modules_to_save`` copies of them; and every other quantized layer — GPTQ ``*QuantLinear``, AWQ
``WQLinear_*``, HQQ, EETQ, FP8, quanto, torchao and the like, found by class name or by a weight
that is not a plain float tensor, without importing their libraries.  ``adapterkit merge`` merges
an adapter into a quantized checkpoint instead.

bitsandbytes is optional: nothing here imports it unless a model already holds its layers (the
import then costs nothing).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import NotFoundError, UnsupportedError

BNB_4BIT = "4bit"
BNB_8BIT = "8bit"
_BNB_NAMES = {BNB_4BIT: "bitsandbytes Linear4bit", BNB_8BIT: "bitsandbytes Linear8bitLt"}
OFFLINE = "merge the adapter into the quantized checkpoint with `adapterkit merge` instead"

# class names of quantized layers from libraries adapterkit does not read live -> their family
_FAMILIES = (
    (re.compile(r"QuantLinear"), "GPTQ"),  # auto-gptq / gptqmodel / optimum: QuantLinear, TritonV2QuantLinear, ...
    (re.compile(r"^WQLinear"), "AWQ"),  # autoawq: WQLinear_GEMM, WQLinear_GEMV, WQLinear_Exllama, ...
    (re.compile(r"^HQQLinear"), "HQQ"),
    (re.compile(r"^EetqLinear$"), "EETQ"),
    (re.compile(r"Fp8Linear$|^FP8Linear$"), "FP8"),
    (re.compile(r"^CompressedLinear$"), "compressed-tensors"),
    (re.compile(r"^QLinear$"), "quanto"),
    (re.compile(r"^QuantizedLinear$"), "AQLM"),
    (re.compile(r"^(HiggsLinear|VptqLinear|SpQRLinear|BitLinear)$"), "quantized"),
    (re.compile(r"^(Embedding4bit|Embedding8bit)$"), "bitsandbytes"),
)
_PACKED_MEMBERS = ("qweight", "qzeros", "weight_packed", "W_q")
_DENSE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def bnb_kind(module: nn.Module) -> str | None:
    """``BNB_4BIT`` for a bitsandbytes ``Linear4bit``, ``BNB_8BIT`` for a ``Linear8bitLt``, else None
    (bitsandbytes is looked up among the imported modules, never imported)."""
    bnb_nn = sys.modules.get("bitsandbytes.nn")
    if bnb_nn is None:
        return None
    if isinstance(module, getattr(bnb_nn, "Linear4bit", ())):
        return BNB_4BIT
    if isinstance(module, getattr(bnb_nn, "Linear8bitLt", ())):
        return BNB_8BIT
    return None


def describe(module: nn.Module) -> str:
    """The layer's type as messages name it: "bitsandbytes Linear4bit", "QuantLinear (GPTQ)"."""
    kind = bnb_kind(module)
    if kind is not None:
        return _BNB_NAMES[kind]
    name = type(module).__name__
    family = next((f for pattern, f in _FAMILIES if pattern.search(name)), None)
    return f"{name} ({family})" if family else name


def refusal(module: nn.Module) -> str | None:
    """Why no adapter can go on ``module`` because it is quantized, naming its type; None for a
    dense module and for the bitsandbytes linears adapterkit runs."""
    name = type(module).__name__
    kind = bnb_kind(module)
    if kind == BNB_4BIT:
        weight = module.weight
        if not getattr(weight, "bnb_quantized", False) or getattr(weight, "quant_state", None) is None:
            return "a bitsandbytes Linear4bit whose weight is not quantized yet (bitsandbytes quantizes it on `.to(device)`)"
        return None
    if kind == BNB_8BIT:
        weight = module.weight
        if getattr(weight, "has_fp16_weights", False) or weight.dtype != torch.int8:
            return "a bitsandbytes Linear8bitLt holding fp16 weights (has_fp16_weights=True), not int8 ones"
        return None
    for pattern, family in _FAMILIES:
        if pattern.search(name):
            return f"a {name} ({family}-quantized layer)"
    held = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    packed = [m for m in _PACKED_MEMBERS if m in held]
    if packed:
        return f"a {name} holding packed quantized tensors ({', '.join(packed)})"
    weight = held.get("weight")
    if isinstance(weight, torch.Tensor):
        owner = type(weight).__module__.split(".")[0]
        if weight.dtype not in _DENSE or owner not in ("torch",):
            what = type(weight).__name__ if owner != "torch" else str(weight.dtype).removeprefix("torch.")
            return f"a {name} whose weight is not a dense float tensor ({what})"
    return None


def packed_tensor(t: Any) -> bool:
    """Whether ``t`` holds quantized data rather than dense float values (bitsandbytes'
    ``Params4bit`` / ``Int8Params``, an integer or float8 tensor, a tensor subclass from a
    quantization library)."""
    if not isinstance(t, torch.Tensor):
        return False
    return t.dtype not in _DENSE or type(t).__module__.split(".")[0] != "torch"


def quantized(module: nn.Module) -> bool:
    """Whether ``module`` holds a quantized weight (a bitsandbytes linear or a refused layer)."""
    return bnb_kind(module) is not None or refusal(module) is not None


def refuse(module_path: str, module: nn.Module, what: str, **fields: Any) -> UnsupportedError:
    """The not-supported error for ``what`` (e.g. "LoRA on its parameters") on a quantized layer
    (``fields``: more of the error's fields, e.g. ``path``, the adapter file)."""
    why = refusal(module) or f"a {describe(module)}"
    return UnsupportedError(f"`{module_path}` is {why}: {what} is not supported; {OFFLINE}", key=module_path,
                            expected="a dense layer", actual=describe(module), **fields)


def _bnb() -> Any:
    import bitsandbytes  # the model holds its layers: imported already

    return bitsandbytes


def _scb(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """An 8-bit weight's row scales: the layer state's after its first forward, the weight's before."""
    state = getattr(module, "state", None)
    scb = getattr(state, "SCB", None) if weight is module.weight else None
    scb = scb if scb is not None else getattr(weight, "SCB", None)
    if scb is None:
        raise UnsupportedError("a bitsandbytes Linear8bitLt without its row scales (SCB): its int8 weight cannot be "
                               "dequantized", key="SCB", expected="state.SCB or weight.SCB", actual=None)
    return scb


def dequantized(module: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's weight (out, in) by bitsandbytes' own dequantization, as PEFT's
    ``dequantize_bnb_weight`` computes it: ``dequantize_4bit`` (dtype: the quant state's) or
    ``int8_vectorwise_dequant`` (fp32).  ``weight``: a packed parameter of the layer's kind other
    than the one it holds (a merge in progress).  Nothing on the module changes.

    Raises:
        UnsupportedError: ``not-supported`` for a 4-bit weight in bitsandbytes' CPU-packed layout
            (``packing_format_for_cpu``, made by its first forward on CPUs with AVX512-BF16), and
            an 8-bit weight without row scales.
    """
    kind = bnb_kind(module)
    weight = module.weight if weight is None else weight
    functional = _bnb().functional
    if kind == BNB_4BIT:
        state = weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            raise UnsupportedError(
                "a bitsandbytes Linear4bit weight in the CPU-packed layout its forward makes on CPUs with AVX512-BF16 "
                f"(packing_format_for_cpu) cannot be dequantized by dequantize_4bit; {OFFLINE}, or run the model on a GPU",
                key="packing_format_for_cpu", expected=False, actual=True)
        return functional.dequantize_4bit(weight.data, state)
    return functional.int8_vectorwise_dequant(weight.data, _scb(module, weight).to(weight.data.device))


# ----------------------------------------------------------------------------- merge / unmerge


@dataclass
class Staged:
    """A layer's merge, computed and not yet written: the new packed weight, the new bias data,
    the dense sums it was quantized from (for the NaN/Inf check)."""

    weight: nn.Parameter
    bias: torch.Tensor | None
    sums: list[torch.Tensor] = field(default_factory=list)


def check_merge(wrapper: Any, path: str, names: list[str]) -> None:
    """Refuses, before anything changes, a merge of ``names`` into a quantized layer that
    :func:`stage_merge` would not compute as PEFT does.

    Raises:
        UnsupportedError: ``not-supported`` for IA3, for a DoRA adapter merged after another one
            on the same layer, for a layer whose weight cannot be dequantized.
        NotFoundError: ``base-tensor-missing`` for a lora_bias onto a layer without a bias.
    """
    base = wrapper.base_layer
    if not hasattr(wrapper, "lora_A"):
        raise refuse(path, base, f"merging {type(wrapper).__name__.removesuffix('Layer')} into its weight (PEFT refuses it too)")
    for i, name in enumerate(names):
        if name in wrapper.lora_magnitude and (i > 0 or wrapper.merged):
            raise refuse(path, base, f"merging DoRA adapter {name!r} after another adapter merged into the same layer "
                         "(PEFT computes the norm from a weight it un-merges by re-quantizing; merge the DoRA adapter first)")
        if name in wrapper.lora_bias and getattr(base, "bias", None) is None:
            raise NotFoundError(f"adapter {name!r} has lora_B.bias for `{path}`, whose {describe(base)} has no bias to add it to",
                                code="base-tensor-missing", key=path, expected="a base bias", actual=None)
    if bnb_kind(base) == BNB_4BIT and getattr(base.weight.quant_state, "packing_format_for_cpu", False):
        dequantized(base)  # raises, naming the layout
    if bnb_kind(base) == BNB_8BIT:
        _scb(base, base.weight)


def _requantized(module: nn.Module, weight: torch.Tensor, dense: torch.Tensor) -> nn.Parameter:
    """``dense`` quantized into a new packed parameter of ``weight``'s kind, built as PEFT's merge
    builds it (``Params4bit(**weight.__dict__)`` / ``Int8Params(has_fp16_weights=...)``, then
    ``.to(device)``, which quantizes); the module is not touched (see :func:`write`)."""
    bnb = _bnb()
    if bnb_kind(module) == BNB_4BIT:
        kwargs = {k: v for k, v in weight.__dict__.items() if not k.startswith("_") and k != "data"}
        kwargs.update(bnb_quantized=False, requires_grad=False, module=None)
        return bnb.nn.Params4bit(dense.to("cpu"), **kwargs).to(weight.device)
    return bnb.nn.Int8Params(dense.to("cpu"), requires_grad=False, has_fp16_weights=weight.has_fp16_weights).to(weight.device)


def stage_merge(wrapper: Any, names: list[str]) -> Staged:
    """LoRA adapters ``names`` merged into the wrapper's bitsandbytes layer in turn, as PEFT 0.22.0's
    ``Linear4bit.merge`` / ``Linear8bitLt.merge`` compute it (call :func:`check_merge` first)."""
    base = wrapper.base_layer
    weight, bias = base.weight, None if getattr(base, "bias", None) is None else base.bias.data
    staged = Staged(weight, bias)
    for name in names:
        A, B, scaling = wrapper.lora_A[name].detach(), wrapper.lora_B[name].detach(), wrapper.scaling[name]
        output = dequantized(base, weight)
        delta = (B @ A) * scaling  # PEFT's get_delta_weight
        if name in wrapper.lora_magnitude:  # DoraLinearVariant.merge_safe, no adapter merged before it
            summed = output.detach().clone() + 1 * delta
            norm = torch.linalg.norm(summed, dim=1).to(summed.dtype).detach()
            factor = (wrapper.lora_magnitude[name].detach() / norm).view(-1, 1)
            dense = (factor * (output + delta)).to(output.dtype)
        else:
            dense = output.to(delta.dtype).to(delta.device) + delta
        staged.sums.append(dense)
        if name in wrapper.lora_bias:
            bias = bias + wrapper.lora_bias[name].detach() * scaling
            staged.sums.append(bias)
        weight = _requantized(base, weight, dense)
    staged.weight, staged.bias = weight, bias
    return staged


def write(wrapper: Any, staged: Staged) -> None:
    """Puts a staged merge into the layer as PEFT's merge leaves it, keeping first what
    :func:`restore` puts back (once: the layer as it was before any adapter was merged)."""
    base = wrapper.base_layer
    if not wrapper.merged:
        wrapper.quant_original = _snapshot(base)
    if bnb_kind(base) == BNB_4BIT:
        staged.weight.module = getattr(base.weight, "module", None)
        if staged.weight.module is not None:
            staged.weight.module.quant_state = staged.weight.quant_state
    base.weight = staged.weight
    if staged.bias is not None and staged.bias is not getattr(base.bias, "data", None):
        base.bias.data = staged.bias
    if bnb_kind(base) == BNB_8BIT:
        base.state.reset_grads()


_STATE_8BIT = ("CB", "SB", "SCB", "SBt", "CBt")


def _snapshot(base: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {"weight": base.weight, "module_quant_state": getattr(base, "quant_state", None),
                           "bias": None if getattr(base, "bias", None) is None else base.bias.data.clone()}
    if bnb_kind(base) == BNB_8BIT:
        out["weight_stats"] = (base.weight.CB, base.weight.SCB)
        out["state"] = {k: getattr(base.state, k, None) for k in _STATE_8BIT}
    return out


def restore(wrapper: Any) -> None:
    """Undoes every merge into the wrapper's layer: the packed weight, the bias and the 8-bit
    state kept at the first merge are put back, bit for bit."""
    snap = getattr(wrapper, "quant_original", None)
    if snap is None:
        return
    base = wrapper.base_layer
    base.weight = snap["weight"]
    if "module_quant_state" in snap and hasattr(base, "quant_state"):
        base.quant_state = snap["module_quant_state"]
    if snap["bias"] is not None:
        base.bias.data = snap["bias"]
    if "state" in snap:
        base.weight.CB, base.weight.SCB = snap["weight_stats"]
        for key, value in snap["state"].items():
            setattr(base.state, key, value)
    wrapper.quant_original = None
