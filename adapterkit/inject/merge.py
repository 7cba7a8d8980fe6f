"""merge_attached, unmerge_attached, merge_and_unload, unload: folding attached adapters into a model's weights.

The arithmetic is the kinds' own (``Adapter.merge`` / ``Adapter.unmerge``), applied to an
Adapter built from the wrapper's live (possibly trained) parameters; the model's weights are in
the checkpoint layout those functions take, except for a 2-D weight whose layout disagrees
with the config's ``fan_in_fan_out`` (PEFT follows the module type), which is transposed around
the call.  DoRA merges keep m/‖W + ΔW‖ so that ``unmerge`` can undo them, as PEFT does.
bitsandbytes layers merge as PEFT merges them (dequantize, add, quantize again) and unmerge by
putting their packed weights back (``quantized.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..adapter import Adapter
from ..errors import TensorError, UnsupportedError
from ..kinds.lora import dora_factor
from ..linalg.norms import all_finite
from ..threads import intra_op
from . import quantized
from .layers import AdapterLayer, LoraLayer, ParamLoraLayer, SavedModule, TokenLayer
from .plan import replace, wrappers
from .state import AttachedAdapter, ModelState, active_names, lookup, model_state

OPS_PER_ELEMENT = 64  # a merged element's work for the thread policy (as ops.merging's)


def _module_adapter(record: AttachedAdapter, path: str, wrapper: AdapterLayer) -> Adapter:
    """The adapter's tensors for ``path`` as a one-module Adapter, from the live parameters."""
    tensors = {key: getattr(wrapper, attr)[record.name].detach() for key, (p, attr, _) in record.keys.items() if p == path}
    return Adapter.from_tensors(record.config, tensors)


def _flipped(wrapper: AdapterLayer, record: AttachedAdapter) -> bool:
    """Whether the 2-D weight must be transposed for the kind's math (layout vs fan_in_fan_out)."""
    return wrapper.kind in ("linear", "conv1d_t") and (wrapper.kind == "conv1d_t") != bool(getattr(record.config, "fan_in_fan_out", False))


def _targets(wrapper: AdapterLayer, flip: bool) -> dict[str, torch.Tensor]:
    base = wrapper.base_layer
    if isinstance(wrapper, TokenLayer):
        return {"weight": base.weight.detach()}
    if isinstance(wrapper, ParamLoraLayer):  # target_parameters: the parameter is the weight
        return {"weight": getattr(base, wrapper.param_name).detach()}
    out = {"weight": base.weight.detach().T if flip else base.weight.detach()}
    if getattr(base, "bias", None) is not None:
        out["bias"] = base.bias.detach()
    return out


