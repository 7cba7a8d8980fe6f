"""adapterkit.attach and friends against real PEFT (0.22.0) on tiny models built from configs.

Each case of ``peft_models.CASES`` (LoRA and IA3) is saved by PEFT with random adapter values,
then loaded twice into a fresh base model: by ``PeftModel.from_pretrained`` and by
``adapterkit.attach(base, adapterkit.load(dir))``.  Logits must agree (fp32, ≤ 1e-5), and so
must merged outputs, merge_and_unload state dicts and greedy generations; merge/unmerge must
restore the base; attach → extract_from_model → save → load is the identity.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("peft")
pytest.importorskip("transformers")

from hypothesis import given, settings
from peft import PeftModel
from peft_models import (
    CASES_BY_NAME,
    LLAMA_ALL,
    Case,
    _cfg,
    _lora,
    bert_classifier,
    bert_input,
    build_peft_model,
    conv_input,
    convnet,
    gpt2,
    llama,
    randomize_adapter,
    run,
    seq2seq_input,
    t5,
    token_input,
)

import adapterkit
from adapterkit.errors import AdapterkitError
from adapterkit.inject import active_names, registry
from adapterkit.inject.layers import AdapterLayer
from adapterkit.testing import strategies as aks

TOL = 1e-5
LORA = ["lora_gpt2_dora", "lora_conv_bias", "lora_layers_exclude", "lora_regex", "lora_linear", "lora_rslora_patterns", "lora_patterns", "lora_bias", "lora_dora", "lora_dora_conv_emb", "lora_dora_emb",
        "lora_embedding", "lora_gpt2_conv1d", "lora_conv", "lora_modules_to_save", "lora_embed_tokens", "lora_t5", "lora_bert_cls"]
IA3 = ["ia3", "ia3_conv", "ia3_gpt2_ff", "ia3_t5", "ia3_bert_cls"]
EXTRA = {
    "ia3_t5": Case("ia3_t5", t5, _cfg("IA3Config", target_modules=["k", "v", "wo"], feedforward_modules=["wo"], task_type="SEQ_2_SEQ_LM"), seq2seq_input, kind="IA3"),
    "ia3_bert_cls": Case("ia3_bert_cls", bert_classifier, _cfg("IA3Config", target_modules=["key", "value", "intermediate.dense"],
                                                               feedforward_modules=["intermediate.dense"], task_type="SEQ_CLS"), bert_input, kind="IA3"),
    "lora_t5": Case("lora_t5", t5, _lora(r=4, lora_alpha=8, target_modules=["q", "v", "wi", "wo"], task_type="SEQ_2_SEQ_LM"), seq2seq_input),
    "lora_bert_cls": Case("lora_bert_cls", bert_classifier, _lora(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"), bert_input),
    "lora_layers_exclude": Case("lora_layers_exclude", llama, _lora(r=4, lora_alpha=8, target_modules=LLAMA_ALL, layers_to_transform=[1], layers_pattern="layers",
                                                                  exclude_modules=["k_proj"], task_type="CAUSAL_LM"), token_input),
    "lora_regex": Case("lora_regex", llama, _lora(r=4, lora_alpha=8, target_modules=r".*\.(q|v)_proj|.*1\.mlp\.up_proj", task_type="CAUSAL_LM"), token_input),
    "lora_gpt2_dora": Case("lora_gpt2_dora", gpt2, _lora(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True,
                                                        task_type="CAUSAL_LM"), token_input),
    "lora_conv_bias": Case("lora_conv_bias", convnet, _lora(r=2, lora_alpha=4, target_modules=["c1", "c2", "p2", "head"], lora_bias=True), conv_input),
    "ia3_gpt2_ff": Case("ia3_gpt2_ff", gpt2, _cfg("IA3Config", target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                                                      task_type="CAUSAL_LM"), token_input, kind="IA3"),
}


def case_of(name: str) -> Case:
    return EXTRA.get(name) or CASES_BY_NAME[name]


def peft_from(case: Case, path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(case.base(), path).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, Path] = {}

    def get(name: str, seed: int = 1234) -> Path:
        if (name, seed) not in cache:
            path = tmp_path_factory.mktemp(f"{name}_{seed}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_peft_model(case_of(name))
                randomize_adapter(model, seed=seed, scale=0.05)  # ΔW near W in size: rounding stays relative
                model.save_pretrained(path)
            cache[(name, seed)] = path
        return cache[(name, seed)]

    return get


def peft_pair(case: Case, a: Path, b: Path, *, both_active: bool = False) -> nn.Module:
    """PEFT's model of ``case`` with the adapters saved at ``a`` and ``b`` loaded as "a" and "b"
    (with ``both_active``, both active: PEFT's ``set_adapter(["a", "b"])``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(case.base(), a, adapter_name="a").eval()
        peft_model.load_adapter(b, adapter_name="b")
        if both_active:
            peft_model.base_model.set_adapter(["a", "b"])
    return peft_model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", LORA + IA3)
def test_attached_equals_peft_then_merge_unmerge_extract(name: str, saved, tmp_path: Path) -> None:
    case, path = case_of(name), saved(name)
    inputs = case.inputs()
    peft_model = peft_from(case, path)
    theirs = run(peft_model, inputs)
    adapter = adapterkit.load(path)
    model = adapterkit.attach(case.base(), adapter)
    ours = run(model, inputs)
    assert max_diff(ours, theirs) <= TOL
    assert max_diff(ours, run(case.base(), inputs)) > 1e-4  # the adapter does something

    with adapterkit.disabled(model):
        assert torch.equal(run(model, inputs), run(case.base(), inputs))
    assert torch.equal(run(copy.deepcopy(model), inputs), ours)  # wrappers and registry survive a copy
    extracted = adapterkit.extract_from_model(model, "default")
    assert extracted == adapter
    adapterkit.save(extracted, tmp_path / "again")
    assert adapterkit.load(tmp_path / "again") == adapter
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    adapterkit.merge_attached(model)
    assert max_diff(run(model, inputs), ours) <= TOL
    adapterkit.unmerge_attached(model)
    for k, v in model.state_dict().items():
        assert float((v - base_weights[k]).norm() / max(float(base_weights[k].norm()), 1e-12)) <= 1e-6, k

    plain = adapterkit.merge_and_unload(model)
    assert max_diff(run(plain, inputs), theirs) <= TOL
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules()) and not registry(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = peft_model.merge_and_unload().state_dict()
    got = plain.state_dict()
    assert set(got) == set(expected)
    for k in expected:
        assert max_diff(got[k], expected[k]) <= 1e-6, k


@pytest.mark.parametrize("name", ["lora_linear", "lora_gpt2_conv1d", "lora_dora", "ia3"])
def test_generate_same_tokens(name: str, saved) -> None:
    case, path = case_of(name), saved(name)
    ids = case.inputs()["input_ids"][:1]
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft_from(case, path).generate(input_ids=ids, **kw)
        ours = adapterkit.attach(case.base(), adapterkit.load(path)).generate(input_ids=ids, **kw)
    assert torch.equal(ours, theirs)


def test_several_adapters_active_disabled_detach(saved) -> None:
    case = case_of("lora_linear")
    a, b = saved("lora_linear", 1), saved("lora_linear", 2)
    inputs = case.inputs()
    theirs = run(peft_pair(case, a, b, both_active=True), inputs)
    model = adapterkit.attach(case.base(), adapterkit.load(a), "a")
    adapterkit.attach(model, adapterkit.load(b), "b", activate=False)
    only_a = run(model, inputs)
    adapterkit.set_active(model, ["a", "b"])
    assert active_names(model) == ("a", "b")
    assert max_diff(run(model, inputs), theirs) <= TOL
    adapterkit.merge_attached(model)
    assert max_diff(run(model, inputs), theirs) <= TOL
    with pytest.raises(AdapterkitError, match="not-supported"):
        adapterkit.set_active(model, ["a"])
    with adapterkit.disabled(model):  # unmerges (to fp32 rounding), as PEFT
        assert max_diff(run(model, inputs), run(case.base(), inputs)) <= TOL
    assert max_diff(run(model, inputs), theirs) <= TOL
    with pytest.raises(AdapterkitError, match="adapter-name-taken"):
        adapterkit.attach(model, adapterkit.load(a), "a")
    adapterkit.detach(model, "b")
    assert active_names(model) == ("a",) and max_diff(run(model, inputs), only_a) <= TOL
    adapterkit.detach(model, "a")
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert max_diff(run(model, inputs), run(case.base(), inputs)) <= TOL
    with pytest.raises(AdapterkitError, match="adapter-not-attached"):
        adapterkit.detach(model, "a")


def test_unload_gives_the_base_back(saved) -> None:
    case = case_of("lora_modules_to_save")
    model = adapterkit.attach(case.base(), adapterkit.open_adapter(saved("lora_modules_to_save")))  # lazy tensors
    adapterkit.merge_attached(model)
    with pytest.raises(AdapterkitError, match="not-supported"):  # would change what is active while merged
        adapterkit.attach(model, adapterkit.load(saved("lora_linear")), "other")
    assert set(registry(model)) == {"default"}
    plain = adapterkit.unload(model)
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
    base = case.base().state_dict()
    assert all(torch.allclose(v, base[k], atol=1e-6) for k, v in plain.state_dict().items())


def test_mismatches_are_listed_at_once_and_leave_the_model_untouched(saved) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    adapter = adapterkit.load(saved("lora_linear"))
    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(AdapterkitError, match="model-mismatch") as info:
        adapterkit.attach(other, adapter)
    message = str(info.value)
    assert "model.layers.2.self_attn.q_proj" in message  # targeted, no tensors
    assert message.count("mlp.up_proj") >= 2 and "needs (24, 4)" in message  # wrong shapes, every layer
    assert not any(isinstance(m, AdapterLayer) for m in other.modules()) and not registry(other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    with pytest.raises(AdapterkitError, match="model-mismatch") as info:  # wrong architecture
        adapterkit.attach(gpt2(), adapter)
    assert "the model has no module `model.layers.0.mlp.down_proj`" in str(info.value)
    with pytest.raises(AdapterkitError, match="adapter-not-attached"):
        adapterkit.set_active(other, ["nope"])


def test_safe_merge_refuses_non_finite(saved) -> None:
    case = case_of("lora_linear")
    model = adapterkit.attach(case.base(), adapterkit.load(saved("lora_linear")))
    layer = model.model.layers[1].mlp.down_proj
    with torch.no_grad():
        layer.lora_B["default"][0, 0] = float("inf")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AdapterkitError, match="non-finite"):
        adapterkit.merge_attached(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_training_reaches_the_adapter_parameters(saved) -> None:
    case = case_of("lora_dora")
    model = adapterkit.attach(case.base(), adapterkit.load(saved("lora_dora")))
    out = model(**case.inputs()).logits.sum()
    out.backward()
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].grad is not None and layer.lora_magnitude["default"].grad is not None
    with torch.no_grad():
        layer.lora_A["default"].add_(1.0)
    trained = adapterkit.extract_from_model(model)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert torch.equal(trained.tensors[key], layer.lora_A["default"].detach())


class Tree(nn.Module):
    """nn.Linear modules at the paths and shapes an adapter names (``model.layers.i.<sub>``)."""

    def __init__(self, shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.model = nn.Module()
        for name, (n_out, n_in) in shapes.items():
            parent = self.model
            for part in name.split(".")[1:-1]:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(name.rsplit(".", 1)[1], nn.Linear(n_in, n_out))


@settings(max_examples=15)
@given(aks.lora_adapters(layer_types=("linear",), dtypes=aks.dtypes((torch.float32, torch.bfloat16, torch.float16)), modules_to_save=False, lora_bias=aks.st.just(False)))
def test_merged_output_equals_attached_output(adapter) -> None:
    shapes = {}
    for name, view in adapter.modules.items():
        a, b = adapter.meta(view.keys["lora_A"]).shape, adapter.meta(view.keys["lora_B"]).shape
        shapes[name] = (b[0], a[1])
    model = adapterkit.attach(Tree(shapes), adapter)
    x = {name: torch.randn(3, shapes[name][1], generator=torch.Generator().manual_seed(0)) for name in shapes}
    layers = {name: model.get_submodule(name) for name in shapes}
    attached = {name: layers[name](x[name]) for name in shapes}
    adapterkit.merge_attached(model)
    for name in shapes:
        assert torch.allclose(layers[name](x[name]), attached[name], atol=1e-4, rtol=1e-4)
    adapterkit.unmerge_attached(model)
    assert adapterkit.extract_from_model(model) == adapter


def test_top_level_names_are_the_model_functions() -> None:
    import adapterkit.inject as inject

    for name in ("attach", "detach", "set_active", "disabled", "merge_attached", "unmerge_attached", "merge_and_unload", "unload",
                 "extract_from_model"):
        assert getattr(adapterkit, name) is getattr(inject, name) and callable(getattr(adapterkit, name)), name
        assert name in adapterkit.__all__
    # adapterkit.merge / unmerge are the CLI's checkpoint commands, not the live model's
    assert adapterkit.merge is not inject.merge_attached and adapterkit.unmerge is not inject.unmerge_attached


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["lora_dora", "lora_gpt2_conv1d", "lora_modules_to_save", "ia3"])
def test_cuda_attached_equals_peft(name: str, saved) -> None:
    case, path = case_of(name), saved(name)
    inputs = {k: v.cuda() for k, v in case.inputs().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = run(PeftModel.from_pretrained(case.base().cuda(), path).eval(), inputs)
    model = adapterkit.attach(case.base().cuda(), adapterkit.load(path))
    assert all(p.is_cuda for p in model.parameters())
    ours = run(model, inputs)
    assert max_diff(ours, theirs) <= 1e-4
    adapterkit.merge_attached(model)
    assert max_diff(run(model, inputs), ours) <= 1e-4
    assert adapterkit.extract_from_model(model) == adapterkit.load(path)


@settings(max_examples=15)
@given(aks.ia3_adapters(dtypes=aks.dtypes((torch.float32, torch.bfloat16))))
def test_ia3_merged_output_equals_attached_output(adapter) -> None:
    shapes = {}
    for name, view in adapter.modules.items():
        size = max(adapter.meta(view.key).shape)
        shapes[name] = (3, size) if view.is_feedforward else (size, 3)
    model = adapterkit.attach(Tree(shapes), adapter)
    x = {name: torch.randn(2, shapes[name][1], generator=torch.Generator().manual_seed(0)) for name in shapes}
    attached = {name: model.get_submodule(name)(x[name]) for name in shapes}
    adapterkit.merge_attached(model)
    for name in shapes:
        assert torch.allclose(model.get_submodule(name)(x[name]), attached[name], atol=1e-5, rtol=1e-5)
    plain = adapterkit.merge_and_unload(model)
    assert all(type(m) is nn.Linear for n, m in plain.named_modules() if n in shapes)


def test_two_active_adapters_with_a_copy_of_one_module_are_refused(saved) -> None:
    case = case_of("lora_modules_to_save")
    model = adapterkit.attach(case.base(), adapterkit.load(saved("lora_modules_to_save", 1)), "a")
    adapterkit.attach(model, adapterkit.load(saved("lora_modules_to_save", 2)), "b", activate=False)
    with pytest.raises(AdapterkitError, match="argument-invalid") as info:
        adapterkit.set_active(model, ["a", "b"])
    assert "lm_head" in str(info.value) and active_names(model) == ("a",)
    adapterkit.set_active(model, "b")
    assert model.lm_head.current() is model.lm_head.modules_to_save["b"]


@pytest.mark.parametrize("name", ["ia3", "lora_dora"])
def test_two_active_adapters_equal_peft(name: str, saved) -> None:
    case = case_of(name)
    a, b = saved(name, 1), saved(name, 2)
    inputs = case.inputs()
    peft_model = peft_pair(case, a, b, both_active=True)
    model = adapterkit.attach(case.base(), adapterkit.load(a), "a")
    adapterkit.attach(model, adapterkit.load(b), "b", activate=False)
    adapterkit.set_active(model, ["a", "b"])
    ours = run(model, inputs)
    assert max_diff(ours, run(peft_model, inputs)) <= TOL
    adapterkit.merge_attached(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.base_model.merge_adapter(["a", "b"])
    # DoRA: each merge normalises by ‖W + ΔW‖ of the unmerged W, as forward does (PEFT 0.22.0 too)
    assert max_diff(run(model, inputs), run(peft_model, inputs)) <= TOL
    assert max_diff(run(model, inputs), ours) <= TOL
    base = {k: v.clone() for k, v in case.base().state_dict().items()}
    adapterkit.merge_attached(model, "a")  # nothing left to merge: a no-op
    adapterkit.unmerge_attached(model)
    assert max_diff(run(model, inputs), ours) <= TOL
    unloaded = adapterkit.unload(model).state_dict()
    for k, v in base.items():  # two DoRA factors divided out in turn: a little more rounding than one
        assert float((unloaded[k] - v).norm() / max(float(v.norm()), 1e-12)) <= 1e-5, k


@pytest.mark.parametrize("method", ["cat", "svd"])
def test_attach_a_combination_equals_peft_add_weighted_adapter(method: str, saved) -> None:
    """PEFT's ``add_weighted_adapter`` on a model is ``attach(model, combine([...]), name)``, and
    its ``delete_adapter`` is ``detach``: same logits (the two adapters share ranks and targets,
    where PEFT's method and ours agree)."""
    case = case_of("lora_linear")
    a, b = saved("lora_linear", 1), saved("lora_linear", 2)
    inputs = case.inputs()
    peft_model = peft_pair(case, a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "mix", combination_type=method, svd_rank=8)
        peft_model.set_adapter("mix")
    theirs = run(peft_model, inputs)
    model = case.base()
    mix = adapterkit.combine([adapterkit.load(a), adapterkit.load(b)], [0.7, -0.4], method, **({"rank": 8} if method == "svd" else {}))
    adapterkit.attach(model, mix, name="mix")
    assert max_diff(run(model, inputs), theirs) <= TOL
    adapterkit.detach(model, "mix")
    assert torch.equal(run(model, inputs), run(case.base(), inputs)) and not registry(model)


@pytest.mark.parametrize("name", ["lora_bf16", "lora_fp16"])
def test_half_precision_merge_unmerge_bound(name: str, saved) -> None:
    """Merge then unmerge of a bf16/fp16 model rounds twice (fp32 math each time): every weight
    comes back within one ulp of max(|W|, |W + ΔW|) in the storage dtype (unmerge's docstring)."""
    case = case_of(name)
    model = adapterkit.attach(case.base(), adapterkit.load(saved(name)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapterkit.merge_attached(model)
    merged = {k: v.clone() for k, v in model.state_dict().items()}
    adapterkit.unmerge_attached(model)
    changed = 0
    for k, v in model.state_dict().items():
        if not v.is_floating_point() or "lora_" in k:
            continue
        w, m = before[k].float(), merged[k].float()
        eps = torch.finfo(v.dtype).eps  # one ulp at 1.0: 2^-7 (bf16), 2^-10 (fp16)
        bound = eps * torch.maximum(w.abs(), m.abs()) + torch.finfo(v.dtype).tiny
        assert torch.all((v.float() - w).abs() <= bound), k
        changed += not torch.equal(m, w)
    assert changed > 0  # the merge did change weights


class ScaledEmbedding(nn.Embedding):
    """Gemma 3's kind of embedding: the looked-up rows are multiplied by ``embed_scale``."""

    def __init__(self, *args, embed_scale: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("embed_scale", torch.tensor(embed_scale), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.embed_scale


class PaddedEmbNet(nn.Module):
    def __init__(self, scale: float | None) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.emb = ScaledEmbedding(20, 8, padding_idx=0, embed_scale=scale) if scale else nn.Embedding(20, 8, padding_idx=0)
        self.out = nn.Linear(8, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids))


@pytest.mark.parametrize("scale", [None, 3.0])
def test_embedding_padding_idx_and_embed_scale_as_peft(scale, tmp_path: Path) -> None:
    """An embedding with ``padding_idx`` (its row gets no gradient, in the adapter's A too) and a
    scaled embedding (Gemma 3: the LoRA output is scaled like the base's): outputs and the
    gradient of lora_embedding_A equal PEFT's."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(PaddedEmbNet(scale), LoraConfig(r=3, lora_alpha=6, target_modules=["emb"]))
    randomize_adapter(peft_model, seed=3, scale=0.3)
    peft_model.save_pretrained(tmp_path)
    ids = torch.tensor([[0, 3, 0, 7], [5, 0, 2, 9]])
    model = adapterkit.attach(PaddedEmbNet(scale), adapterkit.load(tmp_path))
    theirs, ours = peft_model(ids), model(ids)
    assert max_diff(ours.detach(), theirs.detach()) <= TOL
    theirs.square().sum().backward()
    ours.square().sum().backward()
    peft_a = peft_model.base_model.model.emb.lora_embedding_A["default"]
    our_a = model.emb.lora_A["default"]
    assert torch.all(our_a.grad[:, 0] == 0) and torch.all(peft_a.grad[:, 0] == 0)
    torch.testing.assert_close(our_a.grad, peft_a.grad, rtol=1e-5, atol=1e-6)


class Named(nn.Module):
    """Modules named so that PEFT's matching rules decide: ``a.q_proj`` and ``a.kq_proj`` (a list
    entry matches a whole name or a dot-separated suffix), ``b.a.q_proj`` (a regex must match the
    full name)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.ModuleDict({"q_proj": nn.Linear(4, 4), "kq_proj": nn.Linear(4, 4)})
        self.b = nn.ModuleDict({"a": nn.ModuleDict({"q_proj": nn.Linear(4, 4)})})


@pytest.mark.parametrize("targets", [["q_proj"], r"a\.q_proj"])
def test_target_matching_follows_peft_on_lookalike_names(targets) -> None:
    """PEFT picks ``a.q_proj`` and ``b.a.q_proj`` for the list (not ``a.kq_proj``: no dot before
    the suffix) and only ``a.q_proj`` for the regex (not ``b.a.q_proj``: a full match); an
    adapter holding exactly those modules attaches, one module short is a model-mismatch."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(Named(), LoraConfig(r=2, lora_alpha=2, target_modules=targets))
    picked = sorted(n.removeprefix("base_model.model.").removesuffix(".lora_A.default")
                    for n, _ in peft_model.named_modules() if n.endswith(".lora_A.default"))
    assert picked == (["a.q_proj", "b.a.q_proj"] if isinstance(targets, list) else ["a.q_proj"])
    g = torch.Generator().manual_seed(1)
    config = adapterkit.LoraConfig(r=2, lora_alpha=2, target_modules=targets)
    tensors = {}
    for m in picked:
        tensors[f"base_model.model.{m}.lora_A.weight"] = torch.randn(2, 4, generator=g)
        tensors[f"base_model.model.{m}.lora_B.weight"] = torch.randn(4, 2, generator=g)
    model = adapterkit.attach(Named(), adapterkit.Adapter.from_tensors(config, tensors))
    assert sorted(registry(model)["default"].modules) == picked
    short = {k: v for k, v in tensors.items() if not k.startswith(f"base_model.model.{picked[0]}.")}
    if len(picked) > 1:
        with pytest.raises(AdapterkitError) as info:
            adapterkit.attach(Named(), adapterkit.Adapter.from_tensors(config, short))
        assert info.value.code == "model-mismatch" and picked[0] in str(info.value)
