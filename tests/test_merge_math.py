"""Merging adapters into base tensors: the kinds' merge/unmerge math against real PEFT 0.21.2,
properties of merge/unmerge, and ``plan_merge``'s key mapping and checks.

Each PEFT case builds a tiny base model under a fixed seed, wraps it with ``get_peft_model``,
fills every adapter parameter with ``randn``, saves it and loads it with adapterkit.  The
merge under test takes the fresh base model's ``state_dict`` as the checkpoint, plans with
``plan_merge``, applies replacements then per-module merges, and is compared with PEFT's
``merge_and_unload().state_dict()``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from peft_models import (  # noqa: E402
    CASES_BY_NAME,
    LLAMA_ATTN,
    Case,
    _cfg,
    _lora,
    build_peft_model,
    convnet,
    gpt2,
    llama,
)

import adapterkit  # noqa: E402
from adapterkit.dtypes import DTYPE_NAMES  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.ops import MergePlan, ModuleTarget, plan_merge  # noqa: E402
from adapterkit.ops.merge_plan import TiedEmbeddings, find_tied_embeddings  # noqa: E402
from adapterkit.testing import strategies as aks  # noqa: E402

GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def random_biases(make: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    """The base model with its biases (initialised to zero by Llama and GPT-2) randomised, so
    that a bias merge shows."""
    def build() -> torch.nn.Module:
        model = make()
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, p in sorted(model.named_parameters()):
                if name.endswith(".bias"):
                    p.copy_(torch.randn(p.shape, generator=g))
        return model

    return build


llama_with_biases = random_biases(lambda: llama(bias=True))

# Cases beyond peft_models.CASES.  lora_conv there also targets p3, a 1x1x1 Conv3d whose ΔW PEFT
# 0.21.2 cannot compute (see test_peft_interop.test_conv3d_1x1_delta_peft_cannot_compute), so
# merge_and_unload fails on it; lora_conv_merge leaves it out and test_conv3d_1x1_merge covers it.
EXTRA: list[Case] = [
    Case("lora_conv_merge", convnet, _lora(r=2, lora_alpha=5, target_modules=["c1", "c2", "p2", "c3"]), None),
    Case("lora_bias_nonzero", llama_with_biases, _lora(r=4, lora_alpha=8, target_modules=LLAMA_ATTN, lora_bias=True, task_type="CAUSAL_LM"), None),
    Case("lora_conv_bias", convnet, _lora(r=2, lora_alpha=3, target_modules=["c1", "c2", "c3", "head"], lora_bias=True), None),
    Case("lora_dora_gpt2", gpt2, _lora(r=4, lora_alpha=8, target_modules=GPT2_TARGETS, fan_in_fan_out=True, use_dora=True, task_type="CAUSAL_LM"), None),
    Case("lora_dora_conv1d_3d", convnet, _lora(r=2, lora_alpha=4, target_modules=["c1", "c3"], use_dora=True), None),
    Case("lora_dora_rslora_patterns", llama, _lora(r=4, lora_alpha=8, target_modules=LLAMA_ATTN, use_dora=True, use_rslora=True, rank_pattern={"k_proj": 2}, alpha_pattern={"v_proj": 3}, task_type="CAUSAL_LM"), None),
    Case("ia3_bias", llama_with_biases, _cfg("IA3Config", target_modules=["q_proj", "k_proj", "o_proj", "down_proj"], feedforward_modules=["o_proj", "down_proj"], task_type="CAUSAL_LM"), None, kind="IA3"),
    Case("ia3_gpt2", random_biases(gpt2), _cfg("IA3Config", target_modules=["c_attn", "attn.c_proj", "mlp.c_proj", "c_fc"], feedforward_modules=["mlp.c_proj", "c_fc"], fan_in_fan_out=True, task_type="CAUSAL_LM"), None, kind="IA3"),
    Case("ia3_modules_to_save", llama, _cfg("IA3Config", target_modules=["v_proj", "down_proj"], feedforward_modules=["down_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM"), None, kind="IA3"),
]
MERGE_CASES = [
    "lora_linear", "lora_gpt2_conv1d", "lora_embedding", "lora_conv_merge", "lora_bias", "lora_bias_nonzero", "lora_conv_bias",
    "lora_train_bias_all", "lora_train_bias_lora_only", "lora_dora", "lora_dora_conv_emb", "lora_dora_emb",
    "lora_dora_gpt2", "lora_dora_conv1d_3d", "lora_dora_rslora_patterns", "lora_rslora", "lora_patterns",
    "lora_rslora_patterns", "lora_modules_to_save", "lora_embed_tokens", "ia3", "ia3_conv", "ia3_bias", "ia3_gpt2",
    "ia3_modules_to_save",
]
ALL_CASES = {**CASES_BY_NAME, **{c.name: c for c in EXTRA}}


# ----------------------------------------------------------------------------- helpers


@dataclass
class Built:
    case: Case
    model: Any
    adapter: adapterkit.Adapter
    base: dict[str, torch.Tensor]  # a fresh base model's state_dict (the checkpoint)
    merged: dict[str, torch.Tensor]  # PEFT's merge_and_unload().state_dict()


def _quiet() -> Any:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


def build(case: Case, d: Path, **peft_kw: Any) -> Built:
    ctx = _quiet()
    try:
        if peft_kw:
            from peft import get_peft_model
            from peft_models import randomize_adapter

            model = get_peft_model(case.base(), case.config(), **peft_kw)
            randomize_adapter(model)
            model.eval()
        else:
            model = build_peft_model(case)
        model.save_pretrained(str(d))
        with torch.no_grad():
            merged = copy.deepcopy(model).merge_and_unload().state_dict()
    finally:
        ctx.__exit__(None, None, None)
    base = {k: v.detach().clone() for k, v in case.base().state_dict().items()}
    return Built(case, model, adapterkit.load(d), base, {k: v.detach() for k, v in merged.items()})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = build(ALL_CASES[name], tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def keys_of(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (DTYPE_NAMES[v.dtype], tuple(v.shape)) for k, v in sd.items()}


def apply_plan(adapter: adapterkit.Adapter, plan: MergePlan, base: dict[str, torch.Tensor], *, weight: float = 1.0) -> dict[str, torch.Tensor]:
    """What an integrator does: replacements first, then each module's merge in fp32, cast once."""
    out = dict(base)
    for ckey, akey in plan.replacements.items():
        out[ckey] = adapter.tensors[akey].to(base[ckey].dtype)
    for target in plan.targets:
        merged = adapter.merge(target.module, {r: out[k].float() for r, k in target.roles.items()}, weight=weight)
        assert set(merged) <= set(target.roles)
        for role, tensor in merged.items():
            key = target.roles[role]
            assert tensor.dtype == torch.float32 and tensor.shape == base[key].shape
            out[key] = tensor.to(base[key].dtype)
    return out


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


