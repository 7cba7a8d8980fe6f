"""attach and the live-model functions on bitsandbytes' Linear4bit / Linear8bitLt, against PEFT's bnb
layers; every other quantized layer refused by name.

The oracles: PEFT 0.22.0 (``PeftModel.from_pretrained`` on the same quantized files: its
``tuners/lora/bnb.py`` and ``tuners/ia3/bnb.py``), bitsandbytes 0.50.2 (the packed weights, their
quant states and int8 row scales compared byte for byte), transformers 5.23.0 (quantizes a tiny
llama on CPU — NF4 with and without double quantization, bf16 compute dtype, and LLM.int8 — and
saves it; both sides load those files).  Adapters are made by PEFT on the dense model with random
values.

Exact (``torch.equal``, dtype included) wherever PEFT runs: forward of LoRA, rsLoRA, DoRA,
lora_bias, an adapter stored in bf16, two active adapters, ``set_active``, ``disabled``; IA3;
``merge_and_unload`` (packed bytes, quant states, scales, biases); ``extract_from_model``.  Refused
by name, as PEFT refuses or where PEFT computes something else: IA3 merges, a DoRA merge after
another adapter's, lora_bias onto a layer without bias, the CPU-packed 4-bit layout, LoRA on
parameters / ``modules_to_save`` of these layers, GPTQ / AWQ / FP8 layers.  Unmerge puts the
packed weights back (deliberate difference ``bnb-unmerge-restores``).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import adapterkit  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.inject.layers import AdapterLayer, layer_type  # noqa: E402
from adapterkit.inject.plan import wrappers  # noqa: E402

F = bnb.functional
IDS = torch.tensor([[1, 5, 9, 14, 33, 2, 70, 8], [3, 3, 60, 17, 4, 90, 11, 0]])
QUANTS = {
    "nf4-double": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False, bnb_4bit_compute_dtype=torch.bfloat16),
    "int8": dict(load_in_8bit=True),
}


def _configs() -> dict:
    from peft import IA3Config, LoraConfig

    lora = dict(r=4, lora_alpha=8, init_lora_weights=False)
    return {
        "lora": LoraConfig(target_modules=["q_proj", "v_proj", "down_proj"], **lora),
        "rslora": LoraConfig(target_modules=["q_proj", "k_proj", "o_proj", "up_proj"], use_rslora=True, **lora),
        "dora": LoraConfig(target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True, **lora),
        "bias": LoraConfig(target_modules=["q_proj", "v_proj"], lora_bias=True, **lora),  # attention_bias: q/v have biases
        "bias_nobase": LoraConfig(target_modules=["down_proj"], lora_bias=True, **lora),  # down_proj has none
        "second": LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False),
        "ia3": IA3Config(target_modules=["q_proj", "k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"], init_ia3_weights=False),
        "params": LoraConfig(r=2, target_modules=[], target_parameters=["0.self_attn.q_proj.weight"]),
        "saved": LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["down_proj"]),
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The tiny llama dense (bf16, and fp32 for IA3: PEFT's bnb IA3 returns fp32, which only an
    fp32 model carries on), quantized by transformers and saved, and the adapters."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("attach_bnb")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, attention_bias=True)
    dense = LlamaForCausalLM(cfg)
    dense.to(torch.bfloat16).save_pretrained(root / "dense")
    dense.float().save_pretrained(root / "dense32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kwargs in QUANTS.items():
            for src, suffix, dtype in (("dense", "", torch.bfloat16), ("dense32", "-fp32", torch.float32)):
                model = AutoModelForCausalLM.from_pretrained(root / src, dtype=dtype, device_map="cpu",
                                                             quantization_config=BitsAndBytesConfig(**kwargs))
                model.save_pretrained(root / (name + suffix))
        for i, (name, config) in enumerate(_configs().items()):
            torch.manual_seed(100 + i)
            peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(root / "dense32"), config)
            with torch.no_grad():
                for key, p in peft_model.named_parameters():
                    if p.requires_grad:
                        p.add_(torch.randn_like(p) * (0.02 if "magnitude" in key else 0.1))
            peft_model.save_pretrained(root / name)
    path = root / "second" / "adapter_model.safetensors"  # stored in bf16: PEFT and attach compute with fp32 copies
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(path).items()}, path)
    return root


def _load(root: Path, quant: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(root / quant, device_map="cpu").eval()


def _peft(root: Path, quant: str, *names: str) -> PeftModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(_load(root, quant), root / names[0], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(root / name, adapter_name=name)
        return model.eval()


def _ours(root: Path, quant: str, *names: str) -> nn.Module:
    model = _load(root, quant)
    for name in names:
        adapterkit.attach(model, adapterkit.load(root / name), name)
    return model


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' "inputs will be cast to float16" on int8 layers
        return model(input_ids=IDS).logits


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)


def _packed_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor bitsandbytes saves for the model: packed weights, quant-state members, SCB, biases."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors of a model with adapters attached (their own tensors left out)."""
    return {k.replace(".base_layer", ""): v for k, v in _packed_state(model).items() if ".lora_" not in k and ".ia3_" not in k}


