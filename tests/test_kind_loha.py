"""LoHa (PEFT's LOHA) against PEFT 0.22.0: ΔW equal to ``get_delta_weight``, checkpoint merges
equal to ``merge_and_unload``, unmerge, the streamed merge, the exact LoRA form (first
principles in fp64), and bad files refused by key.

Layers: Linear, Conv2d 3×3 and 1×1, Conv1d, each with ``use_effective_conv2d`` off (the
weight flattened) and on (the CP form with hada_t1/hada_t2); rank and alpha patterns.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

import adapterkit
from adapterkit.errors import AdapterkitError
from adapterkit.ops.merging import merge_checkpoint

LAYERS = ["lin", "conv", "conv1", "c1d"]


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 6)
        self.conv = nn.Conv2d(4, 5, 3)
        self.conv1 = nn.Conv2d(4, 5, 1)
        self.c1d = nn.Conv1d(4, 5, 3)
        self.out = nn.Linear(6, 3)


def _peft(root: Path, effective: bool, **kwargs):
    from peft import LoHaConfig, get_peft_model

    torch.manual_seed(0)
    base = Model()
    (root / "base").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, root / "base" / "model.safetensors")
    config = LoHaConfig(r=2, alpha=3, target_modules=LAYERS, use_effective_conv2d=effective, init_weights=False, **kwargs)
    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(root / "adapter")
    return base, model


@pytest.fixture(scope="module", params=[False, True], ids=["flattened", "effective-conv"])
def built(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("loha")
    kwargs = {"rank_pattern": {"conv": 3}, "alpha_pattern": {"^lin$": 5}}
    base, model = _peft(root, request.param, **kwargs)
    return root, base, model


def test_delta_weight_equals_peft(built):
    root, _, model = built
    adapter = adapterkit.load(root / "adapter")
    assert adapter.peft_type == "LOHA" and sorted(adapter.modules) == sorted(LAYERS)
    for name in LAYERS:
        layer = model.base_model.model.get_submodule(name)
        theirs = layer.get_delta_weight("default")
        ours = adapter.kind.delta(adapter, name)
        assert ours.numel() == theirs.numel()
        assert torch.equal(ours.reshape(theirs.shape), theirs), name
        assert adapter.module(name).scaling == layer.scaling["default"], name  # the patterns resolved as PEFT did


def test_checkpoint_merge_equals_merge_and_unload_and_unmerge_restores(built, tmp_path):
    root, base, model = built
    merge_checkpoint(root / "base", [root / "adapter"], tmp_path / "merged")
    ours = load_file(tmp_path / "merged" / "model.safetensors")
    theirs = copy.deepcopy(model).merge_and_unload().state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    merge_checkpoint(tmp_path / "merged", [root / "adapter"], tmp_path / "unmerged", unmerge=True, again=True)
    back = load_file(tmp_path / "unmerged" / "model.safetensors")
    for key, value in base.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=1e-6)


def test_streamed_rows_equal_the_whole_merge(built, tmp_path, monkeypatch):
    """Blocks of rows (the row form of a plain-form module) give the whole merge's bits."""
    import adapterkit.ops.merging as merging

    root, _, _ = built
    merge_checkpoint(root / "base", [root / "adapter"], tmp_path / "whole")
    monkeypatch.setattr(merging, "CHUNK_ELEMENTS", 1)
    merge_checkpoint(root / "base", [root / "adapter"], tmp_path / "rows", weights=[1.0])
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "rows" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weighted_merge_is_base_plus_weight_times_delta(built, tmp_path):
    root, base, model = built
    merge_checkpoint(root / "base", [root / "adapter"], tmp_path / "half", weights=[0.5])
    got = load_file(tmp_path / "half" / "model.safetensors")
    for name in LAYERS:
        delta = model.base_model.model.get_submodule(name).get_delta_weight("default").double()
        expected = base.state_dict()[name + ".weight"].double() + 0.5 * delta
        torch.testing.assert_close(got[name + ".weight"].double(), expected, rtol=0, atol=1e-6)


