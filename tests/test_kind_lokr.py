"""LoKr (PEFT's LOKR) against PEFT 0.22.0: ΔW equal to ``get_delta_weight`` and checkpoint merges
equal to ``merge_and_unload`` for every storage form (W1 whole or a product, W2 whole, a product
or the CP form), the exact LoRA form from first principles, to_lora, and bad files refused.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import adapterkit
from adapterkit.errors import AdapterkitError
from adapterkit.kinds.lokr import factorization, lora_factors
from adapterkit.ops.merging import merge_checkpoint

LAYERS = ["lin", "conv", "c1d", "conv1"]
CONFIGS = {
    "whole": {},
    "decompose-both": {"decompose_both": True, "r": 1, "alpha": 1},
    "products": {"r": 1, "alpha": 3},
    "cp": {"use_effective_conv2d": True, "r": 2},
    "cp-r1": {"use_effective_conv2d": True, "r": 1},
    "factor-4": {"decompose_factor": 4, "r": 1},
    "patterns": {"r": 2, "rank_pattern": {"lin": 1}, "alpha_pattern": {"conv": 5}},
}


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 20)
        self.conv = nn.Conv2d(8, 6, 3)
        self.c1d = nn.Conv1d(4, 6, 3)
        self.conv1 = nn.Conv2d(8, 6, 1)


def _peft(root: Path, **kwargs):
    from peft import LoKrConfig, get_peft_model

    torch.manual_seed(0)
    base = Model()
    (root / "base").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, root / "base" / "model.safetensors")
    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(base), LoKrConfig(target_modules=LAYERS, init_weights=False, **kwargs))
    model.save_pretrained(root / "adapter")
    return base, model


def _peft_delta(model, name: str) -> torch.Tensor | None:
    try:
        return model.base_model.model.get_submodule(name).get_delta_weight("default")
    except RuntimeError:  # docs/differences.md lokr-cp-kron-strides
        return None


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def built(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("lokr")
    base, model = _peft(root, **CONFIGS[request.param])
    return request.param, root, base, model


def test_valid_and_delta_weight_equals_peft(built):
    _, root, _, model = built
    assert adapterkit.validate(root / "adapter") == []
    adapter = adapterkit.load(root / "adapter")
    assert adapter.peft_type == "LOKR" and sorted(adapter.modules) == sorted(LAYERS)
    for name in LAYERS:
        theirs = _peft_delta(model, name)
        if theirs is None:
            continue
        ours = adapter.kind.delta(adapter, name)
        assert torch.equal(ours.reshape(theirs.shape), theirs), name
        assert adapter.module(name).scaling == model.base_model.model.get_submodule(name).scaling["default"]


def test_checkpoint_merge_equals_merge_and_unload(built, tmp_path):
    _, root, base, model = built
    if any(_peft_delta(model, n) is None for n in LAYERS):
        pytest.skip("PEFT cannot compute this adapter's ΔW (test_cp_core_peft_cannot_compute_ours_is_the_formula)")
    merge_checkpoint(root / "base", [root / "adapter"], tmp_path / "merged")
    ours = load_file(tmp_path / "merged" / "model.safetensors")
    theirs = copy.deepcopy(model).merge_and_unload().state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    merge_checkpoint(tmp_path / "merged", [root / "adapter"], tmp_path / "back", unmerge=True, again=True)
    back = load_file(tmp_path / "back" / "model.safetensors")
    for key, value in base.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=1e-6)


def _first_principles(layer, name: str) -> torch.Tensor:
    """ΔW in fp64 from PEFT's parameters: W1 ⊗ W2 with the CP core contracted by hand."""
    p = {k: getattr(layer, k)["default"].detach().double() for k in
         ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2") if "default" in getattr(layer, k)}
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    if "lokr_w2" in p:
        w2 = p["lokr_w2"]
    elif "lokr_t2" in p:
        t, wa, wb = p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"]
        w2 = torch.zeros(wa.shape[1], wb.shape[1], *t.shape[2:], dtype=torch.float64)
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                w2 += wa[i][:, None, None, None] * wb[j][None, :, None, None] * t[i, j][None, None]
    else:
        w2 = p["lokr_w2_a"] @ p["lokr_w2_b"]
    w2 = w2.reshape(w2.shape[0], w2.shape[1], -1) if w2.dim() > 2 else w2
    if w2.dim() == 2:
        delta = torch.einsum("ac,bd->abcd", w1, w2).reshape(w1.shape[0] * w2.shape[0], -1)
    else:
        delta = torch.einsum("ac,bdk->abcdk", w1, w2).reshape(w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], -1)
    return delta * layer.scaling["default"]


