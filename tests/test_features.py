"""PEFT 0.22.0 config fields that change ΔW or the forward pass: each is computed exactly or
refused by name (``adapterkit/kinds/features.py``).

Every adapter here is made and saved by real PEFT on a tiny Llama (or a small module holding an
``nn.MultiheadAttention``); expected outputs come from PEFT's own forward and ``merge_and_unload``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from peft_models import llama, randomize_adapter, token_input
from torch import nn

import adapterkit
from adapterkit.errors import AdapterkitError
from adapterkit.info import describe
from adapterkit.ops import merge_checkpoint

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora.config import BdLoraConfig, KasaConfig, MontecloraConfig, VeloraConfig  # noqa: E402


class MhaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.attn(x, x, x)[0])


def mha_net() -> nn.Module:
    torch.manual_seed(0)
    return MhaNet().eval()


# name -> (base builder, LoraConfig kwargs, the config field adapterkit names)
REFUSED = {
    "alora": (llama, dict(target_modules=["q_proj", "v_proj"], alora_invocation_tokens=[3, 4], task_type="CAUSAL_LM"), "alora_invocation_tokens"),
    "kasa": (llama, dict(target_modules=["q_proj"], r=2, kasa_config=KasaConfig()), "kasa_config"),
    "bdlora": (llama, dict(target_modules=["q_proj", "o_proj"], r=4, use_bdlora=BdLoraConfig(
        target_modules_bd_a=["q_proj"], target_modules_bd_b=["o_proj"], nblocks=2)), "use_bdlora"),
    "trainable_tokens": (llama, dict(target_modules=["q_proj"], trainable_token_indices=[1, 5, 7]), "trainable_token_indices"),
    "mha": (mha_net, dict(target_modules=["attn", "lin"], r=2), "target_modules"),
}
PLAIN_AT_INFERENCE = {
    "velora": dict(target_modules=["q_proj", "v_proj"], velora_config=VeloraConfig(num_groups=4)),
    "monteclora": dict(target_modules=["q_proj", "v_proj"], monteclora_config=MontecloraConfig()),
}


def _save_peft(base, kwargs, path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base(), LoraConfig(**kwargs))
        randomize_adapter(model)
        if "trainable_token_indices" in kwargs:  # PEFT starts the rows at the base's: make them new
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "trainable_tokens_delta" in name:
                        p.add_(torch.randn_like(p))
        model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    out = {}
    for name, (base, kwargs, _) in REFUSED.items():
        _save_peft(base, kwargs, root / name)
        out[name] = root / name
    for name, kwargs in PLAIN_AT_INFERENCE.items():
        _save_peft(llama, kwargs, root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    llama().save_pretrained(root / "llama", safe_serialization=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in mha_net().state_dict().items()}, str(root / "mha.safetensors"))
    return {"llama": root / "llama", "mha": root / "mha.safetensors"}


def _base_of(name: str, checkpoints) -> tuple:
    return (mha_net, checkpoints["mha"]) if name == "mha" else (llama, checkpoints["llama"])


def _refused(call, field: str) -> AdapterkitError:
    with pytest.raises(AdapterkitError) as info:
        call()
    assert info.value.code == "not-supported", (info.value.code, str(info.value))
    assert info.value.key == field, (info.value.key, str(info.value))
    return info.value


# ----------------------------------------------------------------------------- validate / info


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_validate_reports_unsupported_feature_not_malformed(saved, name):
    field = REFUSED[name][2]
    problems = adapterkit.validate(saved[name])
    codes = {p.code for p in problems}
    assert not [p for p in problems if p.severity == "error"], problems
    assert "unexpected-key" not in codes and "shape-mismatch" not in codes, problems
    found = [p for p in problems if p.code == "feature-unsupported"]
    assert found and found[0].key == field and "unsupported feature" in found[0].message, problems


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_info_reports_unsupported_feature(saved, name):
    summary = describe(adapterkit.open_adapter(saved[name]), per_module=False)
    found = [p for p in summary["problems"] if p["code"] == "feature-unsupported"]
    assert found and found[0]["key"] == REFUSED[name][2]
    assert not [p for p in summary["problems"] if p["code"] == "unexpected-key"]


@pytest.mark.parametrize("name", sorted(PLAIN_AT_INFERENCE))
def test_variant_tensors_are_not_unexpected_keys(saved, name):
    assert adapterkit.validate(saved[name]) == []


# ----------------------------------------------------------------------------- every operation refuses by name


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_offline_merge_and_unmerge_refuse_by_name(saved, checkpoints, name, tmp_path):
    field = REFUSED[name][2]
    _, ckpt = _base_of(name, checkpoints)
    out = tmp_path / ("out.safetensors" if str(ckpt).endswith(".safetensors") else "out")
    err = _refused(lambda: merge_checkpoint(ckpt, [saved[name]], out), field)
    assert "merge" in str(err)
    _refused(lambda: merge_checkpoint(ckpt, [saved[name]], out, unmerge=True), field)
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_attach_refuses_by_name_and_leaves_the_model_alone(saved, checkpoints, name):
    base, _ = _base_of(name, checkpoints)
    model = base()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _refused(lambda: adapterkit.attach(model, adapterkit.load(saved[name])), REFUSED[name][2])
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_low_rank_operations_refuse_by_name(saved, name):
    field = REFUSED[name][2]
    adapter = adapterkit.load(saved[name])
    module = sorted(adapter.modules)[0]
    calls = {
        "combine": lambda: adapterkit.combine([adapter, adapter], [0.5, 0.5], "svd"),
        "resize": lambda: adapterkit.resize(adapter, rank=1),
        "rebalance": lambda: adapterkit.rebalance(adapter, rank=1),
        "prune": lambda: adapterkit.prune(adapter, min_energy=0.1),
        "export": lambda: adapterkit.export(adapter, "vllm"),
        "diff": lambda: adapterkit.diff(adapter, adapter),
        "delta_weight": lambda: adapter.delta_weight(module),
    }
    for what, call in calls.items():
        err = _refused(call, field)
        assert field in str(err), (what, str(err))


def test_alora_merge_is_refused_as_peft_refuses_it(saved):
    """PEFT itself cannot merge an aLoRA (its variant raises); adapterkit's in-model merge refuses too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(llama(), saved["alora"])
    with pytest.raises(NotImplementedError, match="aLoRA does not support merging"):
        model.merge_and_unload()
    _refused(lambda: adapterkit.attach(llama(), adapterkit.load(saved["alora"])), "alora_invocation_tokens")


