"""adapterkit.diff and `adapterkit diff`: every number against a dense fp64 computation formed
here from first principles (PEFT's ΔW per layer type, its scaling rule), never from adapterkit's
own factor helpers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import adapterkit
import adapterkit.inspect.compare as diff_module
from adapterkit import Adapter, IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError

P = "base_model.model."
LAYERS = ("linear", "conv1d_gpt2", "embedding", "conv2d")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------- building adapters and their dense ΔW


def _module_layout(draw, i: int, layer: str, max_out: int) -> dict:
    return {"name": f"layers.{i}.mod", "layer": layer, "out": draw(st.integers(1, max_out)), "in": draw(st.integers(1, 6)),
            "kernel": (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if layer == "conv2d" else ()}


@st.composite
def lora_side(draw, layout: list[dict], fan_in_fan_out: bool, *, allow_zero: bool = True) -> Adapter:
    """One LoRA adapter over ``layout`` (a subset of its modules) with its own ranks, alphas,
    rsLoRA, dtype and values."""
    r, alpha = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 8, 0.5, 3.0]))
    rslora, dtype = draw(st.booleans()), draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    rank_pattern, alpha_pattern, tensors = {}, {}, {}
    for mod in layout:
        name = mod["name"]
        rank = r
        if draw(st.booleans()):
            rank = rank_pattern[name] = draw(st.integers(1, 5))
        if draw(st.booleans()):
            alpha_pattern[name] = draw(st.sampled_from([4, 0.25, 16]))
        out_f, in_f = mod["out"], mod["in"]
        B = torch.randn(out_f, rank, generator=gen)
        if allow_zero and draw(st.integers(0, 9)) == 0:
            B = torch.zeros_like(B)  # PEFT's initialisation: ΔW = 0
        elif allow_zero and out_f > 1 and draw(st.integers(0, 4)) == 0:
            B[: out_f // 2] = 0  # zero rows: zero entries, which never conflict
        if mod["layer"] == "embedding":
            tensors[f"{P}{name}.lora_embedding_A"] = torch.randn(rank, in_f, generator=gen).to(dtype)
            tensors[f"{P}{name}.lora_embedding_B"] = B.to(dtype)
        elif mod["layer"] == "conv2d":
            tensors[f"{P}{name}.lora_A.weight"] = torch.randn(rank, in_f, *mod["kernel"], generator=gen).to(dtype)
            tensors[f"{P}{name}.lora_B.weight"] = B.reshape(out_f, rank, 1, 1).to(dtype)
        else:
            tensors[f"{P}{name}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen).to(dtype)
            tensors[f"{P}{name}.lora_B.weight"] = B.to(dtype)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=("mod",), rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                        use_rslora=rslora, fan_in_fan_out=fan_in_fan_out)
    return Adapter.from_tensors(config, tensors)


@st.composite
def lora_pairs(draw, *, max_out: int = 6, allow_zero: bool = True) -> tuple[Adapter, Adapter]:
    """Two LoRA adapters over the same modules (each module in both, or in one only), every
    layer type, different ranks, scalings and dtypes."""
    n = draw(st.integers(1, 3))
    if draw(st.booleans()):  # fan_in_fan_out is adapter-wide: GPT-2's Conv1D modules alone
        layers = [draw(st.sampled_from(["linear", "conv1d_gpt2"]))] * n
    else:
        layers = [draw(st.sampled_from(["linear", "embedding", "conv2d"])) for _ in range(n)]
    layout = [_module_layout(draw, i, layer, max_out) for i, layer in enumerate(layers)]
    fifo = all(m["layer"] == "conv1d_gpt2" for m in layout)
    where = [draw(st.sampled_from(["both", "both", "both", "a", "b"])) for _ in layout]
    if "both" not in where:
        where[0] = "both"
    a = draw(lora_side([m for m, w in zip(layout, where) if w != "b"], fifo, allow_zero=allow_zero))
    b = draw(lora_side([m for m, w in zip(layout, where) if w != "a"], fifo, allow_zero=allow_zero))
    return a, b


def _scaling(cfg: LoraConfig, name: str) -> tuple[int, float]:
    """PEFT's rule, spelled out: rank and alpha from the patterns keyed by the full name, else r
    and lora_alpha; alpha / r, or alpha / √r under rsLoRA."""
    rank = cfg.rank_pattern.get(name, cfg.r)
    alpha = cfg.alpha_pattern.get(name, cfg.lora_alpha)
    return rank, alpha / (math.sqrt(rank) if cfg.use_rslora else rank)


def peft_delta(adapter: Adapter, name: str) -> torch.Tensor:
    """ΔW in the base weight's own layout, fp64, as PEFT's get_delta_weight forms it."""
    cfg: LoraConfig = adapter.config
    _, s = _scaling(cfg, name)
    t = {k[len(P) + len(name) + 1:]: v.double() for k, v in adapter.tensors.items() if k.startswith(P + name + ".")}
    if "lora_embedding_A" in t:
        return (t["lora_embedding_B"] @ t["lora_embedding_A"]).T * s  # (vocab, dim)
    A, B = t["lora_A.weight"], t["lora_B.weight"]
    if A.ndim == 4:  # conv2d with a 1×1 lora_B: B's 1×1 conv applied to A's kernel
        return torch.einsum("or,rikl->oikl", B[:, :, 0, 0], A) * s
    delta = B @ A * s
    return delta.T if cfg.fan_in_fan_out else delta  # Conv1D stores (in, out)


def out_by_in(adapter: Adapter, name: str) -> torch.Tensor:
    """ΔW as an (output features) × (input features) matrix: PEFT's layout undone per layer type."""
    d = peft_delta(adapter, name)
    t = adapter.tensors
    if f"{P}{name}.lora_embedding_A" in t or adapter.config.fan_in_fan_out:
        return d.T  # embedding (vocab, dim) and Conv1D (in, out) store the input side first
    return d.reshape(d.shape[0], -1)


