"""`adapterkit merge` / `unmerge` and ``merge_checkpoint`` end to end, against transformers + PEFT.

Each case saves a tiny transformers model as a (sharded) checkpoint, trains nothing but fills
a PEFT adapter with random values, and compares our streamed merge with PEFT's
``merge_and_unload`` of the same model: tensors, and the logits of the merged model loaded by
transformers against the adapter-attached model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft_models import shards  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

import adapterkit  # noqa: E402
from adapterkit.cli import main  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.ops import merge_checkpoint  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 3, 7]])


def llama(tie: bool = False, bias: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=tie, attention_bias=bias)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # biases start at zero; random ones make bias handling show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def llama_bias() -> torch.nn.Module:
    return llama(bias=True)


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()
    with torch.no_grad():  # GPT-2 starts its biases at zero; random ones make bias handling show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def save_base(model: torch.nn.Module, path: Path, *, dtype: torch.dtype = torch.float32, shard: str | None = "20KB") -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.to(dtype).save_pretrained(path, max_shard_size=shard) if shard else model.to(dtype).save_pretrained(path)
    model.float()
    return path


def make_adapter(make, path: Path, seed: int, save_embedding_layers: bool | str = "auto", **cfg) -> Path:
    model = get_peft_model(make(), LoraConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(path, save_embedding_layers=save_embedding_layers)
    return path


def peft_merged(make, adapter: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(make(), adapter).merge_and_unload().state_dict()


CASES = {
    "llama_all_linear": (llama, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}),
    "llama_rslora_patterns_embed": (llama, {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj", "v_proj", "embed_tokens", "lm_head"],
                                            "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3}}),
    "llama_dora": (llama, {"r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": ["q_proj", "down_proj"]}),
    "llama_lora_bias": (llama_bias, {"r": 4, "lora_alpha": 8, "lora_bias": True, "target_modules": ["q_proj"]}),
    "gpt2_conv1d": (gpt2, {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"], "fan_in_fan_out": True}),
    "gpt2_modules_to_save": (gpt2, {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True, "modules_to_save": ["ln_f"]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_merge_equals_peft_merge_and_unload(name: str, tmp_path: Path) -> None:
    make, cfg = CASES[name]
    base = save_base(make(), tmp_path / "base")
    adapter = make_adapter(make, tmp_path / "adapter", seed=1, **cfg)
    report = merge_checkpoint(base, [adapter], tmp_path / "out")
    ours, theirs = shards(tmp_path / "out"), peft_merged(make, adapter)
    if "lm_head.weight" not in ours:  # tied: transformers saves only the input embedding
        theirs.pop("lm_head.weight")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == torch.float32
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)
    assert report.changed > 0 and report.tensors == len(ours)
    # the merged checkpoint loads with transformers and gives the adapter-attached model's logits
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attached = PeftModel.from_pretrained(make(), adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, attached(IDS).logits, rtol=1e-5, atol=1e-5)


def test_output_keeps_sharding_index_and_files(tmp_path: Path) -> None:
    base = save_base(llama(), tmp_path / "base")
    (base / "tokenizer_config.json").write_text('{"model_max_length": 32}')
    (base / "README.md").write_text("# base model card\n")
    adapter = make_adapter(llama, tmp_path / "adapter", seed=2, r=2, lora_alpha=2, target_modules=["q_proj"])
    merge_checkpoint(base, [adapter], tmp_path / "out")
    base_index = json.loads((base / "model.safetensors.index.json").read_text())
    out_index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == base_index["weight_map"] and len(set(base_index["weight_map"].values())) > 1
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (base / name).read_bytes()
    readme = (tmp_path / "out" / "README.md").read_text()
    assert readme.startswith("# base model card") and "## Merged with adapterkit" in readme and "LORA adapter" in readme
    from safetensors import safe_open
    for shard in sorted((tmp_path / "out").glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            record = json.loads(f.metadata()["adapterkit.merged"])
        assert record[0]["kind"] == "LORA" and record[0]["weight"] == 1.0


def test_bf16_base_rounds_once(tmp_path: Path) -> None:
    """A bf16 base: ours is the exact fp32 merge cast once, so never farther from it than PEFT's."""
    base = save_base(llama(), tmp_path / "base", dtype=torch.bfloat16)
    adapter = make_adapter(llama, tmp_path / "adapter", seed=3, r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    merge_checkpoint(base, [adapter], tmp_path / "out")
    ours = shards(tmp_path / "out")
    exact = {k: v.float() for k, v in shards(base).items()}
    loaded = adapterkit.load(adapter)
    for module in loaded.modules:
        key = f"{module}.weight"
        exact[key] = exact[key] + loaded.delta_weight(module, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        theirs = peft_model.merge_and_unload().state_dict()
    for key, value in ours.items():
        assert value.dtype == torch.bfloat16
        assert torch.equal(value, exact[key].to(torch.bfloat16)), key  # one rounding of the exact value
        ours_err = (value.float() - exact[key]).abs().max()
        assert ours_err <= (theirs[key].float() - exact[key]).abs().max()


def test_unmerge_inverts_merge_and_two_adapters_in_one_pass(tmp_path: Path) -> None:
    base = save_base(llama(), tmp_path / "base")
    a = make_adapter(llama, tmp_path / "a", seed=4, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    b = make_adapter(llama, tmp_path / "b", seed=5, r=2, lora_alpha=4, target_modules=["v_proj", "up_proj"])
    merge_checkpoint(base, [a, b], tmp_path / "ab", weights=[0.5, -1.25])
    merge_checkpoint(base, [a], tmp_path / "a1", weights=[0.5])
    merge_checkpoint(tmp_path / "a1", [b], tmp_path / "a1b1", weights=[-1.25])
    one_pass, two_passes = shards(tmp_path / "ab"), shards(tmp_path / "a1b1")
    for key in one_pass:
        torch.testing.assert_close(one_pass[key], two_passes[key], rtol=0, atol=1e-6)
    report = merge_checkpoint(tmp_path / "ab", [a, b], tmp_path / "back", weights=[0.5, -1.25], unmerge=True)
    assert report.lossy == []
    back, original = shards(tmp_path / "back"), shards(base)
    for key in original:
        torch.testing.assert_close(back[key], original[key], rtol=0, atol=1e-6)


def test_merge_refusals(tmp_path: Path) -> None:
    base = save_base(llama(), tmp_path / "base")
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    adapter = make_adapter(llama, tmp_path / "adapter", seed=6, r=2, lora_alpha=2, target_modules=["q_proj"])
    for out in (base, base / "inner"):
        with pytest.raises(AdapterkitError) as info:
            merge_checkpoint(base, [adapter], out)
        assert info.value.code == "overwrite-input"
    (tmp_path / "exists").mkdir()
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "exists")
    assert info.value.code == "output-exists"
    # a module the checkpoint lacks, and one of the wrong shape: one error naming both
    other = make_adapter(lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=8, n_layer=1, n_head=2)),
                         tmp_path / "gpt2", seed=7, r=2, lora_alpha=2, target_modules=["c_attn"], fan_in_fan_out=True)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [other], tmp_path / "bad")
    assert info.value.code == "base-mismatch" and "c_attn" in str(info.value)
    assert not (tmp_path / "bad").exists()
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before


