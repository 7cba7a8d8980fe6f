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
from adapterkit.ops import merge_checkpoint
from adapterkit.summary import describe

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
    "mha": (mha_net, dict(target_modules=["attn", "lin"], r=2), "target_modules"),
}
TOKENS = {
    "tokens": dict(target_modules=["q_proj"], trainable_token_indices=[1, 5, 7]),
    "tokens_dict": dict(target_modules=["q_proj"], trainable_token_indices={"embed_tokens": [2, 3], "lm_head": [0, 9]}),
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
    for name, kwargs in TOKENS.items():
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


def test_info_gives_no_factor_norms_for_a_feature_that_changes_delta(saved):
    summary = describe(adapterkit.load(saved["kasa"]))
    assert summary["per_module"] == {}  # ‖B·A‖ ignores lora_diag: not shown as if it were ‖ΔW‖
    assert summary["values_checked"]


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
    adapter = adapterkit.load(saved[name])
    adapterkit.attach(model, adapter)
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert adapterkit.extract_from_model(model) == adapter  # the variant's training tensors come back too


# ----------------------------------------------------------------------------- target_parameters


class Mix(nn.Module):
    """A 2-D parameter used as x @ P, not as a Linear's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.P = nn.Parameter(torch.randn(8, 6) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.P)


class Experts(nn.Module):
    """A 3-D expert stack (experts, in, out), as transformers' MoE layers hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = nn.Parameter(torch.randn(2, 6, 6) * 0.3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.einsum("bi,eio->bo", h, self.stack)


class ParamNet(nn.Module):
    def __init__(self, experts: bool = False) -> None:
        super().__init__()
        self.mix = Mix()
        self.experts = Experts() if experts else nn.Identity()
        self.lin = nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.experts(self.mix(x)))


def param_net(experts: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return ParamNet(experts).eval()


def _peft_params(path, targets, base=param_net, **kw) -> nn.Module:
    return _save_peft(base, dict(target_modules=[], target_parameters=targets, r=2, **kw), path)


@pytest.mark.parametrize("targets", [["mix.P"], ["mix.P", "lin.weight"]])
def test_target_parameters_attach_matches_peft(tmp_path, targets):
    _peft_params(tmp_path / "a", targets)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(param_net(), tmp_path / "a").eval()
        with torch.no_grad():
            expected = peft_model(x)
        merged_peft = peft_model.merge_and_unload().state_dict()
    model = param_net()
    adapter = adapterkit.load(tmp_path / "a")
    adapterkit.attach(model, adapter)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
        with adapterkit.disabled(model):
            assert torch.equal(model(x), param_net()(x))
    assert adapterkit.extract_from_model(model) == adapter
    merged = adapterkit.merge_and_unload(model).state_dict()
    assert merged.keys() == merged_peft.keys()
    for key in merged:
        torch.testing.assert_close(merged[key], merged_peft[key], rtol=0, atol=1e-7)


def test_target_parameters_two_active_adapters_add_up_as_peft(tmp_path):
    _peft_params(tmp_path / "a", ["mix.P"])
    _save_peft(param_net, dict(target_modules=[], target_parameters=["mix.P"], r=3, lora_alpha=5), tmp_path / "b")
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(param_net(), tmp_path / "a", adapter_name="a")
        peft_model.load_adapter(tmp_path / "b", adapter_name="b")
        peft_model.base_model.set_adapter(["a", "b"])
        with torch.no_grad():
            expected = peft_model(x)
    model = param_net()
    adapterkit.attach(model, adapterkit.load(tmp_path / "a"), name="a")
    adapterkit.attach(model, adapterkit.load(tmp_path / "b"), name="b", activate=False)
    adapterkit.set_active(model, ["a", "b"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)


def test_target_parameters_on_expert_stacks_is_refused_by_name(tmp_path, checkpoints):
    _peft_params(tmp_path / "a", ["experts.stack"], base=lambda: param_net(experts=True))
    problems = adapterkit.validate(tmp_path / "a")
    assert [p.code for p in problems] == ["feature-unsupported"] and problems[0].key == "target_parameters", problems
    adapter = adapterkit.load(tmp_path / "a")
    _refused(lambda: adapterkit.attach(param_net(experts=True), adapter), "target_parameters")
    _refused(lambda: adapterkit.resize(adapter, rank=1), "target_parameters")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in param_net(experts=True).state_dict().items()}, str(tmp_path / "base.safetensors"))
    _refused(lambda: merge_checkpoint(tmp_path / "base.safetensors", [adapter], tmp_path / "out.safetensors"), "target_parameters")