def test_lora_form_is_exact(built):
    """B·A·scaling equals PEFT's ΔW (fp64 of its fp32 factors, first principles: the Hadamard
    product of the two products, or the CP einsums)."""
    from adapterkit.kinds.loha import lora_factors

    root, _, model = built
    adapter = adapterkit.load(root / "adapter")
    for name in LAYERS:
        layer = model.base_model.model.get_submodule(name)
        f = {p: getattr(layer, p)["default"].detach().double() for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
        if "default" in layer.hada_t1:
            t1, t2 = layer.hada_t1["default"].detach().double(), layer.hada_t2["default"].detach().double()
            r1 = torch.einsum("ijkl,jr,ip->prkl", t1, f["hada_w1_b"], f["hada_w1_a"])
            r2 = torch.einsum("ijkl,jr,ip->prkl", t2, f["hada_w2_b"], f["hada_w2_a"])
            exact = r1 * r2 * layer.scaling["default"]
        else:
            exact = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * layer.scaling["default"]
        B, A = lora_factors(adapter, name)
        r = adapter.module(name).rank
        assert B.shape == (exact.shape[0], r * r) and A.shape[0] == r * r
        ours = (B @ A.reshape(r * r, -1)).reshape(exact.shape) * adapter.module(name).scaling
        torch.testing.assert_close(ours, exact, rtol=1e-12, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 9), inp=st.integers(1, 9), r=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_khatri_rao_identity(out, inp, r, seed):
    """(a1·b1) ⊙ (a2·b2) = KR(a1, a2)·KR(b1, b2) for any shapes and ranks (fp64)."""
    from adapterkit.adapter import Adapter, MemoryStore
    from adapterkit.kinds.loha import LoHaConfig, lora_factors

    g = torch.Generator().manual_seed(seed)
    t = {f"base_model.model.m.hada_w{i}_{s}": torch.randn(*(dims), generator=g)
         for i in (1, 2) for s, dims in (("a", (out, r)), ("b", (r, inp)))}
    adapter = Adapter(LoHaConfig(r=r, alpha=r), MemoryStore(t))
    B, A = lora_factors(adapter, "m")
    P = t["base_model.model.m.hada_w1_a"].double() @ t["base_model.model.m.hada_w1_b"].double()
    Q = t["base_model.model.m.hada_w2_a"].double() @ t["base_model.model.m.hada_w2_b"].double()
    torch.testing.assert_close(B @ A, P * Q, rtol=1e-12, atol=1e-12)


def test_info_reports_the_exact_norm(built):
    """info's ‖ΔW‖ per module (from the Gram matrices of the LoRA form, on the torch-free
    path) against the norm of PEFT's ΔW in fp64."""
    root, _, model = built
    per_module = adapterkit.info(root / "adapter")["per_module"]
    assert sorted(per_module) == sorted(LAYERS)
    for name in LAYERS:
        layer = model.base_model.model.get_submodule(name)
        theirs = layer.get_delta_weight("default").double().norm().item()
        ours = per_module[name]
        assert abs(ours["delta_norm"] - theirs) <= 1e-6 * theirs, name
        assert ours["rank"] == layer.r["default"] and ours["lora_rank"] == layer.r["default"] ** 2


def _rewrite(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(src / "adapter_model.safetensors")
    config = json.loads((src / "adapter_config.json").read_text())
    change(tensors, config)
    save_file(tensors, dst / "adapter_model.safetensors")
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("case, code, key", [
    ("missing w2_b", "missing-partner", "base_model.model.lin."),
    ("w1_b of another rank", "shape-mismatch", "base_model.model.lin.hada_w1_b"),
    ("rank disagrees with r", "shape-mismatch", "base_model.model.lin.hada_w"),
    ("t2 missing in the CP form", "missing-partner", "base_model.model.conv."),
])
def test_bad_files_are_refused_by_key(tmp_path, case, code, key):
    root = tmp_path / "src"
    _peft(root, True)

    def change(t, c):
        if case == "missing w2_b":
            del t["base_model.model.lin.hada_w2_b"]
        elif case == "w1_b of another rank":
            t["base_model.model.lin.hada_w1_b"] = torch.zeros(3, 8)
        elif case == "rank disagrees with r":
            c["rank_pattern"] = {"^lin$": 3}
        else:
            del t["base_model.model.conv.hada_t2"]

    bad = _rewrite(root / "adapter", tmp_path / "bad", change)
    problems = [p for p in adapterkit.validate(bad) if p.severity == "error"]
    assert problems and problems[0].code == code and problems[0].key.startswith(key), problems
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(bad)
    assert info.value.code == code and info.value.key.startswith(key)


def test_nan_factor_is_refused(tmp_path):
    root = tmp_path / "src"
    _peft(root, False)

    def change(t, c):
        t["base_model.model.lin.hada_w2_a"][0, 0] = float("nan")

    bad = _rewrite(root / "adapter", tmp_path / "bad", change)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(bad)
    assert info.value.key == "base_model.model.lin.hada_w2_a"


def test_base_of_another_shape_is_refused(tmp_path):
    root = tmp_path / "src"
    _peft(root, False)
    tensors = load_file(root / "base" / "model.safetensors")
    tensors["conv.weight"] = torch.zeros(5, 4, 2, 2)  # 16 columns, the adapter's are 36
    save_file(tensors, root / "base" / "model.safetensors")
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(root / "base", [root / "adapter"], tmp_path / "out")
    assert info.value.code == "base-mismatch" and "conv.weight" in str(info.value), str(info.value)
    assert "(5, 4, 2, 2)" in str(info.value) and "36" in str(info.value)


# ----------------------------------------------------------------------------- to_lora


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"lin": torch.randn(2, 8, generator=g), "conv": torch.randn(2, 4, 6, 6, generator=g),
            "conv1": torch.randn(2, 4, 5, 5, generator=g), "c1d": torch.randn(2, 4, 7, generator=g)}


def _outputs(model) -> dict[str, torch.Tensor]:
    inner = model.base_model.model if hasattr(model, "base_model") else model
    with torch.no_grad():
        return {n: inner.get_submodule(n)(x) for n, x in _inputs().items()}


def test_to_lora_with_base_is_peft_loadable_and_equals_the_loha(built, tmp_path):
    """The exact LoRA form (F64 factors, each convolution in its layer's layout from the base)
    loads in PEFT as a LoRA and computes the LoHa model's outputs; its ΔW in fp64 is the LoHa's
    (first principles: PEFT's factors in fp64)."""
    from peft import PeftModel

    root, base, model = built
    lora, report = adapterkit.to_lora(adapterkit.load(root / "adapter"), base=root / "base")
    assert lora.peft_type == "LORA" and report.assumed_linear == [] and report.dtype == "F64"
    adapterkit.save(lora, tmp_path / "lora")
    peft_lora = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora")
    theirs, ours = _outputs(model), _outputs(peft_lora)
    for name in LAYERS:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
        delta = lora.kind.delta(lora, name, dtype=torch.float64)
        layer = model.base_model.model.get_submodule(name)
        f = {p: getattr(layer, p)["default"].detach().double() for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
        if "default" in layer.hada_t1:
            t1, t2 = layer.hada_t1["default"].detach().double(), layer.hada_t2["default"].detach().double()
            exact = (torch.einsum("ijkl,jr,ip->prkl", t1, f["hada_w1_b"], f["hada_w1_a"])
                     * torch.einsum("ijkl,jr,ip->prkl", t2, f["hada_w2_b"], f["hada_w2_a"]))
        else:
            exact = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
        exact = (exact * layer.scaling["default"]).reshape(layer.base_layer.weight.shape)
        torch.testing.assert_close(delta.reshape(exact.shape), exact, rtol=1e-12, atol=1e-15)


def test_to_lora_without_base_says_what_it_assumed(built):
    root, _, _ = built
    adapter = adapterkit.load(root / "adapter")
    if adapter.module("c1d").cp:  # a (3, 1) core: a Conv1d or a Conv2d with a (3, 1) kernel
        with pytest.raises(AdapterkitError) as info:
            adapterkit.to_lora(adapter)
        assert info.value.code == "not-supported" and info.value.key == "c1d" and "Conv1d" in str(info.value)
        return
    lora, report = adapterkit.to_lora(adapter)
    assert report.assumed_linear == sorted(LAYERS)
    for n in LAYERS:
        assert lora.meta(f"base_model.model.{n}.lora_A.weight").shape[0] == adapter.module(n).rank ** 2


@pytest.mark.parametrize("rank", [1, 3])
def test_to_lora_truncated_is_the_best_rank_k_approximation(built, rank):
    """Eckart–Young from first principles: the truncated module equals the rank-k SVD of the
    exact ΔW (fp64), and the report's energy is the kept fraction of Σσ²."""
    root, _, model = built
    lora, report = adapterkit.to_lora(adapterkit.load(root / "adapter"), base=root / "base", rank=rank)
    assert report.truncated is not None
    for name in LAYERS:
        exact = model.base_model.model.get_submodule(name).get_delta_weight("default").double().flatten(1)
        u, s, vh = torch.linalg.svd(exact, full_matrices=False)
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        got = lora.kind.delta(lora, name, dtype=torch.float64).flatten(1)
        torch.testing.assert_close(got, best, rtol=0, atol=1e-5 * float(s[0]))
        m = next(m for m in report.truncated.modules if m.name == name)
        assert m.rank_after == min(rank, len(s))
        assert abs(m.kept / m.energy - float((s[:rank] ** 2).sum() / (s ** 2).sum())) < 1e-5


def test_convert_to_lora_cli(built, tmp_path):
    from click.testing import CliRunner

    from adapterkit.cli import main as cli

    root, _, _ = built
    res = CliRunner().invoke(cli, ["convert", str(root / "adapter"), str(tmp_path / "o"), "--to", "lora", "--base",
                                   str(root / "base"), "--energy", "0.999"])
    assert res.exit_code == 0, res.output
    assert "exact LoRA form of the LOHA adapter: rank 4/9" in res.output and "truncated (energy=0.999)" in res.output
    assert adapterkit.load(tmp_path / "o").peft_type == "LORA"
    res = CliRunner().invoke(cli, ["convert", str(root / "adapter"), str(tmp_path / "p"), "--rank", "2"])
    assert res.exit_code == 2 and "--rank goes with --to lora" in res.output
    assert not (tmp_path / "p").exists()


def test_to_lora_refuses_kinds_without_a_lora_form(tmp_path):
    from adapterkit.adapter import Adapter, MemoryStore
    from adapterkit.kinds import IA3Config

    ia3 = Adapter(IA3Config(target_modules=("q",)), MemoryStore({"base_model.model.q.ia3_l": torch.ones(4, 1)}))
    with pytest.raises(AdapterkitError) as info:
        adapterkit.to_lora(ia3)
    assert info.value.code == "not-supported" and info.value.actual == "IA3"


def test_combine_peft_has_none_ours_is_the_exact_sum(built, tmp_path):
    """PEFT's LoHaModel has no add_weighted_adapter; ours combines the exact LoRA forms: a LoHa
    and a LoRA (on the Linear) by cat give base + 0.7·D_loha − 0.4·D_lora, each D from PEFT's own
    merge_and_unload (first principles)."""
    from peft import LoraConfig, get_peft_model

    root, base, model = built
    assert not hasattr(model, "add_weighted_adapter") and not hasattr(model.base_model, "add_weighted_adapter")
    torch.manual_seed(5)
    lora_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["lin"], init_lora_weights=False))
    lora_model.save_pretrained(tmp_path / "lora")
    mixed = adapterkit.combine([adapterkit.load(root / "adapter"), adapterkit.load(tmp_path / "lora")], [0.7, -0.4], "cat",
                               base=root / "base")
    assert mixed.peft_type == "LORA"
    adapterkit.save(mixed, tmp_path / "mixed")
    merge_checkpoint(root / "base", [tmp_path / "mixed"], tmp_path / "merged")
    got = load_file(tmp_path / "merged" / "model.safetensors")
    start = base.state_dict()
    d_loha = {k: v - start[k] for k, v in copy.deepcopy(model).merge_and_unload().state_dict().items()}
    d_lora = {k: v - start[k] for k, v in lora_model.merge_and_unload().state_dict().items()}
    for key in start:
        expected = start[key].double() + 0.7 * d_loha[key].double() - 0.4 * d_lora[key].double()
        torch.testing.assert_close(got[key].double(), expected, rtol=0, atol=2e-6)