def _orth(M: np.ndarray) -> np.ndarray:
    """An orthonormal basis of M's column space (dense SVD, numerical rank at 1e-10 of σ₁)."""
    U, S, _ = np.linalg.svd(M, full_matrices=False)
    k = int((S > 1e-10 * S[0]).sum()) if S.size and S[0] > 0 else 0
    return U[:, :k]


def _angles(Qa: np.ndarray, Qb: np.ndarray) -> list[float]:
    if Qa.shape[1] == 0 or Qb.shape[1] == 0:
        return []
    cos = np.clip(np.linalg.svd(Qa.T @ Qb, compute_uv=False), 0, 1)
    return sorted(np.arccos(cos).tolist())


def _conflicts(da: torch.Tensor, db: torch.Tensor) -> int:
    return int((((da > 0) & (db < 0)) | ((da < 0) & (db > 0))).sum())


def _negated(adapter: Adapter) -> Adapter:
    return Adapter.from_tensors(adapter.config, {k: -v if "_B" in k else v for k, v in adapter.tensors.items()})


# ----------------------------------------------------------------------------- LoRA against the dense oracle


@given(lora_pairs())
def test_lora_numbers_equal_dense_fp64(pair):
    check_dense(*pair)


@settings(max_examples=15)
@given(pair=lora_pairs())
def test_the_qr_route_to_the_frames_equals_dense_fp64(monkeypatch, pair):
    monkeypatch.setattr(diff_module, "GRAM_RCOND", 2.0)  # no Gram matrix qualifies: thin QRs always
    seen = []
    real = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *x, **k: seen.append(1) or real(*x, **k))
    check_dense(*pair)
    assert seen


def test_ill_conditioned_factors_take_the_qr_route(monkeypatch):
    g = torch.Generator().manual_seed(8)
    scale = torch.tensor([1.0, 1e-3])
    cfg = LoraConfig(r=2, lora_alpha=2, target_modules=("m",))
    a = Adapter.from_tensors(cfg, {f"{P}m.lora_A.weight": torch.randn(2, 9, generator=g).double(),
                                   f"{P}m.lora_B.weight": torch.randn(7, 2, generator=g).double() * scale})
    b = Adapter.from_tensors(cfg, {f"{P}m.lora_A.weight": torch.randn(2, 9, generator=g).double(),
                                   f"{P}m.lora_B.weight": torch.randn(7, 2, generator=g).double()})
    seen = []
    real = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *x, **k: seen.append(1) or real(*x, **k))
    check_dense(a, b)
    assert len(seen) == 2  # B's frames (κ ≈ 1000) by QR; Aᵀ's by the Gram route
    m, = adapterkit.diff(a, a).modules
    assert max(m.col_angles) < 1e-6