# ----------------------------------------------------------------------------- against PEFT


@pytest.mark.parametrize("name", MERGE_CASES)
def test_merge_matches_peft_merge_and_unload_bit_exactly(name: str, built: Callable[[str], Built]) -> None:
    """fp32 bases: every tensor of our merged checkpoint equals PEFT's merged model's, bit for
    bit (same operations in the same order, in fp32), and the tensors that change are exactly
    those PEFT changes."""
    b = built(name)
    plan = plan_merge(b.adapter, keys_of(b.base))
    assert plan.prefix_rule == "exact"
    assert [t.module for t in plan.targets] == sorted(b.adapter.modules)
    ours = apply_plan(b.adapter, plan, b.base)
    assert set(ours) == set(b.merged)
    for key, want in b.merged.items():
        assert ours[key].dtype == want.dtype, key
        assert torch.equal(ours[key], want), (key, float((ours[key] - want).abs().max()))
    assert changed(ours, b.base) == changed(b.merged, b.base)
    assert changed(ours, b.base)


def test_merge_changes_biases_where_peft_does(built: Callable[[str], Built]) -> None:
    """lora_B.bias adds to the base bias; IA3 scales the bias of ordinary modules only; a
    trained bias (bias="all") replaces the base bias."""
    lb = built("lora_bias")
    assert {k for k in changed(lb.merged, lb.base) if k.endswith(".bias")} == {f"{m}.bias" for m in lb.adapter.modules}
    ia3 = built("ia3_bias")
    ff = {m for m, v in ia3.adapter.modules.items() if v.is_feedforward}
    assert ff and {k for k in changed(ia3.merged, ia3.base) if k.endswith(".bias")} == {f"{m}.bias" for m in ia3.adapter.modules if m not in ff and f"{m}.bias" in ia3.base}
    gpt = built("ia3_gpt2")
    assert any(k.endswith("attn.c_attn.bias") for k in changed(gpt.merged, gpt.base))
    plan = plan_merge(built("lora_train_bias_all").adapter, keys_of(built("lora_train_bias_all").base))
    assert plan.replacements["model.layers.0.self_attn.q_proj.bias"] == "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias"
    assert plan.replacements["model.layers.0.self_attn.k_proj.bias"] == "base_model.model.model.layers.0.self_attn.k_proj.bias"