def _step(wrapper: AdapterLayer, record: AttachedAdapter, path: str, current: dict[str, torch.Tensor], undo: bool,
          unmerged: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The base tensors after merging (``undo``: unmerging) one adapter, in the base dtype.

    A DoRA merge normalises by ‖W + ΔW‖ of the *unmerged* weight (``unmerged``: the base with
    no adapter merged), as the forward pass does and PEFT 0.22.0's merge does, so that merging
    several DoRA adapters in turn gives the attached model's outputs; the factor is kept for undo.
    """
    if isinstance(wrapper, TokenLayer):  # rows replaced; unmerge puts the kept originals back
        W = current["weight"]
        index = torch.tensor(wrapper.indices[record.name], dtype=torch.long, device=W.device)
        rows = wrapper.originals[record.name] if undo else wrapper.tokens[record.name].detach()
        return {"weight": W.index_copy(0, index, rows.to(W))}
    flip = _flipped(wrapper, record)
    adapter = _module_adapter(record, path, wrapper)
    targets = {k: (v.T if flip and k == "weight" else v) for k, v in current.items()}
    dtype = {k: v.dtype for k, v in current.items()}
    if isinstance(wrapper, LoraLayer) and record.name in wrapper.lora_magnitude:
        ct = torch.float64 if targets["weight"].dtype == torch.float64 else torch.float32
        W = targets["weight"].to(ct)
        delta = adapter.delta_weight(path, device=W.device, dtype=ct)
        if undo:
            out = {"weight": W / wrapper.dora_factors[record.name] - delta}
        else:
            base = (unmerged or current)["weight"]
            factor = dora_factor(adapter.module(path), (base.T if flip else base).to(ct), delta)
            wrapper.dora_factors[record.name] = factor
            out = {"weight": factor * (W + delta)}
    else:
        fn = adapter.unmerge if undo else adapter.merge
        out = fn(path, targets, device=targets["weight"].device)
    if flip:
        out["weight"] = out["weight"].T
    return {k: v.to(dtype[k]) for k, v in out.items()}


def _unmerged(wrapper: AdapterLayer, path: str, state: ModelState) -> dict[str, torch.Tensor]:
    """The wrapper's base tensors with its merged adapters taken out (computed, not written)."""
    current = _targets(wrapper, False)
    for name in reversed(wrapper.merged):
        current.update(_step(wrapper, state.adapters[name], path, current, undo=True))
    return current


def _write(wrapper: AdapterLayer, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for role, value in values.items():
            name = wrapper.param_name if isinstance(wrapper, ParamLoraLayer) and role == "weight" else role
            getattr(wrapper.base_layer, name).copy_(value)


def _work(targets: dict[str, torch.Tensor]) -> float:
    """A module's merge for the thread policy: B·A and the adds over its largest tensor."""
    return OPS_PER_ELEMENT * max((t.numel() for t in targets.values()), default=0)


def _forget(staged: list[tuple[AdapterLayer, list[str], object]]) -> None:
    """Forgets the DoRA norms kept for merges that will not happen."""
    for wrapper, done, _ in staged:
        for name in done:
            getattr(wrapper, "dora_factors", {}).pop(name, None)


def merge_attached(model: nn.Module, names: str | Sequence[str] | None = None, *, safe: bool = True) -> nn.Module:
    """Adds the effect of ``names`` (default: the active adapters) to the model's weights, in place
    (PEFT's ``merge_adapter``; merging adapter files into a checkpoint is ``adapterkit.merge``).

    Later forwards skip merged adapters' extra computation.  ``safe`` computes every merged
    tensor first and refuses NaN/Inf before any weight changes.  ``modules_to_save`` copies
    keep serving as before (nothing to merge).  A bitsandbytes ``Linear4bit`` / ``Linear8bitLt``
    is merged as PEFT merges it — dequantized by bitsandbytes, ΔW added, quantized again into a
    new packed parameter, adapter after adapter — with a warning naming the layers.

    Raises:
        NotFoundError: ``adapter-not-attached``; ``base-tensor-missing`` for a lora_bias onto a
            bitsandbytes layer without a bias.
        UnsupportedError: ``not-supported`` for kinds that cannot merge (prompt learning), IA3 on
            bitsandbytes layers, a DoRA adapter merged after another into a bitsandbytes layer.
        TensorError: ``non-finite`` (safe only) naming the modules; nothing is changed.
    """
    names = list(active_names(model)) if names is None else ([names] if isinstance(names, str) else list(names))
    records = [lookup(model, n) for n in names]
    state = model_state(model)
    for record in records:
        if record.peft_type not in ("LORA", "IA3", "LOHA", "LOKR"):
            raise UnsupportedError(f"{record.peft_type} adapters cannot be merged into weights", key=record.name)
    work = [(path, wrapper, todo) for path, wrapper in wrappers(model)
            if (todo := [r for r in records if r.name in wrapper.names and r.name not in wrapper.merged and not isinstance(wrapper, SavedModule)])]
    packed = [(path, wrapper) for path, wrapper, _ in work if getattr(wrapper, "quant", None) is not None]
    for path, wrapper, todo in work:  # refusals first: nothing changes when one is raised
        if getattr(wrapper, "quant", None) is not None:
            quantized.check_merge(wrapper, path, [r.name for r in todo])
    if packed:
        kinds = " / ".join(sorted({quantized.describe(w.base_layer) for _, w in packed}))
        shown = ", ".join(f"`{p}`" for p, _ in packed[:5]) + (", ..." if len(packed) > 5 else "")
        warnings.warn(f"merging into {len(packed)} {kinds} layer(s) ({shown}) dequantizes their weights, adds ΔW and quantizes "
                      "again, as PEFT does: outputs differ from the unmerged model's by that rounding (unmerge_attached puts "
                      "the packed weights back exactly); `adapterkit merge --dtype` merges into a dense checkpoint instead",
                      UserWarning, stacklevel=2)
    staged: list[tuple[AdapterLayer, list[str], dict[str, torch.Tensor] | quantized.Staged]] = []
    for path, wrapper, todo in work:
        if getattr(wrapper, "quant", None) is not None:
            with intra_op(OPS_PER_ELEMENT * wrapper.in_features * wrapper.out_features):
                stage = quantized.stage_merge(wrapper, [r.name for r in todo])
            staged.append((wrapper, [r.name for r in todo], stage))
            if safe and not all(all_finite(v) for v in stage.sums):
                _forget(staged)
                raise TensorError(f"merging {[r.name for r in todo]} into `{path}` gives NaN or Inf; no weight was changed",
                                  code="non-finite", key=path)
            if not safe:
                quantized.write(wrapper, stage)
                wrapper.merged.extend(r.name for r in todo)
            continue
        current = _targets(wrapper, False)
        unmerged = _unmerged(wrapper, path, state) if wrapper.merged else dict(current)
        with intra_op(_work(current)):
            for record in todo:
                current.update(_step(wrapper, record, path, current, undo=False, unmerged=unmerged))
        staged.append((wrapper, [r.name for r in todo], current))
        if safe and not all(all_finite(v) for v in current.values()):
            _forget(staged)
            raise TensorError(f"merging {[r.name for r in todo]} into `{path}` gives NaN or Inf; no weight was changed",
                              code="non-finite", key=path)
        if not safe:
            _write(wrapper, current)
            wrapper.merged.extend(r.name for r in todo)
    if safe:
        for wrapper, done, values in staged:
            if isinstance(values, quantized.Staged):
                quantized.write(wrapper, values)
            else:
                _write(wrapper, values)
            wrapper.merged.extend(done)
    return model


def unmerge_attached(model: nn.Module) -> nn.Module:
    """Takes every merged adapter back out of the weights (last merged first), in place.
    Exact up to fp rounding for LoRA and DoRA; IA3 divides by its scales.  bitsandbytes layers
    get back the packed weight (and bias, and 8-bit state) they held before the first merge, bit
    for bit (PEFT quantizes dequant(W') − ΔW again: deliberate difference ``bnb-unmerge-restores``).

    Bounds (LoRA; tests/test_attach.py): fp32 weights come back within 1e-6 relative (in norm);
    bf16 / fp16 weights are rounded once on merge and once on unmerge, each computed in fp32, so
    each element comes back within one unit in the last place of max(|W|, |W + ΔW|) of the
    storage dtype (2⁻⁷ relative for bf16, 2⁻¹⁰ for fp16)."""
    state = model_state(model)
    for path, wrapper in wrappers(model):
        if not wrapper.merged:
            continue
        if getattr(wrapper, "quant", None) is not None:  # the packed weights kept at the first merge
            quantized.restore(wrapper)
            wrapper.merged.clear()
            continue
        with intra_op(_work(_targets(wrapper, False))):
            values = _unmerged(wrapper, path, state)
        _write(wrapper, values)
        for name in wrapper.merged:
            getattr(wrapper, "dora_factors", {}).pop(name, None)
        wrapper.merged.clear()
    return model


def _strip(model: nn.Module, keep_copies: bool) -> nn.Module:
    """Replaces every wrapper by its plain module (``keep_copies``: a SavedModule by the copy in use)."""
    state = model_state(model)
    for record in state.adapters.values():
        if record.detach_fn is not None:
            record.detach_fn(model)
    for path, wrapper in list(wrappers(model)):
        module = wrapper.current() if keep_copies and isinstance(wrapper, SavedModule) else wrapper.base_layer
        replace(model, path, module)
    state.adapters.clear()
    state.active.clear()
    state.disabled = False
    return model


def merge_and_unload(model: nn.Module, names: str | Sequence[str] | None = None, *, safe: bool = True) -> nn.Module:
    """Merges ``names`` (default: the active adapters) and returns the plain model: no adapterkit
    module left, ``modules_to_save`` replaced by the active adapter's copy (as PEFT does).
    Raises as :func:`merge_attached`; nothing is changed when it raises."""
    merge_attached(model, names, safe=safe)
    return _strip(model, keep_copies=True)


def unload(model: nn.Module) -> nn.Module:
    """Removes every adapter without merging (merged ones are unmerged first) and returns the
    base model: the original modules, ``modules_to_save`` included."""
    unmerge_attached(model)
    return _strip(model, keep_copies=False)

