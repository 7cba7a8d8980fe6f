"""``extract --save-changed`` round trips: PEFT loads the result on the base with the fine-tune's
logits, and ``merge BASE EXTRACTED`` rebuilds the fine-tune's tensors.

The oracle is the fine-tuned model itself: tiny transformers models built from configs
(a Qwen2-style model with q/k/v biases, a Llama with tied embeddings), "fine-tuned" by
perturbing every parameter (weights, biases, norms, embeddings), saved by transformers.
Extraction at full rank is exact, so PEFT's logits and the merged tensors must match the
fine-tune's to float rounding.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft_models import shards  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import adapterkit  # noqa: E402
from adapterkit.cli import main  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.ops import merge_checkpoint  # noqa: E402
from adapterkit.ops.export import check  # noqa: E402
from adapterkit.ops.extract import extract  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])
FULL = 64  # above every min(out, in): extraction is exact
SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)


def qwen2() -> nn.Module:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=False)).eval()


def tied_llama() -> nn.Module:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True)).eval()


def perturb(model: nn.Module, seed: int = 1, scale: float = 0.1) -> nn.Module:
    """A "fine-tune": every parameter moved (a tied embedding moves once, for both uses)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def save(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path)
    return path


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def peft_logits(make, adapter: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return logits(PeftModel.from_pretrained(make(), adapter).eval())


def assert_same_tensors(ours: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(want)
    for k in want:
        torch.testing.assert_close(ours[k], want[k], atol=1e-5, rtol=0, msg=k)


def test_qwen2_biases_of_lora_modules_load_in_peft(tmp_path: Path) -> None:
    """q/k/v biases of LoRA modules are stored as `base_layer.bias` (PEFT ignores `q_proj.bias`:
    0.4 logits off), norms and embeddings as modules_to_save; merge rebuilds every tensor."""
    base = save(qwen2(), tmp_path / "base")
    tuned = perturb(qwen2())
    ft = save(tuned, tmp_path / "ft")
    adapter, report = extract(base, ft, rank=FULL, save_changed=True)
    out = adapterkit.save(adapter, tmp_path / "lora")
    torch.testing.assert_close(peft_logits(qwen2, out), logits(tuned), atol=1e-4, rtol=0)
    keys = set(adapter.tensors)
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias" in keys
    assert "base_model.model.model.layers.0.self_attn.q_proj.bias" not in keys
    assert adapter.config.bias == "all" and report.not_extracted == {}
    assert adapterkit.validate(out) == [] and check(adapterkit.load(out), "peft") == []
    merge_checkpoint(base, [out], tmp_path / "merged")
    assert_same_tensors(shards(tmp_path / "merged"), shards(ft))


def test_a_stray_bias_beside_lora_factors_is_reported(tmp_path: Path) -> None:
    """An adapter holding `q_proj.bias` next to q_proj's factors: PEFT silently ignores the bias,
    so validate and check --for peft must not call the file fine."""
    model = get_peft_model(qwen2(), LoraConfig(r=2, target_modules=["q_proj"], bias="all"))
    model.save_pretrained(tmp_path / "peft")
    tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    good = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias"
    assert good in tensors and adapterkit.validate(tmp_path / "peft") == []  # PEFT's own form is fine
    tensors[good.replace(".base_layer", "")] = tensors.pop(good)
    save_file(tensors, tmp_path / "peft" / "adapter_model.safetensors", metadata={"format": "pt"})
    problems = adapterkit.validate(tmp_path / "peft")
    assert [(p.code, p.severity, p.key) for p in problems] == [("unexpected-key", "error", good.replace(".base_layer", ""))]
    assert "base_layer.bias" in problems[0].message
    res = CliRunner().invoke(main, ["check", str(tmp_path / "peft"), "--for", "peft"])
    assert res.exit_code == 2 and "base_layer.bias" in res.output, res.output  # the strict load names it
    # a base weight saved under the wrapped module's own name is ignored by PEFT alike
    del tensors[good.replace(".base_layer", "")]
    stray = "base_model.model.model.layers.0.self_attn.q_proj.weight"
    tensors[stray] = torch.zeros(16, 16)
    save_file(tensors, tmp_path / "peft" / "adapter_model.safetensors", metadata={"format": "pt"})
    assert [(p.code, p.severity, p.key) for p in adapterkit.validate(tmp_path / "peft")] == [("unexpected-key", "error", stray)]


def test_tied_embeddings_kept_by_the_fine_tune(tmp_path: Path) -> None:
    """A tied model whose fine-tune moved the (shared) embedding: PEFT computes the fine-tune,
    and merge — with either policy — rebuilds its tensors and keeps the tie (on main: lm_head
    stayed old, 1.3 logits off in PEFT, and `shared` was refused)."""
    base = save(tied_llama(), tmp_path / "base")
    tuned = perturb(tied_llama())
    ft = save(tuned, tmp_path / "ft")
    assert "lm_head.weight" not in shards(ft)
    runner = CliRunner()
    res = runner.invoke(main, ["extract", str(base), str(ft), str(tmp_path / "lora"), "--rank", str(FULL), "--save-changed"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "lora"
    assert adapterkit.validate(out) == []
    torch.testing.assert_close(peft_logits(tied_llama, out), logits(tuned), atol=1e-4, rtol=0)
    # a LoRA on either tied embedding would leave the other unchanged in PEFT: refused by name
    for targets in ("lm_head|q_proj", "embed_tokens"):
        with pytest.raises(AdapterkitError) as info:
            extract(base, ft, rank=FULL, targets=targets)
        assert info.value.code == "not-supported" and "tied" in str(info.value)
    for policy in ([], ["--tied-embeddings", "untie"], ["--tied-embeddings", "shared"]):
        merged = tmp_path / f"merged{len(policy)}{policy[-1] if policy else ''}"
        res = runner.invoke(main, ["merge", str(base), str(out), str(merged), *policy])
        assert res.exit_code == 0, res.output
        assert_same_tensors(shards(merged), shards(ft))
        assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = LlamaForCausalLM.from_pretrained(merged).eval()
        torch.testing.assert_close(logits(again), logits(tuned), atol=1e-4, rtol=0)


def test_tied_base_untied_fine_tune(tmp_path: Path) -> None:
    """A fine-tune that untied lm_head from the embedding (its config says so, its lm_head is
    stored): lm_head is compared with the base's embedding, PEFT on the tied base computes the
    fine-tune, merge unties as the fine-tune did, and `shared` is refused by name."""
    base = save(tied_llama(), tmp_path / "base")
    tuned = perturb(tied_llama())
    cfg = tuned.config
    cfg.tie_word_embeddings = False
    untied = LlamaForCausalLM(cfg).eval()
    state = tuned.state_dict()
    state["lm_head.weight"] = tuned.get_input_embeddings().weight.detach() + 0.2 * torch.randn(64, 16, generator=torch.Generator().manual_seed(5))
    untied.load_state_dict(state)
    ft = save(untied, tmp_path / "ft")
    assert "lm_head.weight" in shards(ft)
    adapter, report = extract(base, ft, rank=FULL, save_changed=True)
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(report.saved_whole)
    assert any("unties" in n for n in report.notes)
    out = adapterkit.save(adapter, tmp_path / "lora")
    torch.testing.assert_close(peft_logits(tied_llama, out), logits(untied), atol=1e-4, rtol=0)
    merge_checkpoint(base, [out], tmp_path / "merged")
    assert_same_tensors(shards(tmp_path / "merged"), shards(ft))
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is False
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [out], tmp_path / "shared", tied_embeddings="shared")
    assert info.value.code == "tied-embeddings"


def test_untied_base_tied_fine_tune(tmp_path: Path) -> None:
    """A fine-tune that ties what the base keeps apart (no lm_head stored, config tied): its
    lm_head is its embedding; PEFT on the untied base computes it, and merge writes both as
    equal tensors under the base's (untied) config, which computes the fine-tune too."""
    torch.manual_seed(0)
    base = save(LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=False)).eval(), tmp_path / "base")
    tuned = perturb(tied_llama())
    ft = save(tuned, tmp_path / "ft")
    adapter, report = extract(base, ft, rank=FULL, save_changed=True)
    assert any("ties" in n for n in report.notes)
    out = adapterkit.save(adapter, tmp_path / "lora")

    def untied() -> nn.Module:
        return LlamaForCausalLM.from_pretrained(base).eval()

    torch.testing.assert_close(peft_logits(untied, out), logits(tuned), atol=1e-4, rtol=0)
    merge_checkpoint(base, [out], tmp_path / "merged")
    merged = shards(tmp_path / "merged")
    assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])
    assert_same_tensors({k: v for k, v in merged.items() if k != "lm_head.weight"}, shards(ft))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(logits(LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()), logits(tuned), atol=1e-4, rtol=0)


