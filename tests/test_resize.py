"""resize, rebalance and prune against first principles and against PEFT.

Oracles: each module's ΔW formed densely in fp64 from the raw tensors with a hand-written
scaling (PEFT's pattern rule re-typed here, not the library's), its singular values from
``torch.linalg.svdvals``, the rank rules computed by hand; PEFT 0.21.2 loading the results
(``get_delta_weight`` and logits) for rsLoRA, rank/alpha patterns, lora_bias, Conv1D,
convolutions and embeddings; for prune, PEFT with the dropped modules' adapters disabled.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import assume, given
from hypothesis import strategies as st

import adapterkit
from adapterkit import Adapter, IA3Config, LoraConfig
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError
from adapterkit.kinds.patterns import layer_index
from adapterkit.ops.rebalancing import allocate
from adapterkit.testing import strategies as aks

P = "base_model.model."
_FACTOR = re.compile(r"^base_model\.model\.(.+)\.(lora_A\.weight|lora_embedding_A)$")


# ----------------------------------------------------------------------------- hand-made oracles


def hand_scaling(cfg: dict, name: str) -> float:
    """PEFT's scaling for ``name``: first matching pattern key, alpha / r (or / sqrt(r))."""
    def pick(pattern: dict, default: float) -> float:
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?({key})$", name):
                return value
        return default

    r, alpha = pick(cfg["rank_pattern"], cfg["r"]), pick(cfg["alpha_pattern"], cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg["use_rslora"] else alpha / r


def hand_deltas(adapter: Adapter) -> dict[str, torch.Tensor]:
    """module -> scaling·B·A as an fp64 m×n matrix, from the raw tensors."""
    cfg = adapter.config.to_dict()
    out = {}
    for key in adapter.tensors:
        m = _FACTOR.match(key)
        if not m:
            continue
        name = m[1]
        b_key = key.replace("lora_A.weight", "lora_B.weight").replace("lora_embedding_A", "lora_embedding_B")
        A = adapter.tensors[key].double()
        B = adapter.tensors[b_key].double()
        out[name] = hand_scaling(cfg, name) * (B.reshape(B.shape[0], -1) @ A.reshape(A.shape[0], -1))
    return out


def lora_inputs(**kw) -> st.SearchStrategy[Adapter]:
    """Valid LoRA adapters of every layer type, without DoRA (resize refuses it)."""
    return aks.lora_adapters(use_dora=st.just(False), max_modules=3, max_rank=5, max_features=7, **kw)


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def storage_dtype(adapter: Adapter) -> torch.dtype:
    return next(adapter.tensors[k].dtype for k in adapter.tensors if _FACTOR.match(k))


# ----------------------------------------------------------------------------- resize: properties


@given(lora_inputs(), st.integers(0, 3), st.booleans())
def test_resize_at_or_above_the_rank_is_lossless(adapter, extra, balanced):
    """k >= every module's rank: ΔW unchanged up to the storage dtype's rounding, factors
    zero-padded to k, scaling 1, biases folded, whole tensors carried."""
    k = max(m.rank for m in adapter.modules.values()) + extra
    out, report = adapterkit.resize(adapter, rank=k, balanced=balanced)
    before, after = hand_deltas(adapter), hand_deltas(out)
    assert after.keys() == before.keys()
    dtype = storage_dtype(adapter)
    for name, M in before.items():
        view = out.module(name)
        assert view.rank == k and view.lora_A.shape[0] == k and view.scaling == 1.0
        assert view.lora_A.dtype == dtype
        nuclear = float(torch.linalg.svdvals(M).sum())
        assert float(torch.linalg.matrix_norm(after[name] - M)) <= 8 * eps(dtype) * nuclear + 1e-300
        held = min(M.shape[0], M.shape[1], adapter.module(name).rank)
        assert torch.all(view.lora_B.reshape(view.lora_B.shape[0], k)[:, held:] == 0)
        bias = adapter.module(name).bias
        if bias is not None:
            want = (bias.double() * adapter.module(name).scaling).to(dtype)
            torch.testing.assert_close(view.bias, want, rtol=2 * eps(dtype), atol=0)
    for key in adapter.tensors:
        if adapter.kind.parse_key(key) is None:
            assert torch.equal(out.tensors[key], adapter.tensors[key])
    assert report.energy_kept == pytest.approx(1.0, abs=1e-9) and not out.config.use_rslora
    assert all(m.error <= 1e-6 * math.sqrt(max(m.energy, 1e-300)) for m in report.modules)


@given(lora_inputs(dtypes=st.sampled_from([torch.float32, torch.float64])), st.integers(1, 4), st.booleans())
def test_resize_to_k_is_the_best_rank_k_approximation(adapter, k, balanced):
    """Eckart–Young against a dense fp64 SVD: the error is sqrt(Σ_{i>=k} σᵢ²), the result has rank
    <= k, and where σ_k clearly exceeds σ_{k+1} it is the truncated dense SVD itself."""
    out, report = adapterkit.resize(adapter, rank=k, balanced=balanced)
    before, after = hand_deltas(adapter), hand_deltas(out)
    tol = 1e-5 if storage_dtype(adapter) == torch.float32 else 1e-10
    records = {r.name: r for r in report.modules}
    for name, M in before.items():
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        best = (U[:, :k] * S[:k]) @ Vh[:k]
        scale = max(float(S[0]) if len(S) else 0.0, 1e-30)
        err = float(torch.linalg.matrix_norm(after[name] - M))
        assert err == pytest.approx(float(S[k:].square().sum().sqrt()), abs=tol * scale * 10)
        assert records[name].error == pytest.approx(float(S[k:].square().sum().sqrt()), abs=tol * scale * 10)
        assert records[name].energy_kept == pytest.approx(float(S[:k].square().sum() / S.square().sum()) if float(S.square().sum()) else 1.0, abs=1e-5)
        if k < len(S) and S[k - 1] - S[k] > 1e-3 * scale:
            torch.testing.assert_close(after[name], best, rtol=0, atol=tol * scale * 1e3)
        if balanced:  # canonical: column norms of B equal row norms of A
            view = out.module(name)
            Bm, Am = view.lora_B.reshape(view.lora_B.shape[0], k).double(), view.lora_A.reshape(k, -1).double()
            torch.testing.assert_close(Bm.norm(dim=0), Am.norm(dim=1), rtol=1e-4, atol=tol * scale)
    assert out.config.r == k and out.config.rank_pattern == {} and report.params_after == sum(
        k * (M.shape[0] + M.shape[1]) for M in before.values())


def hand_energy_rank(S: torch.Tensor, energy: float) -> int:
    total = float(S.square().sum())
    acc = 0.0
    for i, s in enumerate(S.tolist()):
        acc += s * s
        if acc >= energy * total:
            return i + 1
    return len(S)


@given(lora_inputs(dtypes=st.just(torch.float64)), st.floats(0.05, 0.99), st.floats(1.0, 8.0))
def test_energy_and_sv_ratio_pick_the_hand_computed_ranks(adapter, energy, ratio):
    before = hand_deltas(adapter)
    spectra = {n: torch.linalg.svdvals(M) for n, M in before.items()}
    for S in spectra.values():  # keep the rule away from its boundaries (ties decided by rounding)
        cum = (S.square().cumsum(0) / S.square().sum()).tolist()
        assume(all(abs(c - energy) > 1e-6 for c in cum))
        assume(all(abs(float(s) * ratio - float(S[0])) > 1e-6 * float(S[0]) for s in S))
    by_energy = {r.name: r.rank_after for r in adapterkit.resize(adapter, energy=energy)[1].modules}
    by_ratio = {r.name: r.rank_after for r in adapterkit.resize(adapter, sv_ratio=ratio)[1].modules}
    for name, S in spectra.items():
        assert by_energy[name] == hand_energy_rank(S, energy), name
        assert by_ratio[name] == max(1, sum(1 for s in S.tolist() if s * ratio >= float(S[0]))), name


def test_energy_rule_on_a_designed_spectrum_and_differing_ranks_as_anchored_patterns():
    """σ = 4, 2, 1 (energies 16, 4, 1 of 21) in one module, σ = 1, 1 in another: energy 0.9 keeps
    2 and 2, 0.7 keeps 1 and 2; the config says so with one anchored rank/alpha pattern key."""
    def module(name: str, S: list[float], m: int, n: int) -> dict[str, torch.Tensor]:
        U, _ = torch.linalg.qr(torch.randn(m, len(S), generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(n, len(S), generator=g, dtype=torch.float64))
        return {f"{P}{name}.lora_A.weight": V.T.contiguous(), f"{P}{name}.lora_B.weight": U * torch.tensor(S, dtype=torch.float64)}

    g = torch.Generator().manual_seed(3)
    tensors = {**module("model.layers.0.q_proj", [4, 2, 1], 6, 5), **module("model.layers.10.q_proj", [1, 1, 0], 4, 7)}
    adapter = Adapter.from_tensors(LoraConfig(r=3, lora_alpha=3, target_modules=("q_proj",)), tensors)
    out, report = adapterkit.resize(adapter, energy=0.7)
    assert [r.rank_after for r in report.modules] == [1, 2]
    assert report.energy_kept == pytest.approx((16 + 2) / (21 + 2))
    assert out.config.r == 2 and out.config.rank_pattern == {r"^model\.layers\.0\.q_proj": 1} == out.config.alpha_pattern
    assert [r.rank_after for r in adapterkit.resize(adapter, energy=0.9)[1].modules] == [2, 2]
    assert [r.rank_after for r in adapterkit.resize(adapter, sv_ratio=2.5)[1].modules] == [2, 2]
    # the anchored key matches layer 0 only, not layer 10 (whose name it is a prefix of)
    assert out.module("model.layers.10.q_proj").rank == 2 and out.module("model.layers.0.q_proj").rank == 1


# ----------------------------------------------------------------------------- rebalance


@given(lora_inputs(), st.integers(1, 4), st.booleans())
def test_rebalance_keeps_at_least_the_uniform_energy_within_the_same_budget(adapter, rank, by_budget):
    _, uniform = adapterkit.resize(adapter, rank=rank)
    floor = sum(m.params_after // rank for m in uniform.modules)
    budget = uniform.params_after + (floor // 2 if by_budget else 0)  # a budget between two uniform ranks
    out, report = adapterkit.rebalance(adapter, budget=budget) if by_budget else adapterkit.rebalance(adapter, rank=rank)
    assert report.params_after <= budget
    assert report.energy_kept >= uniform.energy_kept - 1e-9
    assert all(r.rank_after >= 1 for r in report.modules)
    before, after = hand_deltas(adapter), hand_deltas(out)
    for r in report.modules:  # each module is its own best rank-k approximation
        S = torch.linalg.svdvals(before[r.name])
        err = float(torch.linalg.matrix_norm(after[r.name] - before[r.name]))
        assert err == pytest.approx(float(S[r.rank_after:].square().sum().sqrt()), abs=1e-2 * max(float(S[0]), 1e-30) + 1e-6)


def test_rebalance_moves_rank_to_the_modules_that_need_it():
    """Two 64×64 modules at rank 8: a flat spectrum and one decaying fast.  At an average rank
    of 4, rebalance gives the flat one more rank and keeps more energy than uniform rank 4."""
    g = torch.Generator().manual_seed(5)

    def module(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        U, _ = torch.linalg.qr(torch.randn(64, 8, generator=g))
        V, _ = torch.linalg.qr(torch.randn(64, 8, generator=g))
        return V.T.contiguous(), U * S

    flat, steep = module(torch.ones(8)), module(0.2 ** torch.arange(8.0))
    tensors = {f"{P}m.flat.lora_A.weight": flat[0], f"{P}m.flat.lora_B.weight": flat[1],
               f"{P}m.steep.lora_A.weight": steep[0], f"{P}m.steep.lora_B.weight": steep[1]}
    adapter = Adapter.from_tensors(LoraConfig(r=8, lora_alpha=8, target_modules=("flat", "steep")), tensors)
    out, report = adapterkit.rebalance(adapter, rank=4)
    ranks = {r.name: r.rank_after for r in report.modules}
    assert ranks["m.flat"] > 4 > ranks["m.steep"] >= 1 and report.params_after <= 4 * 256
    assert report.energy_kept > adapterkit.resize(adapter, rank=4)[1].energy_kept + 0.05
    assert out.config.r == ranks["m.flat"] and out.config.rank_pattern == {r"^m\.steep": ranks["m.steep"]} == out.config.alpha_pattern


def _brute_force(energies: list[list[float]], costs: list[int], budget: int) -> float:
    best = 0.0

    def walk(i: int, left: int, kept: float) -> None:
        nonlocal best
        if i == len(costs):
            best = max(best, kept)
            return
        for k in range(1, len(energies[i]) + 1):
            if k * costs[i] <= left:
                walk(i + 1, left - k * costs[i], kept + sum(energies[i][:k]))

    walk(0, budget, 0.0)
    return best


@given(st.lists(st.tuples(st.lists(st.floats(0, 10), min_size=1, max_size=4), st.integers(1, 6)), min_size=1, max_size=3),
       st.integers(0, 30))
def test_allocate_is_within_budget_at_least_uniform_and_near_the_optimum(modules, slack):
    spectra = [torch.tensor(sorted(s, reverse=True), dtype=torch.float64) for s, _ in modules]
    costs = [c for _, c in modules]
    budget = sum(costs) + slack
    ranks, start = allocate(spectra, costs, budget)
    energies = [(s * s).tolist() for s in spectra]
    kept = sum(sum(e[:k]) for e, k in zip(energies, ranks))
    assert start in ("greedy", "uniform") and all(k >= 1 for k in ranks)
    assert sum(k * c for k, c in zip(ranks, costs)) <= budget
    u = budget // sum(costs)
    assert kept >= sum(sum(e[:u]) for e in energies) - 1e-9  # uniform at the same budget
    # greedy by ratio is within one item of the optimum (the knapsack bound)
    assert kept >= _brute_force(energies, costs, budget) - max((max(e) for e in energies), default=0) - 1e-9
    with pytest.raises(ValueError, match="below one rank per module"):
        allocate(spectra, costs, sum(costs) - 1)


def test_allocate_prefers_uniform_when_greedy_by_ratio_loses():
    """A knapsack where the best ratio first is wrong: module 0 (cost 1) has σ² 5, 2, 2; module 1
    (cost 10) has σ² 20, 15.  Budget 22: greedy from one rank each (11 spent) takes module 0's
    ranks 2 and 3 (ratio 2 > 1.5) and can no longer afford module 1's second (kept 29); the
    uniform start, rank 2 each, keeps 42."""
    spectra = [torch.tensor([5.0, 2.0, 2.0]).sqrt(), torch.tensor([20.0, 15.0]).sqrt()]
    assert allocate(spectra, [1, 10], 22) == ([2, 2], "uniform")
    assert allocate(spectra, [1, 10], 11) == ([1, 1], "greedy")  # nothing to add: the tie goes to greedy
    assert allocate(spectra, [1, 10], 13) == ([3, 1], "greedy")


def test_allocate_weighs_energy_by_cost_and_spends_nothing_on_zero_singular_values():
    # ten ranks of module 0 (σ² 3 for 1 parameter each) beat module 1's second (σ² 4 for 10)
    spectra = [torch.tensor([5.0] + [3.0] * 10).sqrt(), torch.tensor([20.0, 4.0]).sqrt()]
    assert allocate(spectra, [1, 10], 21) == ([11, 1], "greedy")
    # energy is σ²: module 0's σ 3 for 4 parameters (2.25 per parameter) beats σ 1 for 1 (1 per parameter)
    spectra = [torch.tensor([3.0, 3.0]), torch.tensor([1.0] * 5)]
    assert allocate(spectra, [4, 1], 9) == ([2, 1], "greedy")
    # the uniform start (2 each) would pay for two zero σ; the same energy for less wins
    spectra = [torch.tensor([5.0, 0.0]), torch.tensor([20.0, 0.0])]
    assert allocate(spectra, [1, 10], 22) == ([1, 1], "greedy")


# ----------------------------------------------------------------------------- every result validates clean


@given(lora_inputs(), st.sampled_from(["resize", "energy", "rebalance", "prune"]))
def test_results_validate_clean(tmp_path_factory, adapter, op):
    if op == "resize":
        out, _ = adapterkit.resize(adapter, rank=2)
    elif op == "energy":
        out, _ = adapterkit.resize(adapter, energy=0.8)
    elif op == "rebalance":
        out, _ = adapterkit.rebalance(adapter, rank=2)
    else:
        assume(len(adapter.modules) > 1)
        out, _ = adapterkit.prune(adapter, modules=re.escape(sorted(adapter.modules)[0]) + "$")
    path = adapterkit.save(out, tmp_path_factory.mktemp("out") / "a")
    assert adapterkit.validate(path) == []


# ----------------------------------------------------------------------------- PEFT loads the results


peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft_models import CASES_BY_NAME, build_peft_model, run  # noqa: E402


def peft_layers(model) -> dict[str, BaseTunerLayer]:
    return {n: m for n, m in model.base_model.model.named_modules() if isinstance(m, BaseTunerLayer)}


def saved_case(name: str, path: Path):
    case = CASES_BY_NAME[name]
    model = build_peft_model(case)
    with warnings.catch_warnings():  # PEFT 0.21.2 takes a 1-D lora_B.bias for an unsharded ZeRO-3 tensor
        warnings.filterwarnings("ignore", message=".*have invalid shape")
        model.save_pretrained(path)
    return case, model


def peft_loaded(case, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(case.base(), str(path)).eval()


# (case, rank for resize); conv: 1x1 Conv3d ΔW is wrong in PEFT 0.21.2 (REFERENCE.md), compared by logits only
PEFT_CASES = [("lora_rslora", 2), ("lora_patterns", 3), ("lora_bias", 2), ("lora_gpt2_conv1d", 3), ("lora_embedding", 2),
              ("lora_conv", 1), ("lora_rslora_patterns", 9)]


@pytest.mark.parametrize(("name", "k"), PEFT_CASES)
def test_peft_loads_resized_adapters_with_our_delta_weights(name, k, tmp_path):
    case, model = saved_case(name, tmp_path / "in")
    adapter = adapterkit.load(tmp_path / "in")
    out, report = adapterkit.resize(adapter, rank=k)
    adapterkit.save(out, tmp_path / "out")
    loaded = peft_loaded(case, tmp_path / "out")
    layers = peft_layers(loaded)
    assert set(layers) == set(adapter.modules)
    for module, layer in layers.items():
        if "p3" in module:  # PEFT's ΔW of a 1x1x1 Conv3d is wrong (checked through the logits below)
            continue
        theirs = layer.get_delta_weight("default")
        torch.testing.assert_close(theirs, out.delta_weight(module), rtol=1e-5, atol=1e-6)
        if adapter.module(module).bias is not None:  # scaling 1: PEFT adds the stored bias as it is
            assert layer.scaling["default"] == 1.0
            torch.testing.assert_close(layer.lora_B["default"].bias.detach(), out.module(module).bias)
    lossless = all(r.rank_before <= k for r in report.modules)
    if lossless:
        torch.testing.assert_close(run(loaded, case.inputs()), run(model, case.inputs()), rtol=1e-5, atol=1e-5)
    if name == "lora_bias":  # the folded bias: PEFT adds lora_B.bias·scaling, ours is stored so at scaling 1
        for module in adapter.modules:
            torch.testing.assert_close(out.module(module).bias, adapter.module(module).bias * adapter.module(module).scaling)


def test_peft_loads_a_lossless_conv_resize_with_the_same_outputs(tmp_path):
    case, model = saved_case("lora_conv", tmp_path / "in")
    out, _ = adapterkit.resize(adapterkit.load(tmp_path / "in"), rank=5)  # r=2 -> 5: zero-padded
    adapterkit.save(out, tmp_path / "out")
    torch.testing.assert_close(run(peft_loaded(case, tmp_path / "out"), case.inputs()), run(model, case.inputs()), rtol=1e-5, atol=1e-5)


def test_peft_loads_rebalanced_adapters(tmp_path):
    case, _ = saved_case("lora_patterns", tmp_path / "in")
    adapter = adapterkit.load(tmp_path / "in")
    out, report = adapterkit.rebalance(adapter, rank=2)
    assert len({r.rank_after for r in report.modules}) > 1  # differing ranks: anchored patterns
    adapterkit.save(out, tmp_path / "out")
    assert adapterkit.validate(tmp_path / "out") == []
    layers = peft_layers(peft_loaded(case, tmp_path / "out"))
    for r in report.modules:
        assert layers[r.name].r["default"] == r.rank_after and layers[r.name].scaling["default"] == 1.0
        torch.testing.assert_close(layers[r.name].get_delta_weight("default"), out.delta_weight(r.name), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- prune


PRUNE_CASES = [
    ("lora_linear", {"layers": [1]}),
    ("lora_patterns", {"modules": r"q_proj|mlp\.up"}),  # removes rank/alpha pattern keys left matching nothing
    ("lora_dora", {"modules": "v_proj"}),
    ("lora_bias", {"keep_fraction": 0.5}),
    ("lora_train_bias_all", {"layers": [0]}),  # the trained q_proj bias moves off the wrapper
    ("ia3", {"modules": r"layers\.0\.self_attn\.k_proj"}),
    ("lora_embedding", {"min_energy": 0.5}),
]


@pytest.mark.parametrize(("name", "rules"), PRUNE_CASES)
def test_pruned_adapter_equals_peft_with_the_dropped_modules_disabled(name, rules, tmp_path):
    """The pruned adapter validates clean, PEFT loads it without wrapping the dropped modules,
    and its outputs are the original adapter's with the dropped modules' adapters disabled."""
    case, _ = saved_case(name, tmp_path / "in")
    adapter = adapterkit.load(tmp_path / "in")
    out, report = adapterkit.prune(adapter, **rules)
    assert report.dropped and report.kept and set(report.kept) | set(report.dropped) == set(adapter.modules)
    adapterkit.save(out, tmp_path / "out")
    assert adapterkit.validate(tmp_path / "out") == []
    pruned = peft_loaded(case, tmp_path / "out")
    assert set(peft_layers(pruned)) == set(report.kept)
    reference = peft_loaded(case, tmp_path / "in")
    for module, layer in peft_layers(reference).items():
        if module in report.dropped:
            layer.enable_adapters(False)
    torch.testing.assert_close(run(pruned, case.inputs()), run(reference, case.inputs()), rtol=1e-6, atol=1e-6)
    if name == "lora_patterns":
        assert report.removed_pattern_keys and all("q_proj" not in k and "up_proj" not in k for k in out.config.rank_pattern | out.config.alpha_pattern)
    if name == "lora_train_bias_all":
        assert report.renamed == {f"{P}model.layers.0.self_attn.q_proj.base_layer.bias": f"{P}model.layers.0.self_attn.q_proj.bias"}


def test_prune_merge_equals_merging_the_kept_modules():
    adapter = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=4, target_modules=("q", "v"), lora_bias=True), {
        f"{P}l.0.q.lora_A.weight": torch.randn(2, 5), f"{P}l.0.q.lora_B.weight": torch.randn(4, 2), f"{P}l.0.q.lora_B.bias": torch.randn(4),
        f"{P}l.0.v.lora_A.weight": torch.randn(2, 5), f"{P}l.0.v.lora_B.weight": torch.randn(3, 2), f"{P}l.0.v.lora_B.bias": torch.randn(3),
    })
    out, report = adapterkit.prune(adapter, modules="v$")
    assert list(out.modules) == ["l.0.q"] and set(out.tensors) == {k for k in adapter.tensors if ".q." in k}
    base = {"weight": torch.randn(4, 5), "bias": torch.randn(4)}
    for role, value in out.merge("l.0.q", base).items():
        assert torch.equal(value, adapter.merge("l.0.q", base)[role])
    assert out.config.exclude_modules == ("l.0.v",) and report.dropped == {"l.0.v": "modules"}


def test_prune_exclude_modules_forms():
    """A list gains the full names; a string regex gains an alternative; a dropped name that is a
    dot-suffix of a kept one turns the list into an exact regex (a list entry would exclude both)."""
    def lora(names: list[str], exclude=None) -> Adapter:
        t = {}
        for n in names:
            t[f"{P}{n}.lora_A.weight"], t[f"{P}{n}.lora_B.weight"] = torch.ones(1, 2), torch.ones(2, 1)
        return Adapter.from_tensors(LoraConfig(r=1, lora_alpha=1, target_modules=("q",), exclude_modules=exclude), t)

    with pytest.raises(AdapterkitError, match=r"no module of the adapter is in layer 1; its layers are none \(no module has a layer index\)"):
        adapterkit.prune(lora(["a.0.q", "a.1.q"], exclude=("lm_head",)), layers=[1])  # not a silent copy
    assert layer_index("a.1.q") is None  # PEFT: no index before two components
    with pytest.raises(AdapterkitError, match="give at least one"):
        adapterkit.prune(lora(["a.0.q"]))
    out, _ = adapterkit.prune(lora(["m.a.0.q", "m.a.1.q"], exclude=("lm_head",)), layers=[1])
    assert out.config.exclude_modules == ("lm_head", "m.a.1.q")
    out, _ = adapterkit.prune(lora(["m.a.0.q", "m.a.1.q"], exclude="lm_.*"), layers=[0])
    excl = out.config.exclude_modules
    assert excl == r"(?:lm_.*)|m\.a\.0\.q" and re.fullmatch(excl, "m.a.0.q") and not re.fullmatch(excl, "m.a.1.q")
    out, _ = adapterkit.prune(lora(["x.q", "y.x.q"], exclude=("lm_head",)), modules="^x")
    excl = out.config.exclude_modules
    assert isinstance(excl, str) and re.fullmatch(excl, "x.q") and re.fullmatch(excl, "z.lm_head") and not re.fullmatch(excl, "y.x.q")


def test_prune_layers_follow_the_config_s_layers_pattern():
    t = {}
    for n in ("model.h.1.blocks.0.q", "model.h.1.blocks.1.q"):
        t[f"{P}{n}.lora_A.weight"], t[f"{P}{n}.lora_B.weight"] = torch.ones(1, 2), torch.ones(2, 1)
    cfg = LoraConfig(r=1, lora_alpha=1, target_modules=("q",), layers_to_transform=(0, 1), layers_pattern="blocks")
    _, report = adapterkit.prune(Adapter.from_tensors(cfg, t), layers=[1])
    assert report.dropped == {"model.h.1.blocks.1.q": "layers"}  # without the pattern both are layer 1


def test_layer_index_is_peft_s():
    assert layer_index("model.layers.3.mlp.up_proj") == 3
    assert layer_index("model.layers.3.experts.7.w1") == 3
    assert layer_index("encoder.block.2.layer.0.SelfAttention.q") == 2
    assert layer_index("h.0.attn") is None and layer_index("model.layers.3") is None
    assert layer_index("model.decoder.layers.5.fc1", "layers") == 5 and layer_index("model.h.5.fc1", ["blocks", "h"]) == 5


def test_prune_by_energy_ranks_modules_by_their_share():
    tensors = {}
    for i, s in enumerate([4.0, 2.0, 1.0, 0.5]):
        tensors[f"{P}m.layers.{i}.q.lora_A.weight"] = torch.tensor([[1.0, 0.0]])
        tensors[f"{P}m.layers.{i}.q.lora_B.weight"] = torch.tensor([[s], [0.0]])
    adapter = Adapter.from_tensors(LoraConfig(r=1, lora_alpha=1, target_modules=("q",)), tensors)
    total = 16 + 4 + 1 + 0.25
    _, report = adapterkit.prune(adapter, min_energy=1.0 / total + 1e-9)
    assert report.kept == ("m.layers.0.q", "m.layers.1.q") and report.energy_kept == pytest.approx(20 / total)
    assert report.shares["m.layers.2.q"] == pytest.approx(1 / total)
    _, report = adapterkit.prune(adapter, keep_fraction=0.5)
    assert report.kept == ("m.layers.0.q", "m.layers.1.q") and set(report.dropped.values()) == {"keep_fraction"}
    _, report = adapterkit.prune(adapter, keep_fraction=0.3)  # ceil(0.3 * 4) = 2
    assert len(report.kept) == 2
    _, report = adapterkit.prune(adapter, keep_fraction=0.1)
    assert report.kept == ("m.layers.0.q",)
    _, report = adapterkit.prune(adapter, layers=[0], min_energy=0.1)  # either rule drops
    assert report.kept == ("m.layers.1.q",) and report.dropped["m.layers.0.q"] == "layers"
    assert report.params_before == 4 * 4 and report.params_after == 4


# ----------------------------------------------------------------------------- errors


def _saved(tmp_path: Path, adapter: Adapter) -> Adapter:
    return adapterkit.load(adapterkit.save(adapter, tmp_path / "a"))


def _small(**cfg) -> Adapter:
    g = torch.Generator().manual_seed(0)
    t = {f"{P}m.layers.0.q.lora_A.weight": torch.randn(2, 4, generator=g), f"{P}m.layers.0.q.lora_B.weight": torch.randn(3, 2, generator=g)}
    if cfg.get("use_dora"):
        t[f"{P}m.layers.0.q.lora_magnitude_vector"] = torch.ones(3)
    return Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=("q",), **cfg), t)


@pytest.mark.parametrize(("call", "code", "text"), [
    (lambda a: adapterkit.resize(a, rank=0), "argument-invalid", "rank: rank must be a positive integer (expected a positive integer, got 0)"),
    (lambda a: adapterkit.resize(a, rank=-3), "argument-invalid", "got -3"),
    (lambda a: adapterkit.resize(a, rank=2, energy=0.5), "argument-invalid", "rank/energy/sv_ratio: give exactly one of rank, energy, sv_ratio (got rank, energy)"),
    (lambda a: adapterkit.resize(a), "argument-invalid", "got none"),
    (lambda a: adapterkit.resize(a, energy=1.5), "argument-invalid", "energy: energy must be in (0, 1]"),
    (lambda a: adapterkit.resize(a, sv_ratio=0.5), "argument-invalid", "sv_ratio: sv_ratio must be at least 1"),
    (lambda a: adapterkit.rebalance(a, budget=0), "argument-invalid", "budget: budget must be a positive integer (expected > 0, got 0)"),
    (lambda a: adapterkit.rebalance(a, rank=0), "argument-invalid", "rank: rank must be a positive integer"),
    (lambda a: adapterkit.rebalance(a, budget=6), "argument-invalid", "budget: a budget of 6 parameters is below one rank per module (7)"),
    (lambda a: adapterkit.rebalance(a, budget=10, rank=1), "argument-invalid", "give exactly one of budget, rank"),
    (lambda a: adapterkit.rebalance(a), "argument-invalid", "got none"),
    (lambda a: adapterkit.prune(a, layers=[0]), "argument-invalid", "the rules drop every module"),
    (lambda a: adapterkit.prune(a, modules="("), "argument-invalid", "modules: not a regular expression"),
    (lambda a: adapterkit.prune(a, layers="0"), "argument-invalid", "layers must be non-negative integers"),
    (lambda a: adapterkit.prune(a, keep_fraction=0), "argument-invalid", "keep_fraction"),
    (lambda a: adapterkit.prune(a, min_energy=1.5), "argument-invalid", "min_energy"),
    (lambda a: adapterkit.resize(a, rank=1, device="bogus"), "device-unavailable", "device"),
])
def test_errors_name_the_adapter_argument_and_code(tmp_path, call, code, text):
    adapter = _saved(tmp_path, _small())
    with pytest.raises(AdapterkitError) as info:
        call(adapter)
    assert info.value.code == code and text in str(info.value)
    if code == "argument-invalid":
        assert str(info.value).startswith(str(tmp_path / "a" / "adapter_model.safetensors"))


@pytest.mark.parametrize("op", [lambda a: adapterkit.resize(a, rank=1), lambda a: adapterkit.rebalance(a, rank=1)])
def test_dora_and_non_lora_are_not_supported(tmp_path, op):
    dora = _saved(tmp_path, _small(use_dora=True))
    with pytest.raises(AdapterkitError) as info:
        op(dora)
    assert info.value.code == "not-supported" and info.value.key == "use_dora" and "DoRA" in str(info.value)
    assert str(tmp_path) in str(info.value)
    ia3 = Adapter.from_tensors(IA3Config(target_modules=("k",)), {f"{P}m.k.ia3_l": torch.ones(3, 1)})
    with pytest.raises(AdapterkitError, match=r"works on LoRA adapters \(expected LORA, got IA3\) \[not-supported\]"):
        op(ia3)


def test_prune_energy_rules_need_a_delta_and_prompt_kinds_have_no_modules():
    ia3 = Adapter.from_tensors(IA3Config(target_modules=("k",)), {f"{P}m.0.k.ia3_l": torch.ones(3, 1), f"{P}m.1.k.ia3_l": torch.ones(3, 1)})
    with pytest.raises(AdapterkitError) as info:
        adapterkit.prune(ia3, min_energy=0.1)
    assert info.value.code == "not-supported" and info.value.key == "m.0.k"
    from adapterkit import PromptTuningConfig
    pt = Adapter.from_tensors(PromptTuningConfig(num_virtual_tokens=2, token_dim=3), {"prompt_embeddings": torch.zeros(2, 3)})
    with pytest.raises(AdapterkitError, match=r"no modules to prune.*not-supported"):
        adapterkit.prune(pt, modules="x")


# ----------------------------------------------------------------------------- command line


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_resize_rebalance_prune(tmp_path):
    case, model = saved_case("lora_linear", tmp_path / "in")
    res = _cli("resize", str(tmp_path / "in"), str(tmp_path / "r2"), "--rank", "2")
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"resized {tmp_path / 'in'} -> {tmp_path / 'r2'}: 14 modules (rank=2), rank 4 -> 2, energy kept ")
    res = _cli("resize", str(tmp_path / "in"), str(tmp_path / "r8.safetensors"), "--rank", "8", "--json", "--no-balanced")
    report = json.loads(res.output)
    assert res.exit_code == 0 and report["energy_kept"] == pytest.approx(1.0) and report["params_after"] == 2 * report["params_before"]
    torch.testing.assert_close(run(peft_loaded(case, tmp_path / "in"), case.inputs()), run(model, case.inputs()))
    assert adapterkit.load(tmp_path / "r8.safetensors").config.r == 8
    res = _cli("rebalance", str(tmp_path / "in"), str(tmp_path / "rb"), "--rank", "2")
    assert res.exit_code == 0 and "rebalanced" in res.output and "budget=" in res.output
    res = _cli("prune", str(tmp_path / "in"), str(tmp_path / "p"), "--layers", "1", "--modules", "mlp", "--json")
    report = json.loads(res.output)
    assert res.exit_code == 0 and len(report["kept"]) == 4 and set(report["dropped"].values()) == {"modules", "layers"}
    res = _cli("prune", str(tmp_path / "in"), str(tmp_path / "p2"), "--layers", "0-0,1", "--min-energy", "0")
    assert res.exit_code == 2 and "the rules drop every module" in res.output and "[argument-invalid]" in res.output
    res = _cli("prune", str(tmp_path / "in"), str(tmp_path / "p2"), "--keep-fraction", "0.5")
    assert res.exit_code == 0 and "dropped 7 of 14 modules (keep_fraction: 7), energy kept" in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["resize", "IN", "OUT"], "give exactly one of --rank | --energy | --sv-ratio (got none)"),
    (["resize", "IN", "OUT", "--rank", "2", "--sv-ratio", "2"], "(got --rank, --sv-ratio)"),
    (["rebalance", "IN", "OUT", "--rank", "2", "--budget", "9"], "give exactly one of --budget | --rank"),
    (["prune", "IN", "OUT"], "give at least one of --modules, --layers, --min-energy, --keep-fraction"),
    (["prune", "IN", "OUT", "--layers", "3-1"], "'3-1' is not a list of layers such as 0,1,5-7"),
    (["prune", "IN", "OUT", "--layers", "1,,2"], "is not a list of layers"),
])
def test_cli_usage_errors(args, message):
    res = _cli(*args)
    assert res.exit_code == 2 and message in res.output and res.output.rstrip().endswith("[usage]")