def test_conv3d_1x1_merge(tmp_path: Path) -> None:
    """PEFT cannot merge a Conv3d 1x1x1 (its conv2d shortcut squeezes 5-D tensors); ours is
    W + ΔW, with ΔW checked against the LoRA branch in test_peft_interop."""
    ctx = _quiet()
    try:
        model = build_peft_model(CASES_BY_NAME["lora_conv"])
        model.save_pretrained(str(tmp_path))
    finally:
        ctx.__exit__(None, None, None)
    adapter = adapterkit.load(tmp_path)
    W = convnet().p3.weight.detach()
    got = adapter.merge("p3", {"weight": W})["weight"]
    assert torch.equal(got, W + adapter.delta_weight("p3"))


@pytest.mark.parametrize("adapter_dtype", ["fp32", "bf16"])
def test_bf16_base_at_least_as_close_to_exact_as_peft(adapter_dtype: str, tmp_path: Path) -> None:
    """Ours computes in fp32 and rounds to bf16 once; per tensor our max error against the fp64
    merge is never larger than PEFT's.  With an fp32 adapter (PEFT's default autocast) PEFT's
    Linear merge adds the fp32 ΔW into the bf16 weight in place, also one rounding: the results
    are bit-identical.  With a bf16 adapter PEFT rounds ΔW to bf16 first (two roundings)."""
    case = CASES_BY_NAME["lora_bf16"]
    b = build(case, tmp_path, autocast_adapter_dtype=(adapter_dtype == "fp32"))
    assert {b.adapter.meta(k).dtype for k in b.adapter.tensors} == {"F32" if adapter_dtype == "fp32" else "BF16"}
    ours = apply_plan(b.adapter, plan_merge(b.adapter, keys_of(b.base)), b.base)
    strictly_better = 0
    for m, view in b.adapter.modules.items():
        key = f"{m}.weight"
        A, B = view.lora_A.double(), view.lora_B.double()
        exact = b.base[key].double() + (B @ A) * view.scaling
        err_ours = float((ours[key].double() - exact).abs().max())
        err_peft = float((b.merged[key].double() - exact).abs().max())
        assert ours[key].dtype == torch.bfloat16
        assert err_ours <= err_peft, (key, err_ours, err_peft)
        strictly_better += err_ours < err_peft
        if adapter_dtype == "fp32":
            assert torch.equal(ours[key], b.merged[key]), key
    if adapter_dtype == "bf16":
        assert strictly_better  # the double rounding shows