def test_extract_refuses_an_embedding_whose_tie_no_config_states(tmp_path: Path) -> None:
    """Single files carry no config.json: a changed input embedding without an output embedding
    may be tied or not, and PEFT computes different models: storing it is refused, not guessed."""
    base = save(tied_llama(), tmp_path / "base")
    save(perturb(tied_llama()), tmp_path / "ft")
    for d in ("base", "ft"):
        (tmp_path / f"{d}.safetensors").write_bytes((tmp_path / d / "model.safetensors").read_bytes())
    _, report = extract(tmp_path / "base.safetensors", tmp_path / "ft.safetensors", rank=FULL)
    assert "model.embed_tokens.weight" in report.not_extracted  # listed: nothing depends on the tie
    with pytest.raises(AdapterkitError) as info:
        extract(tmp_path / "base.safetensors", tmp_path / "ft.safetensors", rank=FULL, save_changed=True)
    assert info.value.code == "tied-embeddings" and "config.json" in str(info.value)
    # with the config beside the base alone, the fine-tune's tie is still unknown
    with pytest.raises(AdapterkitError) as info:
        extract(base, tmp_path / "ft.safetensors", rank=FULL, save_changed=True)
    assert info.value.code == "tied-embeddings" and "fine-tuned" in str(info.value)