def untied_copy(make) -> torch.nn.Module:
    """``make()``'s tied model as an untied one with the same values: the oracle for untying."""
    tied = make()
    cfg = tied.config
    cfg.tie_word_embeddings = False
    model = type(tied)(cfg).eval()
    state = tied.state_dict()
    state["lm_head.weight"] = tied.get_input_embeddings().weight.detach().clone()
    model.load_state_dict(state)
    return model


def tied_llama() -> torch.nn.Module:
    return llama(tie=True)


def tied_gpt2() -> torch.nn.Module:
    return gpt2()  # GPT-2 ties lm_head to transformer.wte by default


TIED = {
    "llama_embed_and_lm_head": (tied_llama, ["embed_tokens", "lm_head", "q_proj"], "model.embed_tokens.weight"),
    "llama_lm_head": (tied_llama, ["lm_head"], "model.embed_tokens.weight"),
    "llama_embed": (tied_llama, ["embed_tokens"], "model.embed_tokens.weight"),
    "gpt2_wte_and_lm_head": (tied_gpt2, ["wte", "lm_head"], "transformer.wte.weight"),
}


@pytest.mark.parametrize("name", sorted(TIED))
@pytest.mark.parametrize("shard", [None, "20KB"])
def test_tied_embeddings_untie(name: str, shard: str | None, tmp_path: Path) -> None:
    """The default: lm_head gets a tensor of its own and config.json stops tying, so the merged
    model gives the adapter-attached model's logits (PEFT's merge does not), and every tensor
    equals PEFT's merge of the same adapter on an untied copy of the model.  Sharded: the
    adapter is saved without the embedding layers PEFT adds by default (which replace the base's
    and would hide where lm_head's base value comes from)."""
    make, targets, embed = TIED[name]
    base = save_base(make(), tmp_path / "base", shard=shard)
    assert "lm_head.weight" not in shards(base)
    adapter = make_adapter(make, tmp_path / "adapter", seed=8, r=2, lora_alpha=4, target_modules=targets,
                           save_embedding_layers="auto" if shard is None else False)
    report = merge_checkpoint(base, [adapter], tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert any("untied `lm_head.weight`" in n for n in report.notes)
    assert "Untied `lm_head.weight`" in (out / "README.md").read_text()
    ours = shards(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = PeftModel.from_pretrained(untied_copy(make), adapter).merge_and_unload().state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)
    if shard:  # lm_head joins its embedding's shard; the index says so
        index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
        assert index["lm_head.weight"] == index[embed]
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert merged.lm_head.weight is not merged.get_input_embeddings().weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attached = PeftModel.from_pretrained(make(), adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, attached(IDS).logits, rtol=1e-5, atol=1e-5)
    # and back: unmerging gives the base's values (lm_head: the embedding it was tied to)
    merge_checkpoint(out, [adapter], tmp_path / "back", unmerge=True)
    back, original = shards(tmp_path / "back"), shards(base)
    for key in back:
        torch.testing.assert_close(back[key], original[key if key in original else embed], rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", sorted(TIED))
def test_tied_embeddings_shared_equals_peft(name: str, tmp_path: Path) -> None:
    """``shared``: both embeddings' deltas go into the one matrix, exactly as transformers + PEFT's
    merge_and_unload + save_pretrained do; config.json is left tying them."""
    make, targets, _embed = TIED[name]
    base = save_base(make(), tmp_path / "base")
    adapter = make_adapter(make, tmp_path / "adapter", seed=9, r=2, lora_alpha=4, target_modules=targets)
    report = merge_checkpoint(base, [adapter], tmp_path / "out", tied_embeddings="shared")
    assert (tmp_path / "out" / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert report.notes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PeftModel.from_pretrained(make(), adapter).merge_and_unload().save_pretrained(tmp_path / "peft")
    ours, theirs = shards(tmp_path / "out"), shards(tmp_path / "peft")
    assert ours.keys() == theirs.keys() and "lm_head.weight" not in ours
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)


def test_tied_embeddings_without_config_or_with_a_stored_lm_head(tmp_path: Path) -> None:
    """A single-file base has no config.json: the tie is unknown, so merge refuses to guess;
    told it is tied (an explicit policy), lm_head.weight is written, with a note that no config
    was updated.  A
    config that ties them while the file stores an lm_head anyway: transformers loads the
    embedding there, so the untied lm_head starts from the embedding, not the stored bytes."""
    base = save_base(tied_llama(), tmp_path / "base", shard=None)
    adapter = make_adapter(tied_llama, tmp_path / "adapter", seed=12, r=2, lora_alpha=4, target_modules=["lm_head"])
    single = tmp_path / "base.safetensors"
    single.write_bytes((base / "model.safetensors").read_bytes())
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(single, [adapter], tmp_path / "out.safetensors")
    assert info.value.code == "tied-embeddings" and "no config.json" in str(info.value)
    report = merge_checkpoint(single, [adapter], tmp_path / "out.safetensors", tied_embeddings="untie")
    assert any("no config.json came with the checkpoint" in n for n in report.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = PeftModel.from_pretrained(untied_copy(tied_llama), adapter).merge_and_unload().state_dict()
    ours = load_file(tmp_path / "out.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)
    stored = load_file(base / "model.safetensors")
    embed = stored["model.embed_tokens.weight"].clone()
    stored["lm_head.weight"] = torch.randn_like(embed)
    from safetensors.torch import save_file
    save_file(stored, base / "model.safetensors", metadata={"format": "pt"})
    embed_only = make_adapter(tied_llama, tmp_path / "embed", seed=13, r=2, lora_alpha=4, target_modules=["embed_tokens"], save_embedding_layers=False)
    merge_checkpoint(base, [embed_only], tmp_path / "out2")
    assert torch.equal(shards(tmp_path / "out2")["lm_head.weight"], embed)  # transformers' value, not the stored one
    assert json.loads((tmp_path / "out2" / "config.json").read_text())["tie_word_embeddings"] is False


def test_tied_embeddings_refusals(tmp_path: Path) -> None:
    base = save_base(tied_llama(), tmp_path / "base", shard=None)
    saved = make_adapter(tied_llama, tmp_path / "saved", seed=10, r=2, lora_alpha=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [saved], tmp_path / "out", tied_embeddings="shared")
    assert info.value.code == "tied-embeddings" and "lm_head.weight" in str(info.value)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [saved], tmp_path / "out", tied_embeddings="both")
    assert info.value.code == "not-supported"
    assert not (tmp_path / "out").exists()
    # untying a model whose computation depends on the tie (T5 rescales when tied) is refused
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(dict(config, model_type="t5")))
    lm = make_adapter(tied_llama, tmp_path / "lm", seed=11, r=2, lora_alpha=2, target_modules=["lm_head"])
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [lm], tmp_path / "out")
    assert info.value.code == "tied-embeddings" and "t5" in str(info.value)
    (base / "config.json").write_text("{not json")
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [lm], tmp_path / "out")
    assert info.value.code == "checkpoint-invalid" and "config.json" in str(info.value)