def test_targets_in_any_float_dtype_are_computed_in_fp32(built: Callable[[str], Built]) -> None:
    """bf16/fp16 targets are upcast (exactly) and the result is fp32; fp64 targets stay fp64."""
    for name in ("lora_dora", "ia3_bias", "lora_bias_nonzero"):
        b = built(name)
        for m in b.adapter.modules:
            targets = {r: b.base[f"{m}.{r}"] for r in b.adapter.merge_roles(m) if f"{m}.{r}" in b.base}
            for dtype in (torch.bfloat16, torch.float16):
                low = {r: t.to(dtype) for r, t in targets.items()}
                got = b.adapter.merge(m, low)
                want = b.adapter.merge(m, {r: t.float() for r, t in low.items()})
                assert all(got[r].dtype == torch.float32 and torch.equal(got[r], want[r]) for r in want), (name, m)
            assert all(t.dtype == torch.float64 for t in b.adapter.merge(m, {r: t.double() for r, t in targets.items()}).values())


# ----------------------------------------------------------------------------- weights, refusals


def test_lora_weight_scales_delta(built: Callable[[str], Built]) -> None:
    b = built("lora_bias")
    m = "model.layers.0.self_attn.q_proj"
    W, bias = b.base[f"{m}.weight"], b.base[f"{m}.bias"]
    for w in (0.0, 0.5, -1.0, 2.0):
        out = b.adapter.merge(m, {"weight": W, "bias": bias}, weight=w)
        assert torch.equal(out["weight"], W + b.adapter.delta_weight(m) * w)
        assert torch.equal(out["bias"], bias + b.adapter.module(m).bias * b.adapter.module(m).scaling * w)
    zero = b.adapter.merge(m, {"weight": W, "bias": bias}, weight=0.0)
    assert torch.equal(zero["weight"], W) and torch.equal(zero["bias"], bias)


def test_ia3_weight_interpolates(built: Callable[[str], Built]) -> None:
    """IA3 with weight w scales by 1 + w·(l − 1): w=0 is the base, w=1 PEFT's merge, and the
    merged weight is W + w·(W·diag(l) − W)."""
    b = built("ia3_bias")
    for m, view in b.adapter.modules.items():
        targets = {"weight": b.base[f"{m}.weight"]} | ({"bias": b.base[f"{m}.bias"]} if not view.is_feedforward else {})
        zero = b.adapter.merge(m, targets, weight=0.0)
        for role in targets:
            assert torch.equal(zero[role], targets[role])
        full = b.adapter.merge(m, targets)
        half = b.adapter.merge(m, targets, weight=0.5)
        for role in targets:
            torch.testing.assert_close(half[role], (targets[role] + full[role]) / 2, rtol=1e-6, atol=1e-7)


def test_dora_refuses_weight_and_unmerge(built: Callable[[str], Built]) -> None:
    b = built("lora_dora")
    m = next(iter(b.adapter.modules))
    targets = {"weight": b.base[f"{m}.weight"]}
    with pytest.raises(AdapterkitError, match="DoRA defines no scaled merge") as info:
        b.adapter.merge(m, targets, weight=0.5)
    assert info.value.code == "not-supported"
    with pytest.raises(AdapterkitError, match="DoRA merge cannot be undone") as info:
        b.adapter.unmerge(m, targets)
    assert info.value.code == "not-supported"


