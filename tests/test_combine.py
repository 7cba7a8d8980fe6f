"""adapterkit.combine against real PEFT (``add_weighted_adapter`` on tiny models), against first
principles (weighted sums and dense fp64 SVDs computed here from the raw tensors), and its
deliberate deviations from PEFT, each shown beside PEFT's own result.

Expected ΔW's never come from adapterkit: they are PEFT's ``get_delta_weight`` of the inputs, or
B·A·scaling computed here from the raw tensors and the config values the test chose.  Results
are compared as products (SVD factors are only defined up to sign), loaded into PEFT
(``PeftModel.from_pretrained``) and checked with ``adapterkit.validate``.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig as PeftLoraConfig  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora.model import LoraModel  # noqa: E402
from peft.utils import merge_utils  # noqa: E402
from peft_models import convnet, embnet, gpt2, llama  # noqa: E402

import adapterkit  # noqa: E402
from adapterkit import Adapter, IA3Config, LoraConfig, PromptTuningConfig, combine  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.ops.combining import quantile  # noqa: E402

P = "base_model.model."
W = [0.7, -0.4]
SVD_METHODS = ["svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"]
PRUNING = {"ties", "dare_linear", "dare_ties", "magnitude_prune", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"}
ALL_BUT_LINEAR = ["cat", "svd", *sorted(PRUNING)]


# ----------------------------------------------------------------------------- PEFT side


def module_seed(seed: int, module: str) -> int:
    """The per-module DARE seed as combine's documentation defines it (recomputed here)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{module}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def fill(model: Any, adapter: str, seed: int, scale: float = 0.3) -> None:
    """Random values in every LoRA parameter of ``adapter`` (PEFT starts lora_B at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ("lora_" in name or "ia3_" in name or "modules_to_save" in name) and (f".{adapter}." in name or name.endswith("." + adapter)):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def two_adapter_model(make, cfg_a: dict, cfg_b: dict, seeds=(1, 2), config=PeftLoraConfig) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(make(), config(**cfg_a), adapter_name="a")
        model.add_adapter("b", config(**cfg_b))
    fill(model, "a", seeds[0])
    fill(model, "b", seeds[1])
    return model.eval()


def peft_add_weighted(model: Any, weights: list[float], new: str, method: str, seed: int = 0, adapters=("a", "b"), **kw: Any) -> None:
    """PEFT's add_weighted_adapter, with the global RNG seeded to ``module_seed(seed, module)``
    right before each module is combined.  Seeding once before the call cannot line PEFT's DARE
    draws up with anything: injecting the new adapter first draws its lora_A initialisation from
    the same global generator.  PEFT's arithmetic is untouched; only the generator's state is set."""
    names = {id(m): n for n, m in model.base_model.model.named_modules()}
    originals = {k: getattr(LoraModel, k) for k in ("_generalized_task_arithmetic_weighted_adapter", "_svd_generalized_task_arithmetic_weighted_adapter")}

    def seeded(fn, target_position):
        def call(self, *args, **kwargs):
            torch.manual_seed(module_seed(seed, names[id(args[target_position])]))
            return fn(self, *args, **kwargs)
        return call

    LoraModel._generalized_task_arithmetic_weighted_adapter = seeded(originals["_generalized_task_arithmetic_weighted_adapter"], 3)
    LoraModel._svd_generalized_task_arithmetic_weighted_adapter = seeded(originals["_svd_generalized_task_arithmetic_weighted_adapter"], 4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.add_weighted_adapter(list(adapters), weights, new, combination_type=method, **kw)
    finally:
        for k, v in originals.items():
            setattr(LoraModel, k, v)


def lora_layers(model: Any, adapter: str) -> dict[str, Any]:
    from peft.tuners.lora.layer import LoraLayer

    return {n: m for n, m in model.base_model.model.named_modules()
            if isinstance(m, LoraLayer) and (adapter in m.lora_A or adapter in m.lora_embedding_A)}


def peft_deltas(model: Any, adapter: str) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {n: m.get_delta_weight(adapter).detach().clone() for n, m in lora_layers(model, adapter).items()}


def saved(model: Any, path: Path, *adapters: str) -> list[Adapter]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path, selected_adapters=list(adapters))
    return [adapterkit.load(path / a if a != "default" else path) for a in adapters]


def reloaded_deltas(make, ours: Adapter, path: Path) -> dict[str, torch.Tensor]:
    """Save ours, check it with validate, load it into a fresh base with PEFT: its ΔW's."""
    adapterkit.save(ours, path)
    assert adapterkit.validate(path) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(make(), str(path))
    return peft_deltas(model, "default")


def assert_deltas(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=atol, msg=name)