def check_dense(a: Adapter, b: Adapter) -> None:
    report = adapterkit.diff(a, b)
    names = sorted(set(a.modules) | set(b.modules))
    assert [m.name for m in report.modules] == names
    for m in report.modules:
        if m.present != "both":
            side = a if m.present == "a" else b
            assert m.present == ("a" if m.name in a.modules else "b") and m.name not in (b if m.present == "a" else a).modules
            norm = m.norm_a if m.present == "a" else m.norm_b
            assert norm == pytest.approx(float(peft_delta(side, m.name).norm()), rel=1e-9, abs=1e-12)
            assert m.cosine is None and m.conflict is None
            continue
        da, db = peft_delta(a, m.name), peft_delta(b, m.name)
        na, nb = float(da.norm()), float(db.norm())
        assert m.norm_a == pytest.approx(na, rel=1e-9, abs=1e-12)
        assert m.norm_b == pytest.approx(nb, rel=1e-9, abs=1e-12)
        if na == 0 or nb == 0:
            assert m.cosine is None
        else:
            assert m.cosine == pytest.approx(float((da * db).sum()) / (na * nb), abs=1e-9)
        Ma, Mb = out_by_in(a, m.name).numpy(), out_by_in(b, m.name).numpy()
        Ca, Cb, Ra, Rb = _orth(Ma), _orth(Mb), _orth(Ma.T), _orth(Mb.T)
        assert (m.rank_a, m.rank_b) == (Ca.shape[1], Cb.shape[1])
        assert m.col_angles == pytest.approx(_angles(Ca, Cb), abs=1e-5)
        assert m.row_angles == pytest.approx(_angles(Ra, Rb), abs=1e-5)
        eb = float((Mb**2).sum())
        if eb == 0:
            assert m.energy_in_col is None and m.energy_in_row is None
        else:
            assert m.energy_in_col == pytest.approx(float(((Ca @ Ca.T @ Mb) ** 2).sum()) / eb, abs=1e-9)
            assert m.energy_in_row == pytest.approx(float(((Mb @ Ra @ Ra.T) ** 2).sum()) / eb, abs=1e-9)
        assert m.conflict == _conflicts(da, db) / da.numel()
        assert m.conflict_bound == 0.0 and m.conflict_rows == Ma.shape[0]


@given(lora_pairs())
def test_overlap_is_the_cosine_of_the_whole_adapters(pair):
    a, b = pair
    names = sorted(set(a.modules) | set(b.modules))
    shapes = {n: peft_delta(a if n in a.modules else b, n).shape for n in names}
    va = torch.cat([peft_delta(a, n).flatten() if n in a.modules else torch.zeros(shapes[n]).flatten().double() for n in names])
    vb = torch.cat([peft_delta(b, n).flatten() if n in b.modules else torch.zeros(shapes[n]).flatten().double() for n in names])
    report = adapterkit.diff(a, b, conflict="off")
    if float(va.norm()) == 0 or float(vb.norm()) == 0:
        assert report.overlap is None
    else:
        assert report.overlap == pytest.approx(float(va @ vb) / float(va.norm() * vb.norm()), abs=1e-9)
    assert all(m.conflict is None for m in report.modules)


