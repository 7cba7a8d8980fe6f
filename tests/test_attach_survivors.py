"""adapterkit.attach / merge / extract_from_model against PEFT 0.22.0 where a mutation batch
(tests/mutation/lists/independent.py) left plausible bugs alive: name matching at a ``.`` boundary
(``exclude_modules``, ``target_parameters``), ``layers_to_transform`` with a target outside the
numbered layers, trainable tokens on a scaled embedding, a ``modules_to_save`` entry matching a
module and its child, and a DoRA merged after a LoRA on one module.

Every expected value is PEFT's, on tiny models built here.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model
from peft_models import randomize_adapter
from test_attach_edges import IDS, ScaledEmbNet

import adapterkit

TOL = 1e-5
X = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def peft_and_ours(make, config: LoraConfig, tmp_path, seed: int = 3):
    """PEFT's model on ``make()`` with random adapter weights, saved; adapterkit's attach of the save."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(make(), config)
    randomize_adapter(peft_model, seed=seed, scale=0.3)
    peft_model.eval().save_pretrained(tmp_path)
    saved = adapterkit.load(tmp_path)
    return peft_model, adapterkit.attach(make(), saved), saved


# ----------------------------------------------------------------------------- exclude_modules at a dot boundary


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v_proj(torch.tanh(self.qkv_proj(x)))


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(21)
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def test_exclude_modules_matches_whole_names_only(tmp_path):
    """exclude_modules=["v_proj"] excludes `blocks.0.v_proj`, not `blocks.0.qkv_proj` (PEFT: `.` + name)."""
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["qkv_proj", "v_proj"], exclude_modules=["v_proj"])
    peft_model, ours, saved = peft_and_ours(TwoBlocks, config, tmp_path)
    assert sorted(saved.modules) == ["blocks.0.qkv_proj", "blocks.1.qkv_proj"]
    theirs = peft_model(X)
    assert max_diff(theirs, TwoBlocks()(X)) > 1e-2
    assert max_diff(ours(X), theirs) <= TOL


# ----------------------------------------------------------------------------- layers_to_transform, a target outside the layers


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x))


class Pooler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class LayeredNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(22)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([Layer(), Layer()])
        self.pooler = Pooler()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder.layers:
            x = layer(x)
        return self.pooler(x)


@pytest.mark.parametrize("layers", [[1], 1, 0], ids=["list", "int", "layer-0"])
def test_layers_to_transform_leaves_a_target_outside_the_layers(tmp_path, layers):
    """`pooler.dense` has no layer index: PEFT does not target it under layers_to_transform; an
    int (0 included: not "no restriction") names one layer."""
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["dense"], layers_to_transform=layers)
    peft_model, ours, saved = peft_and_ours(LayeredNet, config, tmp_path)
    kept = layers[0] if isinstance(layers, list) else layers
    assert sorted(saved.modules) == [f"encoder.layers.{kept}.dense"]
    theirs = peft_model(X)
    assert max_diff(theirs, LayeredNet()(X)) > 1e-2
    assert max_diff(ours(X), theirs) <= TOL
    assert type(ours.pooler.dense) is nn.Linear and type(ours.encoder.layers[1 - kept].dense) is nn.Linear  # left as they were


# ----------------------------------------------------------------------------- target_parameters at a dot boundary