def test_lora_form_is_exact(built):
    _, root, _, model = built
    adapter = adapterkit.load(root / "adapter")
    for name in LAYERS:
        layer = model.base_model.model.get_submodule(name)
        if "default" in layer.lokr_w2 and layer.lokr_w2["default"].dim() == 3:
            with pytest.raises(AdapterkitError) as info:
                lora_factors(adapter, name)
            assert info.value.code == "not-supported" and "Conv1d" in str(info.value)
            continue
        exact = _first_principles(layer, name)
        B, A = lora_factors(adapter, name)
        got = (B @ A.reshape(A.shape[0], -1)) * adapter.module(name).scaling
        torch.testing.assert_close(got.reshape(exact.shape), exact, rtol=1e-12, atol=1e-14)
        stats = adapter.kind.stats(adapter, name, None)
        assert abs(stats["delta_norm"] - float(exact.norm())) <= 1e-9 * float(exact.norm())
        assert stats["lora_rank"] == B.shape[1]


def test_to_lora_loads_in_peft_with_the_lokr_outputs(built, tmp_path):
    from peft import PeftModel

    _, root, base, model = built
    adapter = adapterkit.load(root / "adapter")
    whole_conv1d = [n for n in LAYERS if "lokr_w2" in adapter.module(n).keys and len(adapter.meta(adapter.module(n).keys["lokr_w2"]).shape) == 3]
    if whole_conv1d:
        with pytest.raises(AdapterkitError) as info:
            adapterkit.to_lora(adapter, base=root / "base")
        assert info.value.key == f"{P}{whole_conv1d[0]}.lokr_w2"
        return
    lora, _ = adapterkit.to_lora(adapter, base=root / "base")
    adapterkit.save(lora, tmp_path / "lora")
    peft_lora = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora")
    g = torch.Generator().manual_seed(2)
    inputs = {"lin": torch.randn(2, 12, generator=g), "conv": torch.randn(2, 8, 5, 5, generator=g),
              "c1d": torch.randn(2, 4, 7, generator=g), "conv1": torch.randn(2, 8, 4, 4, generator=g)}
    with torch.no_grad():
        for name, x in inputs.items():
            ours = peft_lora.base_model.model.get_submodule(name)(x)
            if _peft_delta(model, name) is None:  # PEFT's LoKr forward raises too: the formula's ΔW instead
                layer = model.base_model.model.get_submodule(name)
                delta = lora.kind.delta(lora, name, dtype=torch.float64)
                torch.testing.assert_close(delta.reshape(-1), _first_principles(layer, name).reshape(-1), rtol=1e-12, atol=1e-14)
                continue
            theirs = model.base_model.model.get_submodule(name)(x)
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_cp_core_peft_cannot_compute_ours_is_the_formula(tmp_path):
    """A Conv1d's CP core (1, 1, 3, 1) at r=1: PEFT's get_delta_weight raises (torch.kron cannot
    view einsum's strides); ours is the ΔW of the formula (first principles, fp64)."""
    _, model = _peft(tmp_path, use_effective_conv2d=True, r=1)
    layer = model.base_model.model.get_submodule("c1d")
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        layer.get_delta_weight("default")
    adapter = adapterkit.load(tmp_path / "adapter")
    ours = adapter.kind.delta(adapter, "c1d", dtype=torch.float64)
    exact = _first_principles(layer, "c1d")
    torch.testing.assert_close(ours.reshape(exact.shape), exact, rtol=1e-6, atol=1e-7)
    merge_checkpoint(tmp_path / "base", [tmp_path / "adapter"], tmp_path / "out")
    merged = load_file(tmp_path / "out" / "model.safetensors")["c1d.weight"].double()
    torch.testing.assert_close(merged - layer.base_layer.weight.detach().double(), exact.reshape(merged.shape), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dimension, factor, expected", [(256, -1, (16, 16)), (128, -1, (8, 16)), (127, -1, (1, 127)),
                                                         (128, 4, (4, 32)), (20, 4, (4, 5)), (12, 4, (4, 3)), (6, -1, (2, 3))])
