"""Per-module orientation (issue 17 point 3) against PEFT 0.22.0 and transformers' GPT-2.

PEFT decides ``fan_in_fan_out`` by the layer: a transformers Conv1D is transposed whatever the
saved flag says, and PEFT saves ``false`` for a second adapter added with ``add_adapter`` and for
one adapter whose last targeted layer is a Linear.  Offline merge, unmerge and combine must
compute what PEFT does with those files, or refuse by name where the checkpoint cannot tell.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import IA3Config, LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft_models import shards  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)

import adapterkit  # noqa: E402
from adapterkit.cli import main  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.ops import merge_checkpoint  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 3, 7]])


def _random_biases(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # GPT-2 starts its biases at zero; random ones make bias handling show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return _random_biases(GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)))


def gpt2_classifier() -> torch.nn.Module:
    """GPT-2's Conv1D layers and a Linear head (``score``, 3 x 16) in one model."""
    torch.manual_seed(0)
    return _random_biases(GPT2ForSequenceClassification(
        GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, num_labels=3, pad_token_id=0)))


def _fill(model: torch.nn.Module, seed: int, adapter_name: str | None = None) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (adapter_name is None and p.requires_grad) or (adapter_name is not None and f".{adapter_name}" in name):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.2 if "ia3_l" in name else torch.randn(p.shape, generator=g) * 0.1)


def _quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


def save_base(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path)
    return path


def two_adapters(make, path: Path, second_targets: list[str], *, ia3: bool = False, dora: bool = False) -> Path:
    """PEFT's own files: ``default`` (fan_in_fan_out=True, on the Conv1D layers) and ``second``
    added with ``add_adapter`` with the default flag, saved in ``path/second``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ia3:
            first = IA3Config(target_modules=["c_attn", "c_proj", "c_fc"], feedforward_modules=["c_fc"], fan_in_fan_out=True)
            second = IA3Config(target_modules=second_targets, feedforward_modules=[])
        else:
            first = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
            second = LoraConfig(r=2, lora_alpha=6, target_modules=second_targets, use_dora=dora)
        model = get_peft_model(make(), first)
        model.add_adapter("second", second)
        _fill(model, 1, "default")
        _fill(model, 2, "second")
        model.save_pretrained(path)
    saved = json.loads((path / "second" / "adapter_config.json").read_text())
    assert saved["fan_in_fan_out"] is False  # what PEFT 0.22.0 writes for the second adapter
    return path / "second"


def peft_merged(make, adapter: Path) -> dict[str, torch.Tensor]:
    """PEFT's merge_and_unload of ``adapter`` loaded onto a fresh base (PEFT decides per layer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(make(), adapter).merge_and_unload().state_dict()


def assert_merged_like_peft(out: Path, theirs: dict[str, torch.Tensor]) -> None:
    ours = shards(out)
    theirs = {k: v for k, v in theirs.items() if k in ours or k != "lm_head.weight"}  # tied lm_head is not saved
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)


# ----------------------------------------------------------------------------- merge


@pytest.mark.parametrize("targets", [["c_attn", "attn.c_proj"], ["attn.c_proj"]], ids=["c_attn+c_proj", "square_c_proj"])
def test_second_adapter_from_add_adapter_merges_as_peft(tmp_path: Path, targets: list[str]) -> None:
    """A second adapter saves fan_in_fan_out=false for GPT-2's Conv1D layers: c_attn (16 x 48)
    was refused as base-mismatch, the square attn.c_proj merged silently wrong."""
    base = save_base(gpt2(), tmp_path / "base")
    second = two_adapters(gpt2, tmp_path / "adapters", targets)
    merge_checkpoint(base, [second], tmp_path / "out")
    assert_merged_like_peft(tmp_path / "out", peft_merged(gpt2, second))
    # and back out again
    merge_checkpoint(tmp_path / "out", [second], tmp_path / "back", unmerge=True)
    original = shards(base)
    for key, value in shards(tmp_path / "back").items():
        torch.testing.assert_close(value, original[key], rtol=0, atol=1e-6, msg=key)


def test_second_dora_adapter_merges_as_peft(tmp_path: Path) -> None:
    """DoRA's norm is taken per output row of the (out, in) weight: the transposed one for Conv1D."""
    base = save_base(gpt2(), tmp_path / "base")
    second = two_adapters(gpt2, tmp_path / "adapters", ["c_attn", "attn.c_proj"], dora=True)
    merge_checkpoint(base, [second], tmp_path / "out")
    assert_merged_like_peft(tmp_path / "out", peft_merged(gpt2, second))