class Gated(nn.Module):
    """A module with two 2-D parameters, `weight` and `gate_weight`."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8) * 0.3)
        self.gate_weight = nn.Parameter(torch.randn(8, 8) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight.T) * torch.sigmoid(x @ self.gate_weight.T)


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(23)
        self.mix = Gated()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)


def test_target_parameters_match_whole_parameter_names(tmp_path):
    """target_parameters=["weight"] puts LoRA on `mix.weight`, not on `mix.gate_weight`."""
    config = LoraConfig(r=2, lora_alpha=4, target_modules=[], target_parameters=["weight"])
    peft_model, ours, _ = peft_and_ours(GatedNet, config, tmp_path)
    with torch.no_grad():
        theirs = peft_model(X)
        assert max_diff(theirs, GatedNet()(X)) > 1e-2
        assert max_diff(ours(X), theirs) <= TOL


# ----------------------------------------------------------------------------- trainable tokens on a scaled embedding


def test_trainable_tokens_on_a_scaled_embedding_equal_peft(tmp_path):
    """Gemma's scaled embedding: the rows (trained ones included) are multiplied by embed_scale."""
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["out"], trainable_token_indices={"emb": [3, 7]})
    peft_model, ours, _ = peft_and_ours(lambda: ScaledEmbNet(8 ** 0.5, True), config, tmp_path)
    with torch.no_grad():
        theirs = peft_model(IDS)
        assert max_diff(ours(IDS), theirs) <= TOL
        adapterkit.merge_attached(ours)
        assert max_diff(ours(IDS), theirs) <= TOL


# ----------------------------------------------------------------------------- modules_to_save matching a module and its child


class Proj(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.out_proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.inner(x)))


class ProjNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(24)
        self.head = nn.Linear(8, 8)
        self.proj = Proj()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.head(x))


def test_modules_to_save_entry_matching_a_module_and_its_child(tmp_path):
    """Entry `proj` ends both `proj` and `proj.out_proj`: the outer module is saved whole, once."""
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["head"], modules_to_save=["proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(ProjNet(), config)
    randomize_adapter(peft_model, seed=4, scale=0.3)
    peft_model.eval().save_pretrained(tmp_path)
    saved = adapterkit.load(tmp_path)
    ours = adapterkit.attach(ProjNet(), saved)
    with torch.no_grad():
        theirs = peft_model(X)
        assert max_diff(theirs, ProjNet()(X)) > 1e-2
        assert max_diff(ours(X), theirs) <= TOL
    names = [n for n, _ in ours.named_parameters()]
    assert len(names) == len(set(names))
    assert adapterkit.extract_from_model(ours, "default") == saved


# ----------------------------------------------------------------------------- a DoRA merged after a LoRA on one module


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(25)
        self.lin = nn.Linear(8, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(x)))


def test_dora_merged_after_a_lora_on_one_module_equals_peft(tmp_path):
    """merge_attached(model, "a") then merge_attached(model, "b"): b's DoRA norm is over the weight without a merged
    (the forward pass's), so the result equals PEFT merging both active adapters."""
    from peft import PeftModel

    paths = {}
    for seed, (name, dora) in enumerate([("a", False), ("b", True)], start=1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = get_peft_model(Two(), LoraConfig(r=2, lora_alpha=4, target_modules=["lin"], use_dora=dora))
        randomize_adapter(m, seed=seed, scale=0.3)
        m.save_pretrained(tmp_path / name)
        paths[name] = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(Two(), str(paths["a"]), adapter_name="a").eval()
        peft_model.load_adapter(str(paths["b"]), adapter_name="b")
        peft_model.base_model.set_adapter(["a", "b"])
    ours = adapterkit.attach(Two(), adapterkit.load(paths["a"]), "a")
    adapterkit.attach(ours, adapterkit.load(paths["b"]), "b")
    adapterkit.set_active(ours, ["a", "b"])
    with torch.no_grad():
        theirs = peft_model(X)
        assert max_diff(ours(X), theirs) <= TOL
        adapterkit.merge_attached(ours, "a")
        adapterkit.merge_attached(ours, "b")
        assert max_diff(ours(X), theirs) <= TOL
        theirs_plain = peft_model.merge_and_unload()
        assert max_diff(theirs_plain(X), theirs) <= TOL
        ours_plain = adapterkit.merge_and_unload(ours)  # both already merged: strips the wrappers
        for key, value in theirs_plain.state_dict().items():
            assert max_diff(ours_plain.state_dict()[key], value) <= TOL, key
