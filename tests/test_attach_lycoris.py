"""attach / merge_attached / unmerge_attached / disabled / set_active / extract_from_model for
LoHa and LoKr on live models, against PEFT 0.22.0's LoHaModel and LoKrModel: outputs and
merged weights bit for bit, on Linear, Conv2d (3×3 and 1×1) and Conv1d, plain and CP forms.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import adapterkit
from adapterkit.errors import AdapterkitError

INPUTS = {"lin": (2, 12), "conv": (2, 8, 5, 5), "c1d": (2, 4, 7), "conv1": (2, 8, 4, 4)}


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 20)
        self.conv = nn.Conv2d(8, 6, 3)
        self.c1d = nn.Conv1d(4, 6, 3)
        self.conv1 = nn.Conv2d(8, 6, 1)


def _configs():
    from peft import LoHaConfig, LoKrConfig

    targets = list(INPUTS)
    return {
        "loha": LoHaConfig(r=2, alpha=3, target_modules=targets, init_weights=False),
        "loha-cp": LoHaConfig(r=2, target_modules=targets, use_effective_conv2d=True, init_weights=False),
        "lokr": LoKrConfig(target_modules=targets, init_weights=False),
        "lokr-products": LoKrConfig(r=1, decompose_both=True, target_modules=targets, init_weights=False),
        "lokr-cp": LoKrConfig(r=2, use_effective_conv2d=True, target_modules=["lin", "conv", "conv1"], init_weights=False),
    }


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return {n: torch.randn(*shape, generator=g) for n, shape in INPUTS.items()}


def _outputs(model: nn.Module) -> dict[str, torch.Tensor]:
    inner = model.base_model.model if hasattr(model, "base_model") else model
    with torch.no_grad():
        return {n: inner.get_submodule(n)(x) for n, x in _inputs().items()}


@pytest.fixture(scope="module", params=["loha", "loha-cp", "lokr", "lokr-products", "lokr-cp"])
def case(request, tmp_path_factory):
    from peft import get_peft_model

    torch.manual_seed(0)
    base = Model()
    torch.manual_seed(1)
    peft_model = get_peft_model(copy.deepcopy(base), _configs()[request.param])
    root = tmp_path_factory.mktemp("lycoris")
    peft_model.save_pretrained(root)
    return base, peft_model, root


def test_attach_gives_peft_outputs_bit_for_bit(case):
    base, peft_model, root = case
    model = adapterkit.attach(copy.deepcopy(base), adapterkit.load(root))
    ours, theirs = _outputs(model), _outputs(peft_model)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


def test_merge_unmerge_disabled_and_extract(case):
    base, peft_model, root = case
    adapter = adapterkit.load(root)
    model = adapterkit.attach(copy.deepcopy(base), adapter)
    attached = _outputs(model)
    adapterkit.merge_attached(model)
    theirs = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    for name in INPUTS:
        layer = model.get_submodule(name)
        assert torch.equal(getattr(layer, "base_layer", layer).weight, theirs[f"{name}.weight"]), name
    torch.testing.assert_close(_outputs(model), attached, rtol=1e-5, atol=1e-6)  # merged: the same function
    adapterkit.unmerge_attached(model)
    for name, value in base.state_dict().items():
        module, _, param = name.rpartition(".")
        layer = model.get_submodule(module)
        torch.testing.assert_close(getattr(getattr(layer, "base_layer", layer), param), value, rtol=0, atol=1e-6)
    with adapterkit.disabled(model):  # the base's function (its weights back up to the unmerge's rounding)
        plain = _outputs(model)
    torch.testing.assert_close(plain, _outputs(base), rtol=1e-5, atol=1e-5)
    back = adapterkit.extract_from_model(model)
    assert back.peft_type == adapter.peft_type and sorted(back.tensors) == sorted(adapter.tensors)
    assert all(torch.equal(back.tensors[k], adapter.tensors[k]) for k in adapter.tensors)


def test_two_adapters_active_add_their_effects(case, tmp_path):
    """Two adapters of the file on one model, both active: each module adds both ΔW's (PEFT's
    forward over active adapters); merging both gives the same weights as merging in turn."""
    base, _, root = case
    adapter = adapterkit.load(root)
    model = adapterkit.attach(copy.deepcopy(base), adapter, name="a")
    adapterkit.attach(model, adapter, name="b", activate=False)
    adapterkit.set_active(model, ["a", "b"])
    twice = _outputs(model)
    single = adapterkit.attach(copy.deepcopy(base), adapter)
    once, plain = _outputs(single), _outputs(base)
    for name in INPUTS:
        torch.testing.assert_close(twice[name] - plain[name], 2 * (once[name] - plain[name]), rtol=1e-5, atol=1e-5)


def test_wrong_layer_shape_is_named(case):
    base, _, root = case
    other = copy.deepcopy(base)
    other.lin = nn.Linear(12, 10)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.attach(other, adapterkit.load(root))
    assert info.value.code == "model-mismatch" and "`lin`" in str(info.value)


def test_bf16_model_with_fp32_factors_equals_peft(case):
    """A bf16 model with the file's fp32 factors (PEFT's autocast_adapter_dtype keeps them fp32):
    the bf16 input cast to ΔW's dtype for the adapter's term, the sum cast back to bf16; the
    outputs equal PeftModel.from_pretrained's on the same bf16 model bit for bit."""
    from peft import PeftModel

    base, _, root = case
    half = copy.deepcopy(base).to(torch.bfloat16)
    theirs_model = PeftModel.from_pretrained(copy.deepcopy(half), root)
    model = adapterkit.attach(copy.deepcopy(half), adapterkit.load(root))
    inner = theirs_model.base_model.model
    factors = [p.dtype for n, p in theirs_model.named_parameters() if n.endswith(".default")]
    assert factors and set(factors) == {torch.float32}  # the premise: fp32 factors on a bf16 model
    with torch.no_grad():
        for name, x in _inputs().items():
            x = x.to(torch.bfloat16)
            ours, theirs = model.get_submodule(name)(x), inner.get_submodule(name)(x)
            assert ours.dtype == theirs.dtype == torch.bfloat16, name
            assert torch.equal(ours, theirs), name