def test_dora_merged_rows_have_norm_m(built: Callable[[str], Built]) -> None:
    """Why DoRA cannot be unmerged: every merged row has norm |m|, whatever ‖W + ΔW‖ was."""
    b = built("lora_dora")
    for m, view in b.adapter.modules.items():
        merged = b.adapter.merge(m, {"weight": b.base[f"{m}.weight"]})["weight"]
        torch.testing.assert_close(merged.norm(dim=1), view.magnitude.abs(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning", "p_tuning_mlp"])
def test_prompt_kinds_cannot_merge(name: str, tmp_path: Path) -> None:
    ctx = _quiet()
    try:
        build_peft_model(CASES_BY_NAME[name]).save_pretrained(str(tmp_path))
    finally:
        ctx.__exit__(None, None, None)
    adapter = adapterkit.load(tmp_path)
    for call in (
        lambda: adapter.merge("prompt_embeddings", {"weight": torch.zeros(2, 2)}),
        lambda: adapter.unmerge("prompt_embeddings", {"weight": torch.zeros(2, 2)}),
        lambda: adapter.merge_roles("prompt_embeddings"),
        lambda: plan_merge(adapter, {"lm_head.weight": ("F32", (64, 16))}),
    ):
        with pytest.raises(AdapterkitError, match="adapters have no weights to merge into a checkpoint") as info:
            call()
        assert info.value.code == "not-supported"
        assert adapter.peft_type in str(info.value)


def test_merge_checks_its_targets(built: Callable[[str], Built]) -> None:
    b = built("lora_bias")
    m = "model.layers.0.self_attn.q_proj"
    W, bias = b.base[f"{m}.weight"], b.base[f"{m}.bias"]
    assert b.adapter.merge_roles(m) == ("weight", "bias")
    with pytest.raises(AdapterkitError) as info:
        b.adapter.merge(m, {"weight": W})
    assert info.value.code == "base-tensor-missing" and "bias" in str(info.value)
    with pytest.raises(AdapterkitError) as info:
        b.adapter.merge(m, {"weight": W, "bias": bias[:-1]})
    assert info.value.code == "base-shape-mismatch" and info.value.expected == "(16,)" and info.value.actual == (15,)
    with pytest.raises(AdapterkitError) as info:
        b.adapter.merge("model.layers.0.self_attn.k_proj", {"weight": W, "bias": bias})  # k_proj is (8, 16)
    assert info.value.code == "base-shape-mismatch"
    assert info.value.expected == "(8, 16)" and info.value.actual == (16, 16)
    ia3 = built("ia3")
    ff = next(m for m, v in ia3.adapter.modules.items() if v.is_feedforward)
    assert ia3.adapter.merge_roles(ff) == ("weight",)
    with pytest.raises(AdapterkitError) as info:
        ia3.adapter.merge(ff, {"weight": torch.ones(16, 5)})  # down_proj scales its 32 inputs
    assert info.value.code == "base-shape-mismatch" and info.value.expected == "(*, 32)"


def test_ia3_unmerge_refuses_exact_zero(built: Callable[[str], Built]) -> None:
    b = built("ia3")
    m = "model.layers.0.self_attn.k_proj"
    scale = b.adapter.module(m).ia3_l.clone()
    scale[3, 0] = 0.0
    tensors = {k: b.adapter.tensors[k] for k in b.adapter.tensors}
    tensors[b.adapter.module(m).key] = scale
    adapter = adapterkit.Adapter.from_tensors(b.adapter.config, tensors)
    W = b.base[f"{m}.weight"]
    merged = adapter.merge(m, {"weight": W})["weight"]
    assert torch.equal(merged[3], torch.zeros(16))
    with pytest.raises(AdapterkitError, match="exactly zero at 1 position") as info:
        adapter.unmerge(m, {"weight": merged})
    assert info.value.code == "not-supported"


# ----------------------------------------------------------------------------- properties


def _random_targets(adapter: adapterkit.Adapter, module: str, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = adapter.kind.base_shapes(adapter, module)
    return {role: torch.randn([d if d is not None else 3 for d in shape], generator=g).to(dtype) for role, (shape, _) in shapes.items()}


@given(aks.lora_adapters(use_dora=st.just(False), dtypes=st.just(torch.float32)), st.sampled_from([1.0, 0.5, -2.0]), st.integers(0, 2**16))
def test_lora_unmerge_inverts_merge(adapter: adapterkit.Adapter, weight: float, seed: int) -> None:
    """unmerge(merge(W)) == W up to fp32 rounding: each element is off by at most two roundings
    of |W| + |weight·ΔW|."""
    eps = torch.finfo(torch.float32).eps
    for m in adapter.modules:
        targets = _random_targets(adapter, m, seed)
        merged = adapter.merge(m, targets, weight=weight)
        back = adapter.unmerge(m, {**targets, **merged}, weight=weight)
        assert set(merged) == set(back) == set(targets)
        d = adapter.delta_weight(m, dtype=torch.float32) * weight
        W = targets["weight"]
        assert ((back["weight"] - W).abs() <= 2 * eps * (W.abs() + d.abs())).all()
        assert torch.equal(merged["weight"], W + d)


@given(aks.ia3_adapters(dtypes=st.just(torch.float32)), st.sampled_from([1.0, 0.5, 3.0]), st.integers(0, 2**16))
def test_ia3_unmerge_inverts_merge(adapter: adapterkit.Adapter, weight: float, seed: int) -> None:
    for m in adapter.modules:
        targets = _random_targets(adapter, m, seed)
        merged = adapter.merge(m, targets, weight=weight)
        back = adapter.unmerge(m, {**targets, **merged}, weight=weight)
        for role, t in targets.items():
            torch.testing.assert_close(back[role], t, rtol=4e-7, atol=1e-7)


@given(aks.lora_adapters(use_dora=st.just(False), lora_bias=st.just(False), dtypes=st.just(torch.float32), patterns=False, modules_to_save=False), st.integers(0, 2**16))
def test_lora_merges_commute(adapter: adapterkit.Adapter, seed: int) -> None:
    """Merging a then b == b then a == W + ΔWa + ΔWb, up to fp32 rounding (b: a second adapter
    with the same shapes and negated, rescaled B)."""
    tensors = {k: (adapter.tensors[k] * -0.7 if ".lora_B" in k or "lora_embedding_B" in k else adapter.tensors[k]) for k in adapter.tensors}
    other = adapterkit.Adapter.from_tensors(adapter.config, tensors)
    for m in adapter.modules:
        t = _random_targets(adapter, m, seed)
        ab = other.merge(m, adapter.merge(m, t))["weight"]
        ba = adapter.merge(m, other.merge(m, t))["weight"]
        da, db = adapter.delta_weight(m, dtype=torch.float32), other.delta_weight(m, dtype=torch.float32)
        exact = t["weight"].double() + da.double() + db.double()
        tol = 3 * torch.finfo(torch.float32).eps * (t["weight"].abs() + da.abs() + db.abs()).double()
        assert ((ab.double() - exact).abs() <= tol).all()
        assert ((ba.double() - exact).abs() <= tol).all()


# ----------------------------------------------------------------------------- plan_merge


def test_plan_maps_modules_and_replacements(built: Callable[[str], Built]) -> None:
    b = built("lora_modules_to_save")
    plan = plan_merge(b.adapter, keys_of(b.base))
    assert plan.targets[0] == ModuleTarget("model.layers.0.self_attn.q_proj", {"weight": "model.layers.0.self_attn.q_proj.weight"})
    assert plan.replacements == {"lm_head.weight": "base_model.model.lm_head.weight"}
    ia3 = built("ia3_bias")
    plan = plan_merge(ia3.adapter, keys_of(ia3.base))
    roles = {t.module: t.roles for t in plan.targets}
    assert roles["model.layers.0.self_attn.k_proj"] == {"weight": "model.layers.0.self_attn.k_proj.weight", "bias": "model.layers.0.self_attn.k_proj.bias"}
    assert roles["model.layers.0.mlp.down_proj"] == {"weight": "model.layers.0.mlp.down_proj.weight"}
    no_bias = built("ia3")  # the same modules over a base without biases: the bias is optional
    assert all(set(t.roles) == {"weight"} for t in plan_merge(no_bias.adapter, keys_of(no_bias.base)).targets)


@pytest.mark.parametrize("variant", ["strip", "add"])
def test_plan_prefix_variants(variant: str, built: Callable[[str], Built]) -> None:
    """A checkpoint saved from the inner model (LlamaModel: ``layers.0...``, no lm_head) or
    from an outer wrapper (``wrapper.model.layers.0...``): one rule for the whole adapter."""
    b = built("lora_modules_to_save")
    keys = keys_of(b.base)
    if variant == "strip":
        keys = {k.removeprefix("model."): v for k, v in keys.items() if k.startswith("model.")}
        adapter = adapterkit.Adapter.from_tensors(b.adapter.config, {k: b.adapter.tensors[k] for k in b.adapter.tensors if "lm_head" not in k})
        plan = plan_merge(adapter, keys)
        assert plan.prefix_rule == "strip 'model.'"
        assert plan.targets[0].roles == {"weight": "layers.0.self_attn.q_proj.weight"}
        with pytest.raises(AdapterkitError) as info:  # lm_head: not in a LlamaModel checkpoint
            plan_merge(b.adapter, keys)
        assert info.value.code == "base-mismatch" and "replaces `lm_head.weight`, which is not in the checkpoint" in str(info.value)
        assert [p.key for p in info.value.problems] == ["base_model.model.lm_head.weight"]
    else:
        keys = {"wrapper." + k: v for k, v in keys.items()}
        plan = plan_merge(b.adapter, keys)
        assert plan.prefix_rule == "add 'wrapper.'"
        assert plan.targets[0].roles == {"weight": "wrapper.model.layers.0.self_attn.q_proj.weight"}
        assert plan.replacements == {"wrapper.lm_head.weight": "base_model.model.lm_head.weight"}
    merged = apply_plan(b.adapter if variant == "add" else adapter, plan, {k: b.base[k.removeprefix("wrapper.") if variant == "add" else "model." + k] for k in keys})
    for k in keys:
        want = b.merged[k.removeprefix("wrapper.") if variant == "add" else "model." + k]
        if variant == "strip" and k == "lm_head.weight":
            continue
        assert torch.equal(merged[k], want), k


def test_plan_collects_every_offender(built: Callable[[str], Built]) -> None:
    """Missing weight, wrong shape, integer/quantized dtype, missing bias for lora_bias and a
    replacement of the wrong shape: one error naming all of them, no partial plan."""
    b = built("lora_bias")
    keys = keys_of(b.base)
    del keys["model.layers.0.self_attn.q_proj.weight"]
    keys["model.layers.0.self_attn.k_proj.weight"] = ("F32", (16, 16))
    keys["model.layers.0.self_attn.v_proj.weight"] = ("I8", (8, 16))
    keys["model.layers.1.self_attn.o_proj.weight"] = ("U8", (64, 1))  # bitsandbytes 4-bit packing
    del keys["model.layers.1.self_attn.q_proj.bias"]
    with pytest.raises(AdapterkitError) as info:
        plan_merge(b.adapter, keys)
    err = info.value
    assert err.code == "base-mismatch"
    got = sorted((p.code, p.key) for p in err.problems)
    assert got == sorted([
        ("base-tensor-missing", "model.layers.0.self_attn.q_proj"),
        ("base-shape-mismatch", "model.layers.0.self_attn.k_proj.weight"),
        ("base-dtype-unsupported", "model.layers.0.self_attn.v_proj.weight"),
        ("base-dtype-unsupported", "model.layers.1.self_attn.o_proj.weight"),
        ("base-shape-mismatch", "model.layers.1.self_attn.o_proj.weight"),
        ("base-tensor-missing", "model.layers.1.self_attn.q_proj"),
    ])
    text = str(err)
    for name in ("layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj", "layers.1.self_attn.o_proj", "layers.1.self_attn.q_proj.bias"):
        assert name in text, name
    assert "(5 offending" in text and "lora_B.bias adds to it" in text and "the adapter needs (8, 16)" in text and "is I8" in text

    m2s = built("lora_modules_to_save")
    keys = keys_of(m2s.base)
    keys["lm_head.weight"] = ("F32", (65, 16))  # a resized vocabulary
    with pytest.raises(AdapterkitError) as info:
        plan_merge(m2s.adapter, keys)
    assert [(p.code, p.key) for p in info.value.problems] == [("base-shape-mismatch", "lm_head.weight")]


def test_plan_refuses_tied_lm_head(built: Callable[[str], Built]) -> None:
    """A checkpoint with tied embeddings stores no lm_head.weight: targeting lm_head is refused,
    naming the embedding it is tied to (a merge would change the input embeddings too)."""
    keys = {"model.embed_tokens.weight": ("BF16", (64, 16)), "model.layers.0.self_attn.q_proj.weight": ("BF16", (16, 16))}
    g = torch.Generator().manual_seed(0)
    config = adapterkit.LoraConfig(r=2, lora_alpha=2, target_modules=("q_proj", "lm_head"))
    tensors = {
        "base_model.model.lm_head.lora_A.weight": torch.randn(2, 16, generator=g),
        "base_model.model.lm_head.lora_B.weight": torch.randn(64, 2, generator=g),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 16, generator=g),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(16, 2, generator=g),
    }
    with pytest.raises(AdapterkitError) as info:
        plan_merge(adapterkit.Adapter.from_tensors(config, tensors), keys)
    assert [(p.code, p.key) for p in info.value.problems] == [("tied-embeddings", "lm_head")]
    assert "tied to `model.embed_tokens.weight`" in str(info.value)
    keys["lm_head.weight"] = ("BF16", (64, 16))  # untied: fine
    plan = plan_merge(adapterkit.Adapter.from_tensors(config, tensors), keys)
    assert [t.roles["weight"] for t in plan.targets] == ["lm_head.weight", "model.layers.0.self_attn.q_proj.weight"]


def test_plan_expected_shapes_from_header_only(built: Callable[[str], Built]) -> None:
    """Every layer layout: the shape plan_merge expects is the base weight's shape."""
    for name in ("lora_gpt2_conv1d", "lora_embedding", "lora_conv_merge", "lora_dora_conv_emb", "ia3_conv", "ia3_gpt2"):
        b = built(name)
        for m in b.adapter.modules:
            shapes = b.adapter.kind.base_shapes(b.adapter, m)
            for role, (want, _) in shapes.items():
                if f"{m}.{role}" in b.base:
                    actual = tuple(b.base[f"{m}.{role}"].shape)
                    assert len(want) == len(actual) and all(w in (None, a) for w, a in zip(want, actual)), (name, m, role)
                    assert any(w is not None for w in want)


def test_find_tied_embeddings() -> None:
    """config.json's tie_word_embeddings decides; without it nothing is guessed: an input
    embedding and no output embedding is a tie of unknown status (known=False), a stored pair is
    taken as stored; an ambiguous pair is no tie."""
    embed, head, q = ("model.embed_tokens.weight", ("BF16", (64, 16))), ("lm_head.weight", ("BF16", (64, 16))), ("model.q.weight", ("BF16", (16, 16)))
    alone, both = dict([embed, q]), dict([embed, head, q])
    assert find_tied_embeddings(alone, None) == TiedEmbeddings("model.embed_tokens.weight", "lm_head.weight", False, None, known=False)
    assert find_tied_embeddings(alone, {"model_type": "llama"}) == TiedEmbeddings("model.embed_tokens.weight", "lm_head.weight", False, {"model_type": "llama"}, known=False)
    assert find_tied_embeddings(alone, {"tie_word_embeddings": "yes"}).known is False  # not a bool: unknown
    assert find_tied_embeddings(alone, {"tie_word_embeddings": True}).known is True
    assert find_tied_embeddings(alone, {"tie_word_embeddings": False}) is None
    assert find_tied_embeddings(both, None) is None
    assert find_tied_embeddings(both, {"tie_word_embeddings": True}) == TiedEmbeddings("model.embed_tokens.weight", "lm_head.weight", True, {"tie_word_embeddings": True})
    gpt2 = {"transformer.wte.weight": ("F32", (64, 16)), "transformer.wpe.weight": ("F32", (32, 16))}
    assert find_tied_embeddings(gpt2, {"tie_word_embeddings": True}).input_key == "transformer.wte.weight"
    two_inputs = {"encoder.embed_tokens.weight": embed[1], "decoder.embed_tokens.weight": embed[1]}
    assert find_tied_embeddings(two_inputs, {"tie_word_embeddings": True}) is None
    two_outputs = dict([embed, head], **{"embed_out.weight": head[1]})
    assert find_tied_embeddings(two_outputs, {"tie_word_embeddings": True}) is None