def test_cli_names_the_field(saved, checkpoints, tmp_path):
    from click.testing import CliRunner

    from adapterkit.cli import main

    result = CliRunner().invoke(main, ["merge", str(checkpoints["llama"]), str(saved["kasa"]), str(tmp_path / "m")])
    assert result.exit_code == 2, result.output
    assert "kasa_config" in result.output and "[not-supported]" in result.output
    result = CliRunner().invoke(main, ["validate", str(saved["kasa"])])
    assert result.exit_code == 0 and "unsupported feature" in result.output and "[feature-unsupported]" in result.output


# ----------------------------------------------------------------------------- plain LoRA at inference


@pytest.mark.parametrize("name", sorted(PLAIN_AT_INFERENCE))
def test_plain_at_inference_variants_merge_as_peft(saved, checkpoints, name, tmp_path):
    from safetensors.torch import load_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = PeftModel.from_pretrained(llama(), saved[name]).merge_and_unload().state_dict()
    merge_checkpoint(checkpoints["llama"], [saved[name]], tmp_path / "m")
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    for key, value in got.items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("name", sorted(PLAIN_AT_INFERENCE))
def test_plain_at_inference_variants_attach_as_peft(saved, name):
    inputs = token_input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(llama(), saved[name]).eval()
        with torch.no_grad():
            expected = peft_model(**inputs).logits
    model = llama()
    adapterkit.attach(model, adapterkit.load(saved[name]))
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PLAIN_AT_INFERENCE))
def test_plain_at_inference_variants_resize_keeps_delta(saved, name):
    adapter = adapterkit.load(saved[name])
    small, _ = adapterkit.resize(adapter, rank=8)
    for module in adapter.modules:
        torch.testing.assert_close(small.delta_weight(module), adapter.delta_weight(module), rtol=1e-5, atol=1e-6)