def test_second_ia3_adapter_merges_as_peft(tmp_path: Path) -> None:
    """IA3 likewise: PEFT scales a Conv1D's columns whatever the second adapter's saved flag."""
    base = save_base(gpt2(), tmp_path / "base")
    second = two_adapters(gpt2, tmp_path / "adapters", ["c_attn", "attn.c_proj"], ia3=True)
    merge_checkpoint(base, [second], tmp_path / "out")
    assert_merged_like_peft(tmp_path / "out", peft_merged(gpt2, second))


def test_one_adapter_on_conv1d_and_linear_layers_merges_as_peft(tmp_path: Path) -> None:
    """One adapter targeting GPT-2's Conv1D layers and the Linear ``score`` head: PEFT saves the
    flag of the last layer it wrapped (false, the head) and transposes the Conv1D ones anyway."""
    base = save_base(gpt2_classifier(), tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(gpt2_classifier(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "attn.c_proj", "score"],
                                                             fan_in_fan_out=True))
        _fill(model, 3)
        model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["fan_in_fan_out"] is False
    merge_checkpoint(base, [tmp_path / "adapter"], tmp_path / "out")
    assert_merged_like_peft(tmp_path / "out", peft_merged(gpt2_classifier, tmp_path / "adapter"))
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attached = PeftModel.from_pretrained(gpt2_classifier(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, attached(IDS).logits, rtol=1e-5, atol=1e-5)


def _single_file(model: torch.nn.Module, path: Path) -> Path:
    """The model as one .safetensors file, no config.json (lm_head is tied: left out)."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def test_square_conv1d_without_config_is_refused_by_name_and_the_option_merges_it(tmp_path: Path) -> None:
    base = _single_file(gpt2(), tmp_path / "base" / "model.safetensors")
    second = two_adapters(gpt2, tmp_path / "adapters", ["attn.c_proj"])
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [second], tmp_path / "out")
    err = info.value
    assert err.code == "orientation-unknown" and err.key == "transformer.h.0.attn.c_proj"
    assert "fan_in_fan_out" in str(err) and "--fan-in-fan-out" in str(err) and "2 modules" in str(err)
    assert not (tmp_path / "out").exists()
    merge_checkpoint(base, [second], tmp_path / "out", fan_in_fan_out=True)
    assert_merged_like_peft(tmp_path / "out", peft_merged(gpt2, second))
    # per module, by suffix, as the CLI spells it
    merge_checkpoint(base, [second], tmp_path / "out2", fan_in_fan_out="attn.c_proj=true")
    assert_merged_like_peft(tmp_path / "out2", peft_merged(gpt2, second))


def test_non_square_conv1d_without_config_is_decided_by_shape(tmp_path: Path) -> None:
    base = _single_file(gpt2(), tmp_path / "base" / "model.safetensors")
    second = two_adapters(gpt2, tmp_path / "adapters", ["c_attn", "mlp.c_proj"])
    merge_checkpoint(base, [second], tmp_path / "out")
    assert_merged_like_peft(tmp_path / "out", peft_merged(gpt2, second))


def test_cli_refusal_is_one_line_naming_module_and_option(tmp_path: Path) -> None:
    base = _single_file(gpt2(), tmp_path / "base" / "model.safetensors")
    second = two_adapters(gpt2, tmp_path / "adapters", ["attn.c_proj"])
    result = CliRunner().invoke(main, ["merge", str(base), str(second), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "orientation-unknown" in line and "transformer.h.0.attn.c_proj" in line and "--fan-in-fan-out" in line
    result = CliRunner().invoke(main, ["merge", str(base), str(second), str(tmp_path / "out"), "--fan-in-fan-out", "true"])
    assert result.exit_code == 0, result.output
    assert_merged_like_peft(tmp_path / "out", peft_merged(gpt2, second))


def test_config_json_outranks_a_wrong_flag_on_a_linear_model(tmp_path: Path) -> None:
    """The other direction: a flag saying true on a model config.json names as Linear-only
    (PEFT flips it to false on nn.Linear) is ignored."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama() -> torch.nn.Module:
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1)).eval()

    base = save_base(llama(), tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
        model.add_adapter("second", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], fan_in_fan_out=True))
        _fill(model, 4, "second")
        model.save_pretrained(tmp_path / "adapters")
    second = tmp_path / "adapters" / "second"
    assert json.loads((second / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    merge_checkpoint(base, [second], tmp_path / "out")
    assert_merged_like_peft(tmp_path / "out", peft_merged(llama, second))


# ----------------------------------------------------------------------------- combine


def _peft_delta(make, adapter: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(make(), adapter)
    return {name: m.get_delta_weight("default") for name, m in model.named_modules() if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {})}


def test_combine_first_and_second_adapter_needs_the_orientation_and_loads_in_peft(tmp_path: Path) -> None:
    second = two_adapters(gpt2, tmp_path / "adapters", ["c_attn", "attn.c_proj"])
    first = tmp_path / "adapters"
    a, b = adapterkit.load(first), adapterkit.load(second)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.combine([a, b], [0.75, -0.5], "linear")
    assert info.value.code == "orientation-unknown" and info.value.key == "transformer.h.0.attn.c_attn"
    assert "fan_in_fan_out" in str(info.value)
    result = adapterkit.combine([b, a], [-0.5, 0.75], "linear", fan_in_fan_out=True)
    assert result.config.fan_in_fan_out is True  # said, though the first adapter's says false
    adapterkit.save(result, tmp_path / "ab")
    ours = _peft_delta(gpt2, tmp_path / "ab")
    da, db = _peft_delta(gpt2, first), _peft_delta(gpt2, second)
    assert set(ours) == set(da) | set(db)
    for name, delta in ours.items():
        want = 0.75 * da.get(name, 0) + -0.5 * db.get(name, 0)
        torch.testing.assert_close(delta, want, rtol=1e-5, atol=1e-6, msg=name)


def test_combine_adapters_whose_flags_differ_on_different_modules(tmp_path: Path) -> None:
    """One adapter on Conv1D layers (flag true), one on the Linear head (flag false): no module
    disagrees, so the factors combine exactly (was refused as adapters-incompatible)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, cfg, seed in (("conv", LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True), 5),
                                ("head", LoraConfig(r=2, lora_alpha=4, target_modules=["score"]), 6)):
            model = get_peft_model(gpt2_classifier(), cfg)
            _fill(model, seed)
            model.save_pretrained(tmp_path / name)
    result = adapterkit.combine([adapterkit.load(tmp_path / "conv"), adapterkit.load(tmp_path / "head")], [2.0, 0.5], "cat")
    adapterkit.save(result, tmp_path / "both")
    ours = _peft_delta(gpt2_classifier, tmp_path / "both")
    dc, dh = _peft_delta(gpt2_classifier, tmp_path / "conv"), _peft_delta(gpt2_classifier, tmp_path / "head")
    assert set(ours) == set(dc) | set(dh)
    for name, delta in ours.items():
        want = 2.0 * dc[name] if name in dc else 0.5 * dh[name]
        torch.testing.assert_close(delta, want, rtol=1e-5, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- the rules without PEFT


def _square_base(tmp_path: Path) -> tuple[Path, adapterkit.Adapter, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    W = torch.randn(4, 4, generator=g)
    base = tmp_path / "base.safetensors"
    save_file({"m.q.weight": W}, str(base))
    A, B = torch.randn(2, 4, generator=g), torch.randn(4, 2, generator=g)
    adapter = adapterkit.Adapter.from_tensors(
        adapterkit.LoraConfig(r=2, lora_alpha=4, target_modules=("q",), fan_in_fan_out=True),
        {"base_model.model.m.q.lora_A.weight": A, "base_model.model.m.q.lora_B.weight": B})
    return base, adapter, W + (B @ A) * 2.0


def test_saved_true_on_a_name_no_conv1d_has_is_refused_without_config(tmp_path: Path) -> None:
    """A square weight, no config.json, and a flag saying transposed on a module whose name no
    transformers Conv1D layer has: PEFT would not transpose an nn.Linear, so the flag is not evidence."""
    base, adapter, want = _square_base(tmp_path)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out.safetensors")
    assert info.value.code == "orientation-unknown" and info.value.key == "m.q" and "fan_in_fan_out" in str(info.value)
    merge_checkpoint(base, [adapter], tmp_path / "out.safetensors", fan_in_fan_out=False)
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(str(tmp_path / "out.safetensors"))["m.q.weight"], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("value", ["m.k=true", "sideways", "q=perhaps"])
def test_a_bad_or_misspelt_orientation_is_an_argument_error(tmp_path: Path, value: str) -> None:
    base, adapter, _ = _square_base(tmp_path)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out.safetensors", fan_in_fan_out=value)
    assert info.value.code == "argument-invalid" and "fan_in_fan_out" in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("config", [None, {"model_type": "qwen", "auto_map": {"AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}},
                                    {"model_type": "gpt_bigcode"}, {"architectures": ["GPT2LMHeadModel"]}],
                         ids=["no-config", "remote-code", "bigcode", "gpt2-by-architecture"])
def test_what_config_json_decides_for_a_square_c_proj(tmp_path: Path, config) -> None:
    """c_proj is Conv1D in GPT-2 and nn.Linear in GPT-BigCode and in remote-code Qwen: only a
    config.json naming a transformers model decides it; remote code (auto_map) does not."""
    g = torch.Generator().manual_seed(11)
    W = torch.randn(4, 4, generator=g)
    base = tmp_path / "base"
    base.mkdir()
    save_file({"h.0.attn.c_proj.weight": W}, str(base / "model.safetensors"))
    if config is not None:
        (base / "config.json").write_text(json.dumps(config))
    A, B = torch.randn(2, 4, generator=g), torch.randn(4, 2, generator=g)
    adapter = adapterkit.Adapter.from_tensors(adapterkit.LoraConfig(r=2, lora_alpha=2, target_modules=("c_proj",)),
                                              {"base_model.model.h.0.attn.c_proj.lora_A.weight": A,
                                               "base_model.model.h.0.attn.c_proj.lora_B.weight": B})
    if config is None or "auto_map" in config:
        with pytest.raises(AdapterkitError) as info:
            merge_checkpoint(base, [adapter], tmp_path / "out")
        assert info.value.code == "orientation-unknown" and info.value.key == "h.0.attn.c_proj"
        return
    merge_checkpoint(base, [adapter], tmp_path / "out")
    transposed = "architectures" in config
    want = W + ((B @ A).T if transposed else B @ A)
    torch.testing.assert_close(shards(tmp_path / "out")["h.0.attn.c_proj.weight"], want, rtol=0, atol=1e-6)


def test_first_adapter_without_config_keeps_its_flag_where_the_names_agree(tmp_path: Path) -> None:
    """PEFT's first adapter on GPT-2 saves true: with no config.json, the square attn.c_proj is
    transposed because the flag and the Conv1D name agree (the others by shape)."""
    base = _single_file(gpt2(), tmp_path / "base" / "model.safetensors")
    two_adapters(gpt2, tmp_path / "adapters", ["attn.c_proj"])
    merge_checkpoint(base, [tmp_path / "adapters"], tmp_path / "out")
    assert_merged_like_peft(tmp_path / "out", peft_merged(gpt2, tmp_path / "adapters"))


def test_cli_combine_refuses_by_name_and_takes_the_option(tmp_path: Path) -> None:
    second = two_adapters(gpt2, tmp_path / "adapters", ["attn.c_proj"])
    args = ["combine", str(tmp_path / "adapters"), str(second), "--method", "cat", "-o", str(tmp_path / "ab")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "orientation-unknown" in line and "transformer.h.0.attn.c_proj" in line and "--fan-in-fan-out" in line
    result = CliRunner().invoke(main, [*args, "--fan-in-fan-out", "true"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ab" / "adapter_config.json").read_text())["fan_in_fan_out"] is True


@pytest.mark.parametrize("value", ["sideways", "attn.c_proj=maybe", "=true"])
def test_cli_bad_orientation_is_a_usage_error_before_torch(value: str) -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom adapterkit.cli import main\ntry:\n"
            f"    main(['merge', 'base', 'lora', 'out', '--fan-in-fan-out', {value!r}], prog_name='adapterkit')\n"
            "except SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines() == ["exit 2", "no torch"], proc.stdout + proc.stderr
    assert "--fan-in-fan-out" in proc.stderr and "expected auto, true, false" in proc.stderr


def test_a_per_module_orientation_names_whole_name_components(tmp_path: Path) -> None:
    """`fc=true` names modules called `fc` (or ending in `.fc`), as PEFT's list targets match:
    it says nothing of `c_fc`, whose square weight then stays undecided and is refused by name."""
    g = torch.Generator().manual_seed(5)
    base = tmp_path / "base.safetensors"
    save_file({"h.fc.weight": torch.randn(4, 4, generator=g), "h.c_fc.weight": torch.randn(4, 4, generator=g)}, str(base))
    tensors = {f"base_model.model.h.{m}.lora_{x}.weight": torch.randn(*shape, generator=g)
               for m in ("fc", "c_fc") for x, shape in (("A", (2, 4)), ("B", (4, 2)))}
    adapter = adapterkit.Adapter.from_tensors(adapterkit.LoraConfig(r=2, lora_alpha=4, target_modules=("fc", "c_fc")), tensors)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out.safetensors", fan_in_fan_out="fc=true")
    assert info.value.code == "orientation-unknown" and "h.c_fc" in str(info.value)
    merge_checkpoint(base, [adapter], tmp_path / "out.safetensors", fan_in_fan_out="fc=true,c_fc=false")
    assert (tmp_path / "out.safetensors").exists()