@given(lora_pairs())
def test_summary_figures_and_the_most_conflicting_modules(pair):
    a, b = pair
    report = adapterkit.diff(a, b)
    shared = [n for n in sorted(a.modules) if n in b.modules]
    exact = {n: _conflicts(peft_delta(a, n), peft_delta(b, n)) / peft_delta(a, n).numel() for n in shared}
    assert [m.conflict for m in report.most_conflicting(2)] == sorted(exact.values(), reverse=True)[:2]
    weights = {n: float((out_by_in(b, n) ** 2).sum()) for n in shared}
    inside = {}
    for n in shared:
        Ca, Mb = _orth(out_by_in(a, n).numpy()), out_by_in(b, n).numpy()
        inside[n] = float(((Ca @ Ca.T @ Mb) ** 2).sum())
    total = sum(weights.values())
    if total == 0:
        assert report.energy_in_col is None
    else:
        assert report.energy_in_col == pytest.approx(sum(inside.values()) / total, abs=1e-9)
    line = report.summary(top=1)
    assert line.count("signs conflict") == 1 and f"{len(shared)} shared modules" in line
    assert f"{len(report.only_a)} only in A, {len(report.only_b)} only in B" in line


@given(lora_pairs(allow_zero=False))
def test_diff_with_itself_and_with_its_negation(pair):
    a, _ = pair
    same = adapterkit.diff(a, a)
    for m in same.modules:
        assert m.cosine == pytest.approx(1.0, abs=1e-12)
        assert max(m.col_angles + m.row_angles) < 1e-5
        assert m.energy_in_col == pytest.approx(1.0, abs=1e-9) and m.energy_in_row == pytest.approx(1.0, abs=1e-9)
        assert m.conflict == 0.0
    assert same.overlap == pytest.approx(1.0, abs=1e-12)
    neg = adapterkit.diff(a, _negated(a))
    for m in neg.modules:
        d = peft_delta(a, m.name)
        assert m.cosine == pytest.approx(-1.0, abs=1e-12)
        assert max(m.col_angles + m.row_angles) < 1e-5  # the same subspaces
        assert m.conflict == int((d != 0).sum()) / d.numel()
    assert neg.overlap == pytest.approx(-1.0, abs=1e-12)


def test_subspace_energy_of_a_delta_inside_the_other_column_space():
    g = torch.Generator().manual_seed(3)
    Ba, Aa = torch.randn(9, 3, generator=g), torch.randn(3, 7, generator=g)
    Bb, Ab = Ba @ torch.randn(3, 2, generator=g), torch.randn(2, 7, generator=g)  # col(ΔW_b) ⊂ col(ΔW_a)
    cfg = LoraConfig(r=3, lora_alpha=3, target_modules=("m",), rank_pattern={}, alpha_pattern={})
    a = Adapter.from_tensors(cfg, {f"{P}m.lora_A.weight": Aa.double(), f"{P}m.lora_B.weight": Ba.double()})
    b = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=("m",)), {f"{P}m.lora_A.weight": Ab.double(), f"{P}m.lora_B.weight": Bb.double()})
    m, = adapterkit.diff(a, b).modules
    assert m.energy_in_col == pytest.approx(1.0, abs=1e-12) and max(m.col_angles) < 1e-6 and len(m.col_angles) == 2
    assert m.energy_in_row < 0.99  # the input sides are unrelated
    back, = adapterkit.diff(b, a).modules  # not symmetric: a's energy is not all inside b's 2-D space
    assert back.energy_in_col < 0.99


def test_block_mode_counts_in_blocks_never_the_whole_matrix(monkeypatch):
    g = torch.Generator().manual_seed(5)
    cfg = LoraConfig(r=2, lora_alpha=2, target_modules=("m",))
    a = Adapter.from_tensors(cfg, {f"{P}m.lora_A.weight": torch.randn(2, 7, generator=g), f"{P}m.lora_B.weight": torch.randn(23, 2, generator=g)})
    b = Adapter.from_tensors(cfg, {f"{P}m.lora_A.weight": torch.randn(2, 7, generator=g), f"{P}m.lora_B.weight": torch.randn(23, 2, generator=g)})
    seen = []
    real = diff_module._sign_conflicts
    monkeypatch.setattr(diff_module, "_sign_conflicts", lambda x, y: seen.append(x.numel()) or real(x, y))
    monkeypatch.setattr(diff_module, "BLOCK_ELEMENTS", 30)  # 4 rows of 7 per block: 6 blocks, the last one partial
    m, = adapterkit.diff(a, b).modules
    assert seen == [28] * 5 + [21]
    assert m.conflict == _conflicts(peft_delta(a, "m"), peft_delta(b, "m")) / (23 * 7)