def test_diff_compares_the_exact_lora_forms(built):
    """diff of a LoHa with itself, as the LoRA it equals: every module's norms equal the norm of
    PEFT's ΔW (fp64) and the cosine is 1, on the torch path and the torch-free one (conflict off)."""
    from adapterkit.io.array_store import load_arrays

    root, _, model = built
    for conflict, read in (("block", adapterkit.load), ("off", load_arrays)):
        report = adapterkit.diff(read(root / "adapter"), read(root / "adapter"), conflict=conflict)
        assert report.peft_type == "LORA" and sorted(m.name for m in report.modules) == sorted(LAYERS)
        for m in report.modules:
            theirs = model.base_model.model.get_submodule(m.name).get_delta_weight("default").double().norm().item()
            assert abs(m.norm_a - theirs) <= 1e-6 * theirs and abs(m.norm_b - theirs) <= 1e-6 * theirs, m.name
            assert abs(m.cosine - 1) < 1e-9, m.name
        if conflict == "block":
            assert all(m.conflict == 0 for m in report.modules)


def test_combine_of_fp64_factors_stays_fp64(built, tmp_path):
    """A LoHa stored in fp64 combines as the LoRA it equals in fp64 (not rounded to fp32 on the
    way): the output's tensors are fp64 and its ΔW is 0.5·D + 0.5·D = D to fp64 precision, D from
    PEFT's parameters in fp64 ((w1_a·w1_b) ⊙ (w2_a·w2_b)·alpha/r written out)."""
    root, _, model = built
    src = load_file(root / "adapter" / "adapter_model.safetensors")
    (tmp_path / "a64").mkdir()
    save_file({k: v.double() for k, v in src.items()}, tmp_path / "a64" / "adapter_model.safetensors")
    shutil.copy(root / "adapter" / "adapter_config.json", tmp_path / "a64" / "adapter_config.json")
    a64 = adapterkit.load(tmp_path / "a64")
    mixed = adapterkit.combine([a64, a64], [0.5, 0.5], "cat", base=root / "base")
    assert mixed.peft_type == "LORA" and {mixed.tensors[k].dtype for k in mixed.tensors} == {torch.float64}
    layer = model.base_model.model.lin
    p = {k: getattr(layer, k)["default"].detach().double() for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    exact = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"]) * layer.scaling["default"]
    got = mixed.kind.delta(mixed, "lin", dtype=torch.float64)
    torch.testing.assert_close(got, exact, rtol=1e-12, atol=1e-14)


def test_base_is_an_input_nothing_writes_over(built, tmp_path):
    """--base is read: an output that is the base checkpoint, or holds it, is refused
    (overwrite-input) by to_lora's result, by convert and by combine; the base stays intact."""
    from click.testing import CliRunner

    from adapterkit.cli import main as cli

    root, _, _ = built
    base = tmp_path / "ckpt"
    shutil.copytree(root / "base", base)
    before = (base / "model.safetensors").read_bytes()
    lora, _ = adapterkit.to_lora(adapterkit.load(root / "adapter"), base=base)
    for out in (base, tmp_path):
        with pytest.raises(AdapterkitError) as info:
            adapterkit.save(lora, out, overwrite=True)
        assert info.value.code == "overwrite-input"
    for args in (["convert", str(root / "adapter"), str(base), "--to", "lora", "--base", str(base), "--overwrite"],
                 ["combine", str(root / "adapter"), "-o", str(base), "--method", "cat", "--base", str(base), "--overwrite"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and "overwrite-input" in res.output, res.output
    mixed = adapterkit.combine([adapterkit.load(root / "adapter")], [1.0], "cat", base=base)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.save(mixed, base, overwrite=True)
    assert info.value.code == "overwrite-input"
    assert (base / "model.safetensors").read_bytes() == before


def test_loha_and_lora_on_one_module_merge_in_one_checkpoint_pass(built, tmp_path):
    """A LoHa and a LoRA on the same Linear, merged together offline (both streamed by rows):
    base + ΔW_loha + ΔW_lora, each ΔW from PEFT's own merge_and_unload (first principles)."""
    from peft import LoraConfig, get_peft_model

    root, base, model = built
    torch.manual_seed(9)
    lora_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["lin"], init_lora_weights=False))
    lora_model.save_pretrained(tmp_path / "lora")
    merge_checkpoint(root / "base", [root / "adapter", tmp_path / "lora"], tmp_path / "merged")
    got = load_file(tmp_path / "merged" / "model.safetensors")
    start = base.state_dict()
    d_loha = {k: v - start[k] for k, v in copy.deepcopy(model).merge_and_unload().state_dict().items()}
    d_lora = {k: v - start[k] for k, v in lora_model.merge_and_unload().state_dict().items()}
    for key in start:
        expected = start[key].double() + d_loha[key].double() + d_lora[key].double()
        torch.testing.assert_close(got[key].double(), expected, rtol=0, atol=2e-6)