def test_cli_refuses_existing_output_and_the_input(tmp_path):
    adapterkit.save(_small(), tmp_path / "in")
    (tmp_path / "out").mkdir()
    res = _cli("resize", str(tmp_path / "in"), str(tmp_path / "out"), "--rank", "1")
    assert res.exit_code == 2 and "[output-exists]" in res.output
    res = _cli("resize", str(tmp_path / "in"), str(tmp_path / "in"), "--rank", "1", "--overwrite")
    assert res.exit_code == 2 and "[overwrite-input]" in res.output
    assert adapterkit.load(tmp_path / "in") == _small()
    res = _cli("resize", str(tmp_path / "in"), str(tmp_path / "out"), "--rank", "1", "--overwrite")
    assert res.exit_code == 0 and adapterkit.load(tmp_path / "out").config.r == 1
    res = _cli("resize", str(tmp_path / "nope"), str(tmp_path / "x"), "--rank", "1")
    assert res.exit_code == 2 and "[file-not-found]" in res.output


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@given(lora_inputs(dtypes=st.sampled_from([torch.float32, torch.bfloat16])), st.integers(1, 4))
def test_resize_and_rebalance_on_cuda_match_the_cpu(adapter, k):
    """Truncations agree in their errors (the kept subspace itself is ill-defined where σ_k ≈ σ_k+1);
    a lossless resize agrees in ΔW; results are stored on the CPU whatever the device."""
    _, cpu = adapterkit.resize(adapter, rank=k, device="cpu")
    _, gpu = adapterkit.resize(adapter, rank=k, device="cuda")
    for c, g in zip(cpu.modules, gpu.modules):
        assert g.rank_after == c.rank_after and g.error == pytest.approx(c.error, rel=1e-3, abs=1e-4 * math.sqrt(c.energy) + 1e-6)
    top = max(m.rank for m in adapter.modules.values())
    out, _ = adapterkit.resize(adapter, rank=top, device="cuda")
    assert all(t.device.type == "cpu" for t in out.tensors.values())
    before, after = hand_deltas(adapter), hand_deltas(out)
    for name, M in before.items():
        assert float(torch.linalg.matrix_norm(after[name] - M)) <= 8 * eps(storage_dtype(adapter)) * float(torch.linalg.svdvals(M).sum()) + 1e-12
    _, rb = adapterkit.rebalance(adapter, rank=k, device="cuda")
    assert rb.energy_kept >= cpu.energy_kept - 1e-4 and rb.params_after <= cpu.params_after