# ----------------------------------------------------------------------------- trainable tokens


def _peft_logits_and_merged(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(llama(), path).eval()
        with torch.no_grad():
            logits = model(**token_input()).logits
        return logits, model.merge_and_unload().state_dict()


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_trainable_tokens_merge_as_peft(saved, checkpoints, name, tmp_path):
    from safetensors.torch import load_file

    _, expected = _peft_logits_and_merged(saved[name])
    merge_checkpoint(checkpoints["llama"], [saved[name]], tmp_path / "m")
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert got.keys() == expected.keys()
    changed = [k for k in got if not torch.equal(got[k], llama().state_dict()[k])]
    assert any("embed_tokens" in k for k in changed)
    for key, value in got.items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_trainable_tokens_attach_as_peft(saved, name):
    logits, merged_peft = _peft_logits_and_merged(saved[name])
    model = llama()
    adapter = adapterkit.load(saved[name])
    adapterkit.attach(model, adapter)
    with torch.no_grad():
        assert torch.equal(model(**token_input()).logits, logits)
        with adapterkit.disabled(model):
            assert torch.equal(model(**token_input()).logits, llama()(**token_input()).logits)
    assert adapterkit.extract_from_model(model) == adapter
    adapterkit.merge_attached(model)
    adapterkit.unmerge_attached(model)  # the replaced rows come back
    base = llama().state_dict()
    assert all(torch.equal(v, base[k]) for k, v in adapterkit.unload(model).state_dict().items() if "embed" in k or "lm_head" in k)
    model = llama()
    adapterkit.attach(model, adapter)
    merged = adapterkit.merge_and_unload(model).state_dict()
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(merged[key], merged_peft[key]), key


def test_trainable_tokens_refusals_name_the_field(saved, checkpoints, tmp_path):
    adapter = adapterkit.load(saved["tokens"])
    _refused(lambda: merge_checkpoint(checkpoints["llama"], [adapter], tmp_path / "u", unmerge=True), "trainable_token_indices")
    _refused(lambda: adapterkit.resize(adapter, rank=2), "trainable_token_indices")
    _refused(lambda: adapterkit.combine([adapter, adapter], [0.5, 0.5], "cat"), "trainable_token_indices")
    _refused(lambda: adapter.delta_weight("model.embed_tokens"), "trainable_token_indices")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_layer = PeftModel.from_pretrained(llama(), saved["tokens"]).base_model.model.model.layers[0].self_attn.q_proj
        assert torch.equal(adapter.delta_weight("model.layers.0.self_attn.q_proj"), peft_layer.get_delta_weight("default"))
    problems = adapterkit.validate(saved["tokens"])
    assert [p.code for p in problems] == ["feature-unsupported"] and problems[0].key == "trainable_token_indices"
    # a model whose lm_head shares the embedding: PEFT ties a token adapter to lm_head, attach refuses
    tied = llama()
    tied.lm_head.weight = tied.model.embed_tokens.weight
    _refused(lambda: adapterkit.attach(tied, adapter), "trainable_token_indices")


def tied_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_trainable_tokens_on_tied_embeddings_merge_shared_as_peft(tmp_path):
    from safetensors.torch import load_file

    _save_peft(tied_llama, TOKENS["tokens"], tmp_path / "a")
    tied_llama().save_pretrained(tmp_path / "base", safe_serialization=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(tied_llama(), tmp_path / "a").eval()
        with torch.no_grad():
            logits = peft_model(**token_input()).logits
        expected = peft_model.merge_and_unload()
    _refused(lambda: merge_checkpoint(tmp_path / "base", [tmp_path / "a"], tmp_path / "untied"), "trainable_token_indices")
    merge_checkpoint(tmp_path / "base", [tmp_path / "a"], tmp_path / "m", tied_embeddings="shared")
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    want = expected.state_dict()
    for key, value in got.items():
        assert torch.equal(value, want[key]), key
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**token_input()).logits, logits, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the table covers PEFT 0.22.0


@pytest.mark.parametrize("peft_type, cls_name", [
    ("LORA", "LoraConfig"), ("IA3", "IA3Config"), ("PROMPT_TUNING", "PromptTuningConfig"),
    ("PREFIX_TUNING", "PrefixTuningConfig"), ("P_TUNING", "PromptEncoderConfig"),
])
def test_every_peft_config_field_has_a_status(peft_type, cls_name):
    """A field PEFT adds (a new variant) must get a row: implemented, inert or unsupported."""
    import dataclasses

    from adapterkit.kinds import KINDS
    from adapterkit.kinds.features import FIELDS, IMPLEMENTED, INERT, UNSUPPORTED

    table = FIELDS.get(peft_type, FIELDS["PROMPT_LEARNING"])
    typed = {f.name for f in KINDS[peft_type].config.typed_fields()}
    for f in dataclasses.fields(getattr(peft, cls_name)):
        row = table.get(f.name)
        assert f.name in typed or row is not None, f"{cls_name}.{f.name} has no row in kinds/features.py"
        if row is not None:
            assert row.status in (IMPLEMENTED, INERT, UNSUPPORTED) and row.since
            if f.metadata.get("is_lora_variant"):  # PEFT's variants change the forward pass: never inert
                assert row.status != INERT, f.name


class TwoParams(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.P = nn.Parameter(torch.randn(8, 6) * 0.3)
        self.Q = nn.Parameter(torch.randn(6, 6) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.P @ self.Q


class TwoParamNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = TwoParams()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)


def two_param_net() -> nn.Module:
    torch.manual_seed(0)
    return TwoParamNet().eval()


def test_target_parameters_on_two_parameters_of_one_module_is_refused_by_name(tmp_path):
    """PEFT nests one wrapper per parameter (keys `mix.base_layer.lora_*` and `mix.lora_*`): not
    a base module `mix.base_layer` missing from the checkpoint, but a feature refused by name."""
    _save_peft(two_param_net, dict(target_modules=[], target_parameters=["mix.P", "mix.Q"], r=2), tmp_path / "a")
    problems = adapterkit.validate(tmp_path / "a")
    assert [p.code for p in problems] == ["feature-unsupported"] and problems[0].key == "target_parameters", problems
    adapter = adapterkit.load(tmp_path / "a")
    _refused(lambda: adapterkit.attach(two_param_net(), adapter), "target_parameters")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in two_param_net().state_dict().items()}, str(tmp_path / "base.safetensors"))
    _refused(lambda: merge_checkpoint(tmp_path / "base.safetensors", [adapter], tmp_path / "out.safetensors"), "target_parameters")