def test_safe_refuses_non_finite_results(tmp_path: Path) -> None:
    base = save_base(llama(), tmp_path / "base")
    adapter = make_adapter(llama, tmp_path / "adapter", seed=9, r=2, lora_alpha=2, target_modules=["q_proj"])
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out", weights=[1e45])
    assert info.value.code == "non-finite" and "q_proj.weight" in str(info.value)
    assert not (tmp_path / "out").exists()
    merge_checkpoint(base, [adapter], tmp_path / "out", weights=[1e45], safe=False)
    assert not torch.isfinite(shards(tmp_path / "out")["model.layers.0.self_attn.q_proj.weight"]).all()



def test_no_safe_writes_a_non_finite_tensor_merged_whole(tmp_path: Path) -> None:
    """A module merged whole, not by rows (a LoRA on the embedding): safe refuses the overflow by
    name; safe=False writes the non-finite values."""
    base = save_base(llama(), tmp_path / "base")
    adapter = make_adapter(llama, tmp_path / "adapter", seed=9, r=2, lora_alpha=2, target_modules=["embed_tokens"])
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out", weights=[1e45])
    assert info.value.code == "non-finite" and "embed_tokens.weight" in str(info.value)
    assert not (tmp_path / "out").exists()
    merge_checkpoint(base, [adapter], tmp_path / "out", weights=[1e45], safe=False)
    assert not torch.isfinite(shards(tmp_path / "out")["model.embed_tokens.weight"]).all()