@settings(max_examples=20)
@given(lora_pairs(max_out=40, allow_zero=False), st.integers(1, 6), st.integers(0, 1000))
def test_sampled_conflict_lies_within_its_printed_bound(pair, rows, seed):
    a, b = pair
    report = adapterkit.diff(a, b, conflict="sample", sample_rows=rows, seed=seed)
    for m in report.shared:
        da, db = peft_delta(a, m.name), peft_delta(b, m.name)
        exact = _conflicts(da, db) / da.numel()
        height = out_by_in(a, m.name).shape[0]
        if height <= rows:
            assert m.conflict == exact and m.conflict_bound == 0.0 and m.conflict_rows == height
        else:
            assert m.conflict_rows == rows
            k, n = rows, height  # Serfling's bound at 95%, written out
            assert m.conflict_bound == pytest.approx(math.sqrt(math.log(40) * (1 - (k - 1) / n) / (2 * k)))
            assert abs(m.conflict - exact) <= m.conflict_bound
    again = adapterkit.diff(a, b, conflict="sample", sample_rows=rows, seed=seed)
    assert [m.conflict for m in again.modules] == [m.conflict for m in report.modules]


def test_sampled_conflict_counts_the_sampled_rows_exactly_and_converges():
    g = torch.Generator().manual_seed(11)
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=("m",))
    a = Adapter.from_tensors(cfg, {f"{P}m.lora_A.weight": torch.randn(4, 32, generator=g), f"{P}m.lora_B.weight": torch.randn(400, 4, generator=g)})
    b = Adapter.from_tensors(cfg, {f"{P}m.lora_A.weight": torch.randn(4, 32, generator=g), f"{P}m.lora_B.weight": torch.randn(400, 4, generator=g)})
    da, db = peft_delta(a, "m"), peft_delta(b, "m")
    per_row = ((((da > 0) & (db < 0)) | ((da < 0) & (db > 0))).sum(dim=1)).tolist()
    exact = sum(per_row) / da.numel()
    estimates = [adapterkit.diff(a, b, conflict="sample", sample_rows=100, seed=s).modules[0] for s in range(30)]
    for m in estimates:
        # a mean of 100 distinct rows' counts: an integer count over 100·32 entries
        assert (m.conflict * 100 * 32) == pytest.approx(round(m.conflict * 100 * 32), abs=1e-6)
        assert abs(m.conflict - exact) <= m.conflict_bound
    assert len({m.conflict for m in estimates}) > 1  # the seed changes the sample
    assert abs(sum(m.conflict for m in estimates) / 30 - exact) < 0.02


# ----------------------------------------------------------------------------- IA3 and prompt learning


def _ia3(values: dict[str, torch.Tensor], ff: tuple[str, ...] = ()) -> Adapter:
    return Adapter.from_tensors(IA3Config(target_modules=("k", "v", "w"), feedforward_modules=ff),
                                {f"{P}{n}.ia3_l": v for n, v in values.items()})


def test_ia3_compares_the_vectors_as_deltas_from_identity():
    g = torch.Generator().manual_seed(2)
    la, lb = 1 + 0.1 * torch.randn(6, 1, generator=g), 1 + 0.1 * torch.randn(6, 1, generator=g)
    a = _ia3({"x.k": la, "x.v": torch.ones(3, 1) * 1.5})
    b = _ia3({"x.k": lb, "x.w": torch.full((1, 4), 0.5)}, ff=("w",))
    report = adapterkit.diff(a, b)
    k, v, w = report.modules
    da, db = (la - 1).double().flatten(), (lb - 1).double().flatten()
    assert k.cosine == pytest.approx(float(da @ db / (da.norm() * db.norm())), abs=1e-12)
    assert (k.norm_a, k.norm_b) == (pytest.approx(float(da.norm())), pytest.approx(float(db.norm())))
    assert k.conflict == _conflicts(da, db) / 6
    assert (v.present, v.norm_a, w.present, w.norm_b) == ("a", pytest.approx(0.5 * math.sqrt(3)), "b", pytest.approx(1.0))
    assert report.only_a == ["x.v"] and report.only_b == ["x.w"]
    same = adapterkit.diff(a, a).modules[0]
    assert same.cosine == pytest.approx(1.0) and same.conflict == 0
    mirrored = adapterkit.diff(a, _ia3({"x.k": 2 - la})).modules[0]  # l - 1 negated
    assert mirrored.cosine == pytest.approx(-1.0) and mirrored.conflict == int((da != 0).sum()) / 6