def test_merge_without_config_does_not_guess_a_tie(tmp_path: Path) -> None:
    """A base model without an output layer (LlamaModel), as a single file: an adapter on its
    embedding must not make merge add an lm_head.weight.  The default refuses (the tie is
    unknown); `shared` is exact for it (PEFT's merge_and_unload), `untie` asserts a tie."""
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(**SMALL)).eval()
    single = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, single, metadata={"format": "pt"})
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "lora", save_embedding_layers=False)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(single, [tmp_path / "lora"], tmp_path / "out.safetensors")
    assert info.value.code == "tied-embeddings" and "--tied-embeddings" in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()
    res = CliRunner().invoke(main, ["merge", str(single), str(tmp_path / "lora"), str(tmp_path / "cli.safetensors")])
    assert res.exit_code == 2 and "tied-embeddings" in res.output
    merge_checkpoint(single, [tmp_path / "lora"], tmp_path / "out.safetensors", tied_embeddings="shared")
    ours = load_file(tmp_path / "out.safetensors")
    theirs = peft_model.merge_and_unload().state_dict()
    assert_same_tensors(ours, {k: v for k, v in theirs.items()})


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.fc = nn.Linear(8, 8)


class _Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.layers = nn.ModuleList([_Block()])
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers[0].mlp.fc(self.fc(x)))