def test_prompt_adapters_cannot_merge(tmp_path: Path) -> None:
    base = save_base(llama(), tmp_path / "base")
    prompt = adapterkit.Adapter.from_tensors(adapterkit.PromptTuningConfig(num_virtual_tokens=2, token_dim=16), {"prompt_embeddings": torch.zeros(2, 16)})
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [prompt], tmp_path / "out")
    assert info.value.code == "not-supported" and "no weights to merge" in str(info.value)


def test_cli_merge_and_unmerge(tmp_path: Path) -> None:
    base = save_base(llama(), tmp_path / "base")
    a = make_adapter(llama, tmp_path / "a", seed=10, r=2, lora_alpha=4, target_modules=["q_proj"])
    b = make_adapter(llama, tmp_path / "b", seed=11, r=2, lora_alpha=4, target_modules=["down_proj"])
    run = CliRunner().invoke
    res = run(main, ["merge", str(base), str(a), str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "merged LORA" in res.output and "2 tensors changed" in res.output
    res = run(main, ["merge", str(base), str(tmp_path / "m")])
    assert res.exit_code == 2 and "[usage]" in res.output  # no adapter named
    res = run(main, ["merge", str(base), str(tmp_path / "m"), "--adapter", str(a)])
    assert res.exit_code == 2 and "[output-exists]" in res.output
    res = run(main, ["merge", str(base), str(tmp_path / "ab"), "--adapter", str(a), "--weight", "0.5", "--adapter", str(b), "--weight", "2", "--json", "--dtype", "bf16"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [x["weight"] for x in data["adapters"]] == [0.5, 2.0] and data["changed"] == 4
    assert all(t.dtype == torch.bfloat16 for t in shards(tmp_path / "ab").values())
    res = run(main, ["merge", str(base), str(tmp_path / "x"), "--adapter", str(a), "--weight", "1", "--weight", "2"])
    assert res.exit_code == 2 and "[argument-invalid]" in res.output and "--weight" in res.output
    res = run(main, ["merge", str(base), str(a), str(tmp_path / "r"), "--max-shard-size", "8KB"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "r").glob("model-*.safetensors"))) > len(list(base.glob("model-*.safetensors")))
    res = run(main, ["merge", str(base), str(a), str(tmp_path / "s"), "--max-shard-size", "lots"])
    assert res.exit_code == 2 and "[argument-invalid]" in res.output
    res = run(main, ["unmerge", str(tmp_path / "m"), str(a), str(tmp_path / "back")])
    assert res.exit_code == 0, res.output
    for key, value in shards(base).items():
        torch.testing.assert_close(shards(tmp_path / "back")[key], value, rtol=0, atol=1e-6)
    res = run(main, ["merge", str(tmp_path / "missing"), str(a), str(tmp_path / "y")])
    assert res.exit_code == 2 and "[file-not-found]" in res.output


def test_two_adapters_changing_weight_and_bias_of_one_module(tmp_path: Path) -> None:
    """Both adapters change q_proj's weight and bias (lora_B.bias): one pass must apply both to
    both tensors, whichever of them comes first in the file."""
    base = save_base(llama_bias(), tmp_path / "base")
    cfg = {"r": 2, "lora_alpha": 4, "lora_bias": True, "target_modules": ["q_proj"]}
    a = make_adapter(llama_bias, tmp_path / "a", seed=12, **cfg)
    b = make_adapter(llama_bias, tmp_path / "b", seed=13, **cfg)
    merge_checkpoint(base, [a, b], tmp_path / "ab", weights=[0.5, 2.0])
    merge_checkpoint(base, [a], tmp_path / "a1", weights=[0.5])
    merge_checkpoint(tmp_path / "a1", [b], tmp_path / "a1b1", weights=[2.0])
    one_pass, two_passes, original = shards(tmp_path / "ab"), shards(tmp_path / "a1b1"), shards(base)
    for key in one_pass:
        torch.testing.assert_close(one_pass[key], two_passes[key], rtol=0, atol=1e-6, msg=key)
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"):
        assert not torch.equal(one_pass[key], original[key])
    merge_checkpoint(tmp_path / "ab", [a, b], tmp_path / "back", weights=[0.5, 2.0], unmerge=True)
    for key, value in original.items():
        torch.testing.assert_close(shards(tmp_path / "back")[key], value, rtol=0, atol=1e-6, msg=key)


def test_both_embeddings_stored_without_config_are_two_matrices(tmp_path: Path) -> None:
    """No config.json, but the checkpoint stores lm_head.weight beside the input embedding: the
    two are separate matrices (a tied model stores one), so a LoRA on lm_head merges into lm_head
    alone, with no tie policy asked for."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(4)
    emb, head = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    base = tmp_path / "base.safetensors"
    save_file({"model.embed_tokens.weight": emb, "lm_head.weight": head}, str(base))
    A, B = torch.randn(2, 4, generator=g), torch.randn(10, 2, generator=g)
    adapter = adapterkit.Adapter.from_tensors(adapterkit.LoraConfig(r=2, lora_alpha=2, target_modules=("lm_head",)),
                                              {"base_model.model.lm_head.lora_A.weight": A, "base_model.model.lm_head.lora_B.weight": B})
    merge_checkpoint(base, [adapter], tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out["model.embed_tokens.weight"], emb)
    torch.testing.assert_close(out["lm_head.weight"], head + B @ A, rtol=0, atol=1e-6)


@pytest.mark.parametrize("stored", [False, True])
def test_tied_embeddings_replaced_alike_stay_tied(stored: bool, tmp_path: Path) -> None:
    """Both tied embeddings saved whole with equal values: the merged model keeps the tie and
    both hold the saved tensor.  A base that stores lm_head.weight anyway gets the new value
    there too (not its old bytes); one that does not store it gets no lm_head.weight."""
    base = save_base(tied_llama(), tmp_path / "base", shard=None)
    if stored:
        state = load_file(base / "model.safetensors")
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
        from safetensors.torch import save_file
        save_file(state, base / "model.safetensors", metadata={"format": "pt"})
    adapter = make_adapter(tied_llama, tmp_path / "adapter", seed=14, r=2, lora_alpha=2, target_modules=["q_proj"],
                           modules_to_save=["embed_tokens", "lm_head"])
    saved = load_file(adapter / "adapter_model.safetensors")
    new = saved["base_model.model.model.embed_tokens.weight"]
    saved["base_model.model.lm_head.weight"] = new.clone()
    from safetensors.torch import save_file
    save_file(saved, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    report = merge_checkpoint(base, [adapter], tmp_path / "out")
    ours = shards(tmp_path / "out")
    assert torch.equal(ours["model.embed_tokens.weight"], new)
    assert ("lm_head.weight" in ours) is stored
    if stored:
        assert torch.equal(ours["lm_head.weight"], new)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    assert any("they stay tied" in n for n in report.notes)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_before_any_work(weight: float, tmp_path: Path) -> None:
    """A NaN weight would make every merged tensor NaN (written as is under safe=False), an
    infinite one Inf: refused by name, nothing written, as combine refuses them."""
    base = save_base(llama(), tmp_path / "base")
    adapter = make_adapter(llama, tmp_path / "adapter", seed=15, r=2, lora_alpha=2, target_modules=["q_proj"])
    for safe in (True, False):
        with pytest.raises(AdapterkitError) as info:
            merge_checkpoint(base, [adapter], tmp_path / "out", weights=[weight], safe=safe)
        assert info.value.code == "argument-invalid" and "finite" in str(info.value)
        assert not (tmp_path / "out").exists()
    from click.testing import CliRunner

    from adapterkit.cli import main
    res = CliRunner().invoke(main, ["merge", str(base), str(adapter), str(tmp_path / "out"), "--weight", str(weight)])
    assert res.exit_code == 2 and "[argument-invalid]" in res.output and not (tmp_path / "out").exists()


def test_numpy_and_torch_scalar_weights_merge_as_floats(tmp_path: Path) -> None:
    """The finite-weight check takes what float() takes: a numpy float32 or a 0-d tensor weight
    merges exactly as the same Python float (it is not refused as 'not a number')."""
    import numpy as np

    base = save_base(llama(), tmp_path / "base")
    adapter = make_adapter(llama, tmp_path / "adapter", seed=16, r=2, lora_alpha=2, target_modules=["q_proj"])
    merge_checkpoint(base, [adapter], tmp_path / "plain", weights=[0.5])
    for n, w in enumerate((np.float32(0.5), torch.tensor(0.5))):
        merge_checkpoint(base, [adapter], tmp_path / f"o{n}", weights=[w])
        ours, plain = shards(tmp_path / f"o{n}"), shards(tmp_path / "plain")
        assert ours.keys() == plain.keys() and all(torch.equal(ours[k], plain[k]) for k in ours)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "bad", weights=["half"])
    assert info.value.code == "argument-invalid" and not (tmp_path / "bad").exists()