def test_ia3_shape_mismatch_is_incompatible():
    with pytest.raises(AdapterkitError) as err:
        adapterkit.diff(_ia3({"x.k": torch.ones(6, 1)}), _ia3({"x.k": torch.ones(5, 1)}))
    assert err.value.code == "adapters-incompatible" and err.value.key == "x.k"


@pytest.mark.parametrize("config", [
    PromptTuningConfig(num_virtual_tokens=3, token_dim=4, num_transformer_submodules=1),
    PrefixTuningConfig(num_virtual_tokens=2, token_dim=3, num_layers=2, num_transformer_submodules=1),
])
def test_prompt_learning_compares_each_virtual_token(config):
    g = torch.Generator().manual_seed(4)
    shape = config.embedding_shape()
    ea, eb = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    eb[1] = 0
    a, b = Adapter.from_tensors(config, {"prompt_embeddings": ea}), Adapter.from_tensors(config, {"prompt_embeddings": eb.half()})
    m, = adapterkit.diff(a, b).modules
    eb64 = eb.half().double()
    expected = [float(torch.nn.functional.cosine_similarity(x, y, dim=0)) for x, y in zip(ea.double(), eb64)]
    assert m.token_cosines[1] is None and len(m.token_cosines) == shape[0]
    assert [c for i, c in enumerate(m.token_cosines) if i != 1] == pytest.approx([c for i, c in enumerate(expected) if i != 1], abs=1e-12)
    assert m.cosine == pytest.approx(float((ea.double() * eb64).sum() / (ea.double().norm() * eb64.norm())), abs=1e-12)
    assert m.conflict == _conflicts(ea.double(), eb64) / ea.numel()
    assert adapterkit.diff(a, Adapter.from_tensors(config, {"prompt_embeddings": -ea})).modules[0].token_cosines == pytest.approx([-1.0] * shape[0])


# ----------------------------------------------------------------------------- errors


def _lin(out_f: int = 4, in_f: int = 3, **cfg) -> Adapter:
    g = torch.Generator().manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=("m",), **cfg)
    t = {f"{P}m.lora_A.weight": torch.randn(2, in_f, generator=g), f"{P}m.lora_B.weight": torch.randn(out_f, 2, generator=g)}
    if cfg.get("use_dora"):
        t[f"{P}m.lora_magnitude_vector"] = torch.ones(out_f)
    return Adapter.from_tensors(config, t)


def test_errors():
    with pytest.raises(AdapterkitError) as err:
        adapterkit.diff(_lin(), _ia3({"m": torch.ones(4, 1)}))
    assert err.value.code == "adapters-incompatible" and err.value.key == "peft_type" and "LORA" in str(err.value)
    with pytest.raises(AdapterkitError) as err:
        adapterkit.diff(_lin(), _lin(out_f=5))
    assert err.value.code == "adapters-incompatible" and err.value.key == "m"
    with pytest.raises(AdapterkitError) as err:
        adapterkit.diff(_lin(use_dora=True), _lin())
    assert err.value.code == "not-supported"
    for kwargs in ({"conflict": "exact"}, {"sample_rows": 0}, {"confidence": 1.0}):
        with pytest.raises(AdapterkitError) as err:
            adapterkit.diff(_lin(), _lin(), **kwargs)
        assert err.value.code == "argument-invalid" and err.value.key == next(iter(kwargs))