def weighted_sum(deltas: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for d, w in zip(deltas, weights):
        for name, t in d.items():
            out[name] = out.get(name, 0) + w * t
    return out


def density_for(method: str) -> dict[str, float]:
    return {"density": 0.5} if method in PRUNING else {}


# ----------------------------------------------------------------------------- against PEFT, method by method

LLAMA_A = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
LLAMA_B = {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj"]}


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    """A tiny llama with adapters a (q, v) and b (q, k): the union of modules is q, k, v."""
    model = two_adapter_model(llama, LLAMA_A, LLAMA_B)
    return model, saved(model, tmp_path_factory.mktemp("llama_pair"), "a", "b")


@pytest.mark.parametrize("method", ALL_BUT_LINEAR)
def test_equals_peft_add_weighted_adapter(method, llama_pair, tmp_path):
    """Every method PEFT defines the same way: PEFT's combined ΔW of each module (q, k, v: a
    union) equals ours as PEFT loads it from our files, DARE's random masks included."""
    model, (a, b) = llama_pair
    peft_add_weighted(model, W, f"c_{method}", method, **density_for(method))
    theirs = peft_deltas(model, f"c_{method}")
    ours = combine([a, b], W, method, **density_for(method))
    assert_deltas(reloaded_deltas(llama, ours, tmp_path / "ours"), theirs)
    if method == "svd":  # factored (ours) and dense (PEFT's) SVDs agree on the truncation: a gap after σ₄
        for name, full in weighted_sum([peft_deltas(model, "a"), peft_deltas(model, "b")], W).items():
            s = torch.linalg.svdvals(full)
            assert s[3] - s[4] > 1e-2 * s[0], name


LAYER_CASES = {  # other layer types: fan_in_fan_out (GPT-2's Conv1D), embeddings, Conv2d 3x3 and 1x1
    "gpt2": (gpt2, {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True}),
    "embedding": (embnet, {"r": 3, "lora_alpha": 6, "target_modules": ["emb"]}),
    "conv2d": (convnet, {"r": 2, "lora_alpha": 4, "target_modules": ["c2", "p2"]}),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@pytest.mark.parametrize("method", ["cat", "svd", "ties", "dare_ties_svd", "dare_linear"])
def test_equals_peft_on_other_layer_types(case, method, tmp_path):
    """DARE's masks are drawn in PEFT's ΔW layout ((B·A)ᵀ for fan_in_fan_out and embeddings)."""
    make, cfg = LAYER_CASES[case]
    model = two_adapter_model(make, cfg, {**cfg, "lora_alpha": 2 * cfg["lora_alpha"]})
    a, b = saved(model, tmp_path, "a", "b")
    rank = 2 * cfg["r"] if method == "svd" else 3  # svd: no truncation, whose subspace a tie could leave open
    peft_add_weighted(model, W, "c", method, **density_for(method), **({"svd_rank": rank} if "svd" in method else {}))
    ours = combine([a, b], W, method, **density_for(method), **({"rank": rank} if "svd" in method else {}))
    assert_deltas(reloaded_deltas(make, ours, tmp_path / "ours"), peft_deltas(model, "c"))


def test_svd_clamp_equals_peft(llama_pair, tmp_path):
    """svd_clamp on a dense SVD (PEFT's and ours are the same LAPACK routine, signs included)."""
    model, (a, b) = llama_pair
    peft_add_weighted(model, W, "clamped", "ties_svd", density=0.7, svd_clamp=0.9)
    ours = combine([a, b], W, "ties_svd", density=0.7, svd_clamp=0.9)
    unclamped = combine([a, b], W, "ties_svd", density=0.7)
    theirs = peft_deltas(model, "clamped")
    assert_deltas(reloaded_deltas(llama, ours, tmp_path / "ours"), theirs)
    assert any(not torch.allclose(unclamped.delta_weight(n), theirs[n]) for n in theirs)  # the clamp bites


def test_svd_clamp_zero_equals_peft(llama_pair, tmp_path):
    """svd_clamp=0 is a clamp (PEFT tests ``clamp is not None``): hi is the 0-quantile, the
    smallest signed entry of U·S and Vh, so every factor entry is clamped; not "no clamp"."""
    model, (a, b) = llama_pair
    peft_add_weighted(model, W, "clamped0", "ties_svd", density=0.7, svd_clamp=0)
    theirs = peft_deltas(model, "clamped0")
    ours = combine([a, b], W, "ties_svd", density=0.7, svd_clamp=0)
    assert_deltas(reloaded_deltas(llama, ours, tmp_path / "ours"), theirs)
    unclamped = combine([a, b], W, "ties_svd", density=0.7)
    assert all(not torch.allclose(unclamped.delta_weight(n), theirs[n]) for n in theirs)  # q=0 changes every module


@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_majority_sign_equals_peft(sign, tmp_path):
    model = two_adapter_model(llama, LLAMA_A, LLAMA_A, seeds=(3, 4))
    a, b = saved(model, tmp_path, "a", "b")
    weights = [1.0, 0.5]
    peft_add_weighted(model, weights, "c", "ties_svd", density=0.6, majority_sign_method=sign, svd_rank=8)
    ours = combine([a, b], weights, "ties_svd", density=0.6, majority_sign=sign, rank=8)
    assert_deltas({n: ours.delta_weight(n) for n in ours.modules}, peft_deltas(model, "c"))


def test_ia3_equals_peft(tmp_path):
    """IA3: Σ wᵢ·lᵢ over the adapters holding the module (k: a only, v: both, down: b only)."""
    from peft import IA3Config as PeftIA3Config

    cfg_a = {"target_modules": ["k_proj", "v_proj"], "feedforward_modules": []}
    cfg_b = {"target_modules": ["v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
    model = two_adapter_model(llama, cfg_a, cfg_b, config=PeftIA3Config)
    a, b = saved(model, tmp_path, "a", "b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add_weighted_adapter(["a", "b"], W, "c")
    ours = combine([a, b], W, "linear")
    path = tmp_path / "ours"
    adapterkit.save(ours, path)
    assert adapterkit.validate(path) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = PeftModel.from_pretrained(llama(), str(path))
    from peft.tuners.ia3.layer import IA3Layer

    theirs = {n: m.ia3_l["c"].detach() for n, m in model.base_model.model.named_modules() if isinstance(m, IA3Layer) and "c" in m.ia3_l}
    back = {n: m.ia3_l["default"].detach() for n, m in loaded.base_model.model.named_modules() if isinstance(m, IA3Layer)}
    assert back.keys() == theirs.keys() and len(theirs) == 6
    for name, want in theirs.items():
        torch.testing.assert_close(back[name], want, rtol=1e-6, atol=1e-7, msg=name)
    assert set(ours.config.feedforward_modules) == {"down_proj"}


# ----------------------------------------------------------------------------- deliberate deviations from PEFT


def test_linear_peft_has_cross_terms_ours_is_the_weighted_sum(llama_pair, tmp_path):
    model, (a, b) = llama_pair
    expected = weighted_sum([peft_deltas(model, "a"), peft_deltas(model, "b")], W)
    peft_add_weighted(model, W, "lin", "linear")
    theirs = peft_deltas(model, "lin")
    assert not torch.allclose(theirs["model.layers.0.self_attn.q_proj"], expected["model.layers.0.self_attn.q_proj"], atol=1e-2)
    ours = combine([a, b], W, "linear")
    assert_deltas(reloaded_deltas(llama, ours, tmp_path / "ours"), expected)
    assert ours.modules["model.layers.0.self_attn.q_proj"].rank == 8  # stored exactly, as cat


def test_rslora_cat_is_exact_as_in_peft(tmp_path):
    """PEFT 0.21.2's rsLoRA result was √r too large (use_rslora copied); 0.22.0 fixed it: both
    now give the weighted sum of the inputs' ΔW."""
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_rslora": True}
    model = two_adapter_model(llama, cfg, cfg)
    a, b = saved(model, tmp_path, "a", "b")
    expected = weighted_sum([peft_deltas(model, "a"), peft_deltas(model, "b")], W)
    peft_add_weighted(model, W, "c", "cat")
    assert_deltas(peft_deltas(model, "c"), expected)
    ours = combine([a, b], W, "cat")
    assert ours.config.use_rslora is False
    assert_deltas(reloaded_deltas(llama, ours, tmp_path / "ours"), expected)


def lora_bias_pair(tmp_path):
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_bias": True}
    model = two_adapter_model(lambda: llama(bias=True), cfg, {**cfg, "lora_alpha": 4})
    biases = {ad: {n: m.lora_B[ad].bias.detach() * m.scaling[ad] for n, m in lora_layers(model, ad).items()} for ad in "ab"}
    return model, saved(model, tmp_path, "a", "b"), biases


@pytest.mark.parametrize("method", ["cat", "linear", "svd"])
def test_lora_bias_is_the_weighted_sum_as_in_peft(method, tmp_path):
    """PEFT 0.21.2 dropped lora_B.bias (zero); 0.22.0 gives the weighted sum of bias·scaling, as ours does."""
    model, (a, b), biases = lora_bias_pair(tmp_path)
    peft_add_weighted(model, W, "c", method)
    ours = combine([a, b], W, method)
    for name, layer in lora_layers(model, "c").items():
        want = W[0] * biases["a"][name] + W[1] * biases["b"][name]
        torch.testing.assert_close(layer.lora_B["c"].bias * layer.scaling["c"], want, rtol=1e-6, atol=1e-7)  # PEFT
        torch.testing.assert_close(ours.tensors[f"{P}{name}.lora_B.bias"], want, rtol=1e-6, atol=1e-7)
    path = tmp_path / "ours"
    adapterkit.save(ours, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = PeftModel.from_pretrained(llama(bias=True), str(path))
    for name, layer in lora_layers(loaded, "default").items():  # what PEFT merges: bias · scaling
        torch.testing.assert_close(layer.lora_B["default"].bias * layer.scaling["default"], ours.tensors[f"{P}{name}.lora_B.bias"])


@pytest.mark.parametrize("method", ["ties", "magnitude_prune_svd", "dare_linear_svd", "dare_ties"])
def test_lora_bias_under_pruning_methods_is_the_operator_on_the_biases(method, tmp_path):
    """TIES/DARE/magnitude_prune: PEFT's own operator (merge_utils) applied to the vectors sᵢ·biasᵢ
    with weights wᵢ; DARE's bias masks are drawn after the module's ΔW (or A, then B) masks."""
    model, (a, b), biases = lora_bias_pair(tmp_path)
    ours = combine([a, b], W, method, density=0.5)
    op = getattr(merge_utils, method.removesuffix("_svd"))
    for name, layer in lora_layers(model, "a").items():
        args = (torch.tensor(W), 0.5) + (("total",) if "ties" in method else ())
        torch.manual_seed(module_seed(0, name))
        if method == "dare_ties":  # the draws before the biases': lora_A's, then lora_B's
            for part in ("lora_A", "lora_B"):
                merge_utils.dare_ties([getattr(layer, part)[ad].weight.detach() for ad in "ab"], *args)
        elif method == "dare_linear_svd":
            merge_utils.dare_linear([layer.get_delta_weight(ad).detach() for ad in "ab"], *args)
        want = op([biases["a"][name], biases["b"][name]], *args)
        torch.testing.assert_close(ours.tensors[f"{P}{name}.lora_B.bias"], want, rtol=1e-6, atol=1e-7, msg=name)


def test_rank_pattern_peft_result_does_not_reload_ours_does(tmp_path):
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3}}
    model = two_adapter_model(llama, cfg, cfg)
    a, b = saved(model, tmp_path, "a", "b")
    peft_add_weighted(model, W, "c", "ties", density=0.6)
    theirs = peft_deltas(model, "c")  # right in memory ...
    model.save_pretrained(tmp_path / "theirs", selected_adapters=["c"])
    with pytest.raises(RuntimeError, match="size mismatch"), warnings.catch_warnings():  # ... but not on disk
        warnings.simplefilter("ignore")
        PeftModel.from_pretrained(llama(), str(tmp_path / "theirs" / "c"))
    ours = combine([a, b], W, "ties", density=0.6)
    assert_deltas(reloaded_deltas(llama, ours, tmp_path / "ours"), theirs)
    assert set(ours.config.rank_pattern.values()) == {2} and ours.config.rank_pattern == ours.config.alpha_pattern


def test_dora_refused_by_both(tmp_path):
    """PEFT 0.21.2 combined DoRA adapters wrongly without an error; 0.22.0 refuses them, as ours does (by name)."""
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": True}
    model = two_adapter_model(llama, cfg, cfg)
    a, b = saved(model, tmp_path, "a", "b")
    with pytest.raises(ValueError, match="DoRA"):
        peft_add_weighted(model, [1.0, 0.0], "c", "cat")
    with pytest.raises(AdapterkitError) as err:
        combine([a, b], [1.0, 0.0], "cat")
    assert err.value.code == "not-supported" and str(a.source) in str(err.value) and "DoRA" in str(err.value)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "magnitude_prune"])
def test_different_ranks_zero_padded_where_peft_refuses(method, tmp_path):
    """Ranks 2 and 4: PEFT refuses; ours equals PEFT on the same pair with the rank-2 adapter
    zero-padded to rank 4 (alpha doubled to keep its scaling), DARE's draws included."""
    small = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    big = {"r": 4, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    model = two_adapter_model(llama, small, big)
    a, b = saved(model, tmp_path, "a", "b")
    with pytest.raises(ValueError, match="same r"):
        peft_add_weighted(model, W, "c", method, density=0.5)
    padded = two_adapter_model(llama, {**big, "lora_alpha": 8}, big)
    with torch.no_grad():
        for name, layer in lora_layers(padded, "a").items():
            src = lora_layers(model, "a")[name]
            layer.lora_A["a"].weight.zero_()[:2] = src.lora_A["a"].weight
            layer.lora_B["a"].weight.zero_()[:, :2] = src.lora_B["a"].weight
            padded_b = lora_layers(padded, "b")[name]
            padded_b.lora_A["b"].weight.copy_(src.lora_A["b"].weight)
            padded_b.lora_B["b"].weight.copy_(src.lora_B["b"].weight)
    peft_add_weighted(padded, W, "c", method, density=0.5)
    ours = combine([a, b], W, method, density=0.5)
    assert_deltas(reloaded_deltas(llama, ours, tmp_path / "ours"), peft_deltas(padded, "c"))


def test_single_adapter_peft_switches_to_linear_ours_applies_the_method(llama_pair):
    model, (a, _) = llama_pair
    peft_add_weighted(model, [1.0], "single", "magnitude_prune", adapters=("a",), density=0.25)
    assert_deltas(peft_deltas(model, "single"), peft_deltas(model, "a"))  # PEFT: not pruned at all
    ours = combine([a], [1.0], "magnitude_prune", density=0.25)
    layer = lora_layers(model, "a")["model.layers.0.self_attn.q_proj"]
    root = math.sqrt(layer.scaling["a"])
    want_A = merge_utils.magnitude_prune([layer.lora_A["a"].weight.detach()], torch.tensor([root]), 0.25)
    torch.testing.assert_close(ours.tensors[f"{P}model.layers.0.self_attn.q_proj.lora_A.weight"], want_A)
    assert torch.count_nonzero(want_A) == want_A.numel() // 4


def test_modules_to_save_peft_writes_the_base_module_ours_refuses(tmp_path):
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    model = two_adapter_model(llama, {**cfg, "modules_to_save": ["lm_head"]}, cfg)
    a, b = saved(model, tmp_path, "a", "b")
    peft_add_weighted(model, W, "c", "cat")
    head = model.base_model.model.lm_head
    assert torch.equal(head.modules_to_save["c"].weight, head.original_module.weight)  # the trained head is gone
    assert not torch.equal(head.modules_to_save["a"].weight, head.original_module.weight)
    with pytest.raises(AdapterkitError) as err:
        combine([a, b], W, "cat")
    assert err.value.code == "not-supported" and str(a.source) in str(err.value) and "lm_head.weight" in str(err.value)


def test_saved_base_embedding_is_kept_when_the_adapters_agree(tmp_path):
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens", "q_proj"]}
    model = two_adapter_model(llama, cfg, {**cfg, "target_modules": ["embed_tokens", "v_proj"]})
    a, b = saved(model, tmp_path, "a", "b")
    key = f"{P}model.embed_tokens.base_layer.weight"
    assert key in a.tensors and key in b.tensors
    ours = combine([a, b], W, "svd")
    assert torch.equal(ours.tensors[key], a.tensors[key])
    expected = weighted_sum([peft_deltas(model, "a"), peft_deltas(model, "b")], W)
    full = {n: t for n, t in expected.items() if "embed" not in n}
    got = reloaded_deltas(llama, ours, tmp_path / "ours")
    assert_deltas({n: t for n, t in got.items() if "embed" not in n}, full)  # rank 4 holds q and v exactly
    other = Adapter.from_tensors(b.config, {**dict(b.tensors), key: b.tensors[key] + 1})
    with pytest.raises(AdapterkitError) as err:
        combine([a, other], W, "svd")
    assert err.value.code == "adapters-incompatible" and key in str(err.value)


def test_rank_above_min_dimension_peft_breaks_ours_pads(tmp_path):
    """out is 5×8: at svd_rank 6 PEFT stores factors that do not multiply; ours zero-pads."""
    cfg = {"r": 3, "lora_alpha": 6, "target_modules": ["out"]}
    model = two_adapter_model(embnet, cfg, cfg)
    a, b = saved(model, tmp_path, "a", "b")
    expected = weighted_sum([peft_deltas(model, "a"), peft_deltas(model, "b")], W)
    peft_add_weighted(model, W, "c", "svd", svd_rank=6)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        peft_deltas(model, "c")
    ours = combine([a, b], W, "svd", rank=6)
    assert ours.modules["out"].rank == 6
    assert_deltas(reloaded_deltas(embnet, ours, tmp_path / "ours"), expected)


def test_list_and_regex_targets_peft_refuses_ours_joins(tmp_path):
    model = two_adapter_model(llama, {"r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]},
                              {"r": 2, "lora_alpha": 2, "target_modules": r".*\.v_proj"})
    a, b = saved(model, tmp_path, "a", "b")
    with pytest.raises(ValueError, match="target modules type"):
        peft_add_weighted(model, W, "c", "cat")
    expected = weighted_sum([peft_deltas(model, "a"), peft_deltas(model, "b")], W)
    assert_deltas(reloaded_deltas(llama, combine([a, b], W, "cat"), tmp_path / "ours"), expected)


def test_seeding_before_peft_call_does_not_reach_its_masks(tmp_path):
    """Why the PEFT comparisons seed PEFT per module: with one module and torch.manual_seed(s)
    right before add_weighted_adapter, PEFT's DARE masks still differ from those of the stream
    seeded with s, because injecting the new adapter draws its lora_A initialisation first."""
    name = "model.layers.0.self_attn.q_proj"
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": [name]}
    model = two_adapter_model(llama, cfg, cfg)
    a, b = saved(model, tmp_path, "a", "b")
    ours = combine([a, b], W, "dare_linear_svd", density=0.5)
    torch.manual_seed(module_seed(0, name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add_weighted_adapter(["a", "b"], W, "once", combination_type="dare_linear_svd", density=0.5)
    assert not torch.allclose(peft_deltas(model, "once")[name], ours.delta_weight(name), atol=1e-3)
    peft_add_weighted(model, W, "per_module", "dare_linear_svd", density=0.5)
    torch.testing.assert_close(peft_deltas(model, "per_module")[name], ours.delta_weight(name), rtol=1e-5, atol=1e-6)


def test_trained_biases_are_refused():
    a = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=("q",), bias="all"),
                             {**dict(tiny().tensors), f"{P}m.q.base_layer.bias": torch.ones(4)})
    err = raised([tiny(), a], W, "cat")
    assert err.code == "not-supported" and err.key == f"{P}m.q.base_layer.bias" and "adapters[1]" in str(err)


def test_dare_masks_per_module_do_not_depend_on_other_modules_or_global_rng(llama_pair):
    _, (a, b) = llama_pair
    name = "model.layers.1.self_attn.q_proj"
    only = [Adapter.from_tensors(x.config, {k: v for k, v in x.tensors.items() if f".{name}." in k}) for x in (a, b)]
    torch.manual_seed(123)
    full = combine([a, b], W, "dare_ties", density=0.5)
    torch.manual_seed(456)
    alone = combine(only, W, "dare_ties", density=0.5)
    for part in ("lora_A.weight", "lora_B.weight"):
        assert torch.equal(full.tensors[f"{P}{name}.{part}"], alone.tensors[f"{P}{name}.{part}"])
    other = combine([a, b], W, "dare_ties", density=0.5, seed=1)
    assert not torch.equal(other.tensors[f"{P}{name}.lora_A.weight"], full.tensors[f"{P}{name}.lora_A.weight"])


# ----------------------------------------------------------------------------- first principles (hypothesis)


@st.composite
def adapter_sets(draw, max_adapters: int = 3, dtype: torch.dtype = torch.float64):
    """1-3 LoRA adapters over shared modules (linear, embedding, conv2d) with their own module
    subsets, ranks (rank_pattern), alphas (alpha_pattern), rsLoRA and lora_bias, and weights.
    Returns (adapters, weights, parts): parts[i][module] = (B m×r, A r×n, scaling, bias or None),
    the raw factors as matrices and the scaling computed here from the values chosen."""
    n_modules = draw(st.integers(1, 3))
    kinds = [draw(st.sampled_from(["linear", "embedding", "conv2d"])) for _ in range(n_modules)]
    dims = [(draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 2))) for _ in range(n_modules)]
    names = [f"model.layers.{i}.proj" for i in range(n_modules)]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    adapters, parts = [], []
    for _ in range(draw(st.integers(1, max_adapters))):
        held = draw(st.lists(st.sampled_from(range(n_modules)), min_size=1, max_size=n_modules, unique=True))
        r, alpha, rslora = draw(st.integers(1, 4)), draw(st.sampled_from([1, 4, 6.0])), draw(st.booleans())
        lora_bias = draw(st.booleans()) and any(kinds[i] != "embedding" for i in held)
        rank_pattern = {names[i]: draw(st.integers(1, 4)) for i in held if draw(st.booleans())}
        alpha_pattern = {names[i]: draw(st.sampled_from([2, 0.5])) for i in held if draw(st.booleans())}
        tensors, part = {}, {}
        for i in sorted(held):
            name, kind, (out_f, in_f, k) = names[i], kinds[i], dims[i]
            rank, a = rank_pattern.get(name, r), alpha_pattern.get(name, alpha)
            s = a / math.sqrt(rank) if rslora else a / rank
            B, A = torch.randn(out_f, rank, generator=g, dtype=dtype), torch.randn(rank, in_f * k * k, generator=g, dtype=dtype)
            if kind == "embedding":
                tensors[f"{P}{name}.lora_embedding_A"], tensors[f"{P}{name}.lora_embedding_B"] = A, B
            elif kind == "linear":
                tensors[f"{P}{name}.lora_A.weight"], tensors[f"{P}{name}.lora_B.weight"] = A, B
            else:
                tensors[f"{P}{name}.lora_A.weight"] = A.reshape(rank, in_f, k, k)
                tensors[f"{P}{name}.lora_B.weight"] = B.reshape(out_f, rank, 1, 1)
            bias = None
            if lora_bias and kind != "embedding":
                bias = tensors[f"{P}{name}.lora_B.bias"] = torch.randn(out_f, generator=g, dtype=dtype)
            part[name] = (B, A, s, bias)
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=("proj",), use_rslora=rslora, lora_bias=lora_bias,
                            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
        adapters.append(Adapter.from_tensors(config, tensors))
        parts.append(part)
    weights = draw(st.lists(st.floats(-2, 2, allow_nan=False), min_size=len(adapters), max_size=len(adapters)))
    return adapters, weights, parts


def result_matrices(adapter: Adapter) -> dict[str, torch.Tensor]:
    """Each module's ΔW as an m×n matrix from the raw tensors, after checking scaling 1 by the
    config's structure: r = lora_alpha, alpha_pattern = rank_pattern, no rsLoRA."""
    cfg = adapter.config
    assert cfg.r == cfg.lora_alpha and cfg.rank_pattern == cfg.alpha_pattern and not cfg.use_rslora and not cfg.use_dora
    out = {}
    for key, t in adapter.tensors.items():
        for b_part, a_part in (("lora_B.weight", "lora_A.weight"), ("lora_embedding_B", "lora_embedding_A")):
            if key.endswith("." + b_part):
                name = key[len(P): -len(b_part) - 1]
                A = adapter.tensors[f"{P}{name}.{a_part}"]
                out[name] = t.reshape(t.shape[0], -1) @ A.reshape(A.shape[0], -1)
    return out


def expected_sum(parts, weights) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(Σ wᵢ·sᵢ·Bᵢ·Aᵢ, Σ wᵢ·sᵢ·biasᵢ) per module, absent modules and biases counting as zero."""
    deltas: dict[str, Any] = {}
    biases: dict[str, Any] = {}
    for part, w in zip(parts, weights):
        for name, (B, A, s, bias) in part.items():
            deltas[name] = deltas.get(name, 0) + w * (s * (B @ A))
            if bias is not None:
                biases[name] = biases.get(name, 0) + w * (bias * s)
    return deltas, biases


@given(adapter_sets(), st.sampled_from(["cat", "linear"]))
def test_cat_and_linear_are_the_exact_weighted_sum(case, method):
    adapters, weights, parts = case
    result = combine(adapters, weights, method)
    got, (want, want_bias) = result_matrices(result), expected_sum(parts, weights)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-10)
        assert result.modules[name].rank == sum(p[name][1].shape[0] for p in parts if name in p)
    for key, t in result.tensors.items():
        if key.endswith("lora_B.bias"):
            name = key[len(P): -len(".lora_B.bias")]
            torch.testing.assert_close(t, want_bias.get(name, torch.zeros_like(t)), rtol=1e-10, atol=1e-10)
    assert result.config.lora_bias == any(a.config.lora_bias for a in adapters)
    from adapterkit.io.checks import structural_problems

    assert structural_problems(result) == []


def assert_best_rank_k(got: torch.Tensor, dense: torch.Tensor, k: int, rtol: float = 1e-7, atol: float = 1e-9) -> None:
    """Eckart–Young: a rank-≤k matrix whose error is sqrt(Σ_{i≥k} σᵢ²) of ``dense`` (σ from a
    dense fp64 SVD here) is a best rank-k approximation of it."""
    sv = torch.linalg.svdvals(dense.double())
    err = torch.linalg.matrix_norm((dense - got).double())
    torch.testing.assert_close(err, sv[k:].square().sum().sqrt(), rtol=rtol, atol=atol)


@given(adapter_sets(), st.integers(1, 6), st.sampled_from(["svd", "linear"]))
def test_svd_is_the_best_rank_k_approximation(case, k, method):
    adapters, weights, parts = case
    result = combine(adapters, weights, method, rank=k)
    got, (want, _) = result_matrices(result), expected_sum(parts, weights)
    assert got.keys() == want.keys()
    for name, dense in want.items():
        assert result.modules[name].rank == k
        assert_best_rank_k(got[name], dense, k)


@given(adapter_sets(max_adapters=1), st.sampled_from(["cat", "linear", "svd"]))
def test_one_adapter_at_weight_one_is_itself(case, method):
    adapters, _, parts = case
    rank = {"rank": max(A.shape[0] for _, A, _, _ in parts[0].values())} if method == "svd" else {}
    result = combine(adapters, [1.0], method, **rank)
    got = result_matrices(result)
    for name, (B, A, s, bias) in parts[0].items():
        torch.testing.assert_close(got[name], s * (B @ A), rtol=1e-9, atol=1e-9)
        if bias is not None:
            torch.testing.assert_close(result.tensors[f"{P}{name}.lora_B.bias"], bias * s, rtol=1e-12, atol=1e-12)


def _padded(t: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = rank - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


@settings(max_examples=20)
@given(adapter_sets(dtype=torch.float32), st.sampled_from(sorted(PRUNING)), st.sampled_from([0.3, 1.0]))
def test_every_method_gives_a_valid_adapter_over_the_union(case, method, density):
    """Valid, the union of modules, the first adapter's dtype; at density 1 (nothing pruned) the
    factor-space methods are PEFT's √|w·s|-weighted mix of zero-padded A's and B's, and the dense
    ones the best rank-(max r) approximation of the weighted sum."""
    adapters, weights, parts = case
    result = combine(adapters, weights, method, density=density)
    from adapterkit.io.checks import structural_problems, value_problems

    assert structural_problems(result) + value_problems(result) == []
    assert set(result.modules) == {n for p in parts for n in p}
    assert all(t.dtype == torch.float32 for t in result.tensors.values())
    if density < 1 or "ties" in method:
        return
    got, (want, _) = result_matrices(result), expected_sum(parts, weights)
    max_rank = max(A.shape[0] for p in parts for _, A, _, _ in p.values())
    for name, dense in want.items():
        if method.endswith("_svd"):
            assert_best_rank_k(got[name], dense, max_rank, rtol=1e-4, atol=1e-4)
            continue
        held = [(p[name], w) for p, w in zip(parts, weights) if name in p]
        r = max(A.shape[0] for (_, A, _, _), _ in held)
        A_mix = sum(math.copysign(math.sqrt(abs(w * s)), w * s) * _padded(A, r, 0) for (_, A, s, _), w in held)
        B_mix = sum(math.sqrt(abs(w * s)) * _padded(B, r, 1) for (B, _, s, _), w in held)
        torch.testing.assert_close(got[name], B_mix @ A_mix, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- svd_clamp and its quantile


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_quantile_above_the_limit_path_equals_torch_quantile(q, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    assert torch.equal(quantile(x, q, limit=0), torch.quantile(x, q))


def test_quantile_beyond_torchs_16m_limit():
    x = torch.randn(2**24 + 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="too large"):
        torch.quantile(x, 0.9)
    assert abs(float(quantile(x, 0.9)) - float(np.quantile(x.numpy().astype(np.float64), 0.9))) < 1e-6


@pytest.mark.parametrize("values", [[1.0, 2.0, 2.0, 2.0, 3.0], [5.0, 5.0, 5.0], [3.0, 1.0, 2.0, 2.0], [0.0, -1.0]])
def test_quantile_with_repeated_values(values):
    x = torch.tensor(values)
    for q in (0.0, 0.2, 0.3, 0.5, 0.7, 0.74, 1.0):
        assert torch.equal(quantile(x, q, limit=0), torch.quantile(x, q)), (values, q)


@pytest.mark.parametrize("q", [0.8, 0.0])
def test_svd_clamp_of_the_factored_svd(llama_pair, q):
    """Clamp by hand (torch.quantile of the signed entries of U·S and Vh, then both clamped);
    q=0 clamps too (to the smallest entry), it is not "no clamp"."""
    _, (a, b) = llama_pair
    plain = combine([a, b], W, "svd", rank=5)
    clamped = combine([a, b], W, "svd", rank=5, svd_clamp=q)
    for name in plain.modules:
        B, A = (plain.tensors[f"{P}{name}.lora_{x}.weight"] for x in "BA")
        hi = torch.quantile(torch.cat([B.flatten(), A.flatten()]), q)
        assert torch.equal(clamped.tensors[f"{P}{name}.lora_B.weight"], B.clamp(-hi, hi))
        assert torch.equal(clamped.tensors[f"{P}{name}.lora_A.weight"], A.clamp(-hi, hi))


# ----------------------------------------------------------------------------- errors


def tiny(r: int = 2, out_f: int = 4, in_f: int = 3, modules=("m.q",), **cfg: Any) -> Adapter:
    g = torch.Generator().manual_seed(r * 100 + out_f)
    tensors = {}
    for m in modules:
        tensors[f"{P}{m}.lora_A.weight"] = torch.randn(r, in_f, generator=g)
        tensors[f"{P}{m}.lora_B.weight"] = torch.randn(out_f, r, generator=g)
    return Adapter.from_tensors(LoraConfig(r=r, lora_alpha=r, target_modules=("q",), **cfg), tensors)


def raised(*args: Any, **kwargs: Any) -> AdapterkitError:
    with pytest.raises(AdapterkitError) as err:
        combine(*args, **kwargs)
    return err.value


@pytest.mark.parametrize("kwargs, key", [
    ({"method": "bogus"}, "method"),
    ({"weights": [1.0]}, "weights"),
    ({"weights": [1.0, float("nan")]}, "weights"),
    ({"method": "svd", "rank": 0}, "rank"),
    ({"method": "svd", "rank": -3}, "rank"),
    ({"method": "cat", "rank": 4}, "rank"),
    ({"method": "ties", "rank": 4, "density": 0.5}, "rank"),
    ({"method": "ties"}, "density"),
    ({"method": "dare_linear", "density": 0.0}, "density"),
    ({"method": "dare_ties_svd", "density": 1.5}, "density"),
    ({"method": "svd", "density": 0.5}, "density"),
    ({"method": "ties", "density": 0.5, "majority_sign": "mean"}, "majority_sign"),
    ({"method": "cat", "svd_clamp": 0.9}, "svd_clamp"),
    ({"method": "cat", "svd_clamp": 0.0}, "svd_clamp"),  # 0 is a clamp, refused where no SVD is computed
    ({"method": "svd", "svd_clamp": -0.5}, "svd_clamp"),
    ({"method": "svd", "svd_clamp": 1.5}, "svd_clamp"),
    ({"method": "dare_linear", "density": 0.5, "seed": 1.5}, "seed"),
])
def test_argument_errors(kwargs, key):
    kwargs = {"weights": [0.5, 0.5], "method": "svd", **kwargs}
    err = raised([tiny(), tiny(r=3)], kwargs.pop("weights"), kwargs.pop("method"), **kwargs)
    assert err.code == "argument-invalid" and err.key == key, err


def test_no_adapters():
    assert raised([], [], "cat").code == "argument-invalid"


def test_module_with_different_shapes_names_module_and_both_shapes(tmp_path):
    a, b = tiny(out_f=4), tiny(out_f=5)
    adapterkit.save(b, tmp_path / "b")
    err = raised([a, adapterkit.load(tmp_path / "b")], W, "svd")
    assert err.code == "adapters-incompatible" and err.key == "m.q"
    assert "B(4, 2)" in str(err) and "B(5, 2)" in str(err) and "adapters[0]" in str(err) and str(tmp_path / "b") in str(err)


def test_layer_type_mismatch_and_fan_in_fan_out_mismatch():
    emb = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=("q",)), {
        f"{P}m.q.lora_embedding_A": torch.ones(2, 3), f"{P}m.q.lora_embedding_B": torch.ones(4, 2)})
    err = raised([tiny(), emb], W, "cat")
    assert err.code == "adapters-incompatible" and "embedding" in str(err) and "linear" in str(err)
    # PEFT ignores the saved flag (it follows the layer), so a disagreement is not incompatibility: the
    # right flag is unknown without the base, refused unless fan_in_fan_out names it
    err = raised([tiny(), tiny(fan_in_fan_out=True)], W, "cat")
    assert err.code == "orientation-unknown" and err.key == "m.q" and "adapters[1]" in str(err) and "fan_in_fan_out" in str(err)
    assert combine([tiny(), tiny(fan_in_fan_out=True)], W, "cat", fan_in_fan_out=True).config.fan_in_fan_out is True


def test_kind_errors():
    ia3 = Adapter.from_tensors(IA3Config(target_modules=("q",)), {f"{P}m.q.ia3_l": torch.ones(4, 1)})
    err = raised([tiny(), ia3], W, "cat")
    assert err.code == "adapters-incompatible" and "IA3" in str(err) and "adapters[1]" in str(err)
    prompt = Adapter.from_tensors(PromptTuningConfig(num_virtual_tokens=2, token_dim=3), {"prompt_embeddings": torch.ones(2, 3)})
    err = raised([prompt, prompt], W, "linear")
    assert err.code == "not-supported" and "PROMPT_TUNING" in str(err) and "adapters[0]" in str(err)
    err = raised([ia3, ia3], W, "svd")
    assert err.code == "not-supported" and "adapters[0]" in str(err)
    other = Adapter.from_tensors(IA3Config(target_modules=("q",)), {f"{P}m.q.ia3_l": torch.ones(5, 1)})
    err = raised([ia3, other], W, "linear")
    assert err.code == "adapters-incompatible" and err.key == "m.q" and "(4, 1)" in str(err) and "(5, 1)" in str(err)


def test_dora_names_the_adapter():
    dora = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=("q",), use_dora=True), {
        **dict(tiny().tensors), f"{P}m.q.lora_magnitude_vector": torch.ones(4)})
    err = raised([tiny(), dora], W, "svd")
    assert err.code == "not-supported" and "adapters[1]" in str(err) and err.key == "use_dora"


def test_bad_device():
    assert raised([tiny()], [1.0], "cat", device="bogus").code == "device-unavailable"


def test_weights_may_be_negative_and_output_dtype_is_the_first_adapters():
    a = Adapter.from_tensors(tiny().config, {k: v.to(torch.bfloat16) for k, v in tiny().tensors.items()})
    result = combine([a, tiny()], [-1.0, 1.0], "cat")
    assert {t.dtype for t in result.tensors.values()} == {torch.bfloat16}
    assert torch.allclose(result.delta_weight("m.q").float(), torch.zeros(4, 3), atol=5e-2)  # bf16 rounding of a − a


def test_target_modules_union_as_peft_builds_it():
    regex = LoraConfig(r=2, lora_alpha=2, target_modules=r".*\.q")
    a = Adapter.from_tensors(regex, dict(tiny().tensors))
    b = tiny(modules=("m.q", "m.v"))
    b = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=("q", "v")), dict(b.tensors))
    assert combine([b, tiny()], W, "cat").config.target_modules == ("q", "v")
    union = combine([a, a], W, "cat").config.target_modules
    assert union == r"(.*\.q)|(.*\.q)"
    mixed = combine([a, b], W, "cat").config.target_modules
    import re

    assert all(re.fullmatch(mixed, n) for n in ("m.q", "m.v", "x.m.v")) and not re.fullmatch(mixed, "m.vv")
    scoped = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=("q", "v"), exclude_modules=("k",)), dict(b.tensors))
    cfg = combine([a, scoped], W, "cat").config
    assert cfg.target_modules == ("m.q", "m.v") and cfg.exclude_modules is None


# ----------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@given(adapter_sets(dtype=torch.float32), st.integers(1, 4))
@settings(max_examples=10)
def test_cuda_matches_first_principles(case, k):
    adapters, weights, parts = case
    want, _ = expected_sum(parts, weights)
    for method in ("cat", "svd", "magnitude_prune_svd"):
        extra = {"rank": k} if method != "cat" else {}
        if method == "magnitude_prune_svd":
            extra["density"] = 1.0  # nothing pruned: the weighted sum
        result = combine(adapters, weights, method, device="cuda", **extra)
        assert all(t.device.type == "cpu" for t in result.tensors.values())
        got = result_matrices(result)
        for name, dense in want.items():
            if method == "cat":
                torch.testing.assert_close(got[name], dense.float(), rtol=1e-4, atol=1e-4)
            else:
                assert_best_rank_k(got[name], dense, k, rtol=1e-4, atol=1e-4)
    dare = combine(adapters, weights, "dare_linear", density=0.5, device="cuda")
    assert dare.tensors.keys() == combine(adapters, weights, "dare_linear", density=0.5).tensors.keys()


# ----------------------------------------------------------------------------- command line


def cli(*args: Any):
    from click.testing import CliRunner

    from adapterkit.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_combine_writes_what_the_library_returns(tmp_path):
    a, b = tiny(r=2, modules=("m.q", "m.v")), tiny(r=3)
    adapterkit.save(a, tmp_path / "a")
    adapterkit.save(b, tmp_path / "b.safetensors")
    res = cli("combine", tmp_path / "a", tmp_path / "b.safetensors", "--weights", "0.7,-0.3", "--method", "dare_ties",
              "--density", "0.5", "--seed", "3", "-o", tmp_path / "ab")
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"combined {tmp_path / 'a'} x0.7, {tmp_path / 'b.safetensors'} x-0.3 by dare_ties into {tmp_path / 'ab'}: 2 modules, ranks 2 + 3 -> 2..3;")
    assert adapterkit.load(tmp_path / "ab") == combine([a, b], [0.7, -0.3], "dare_ties", density=0.5, seed=3)
    assert adapterkit.validate(tmp_path / "ab") == []
    res = cli("combine", tmp_path / "a", tmp_path / "b.safetensors", "--method", "svd", "--rank", "4", "--svd-clamp", "0.9",
              "-o", tmp_path / "ab", "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["modules"] == 2 and summary["ranks"] == "4" and [x["weight"] for x in summary["adapters"]] == [1.0, 1.0]
    assert adapterkit.load(tmp_path / "ab") == combine([a, b], [1.0, 1.0], "svd", rank=4, svd_clamp=0.9)
    res = cli("combine", tmp_path / "a", tmp_path / "b.safetensors", "--method", "svd", "--rank", "4", "--svd-clamp", "0",
              "-o", tmp_path / "ab0")
    assert res.exit_code == 0, res.output
    zero = combine([a, b], [1.0, 1.0], "svd", rank=4, svd_clamp=0)
    assert adapterkit.load(tmp_path / "ab0") == zero != combine([a, b], [1.0, 1.0], "svd", rank=4)


@pytest.mark.parametrize("args, code", [
    (["--weights", "1"], "[argument-invalid]"),
    (["--method", "ties"], "[argument-invalid]"),
    (["--rank", "0"], "[argument-invalid]"),
    (["--weights", "1,x"], "[usage]"),
    (["--device", "bogus"], "[device-unavailable]"),
])
def test_cli_combine_errors_are_one_line(args, code, tmp_path):
    for name in ("a", "b"):
        adapterkit.save(tiny(), tmp_path / name)
    res = cli("combine", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out", *args)
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.rstrip().endswith(code), res.output
    assert not (tmp_path / "out").exists()


def test_cli_combine_refuses_to_write_over_an_input(tmp_path):
    for name in ("a", "b"):
        adapterkit.save(tiny(), tmp_path / name)
    for out in (tmp_path / "a", tmp_path):
        res = cli("combine", tmp_path / "a", tmp_path / "b", "-o", out, "--overwrite")
        assert res.exit_code == 2 and "[overwrite-input]" in res.output
    assert adapterkit.load(tmp_path / "a") == tiny()


def test_cli_methods_and_help():
    from adapterkit.cli.surgery import COMBINE_METHODS
    from adapterkit.ops.combining import METHODS

    assert sorted(COMBINE_METHODS) == sorted(METHODS)
    text = cli("combine", "--help").output
    assert "Examples:" in text and "adapterkit combine a b --weights 0.7,0.3 --method svd --rank 16 -o ab" in text