def test_lora_bias_with_dora_is_refused_by_name_as_peft_refuses_the_config(tmp_path, checkpoints):
    """PEFT's LoraConfig raises for use_dora with lora_bias, so no PEFT model defines the
    pair; a file carrying both (hand-made, or from another tool) is reported and refused by
    name in every operation, never merged by a guess."""
    with pytest.raises(ValueError, match="lora_bias=True is not supported for DoRA"):
        LoraConfig(target_modules=["q_proj"], use_dora=True, lora_bias=True)
    path = tmp_path / "dora_bias"
    _save_peft(llama, dict(target_modules=["q_proj"], r=2, use_dora=True), path)
    import json

    from safetensors.torch import load_file, save_file
    tensors = load_file(path / "adapter_model.safetensors")
    for key in [k for k in tensors if k.endswith("lora_B.weight")]:
        tensors[key.replace("lora_B.weight", "lora_B.bias")] = torch.randn(tensors[key].shape[0])
    save_file(tensors, path / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps(dict(config, lora_bias=True)))
    problems = adapterkit.validate(path)
    assert not [p for p in problems if p.severity == "error"], problems
    assert [p.key for p in problems if p.code == "feature-unsupported"] == ["lora_bias"], problems
    adapter = adapterkit.load(path)
    out = tmp_path / "out"
    for call in (lambda: merge_checkpoint(checkpoints["llama"], [path], out),
                 lambda: merge_checkpoint(checkpoints["llama"], [path], out, unmerge=True),
                 lambda: adapterkit.attach(llama(), adapter)):
        assert "DoRA" in str(_refused(call, "lora_bias"))
    assert not out.exists()
    for call in (lambda: adapterkit.combine([adapter, adapter], [0.5, 0.5], "cat"), lambda: adapterkit.resize(adapter, rank=1)):
        with pytest.raises(AdapterkitError) as info:  # DoRA alone is refused there already
            call()
        assert info.value.code == "not-supported" and info.value.key in ("use_dora", "lora_bias")