def test_conv_kernel_mismatch_is_incompatible():
    g = torch.Generator().manual_seed(0)
    cfg = LoraConfig(r=1, lora_alpha=1, target_modules=("m",))
    def conv(kh, kw):
        return Adapter.from_tensors(cfg, {f"{P}m.lora_A.weight": torch.randn(1, 6 // (kh * kw), kh, kw, generator=g),
                                          f"{P}m.lora_B.weight": torch.randn(2, 1, 1, 1, generator=g)})
    with pytest.raises(AdapterkitError) as err:
        adapterkit.diff(conv(1, 2), conv(2, 1))  # both 2×6 as matrices, different kernels
    assert err.value.code == "adapters-incompatible"


# ----------------------------------------------------------------------------- the command


def _save(adapter: Adapter, path: Path) -> Path:
    adapterkit.save(adapter, path)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_text_json_and_exit_codes(tmp_path):
    a = _save(_lin(out_f=6, in_f=5), tmp_path / "a")
    b = _save(_negated(_lin(out_f=6, in_f=5)), tmp_path / "b.safetensors")
    res = run("diff", a, b, "--top", "1")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split() == ["module", "‖ΔW_a‖", "‖ΔW_b‖", "cos", "θcol°", "θrow°", "E_col%", "E_row%", "conflict%"]
    assert lines[1].split()[:4] == ["m", lines[1].split()[1], lines[1].split()[1], "-1.000"] and lines[1].split()[-1] == "100.0"
    assert lines[-1].startswith("LORA: overlap (energy-weighted cosine) -1.0000 over 1 shared modules") and "most conflicting: m (100.0%" in lines[-1]
    data = json.loads(run("diff", a, b, "--json", "--conflict", "sample", "--sample-rows", "2").output)
    m, = data["modules"]
    assert data["conflict_mode"] == "sample" and data["confidence"] == 0.95 and m["conflict_rows"] == 2 and m["conflict_bound"] > 0
    assert m["cosine"] == pytest.approx(-1) and data["summary"].startswith("LORA: overlap")
    assert run("diff", a, b, "--conflict", "off", "--json").exit_code == 0
    other = _save(_ia3({"m": torch.ones(6, 1)}), tmp_path / "ia3")
    res = CliRunner().invoke(main, ["diff", str(a), str(other)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.rstrip().endswith("[adapters-incompatible]")
    res = CliRunner().invoke(main, ["diff", str(a), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "[file-not-found]" in res.output


def test_cli_lists_modules_of_one_adapter_only(tmp_path):
    a = _save(_lin(), tmp_path / "a")
    g = torch.Generator().manual_seed(1)
    cfg = LoraConfig(r=2, lora_alpha=2, target_modules=("m", "z"))
    tb = {f"{P}z.lora_A.weight": torch.randn(2, 3, generator=g), f"{P}z.lora_B.weight": torch.randn(4, 2, generator=g)}
    b = _save(Adapter.from_tensors(cfg, {**dict(_lin().tensors), **tb}), tmp_path / "b")
    out = run("diff", a, b).output
    z = next(line for line in out.splitlines() if line.startswith("z "))
    assert z.split()[1] == "(absent)" and "1 only in B" in out
    both = _save(Adapter.from_tensors(cfg, {**dict(_negated(_lin()).tensors), **tb}), tmp_path / "c")
    assert run("diff", b, both, "--top", "1").output.splitlines()[-1].count("signs conflict") == 1
    assert run("diff", b, both).output.splitlines()[-1].count("signs conflict") == 2


@pytest.mark.parametrize("args", [["diff", "--help"], ["diff", "a"], ["diff", "/no/a", "/no/b"], ["diff", "a", "b", "--conflict", "x"],
                                  ["info", "--help"]])
def test_help_and_usage_errors_do_not_import_torch(args):
    code = ("import sys\nfrom adapterkit.cli import main\ntry:\n"
            f"    main({args!r}, prog_name='adapterkit')\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().endswith("no torch"), proc.stdout + proc.stderr
    if args[-1] == "--help":
        assert "Examples:" in proc.stdout and f"adapterkit {args[0]} " in proc.stdout.split("Examples:")[1]