class SharedNames(nn.Module):
    """Modules sharing short names: `fc` and `vision.fc`, `layers.0.mlp.fc` and
    `vision.layers.0.mlp.fc`, `norm` and `vision.norm` (a list of full names in target_modules or
    modules_to_save would select both of each pair in PEFT)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.layers = nn.ModuleList([_Block()])
        self.norm = nn.LayerNorm(8)
        self.vision = _Tower()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision(self.norm(self.layers[0].mlp.fc(self.fc(x))))


def shared_names() -> nn.Module:
    torch.manual_seed(0)
    return SharedNames().eval()


def _save_state(model: nn.Module, path: Path) -> Path:
    path.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors", metadata={"format": "pt"})
    return path


def _adapted(make, adapter: Path) -> tuple[set[str], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(make(), adapter).eval()
    names = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if "default" in getattr(m, "lora_A", {})}
    with torch.no_grad():
        return names, model(X)


X = torch.randn(3, 8, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("targets, extracted", [(None, {"fc", "layers.0.mlp.fc"}), ("^layers", {"layers.0.mlp.fc"})])
def test_target_modules_select_exactly_the_extracted_modules(tmp_path: Path, targets: str | None, extracted: set[str]) -> None:
    """Only `fc` and `layers.0.mlp.fc` changed (weights and biases): PEFT must adapt exactly the
    extracted modules, not their namesakes under `vision`, and compute the fine-tune."""
    base = _save_state(shared_names(), tmp_path / "base")
    tuned = shared_names()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in ("fc", "layers.0.mlp.fc"):
            for p in tuned.get_submodule(name).parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    ft = _save_state(tuned, tmp_path / "ft")
    adapter, report = extract(base, ft, rank=FULL, targets=targets, save_changed=targets is None)
    assert {m.name for m in report.modules} == extracted
    out = adapterkit.save(adapter, tmp_path / "lora")
    assert adapterkit.validate(out) == []
    adapted, y = _adapted(shared_names, out)
    assert adapted == extracted
    if targets is None:  # everything changed was stored: PEFT computes the fine-tune
        with torch.no_grad():
            torch.testing.assert_close(y, tuned(X), atol=1e-5, rtol=0)
        merge_checkpoint(base, [out], tmp_path / "merged")
        assert_same_tensors(shards(tmp_path / "merged"), shards(ft))


@pytest.mark.parametrize("targets", [None, "^layers"])
def test_modules_to_save_namesakes_are_stored_whole(tmp_path: Path, targets: str | None) -> None:
    """`norm.weight` changed: PEFT wraps `norm` and `vision.norm` for modules_to_save=["norm"] and
    reads every tensor of both (on main: a KeyError for the missing ones).  With --targets '^layers'
    and `fc` changed too, modules_to_save=["fc"] also wraps `layers.0.mlp.fc`, which PEFT then
    does not adapt: it is stored whole instead, and said so."""
    base = _save_state(shared_names(), tmp_path / "base")
    tuned = shared_names()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        tuned.norm.weight.add_(torch.randn(8, generator=g))
        tuned.vision.fc.bias.add_(torch.randn(8, generator=g))  # a bias alone: stored as it is, bias="all"
        for name in ("fc", "layers.0.mlp.fc"):
            tuned.get_submodule(name).weight.add_(torch.randn(8, 8, generator=g) * 0.3)
    ft = _save_state(tuned, tmp_path / "ft")
    adapter, report = extract(base, ft, rank=FULL, targets=targets, save_changed=True)
    out = adapterkit.save(adapter, tmp_path / "lora")
    assert [p.code for p in adapterkit.validate(out)] == (["empty-adapter"] if targets else [])  # a warning
    if targets is None:
        assert adapter.config.modules_to_save == ["norm"] and adapter.config.bias == "all"
        assert "base_model.model.vision.fc.bias" in adapter.tensors and "base_model.model.vision.norm.bias" in adapter.tensors
        adapted, y = _adapted(shared_names, out)
        assert adapted == {m.name for m in report.modules} == {"fc", "layers.0.mlp.fc"}
        with torch.no_grad():
            torch.testing.assert_close(y, tuned(X), atol=1e-5, rtol=0)
    else:  # nothing left for LoRA: PEFT refuses such an adapter loudly, and the report says why
        assert report.modules == () and any("layers.0.mlp.fc" in n for n in report.notes)
        assert any("PEFT" in n and "no LoRA" in n for n in report.notes)
        with pytest.raises(ValueError, match="No modules were targeted"):
            _adapted(shared_names, out)
    merge_checkpoint(base, [out], tmp_path / "merged")
    assert_same_tensors(shards(tmp_path / "merged"), shards(ft))


def test_attach_of_trained_base_tensors_is_refused_by_name_not_blamed_on_the_model(tmp_path: Path) -> None:
    """PEFT overwrites the model's biases with an extract's `base_layer.bias` (and a bias="all"
    adapter's trained biases) on loading; attach never overwrites base weights, so it refuses
    by name (not-supported, naming the key) — not `model-mismatch`, which would blame a model
    that fits.  Where the stored tensors equal the model's, it attaches."""
    base = save(qwen2(), tmp_path / "base")
    tuned = perturb(qwen2())
    adapter, _ = extract(base, save(tuned, tmp_path / "ft"), rank=FULL, save_changed=True)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.attach(qwen2(), adapter)
    assert info.value.code == "not-supported" and ".base_layer.bias" in str(info.value) and "adapterkit merge" in str(info.value)
    with pytest.raises(AdapterkitError) as info:  # a model that does not fit is still a model mismatch
        adapterkit.attach(tied_llama(), adapter)
    assert info.value.code == "model-mismatch"
    peft_model = get_peft_model(qwen2(), LoraConfig(r=2, target_modules=["q_proj"], bias="all", init_lora_weights=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.save_pretrained(tmp_path / "untrained_bias")
    trained = adapterkit.load(tmp_path / "untrained_bias")
    torch.testing.assert_close(logits(adapterkit.attach(qwen2(), trained)), logits(peft_model), atol=1e-5, rtol=0)
    key = next(k for k in trained.tensors if k.endswith("q_proj.base_layer.bias") or k.endswith("q_proj.bias"))
    moved = adapterkit.Adapter.from_tensors(trained.config, {**trained.tensors, key: trained.tensors[key] + 1})
    with pytest.raises(AdapterkitError) as info:
        adapterkit.attach(qwen2(), moved)
    assert info.value.code == "not-supported" and key in str(info.value)


@pytest.mark.parametrize(("chosen", "others"), [({"fc"}, {"block.fc", "head"}), ({"block.fc"}, {"x.block.fc", "fc"}),
                                                ({"a.q", "b.k"}, {"c.a.q", "v"}), ({"q"}, {"k", "v"})])
def test_exact_targets_select_exactly_the_chosen_modules_in_peft(chosen: set[str], others: set[str]) -> None:
    """PEFT's own matcher (check_target_module_exists) applied to the written target_modules
    selects the chosen modules and no other, whatever the names' suffixes (a top-level `fc`
    beside `block.fc` included)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    from adapterkit.ops.extract_layout import exact_targets

    targets = exact_targets(sorted(chosen), chosen | others)
    config = LoraConfig(target_modules=targets)
    assert {m for m in chosen | others if check_target_module_exists(config, m)} == chosen