def test_factorization_is_peft_s(dimension, factor, expected):
    from peft.tuners.lokr.layer import factorization as peft_factorization

    assert factorization(dimension, factor) == peft_factorization(dimension, factor) == expected


def _rewrite(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(src / "adapter_model.safetensors")
    config = json.loads((src / "adapter_config.json").read_text())
    change(tensors, config)
    save_file(tensors, dst / "adapter_model.safetensors")
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


P = "base_model.model."


@pytest.mark.parametrize("case, code, key", [
    ("w1_b missing", "missing-partner", f"{P}lin."),
    ("w2_b of another rank", "shape-mismatch", f"{P}lin.lokr_w2_b"),
    ("w1 both whole and a product", "unexpected-key", f"{P}lin."),
    ("decompose_both off for a factored w1", "shape-mismatch", f"{P}lin.lokr_w1_a"),
    ("r so large that PEFT stores w2 whole", "shape-mismatch", f"{P}lin.lokr_w2_a"),
    ("r exactly max(b, d)/2: PEFT stores w2 whole", "shape-mismatch", f"{P}conv1.lokr_w2_a"),
    ("decompose_factor that splits out otherwise", "shape-mismatch", f"{P}"),
])
def test_bad_files_are_refused_by_key(tmp_path, case, code, key):
    _peft(tmp_path / "src", decompose_both=True, r=1, alpha=1)

    def change(t, c):
        if case == "w1_b missing":
            del t[f"{P}lin.lokr_w1_b"]
        elif case == "w2_b of another rank":
            t[f"{P}lin.lokr_w2_b"] = torch.zeros(2, 4)
        elif case == "w1 both whole and a product":
            t[f"{P}lin.lokr_w1"] = torch.zeros(4, 3)
        elif case == "decompose_both off for a factored w1":
            c["decompose_both"] = False
        elif case == "r so large that PEFT stores w2 whole":  # lin: b=5, d=4, so r=3 >= max(b, d)/2
            c["rank_pattern"] = {"^lin$": 3}
            del t[f"{P}lin.lokr_w1_a"], t[f"{P}lin.lokr_w1_b"]
            t[f"{P}lin.lokr_w1"] = torch.ones(4, 3)
            t[f"{P}lin.lokr_w2_a"], t[f"{P}lin.lokr_w2_b"] = torch.ones(5, 3), torch.ones(3, 4)
        elif case == "r exactly max(b, d)/2: PEFT stores w2 whole":  # conv1: b=3, d=4 (1x1), PEFT's use_w2 = r >= 4/2
            c["rank_pattern"] = {"^conv1$": 2}
            t[f"{P}conv1.lokr_w2_a"], t[f"{P}conv1.lokr_w2_b"] = torch.ones(3, 2), torch.ones(2, 4)
        else:
            c["decompose_factor"] = 5

    bad = _rewrite(tmp_path / "src" / "adapter", tmp_path / "bad", change)
    errors = [p for p in adapterkit.validate(bad) if p.severity == "error"]
    assert errors and errors[0].code == code and errors[0].key.startswith(key), errors
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(bad)
    assert info.value.code == code


@pytest.mark.parametrize("rule", [{"rank": 1}, {"rank": 5}, {"energy": 0.9}, {"sv_ratio": 4.0}])
def test_to_lora_truncated_is_the_best_rank_k_approximation(built, rule):
    """The Kronecker SVD's truncation against first principles: the rank-k SVD of the exact ΔW
    in fp64 (Eckart–Young), the rank the rule picks from those singular values, and the report's
    energy and error; and against the exact LoRA form resized (the general path)."""
    _, root, _, model = built
    adapter = adapterkit.load(root / "adapter")
    convertible = [n for n in LAYERS if not ("lokr_w2" in adapter.module(n).keys
                                             and len(adapter.meta(adapter.module(n).keys["lokr_w2"]).shape) == 3)]
    if len(convertible) < len(LAYERS):
        with pytest.raises(AdapterkitError):
            adapterkit.to_lora(adapter, base=root / "base", **rule)
        return
    lora, report = adapterkit.to_lora(adapter, base=root / "base", **rule)
    exact_lora, _ = adapterkit.to_lora(adapter, base=root / "base")
    resized, resize_report = adapterkit.resize(exact_lora, **rule)
    for name in LAYERS:
        exact = _first_principles(model.base_model.model.get_submodule(name), name).flatten(1)
        u, s, vh = torch.linalg.svd(exact, full_matrices=False)
        if "rank" in rule:
            k = rule["rank"]
        elif "energy" in rule:
            k = int((torch.cumsum(s ** 2, 0) / (s ** 2).sum() < rule["energy"] - 1e-12).sum()) + 1
        else:
            k = int((s * rule["sv_ratio"] >= s[0] * (1 - 1e-12)).sum())
        m = next(m for m in report.truncated.modules if m.name == name)
        assert m.rank_after == k, (name, m.rank_after, k)
        best = (u[:, :k] * s[:k]) @ vh[:k]
        got = lora.kind.delta(lora, name, dtype=torch.float64).flatten(1)
        torch.testing.assert_close(got, best, rtol=0, atol=1e-5 * float(s[0]))
        assert abs(m.error - float((s[k:] ** 2).sum().sqrt())) <= 1e-6 * float(s[0])
        other = resized.kind.delta(resized, name, dtype=torch.float64).flatten(1)
        torch.testing.assert_close(got, other, rtol=0, atol=1e-5 * float(s[0]))
    assert abs(report.truncated.energy_kept - resize_report.energy_kept) < 1e-6


class WideConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(36, 30, 3)  # out 30 = 5·6, in 36 = 6·6: r=2 < max(6, 6)/2, so W2 in the CP form


def test_cp_core_of_rank_two_lora_form_is_exact(tmp_path):
    """A CP core (2, 2, 3, 3) (random, not symmetric): the LoRA form's A contracts the core's
    second index with lokr_w2_b (make_weight_cp's "i j k l, i p, j r"), against first principles."""
    from peft import LoKrConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(WideConv(), LoKrConfig(target_modules=["conv"], r=2, use_effective_conv2d=True, init_weights=False))
    model.save_pretrained(tmp_path)
    layer = model.base_model.model.conv
    t = layer.lokr_t2["default"].detach()
    assert t.shape == (2, 2, 3, 3) and not torch.allclose(t, t.transpose(0, 1))
    adapter = adapterkit.load(tmp_path)
    exact = _first_principles(layer, "conv")
    B, A = lora_factors(adapter, "conv")
    got = (B @ A.reshape(A.shape[0], -1)) * adapter.module("conv").scaling
    torch.testing.assert_close(got.reshape(exact.shape), exact, rtol=1e-12, atol=1e-14)


def test_to_lora_truncated_keeps_a_negative_scaling_s_sign(tmp_path):
    """alpha < 0: the Kronecker SVD's factors carry the sign (the singular values are |s|·σ),
    so the rank-k LoRA is the best approximation of ΔW itself, not of −ΔW (fp64 SVD of the
    first-principles ΔW)."""
    _, model = _peft(tmp_path, r=1, alpha=-3)
    adapter = adapterkit.load(tmp_path / "adapter")
    lora, _ = adapterkit.to_lora(adapter, base=tmp_path / "base", rank=1)
    for name in LAYERS:
        layer = model.base_model.model.get_submodule(name)
        assert layer.scaling["default"] < 0
        exact = _first_principles(layer, name).flatten(1)
        u, s, vh = torch.linalg.svd(exact, full_matrices=False)
        best = s[0] * u[:, :1] @ vh[:1]
        got = lora.kind.delta(lora, name, dtype=torch.float64).flatten(1)
        torch.testing.assert_close(got, best, rtol=0, atol=1e-5 * float(s[0]))