def _assert_same_state(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    bad = [k for k in ours if not _same(ours[k], theirs[k])]
    assert not bad, bad


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("adapter", ["lora", "rslora", "dora", "bias"])
def test_forward_equals_peft(root, quant, adapter):
    """LoRA / rsLoRA / DoRA / lora_bias: PEFT's logits bit for bit (its bnb
    forward: input cast to lora_A's dtype, each adapter's term cast back to the output's dtype
    before the add; DoRA's norm over bitsandbytes' dequantized weight).  A second forward gives
    the same (PEFT's second DoRA forward on an 8-bit layer on CPU fails: its dequantization
    replaces the weight and drops its scales; ours changes nothing on the layer)."""
    theirs = _logits(_peft(root, quant, adapter))
    ours_model = _ours(root, quant, adapter)
    kinds = {type(w.base_layer).__name__ for _, w in wrappers(ours_model)}
    assert kinds == {"Linear8bitLt" if quant == "int8" else "Linear4bit"}
    ours = _logits(ours_model)
    assert ours.dtype == torch.bfloat16
    assert _same(ours, theirs)
    assert _same(_logits(ours_model), ours)
    assert not torch.equal(ours, _logits(_load(root, quant)))  # the adapter changes the outputs


@pytest.mark.parametrize("quant", QUANTS)
def test_ia3_equals_peft(root, quant):
    """IA3 (output scales on q/k/v, an input scale on the feed-forward down_proj): PEFT's bnb IA3
    upcasts a non-fp32 input to fp32 and keeps the fp32 the base layer returns for it.  Whole
    model on the fp32 model (a bf16 one cannot carry fp32 activations into its bf16 lm_head, in
    PEFT or here); layer by layer on the bf16 one, fp32 out on both sides."""
    assert _same(_logits(_ours(root, quant + "-fp32", "ia3")), _logits(_peft(root, quant + "-fp32", "ia3")))
    ours, theirs = _ours(root, quant, "ia3"), _peft(root, quant, "ia3").base_model.model
    torch.manual_seed(5)
    for path, width in (("model.layers.0.self_attn.k_proj", 64), ("model.layers.1.mlp.down_proj", 128)):
        x = torch.randn(2, 3, width, dtype=torch.bfloat16)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, b = ours.get_submodule(path)(x), theirs.get_submodule(path)(x)
        assert a.dtype == torch.float32 and _same(a, b), path


@pytest.mark.parametrize("quant", ["nf4-double", "int8"])
def test_two_adapters_set_active_disabled(root, quant):
    """Two adapters (one DoRA, one stored in bf16) active together in either order, one alone, and disabled: PEFT's
    logits at every stage (on int8 a fresh PeftModel each time: its DoRA on an 8-bit layer fails
    on a second forward on CPU); disabled gives the quantized base model's."""
    ours, peft_model = _ours(root, quant, "dora", "second"), None
    for names in (["dora", "second"], ["second"], ["second", "dora"]):
        if peft_model is None or quant == "int8":
            peft_model = _peft(root, quant, "dora", "second")
        peft_model.base_model.set_adapter(names)
        adapterkit.set_active(ours, names)
        last = _logits(ours)
        assert _same(last, _logits(peft_model)), names
    peft_model = _peft(root, quant, "dora", "second") if quant == "int8" else peft_model
    with adapterkit.disabled(ours), peft_model.disable_adapter():
        assert _same(_logits(ours), _logits(peft_model))
        assert _same(_logits(ours), _logits(_load(root, quant)))
    assert _same(_logits(ours), last)


# ----------------------------------------------------------------------------- merge, unmerge, unload


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("names", [("lora",), ("dora",), ("bias",), ("dora", "second")], ids="+".join)
def test_merge_and_unload_equals_peft(root, quant, names):
    """``merge_and_unload`` leaves the packed weights PEFT's leaves, byte for byte: bitsandbytes'
    dequantization, + ΔW (DoRA: m/‖W + ΔW‖·(W + ΔW) in the dequantized dtype), quantized again
    into a new Params4bit / Int8Params, adapter after adapter (DoRA first); lora_bias's bias in
    fp32 as PEFT leaves it.  A warning names the re-quantized layers; the merged model computes
    PEFT's merged model's logits."""
    peft_model = _peft(root, quant, *names)
    peft_model.base_model.set_adapter(list(names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft_model.merge_and_unload()
    ours = _ours(root, quant, *names)
    adapterkit.set_active(ours, list(names))
    kind = "Linear8bitLt" if quant == "int8" else "Linear4bit"
    with pytest.warns(UserWarning, match=f"bitsandbytes {kind} layer.*quantizes again"):
        merged = adapterkit.merge_and_unload(ours)
    assert not any(isinstance(m, AdapterLayer) for m in merged.modules())
    layer = merged.model.layers[0].self_attn.q_proj
    assert type(layer.weight).__name__ == ("Int8Params" if quant == "int8" else "Params4bit")
    _assert_same_state(_packed_state(merged), _packed_state(theirs))
    assert not torch.equal(layer.weight.data, _load(root, quant).model.layers[0].self_attn.q_proj.weight.data)
    assert _same(_logits(merged), _logits(theirs))


@pytest.mark.parametrize("quant", ["nf4-double", "int8"])
def test_unmerge_puts_the_packed_weights_back_peft_requantizes(root, quant):
    """Deliberate difference ``bnb-unmerge-restores``: after ``merge_attached``, ``unmerge_attached``
    puts back the packed weights (bias, int8 scales) the layers held before, bit for bit, and the
    model computes its unmerged outputs again; PEFT's ``unmerge_adapter`` quantizes
    dequant(W') − ΔW again and lands elsewhere.  ``disabled`` and ``unload`` after a merge give
    the quantized base bit for bit."""
    base = _packed_state(_load(root, quant))
    ours = _ours(root, quant, "bias")
    live = _logits(ours)
    with pytest.warns(UserWarning):
        adapterkit.merge_attached(ours)
    assert _same(_logits(ours), _logits(_peft_merged(root, quant, "bias")))
    adapterkit.unmerge_attached(ours)
    _assert_same_state(_base_state(ours), base)
    assert _same(_logits(ours), live)

    peft_model = _peft(root, quant, "bias")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.merge_adapter()
        peft_model.unmerge_adapter()
    peft_state = _packed_state(peft_model.unload())
    drifted = [k for k in base if k.endswith("q_proj.weight") and not torch.equal(peft_state[k], base[k])]
    assert drifted  # PEFT's base does not come back

    with pytest.warns(UserWarning):
        adapterkit.merge_attached(ours)
    with adapterkit.disabled(ours):
        assert _same(_logits(ours), _logits(_load(root, quant)))
    assert _same(_logits(ours), live)
    with pytest.warns(UserWarning):
        adapterkit.merge_attached(ours)
    _assert_same_state(_packed_state(adapterkit.unload(ours)), base)


def _peft_merged(root: Path, quant: str, name: str) -> nn.Module:
    model = _peft(root, quant, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.merge_adapter()
    return model


def test_merges_in_two_calls_equal_peft(root):
    """LoRA merged, then a second adapter merged by a later call: each re-quantizes the layer as
    it stands, as PEFT's ``merge_adapter`` called twice (the second unsafe: written layer by
    layer); unmerge puts back the layers as they were before the first."""
    peft_model = _peft(root, "nf4-double", "lora", "second")
    peft_model.base_model.set_adapter(["lora", "second"])
    ours = _ours(root, "nf4-double", "lora", "second")
    adapterkit.set_active(ours, ["lora", "second"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.merge_adapter(["lora"])
        peft_model.merge_adapter(["second"])
        adapterkit.merge_attached(ours, "lora")
        adapterkit.merge_attached(ours, "second", safe=False)
    _assert_same_state(_base_state(ours), _packed_state(peft_model.unload()))
    adapterkit.unmerge_attached(ours)  # both out: the layers as before the first merge
    _assert_same_state(_base_state(ours), _packed_state(_load(root, "nf4-double")))


def test_non_finite_merge_changes_nothing(root):
    """safe=True: a merge that would quantize NaN/Inf is refused (``non-finite``, naming the module)
    before any layer is re-quantized."""
    ours = _ours(root, "nf4-double", "lora")
    with torch.no_grad():
        ours.model.layers[1].mlp.down_proj.lora_B["lora"][0, 0] = float("inf")
    with pytest.raises(AdapterkitError, match=r"layers\.1\.mlp\.down_proj") as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapterkit.merge_attached(ours)
    assert info.value.code == "non-finite"
    _unchanged(ours, _packed_state(_load(root, "nf4-double")))



def test_non_finite_weight_sum_refused_where_the_bias_sum_is_finite(root):
    """lora_bias: a merge stages the weight's dense sum and the bias's; Inf in the weight's only
    (the bias stays finite) is refused as well, before any layer is re-quantized."""
    ours = _ours(root, "nf4-double", "bias")
    with torch.no_grad():
        ours.model.layers[1].self_attn.q_proj.lora_B["bias"][0, 0] = float("inf")
    with pytest.raises(AdapterkitError, match=r"layers\.1\.self_attn\.q_proj") as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapterkit.merge_attached(ours)
    assert info.value.code == "non-finite"
    _unchanged(ours, _packed_state(_load(root, "nf4-double")))


# ----------------------------------------------------------------------------- refusals


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(not w.merged for _, w in wrappers(model))
    _assert_same_state(_packed_state(adapterkit.unload(model)), before)


@pytest.mark.parametrize("quant", ["nf4-double", "int8"])
def test_ia3_merge_refused_as_peft_refuses(root, quant):
    """PEFT refuses to merge IA3 into a 4-bit / 8-bit model; so does merge_attached, naming the
    layer type and the offline merge, before anything changes."""
    peft_model = _peft(root, quant, "ia3")
    with pytest.raises(ValueError, match="Cannot merge ia3 layers"):
        peft_model.merge_and_unload()
    ours = _ours(root, quant, "ia3")
    before = _packed_state(_load(root, quant))
    with pytest.raises(AdapterkitError) as info:
        adapterkit.merge_and_unload(ours)
    kind = "Linear8bitLt" if quant == "int8" else "Linear4bit"
    assert info.value.code == "not-supported" and kind in str(info.value) and "adapterkit merge" in str(info.value)
    assert "merging IA3 into its weight" in str(info.value)
    _unchanged(ours, before)


def test_dora_merged_after_another_adapter_refused(root):
    """A DoRA merge needs the unmerged weight's norm; PEFT gets it by un-merging (re-quantizing)
    the adapters merged before and merging them again.  Refused by name, in one call or two;
    DoRA first is PEFT's result (test_merge_and_unload_equals_peft)."""
    ours = _ours(root, "nf4-double", "second", "dora")
    before = _packed_state(_load(root, "nf4-double"))
    adapterkit.set_active(ours, ["second", "dora"])
    with pytest.raises(AdapterkitError, match="merging DoRA adapter 'dora' after another adapter") as info:
        adapterkit.merge_attached(ours)
    assert info.value.code == "not-supported" and "Linear4bit" in str(info.value)
    with pytest.warns(UserWarning):
        adapterkit.merge_attached(ours, "second")
    with pytest.raises(AdapterkitError, match="merging DoRA adapter 'dora' after another adapter"):
        adapterkit.merge_attached(ours, "dora")
    adapterkit.unmerge_attached(ours)
    _unchanged(ours, before)


def test_lora_bias_without_base_bias_refused(root):
    """lora_bias onto a layer without a bias: PEFT raises RuntimeError on merge; ours the
    ``base-tensor-missing`` error naming the module, before anything changes."""
    peft_model = _peft(root, "int8", "bias_nobase")
    with pytest.raises(RuntimeError, match="base layer has no bias"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.merge_and_unload()
    ours = _ours(root, "int8", "bias_nobase")
    assert _same(_logits(ours), _logits(_peft(root, "int8", "bias_nobase")))
    with pytest.raises(AdapterkitError, match="down_proj") as info:
        adapterkit.merge_attached(ours)
    assert info.value.code == "base-tensor-missing"
    _unchanged(ours, _packed_state(_load(root, "int8")))


def test_cpu_packed_4bit_layout_refused(root):
    """bitsandbytes repacks a 4-bit weight for its AVX512-BF16 CPU kernel on the first forward
    (``packing_format_for_cpu``); ``dequantize_4bit`` does not read that layout.  DoRA's forward
    and merges that would read it are refused by name (this CPU has no AVX512-BF16: the flag is
    set by hand)."""
    ours = _ours(root, "nf4-double", "dora")
    layer = ours.model.layers[0].self_attn.q_proj.base_layer
    layer.weight.quant_state.packing_format_for_cpu = True
    with pytest.raises(AdapterkitError, match="packing_format_for_cpu") as info:
        _logits(ours)
    assert info.value.code == "not-supported"
    with pytest.raises(AdapterkitError, match="packing_format_for_cpu"):
        adapterkit.merge_attached(ours)
    assert all(not w.merged for _, w in wrappers(ours))


@pytest.mark.parametrize("adapter,what", [("params", "target_parameters"), ("saved", "modules_to_save")])
def test_parameters_and_saved_copies_of_bnb_layers_refused(root, adapter, what):
    """LoRA on a bnb layer's parameter and a ``modules_to_save`` copy of one would treat packed
    bytes as floats: refused by name, the model untouched."""
    model = _load(root, "int8")
    with pytest.raises(AdapterkitError, match=what) as info:
        adapterkit.attach(model, adapterkit.load(root / adapter))
    assert info.value.code == "not-supported" and "Linear8bitLt" in str(info.value)
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())


def test_weight_stored_whole_for_a_bnb_layer_refused(root):
    """An adapter that stores a bnb layer's weight whole (PEFT's saved ``base_layer.weight``): its
    floats are never compared with, nor read back as, the packed int8 bytes; refused by name."""
    from transformers import LlamaForCausalLM

    from adapterkit.adapter import Adapter

    lora = adapterkit.load(root / "lora")
    key = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    dense = LlamaForCausalLM.from_pretrained(root / "dense").model.layers[0].self_attn.q_proj.weight.detach()
    adapter = Adapter.from_tensors(lora.config, {**{k: lora.tensors[k] for k in lora.tensors}, key: dense})
    model = _load(root, "int8")
    with pytest.raises(AdapterkitError, match="storing its `weight` whole") as info:
        adapterkit.attach(model, adapter)
    assert info.value.code == "not-supported" and "Linear8bitLt" in str(info.value)
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())


# ----------------------------------------------------------------------------- extract


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_extract_from_model_gives_the_attached_tensors(root, quant):
    """extract_from_model on a quantized model: each adapter's own tensors, keys, dtypes (bf16
    for the bf16 file) and values, and its config — after a merge and unmerge too."""
    names = ("lora", "dora", "second")
    ours = _ours(root, quant, *names)
    adapterkit.set_active(ours, ["dora", "lora"])
    with pytest.warns(UserWarning):
        adapterkit.merge_attached(ours)
    adapterkit.unmerge_attached(ours)
    for name in names:
        stored = load_file(root / name / "adapter_model.safetensors")
        extracted = adapterkit.extract_from_model(ours, name)
        tensors = {k: extracted.tensors[k] for k in extracted.tensors}
        assert sorted(tensors) == sorted(stored), name
        assert all(_same(tensors[k], stored[k]) for k in stored), name
        assert extracted.config == adapterkit.load(root / name).config


# ----------------------------------------------------------------------------- other quantized layers


class QuantLinear(nn.Module):
    """Stands in for a GPTQ kernel's layer (auto-gptq / gptqmodel): packed int32 members, no nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bits: int = 4, group_size: int = 32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(in_features // group_size, out_features * bits // 32, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(in_features // group_size, out_features, dtype=torch.float16))
        self.register_buffer("g_idx", torch.arange(in_features, dtype=torch.int32) // group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


class WQLinear_GEMM(QuantLinear):  # AutoAWQ's class name
    """Stands in for AutoAWQ's GEMM layer."""


class FP8Linear(nn.Linear):
    """Stands in for transformers' FP8 linear: an nn.Linear whose weight is float8."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.weight = nn.Parameter(self.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)


@pytest.mark.parametrize("cls,family", [(QuantLinear, "GPTQ"), (WQLinear_GEMM, "AWQ"), (FP8Linear, "FP8")])
def test_gptq_awq_fp8_layers_refused_by_name(root, cls, family):
    """A GPTQ / AWQ / FP8 layer in the model (their libraries need CUDA; found by class name, never
    imported): no layer type, and attach refuses with not-supported naming the module and its type,
    the model untouched."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(root / "dense")
    path = "model.layers.1.self_attn.v_proj"
    layer = cls(64, 32)
    assert layer_type(layer) is None
    model.model.layers[1].self_attn.v_proj = layer
    with pytest.raises(AdapterkitError) as info:
        adapterkit.attach(model, adapterkit.load(root / "lora"))
    message = str(info.value)
    assert info.value.code == "not-supported" and f"`{path}` is a {cls.__name__} ({family}" in message, message
    assert info.value.key == path and "adapterkit merge" in message
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert json.dumps(info.value.actual) == json.dumps([f"{cls.__name__} ({family})"])
