"""``extract`` / `adapterkit extract`: a LoRA recovered from a fine-tuned checkpoint.

A known LoRA (random factors) is merged into a tiny sharded Llama checkpoint with
``merge_checkpoint``; extracting at the true rank must give back its ΔW, re-merge to the
fine-tuned tensors, validate clean, and load in PEFT with the fine-tuned model's logits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft_models import shards  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import adapterkit  # noqa: E402
from adapterkit.cli import main  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.kinds.lora import PREFIX  # noqa: E402
from adapterkit.ops import merge_checkpoint  # noqa: E402
from adapterkit.ops.extract import extract  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 3, 7]])


def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def save_base(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path, max_shard_size="20KB")
    return path


def make_adapter(path: Path, seed: int, **cfg) -> Path:
    model = get_peft_model(llama(), LoraConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(path)
    return path



TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("extract")
    base = save_base(llama(), root / "base")
    known = make_adapter(root / "known", seed=3, r=4, lora_alpha=8, target_modules=TARGETS)
    merge_checkpoint(base, [known], root / "ft")
    return base, known, root / "ft"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_true_rank_recovers_the_known_delta_and_remerges(pair, tmp_path: Path) -> None:
    base, known, ft = pair
    adapter, report = extract(base, ft, rank=4)
    lora = adapterkit.load(known)
    assert sorted(adapter.modules) == sorted(lora.modules) and len(report.modules) == 6
    for m in report.modules:
        assert m.rank == 4 and m.method == "dense" and m.error < 1e-5 and m.energy_kept > 1 - 1e-9
        assert _rel(adapter.delta_weight(m.name), lora.delta_weight(m.name)) < 1e-5
    assert report.not_extracted == {} and report.saved_whole == ()
    assert not any("embed" in k or "norm" in k for k in adapter.tensors)  # unchanged: absent
    assert len(report.unchanged) == len(shards(base)) - 6
    assert adapter.config.r == 4 and adapter.config.lora_alpha == 4 and adapter.config.rank_pattern == {}
    out = adapterkit.save(adapter, tmp_path / "lora")
    assert adapterkit.validate(out) == []
    merge_checkpoint(base, [out], tmp_path / "again")
    ours, want = shards(tmp_path / "again"), shards(ft)
    assert ours.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(ours[k], want[k], atol=1e-5, rtol=0)
    # PEFT loads it and computes the fine-tuned model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(llama(), out).eval()
        tuned = LlamaForCausalLM.from_pretrained(ft).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(IDS).logits, tuned(IDS).logits, atol=1e-4, rtol=0)


def test_energy_picks_the_true_rank_and_lower_ranks_report_their_error(pair) -> None:
    base, _, ft = pair
    _, report = extract(base, ft, energy=0.999999)
    assert {m.rank for m in report.modules} == {4}
    _, low = extract(base, ft, rank=2, targets=r"q_proj")
    assert [m.name.rsplit(".", 1)[-1] for m in low.modules] == ["q_proj", "q_proj"]
    for m in low.modules:
        assert 0 < m.error < 1 and abs(m.error**2 - (1 - m.energy_kept)) < 1e-9
    assert low.not_extracted == {f"model.layers.{i}.{m}.weight": size for i in (0, 1)
                                 for m, size in (("self_attn.v_proj", 8 * 16 * 4), ("mlp.down_proj", 16 * 32 * 4))}


def test_save_changed_stores_norms_whole(pair, tmp_path: Path) -> None:
    base, _, ft = pair
    t = shards(ft)
    t["model.norm.weight"] = t["model.norm.weight"] + 0.5
    save_file(t, tmp_path / "model.safetensors", metadata={"format": "pt"})
    b = tmp_path / "b"
    b.mkdir()
    save_file(shards(base), b / "model.safetensors", metadata={"format": "pt"})
    _, report = extract(b, tmp_path / "model.safetensors", rank=4)
    assert report.not_extracted == {"model.norm.weight": 16 * 4}
    adapter, report = extract(b, tmp_path / "model.safetensors", rank=4, save_changed=True)
    assert report.saved_whole == ("model.norm.weight",) and adapter.config.modules_to_save == ["model.norm"]
    torch.testing.assert_close(adapter.tensors["base_model.model.model.norm.weight"], t["model.norm.weight"])
    assert adapterkit.validate(adapterkit.save(adapter, tmp_path / "whole")) == []


def test_mixed_ranks_and_saved_changes_load_in_peft_and_remerge(pair, tmp_path: Path) -> None:
    # a fine-tune with per-module ranks (q_proj r=2, the rest r=4) and a changed norm and lm_head:
    # energy selection gives a rank_pattern, save_changed gives modules_to_save; PEFT must load the
    # result and compute the fine-tuned model, and adapterkit merge must rebuild its tensors
    base, _, _ = pair
    known = make_adapter(tmp_path / "known", seed=5, r=4, lora_alpha=8, target_modules=TARGETS, rank_pattern={"q_proj": 2})
    merge_checkpoint(base, [known], tmp_path / "merged")
    t = shards(tmp_path / "merged")
    t["model.norm.weight"] = t["model.norm.weight"] + 0.5
    t["lm_head.weight"] = t["lm_head.weight"] * 1.5
    ft = tmp_path / "ft"
    ft.mkdir()
    save_file(t, ft / "model.safetensors", metadata={"format": "pt"})
    (ft / "config.json").write_bytes((base / "config.json").read_bytes())
    adapter, report = extract(base, ft, energy=0.999999, save_changed=True)
    ranks = {m.name.rsplit(".", 1)[-1]: m.rank for m in report.modules}
    assert ranks == {"q_proj": 2, "v_proj": 4, "down_proj": 4}
    assert set(report.saved_whole) == {"model.norm.weight", "lm_head.weight"} and report.not_extracted == {}
    out = adapterkit.save(adapter, tmp_path / "lora")
    assert adapterkit.validate(out) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(llama(), out).eval()
        tuned = LlamaForCausalLM.from_pretrained(ft).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(IDS).logits, tuned(IDS).logits, atol=1e-4, rtol=0)
    # PEFT built each module at the rank the adapter declares
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            assert module.lora_A["default"].weight.shape[0] == ranks[name.rsplit(".", 1)[-1]], name
    merge_checkpoint(base, [out], tmp_path / "again")
    again = shards(tmp_path / "again")
    for k in t:
        torch.testing.assert_close(again[k], t[k], atol=1e-5, rtol=0, msg=k)


@given(st.integers(2, 24), st.integers(2, 24), st.integers(1, 6), st.integers(0, 2**16))
def test_property_single_file_true_rank(tmp_path_factory, m: int, n: int, r: int, seed: int) -> None:
    r = min(r, m, n)
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g)
    B, A = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)
    root = tmp_path_factory.mktemp("prop")
    save_file({"layer.lin.weight": W, "layer.norm.weight": torch.ones(n)}, root / "base.safetensors")
    save_file({"layer.lin.weight": W + B @ A, "layer.norm.weight": torch.ones(n)}, root / "ft.safetensors")
    adapter, report = extract(root / "base.safetensors", root / "ft.safetensors", rank=r)
    assert report.unchanged == ("layer.norm.weight",)
    (rec,) = report.modules
    assert rec.rank == r and rec.error < 1e-4
    want = (W + B @ A) - W
    assert _rel(adapter.delta_weight("layer.lin"), want) < 1e-4


def test_rank_is_capped_factors_balanced_and_stored_in_the_model_dtype(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    W = torch.randn(7, 5, generator=g).to(torch.bfloat16)
    F = (W.float() + torch.randn(7, 5, generator=g)).to(torch.bfloat16)
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": F}, tmp_path / "f.safetensors")
    adapter, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=50)
    assert report.modules[0].rank == 5 and adapter.config.r == 5  # min(7, 5)
    A, B = adapter.tensors[f"{PREFIX}x.lora_A.weight"], adapter.tensors[f"{PREFIX}x.lora_B.weight"]
    assert A.dtype == B.dtype == torch.bfloat16 and A.shape == (5, 5) and B.shape == (7, 5)
    # balanced: column i of B and row i of A both carry √σᵢ
    adapter, _ = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=3)
    A, B = (adapter.tensors[f"{PREFIX}x.lora_{n}.weight"].double() for n in "AB")
    torch.testing.assert_close(B.norm(dim=0), A.norm(dim=1), rtol=2e-2, atol=0)
    S = torch.linalg.svdvals(F.double() - W.double())[:3]
    torch.testing.assert_close(B.norm(dim=0), S.sqrt(), rtol=2e-2, atol=0)


def test_reported_error_is_the_measured_residual_over_every_row(tmp_path: Path) -> None:
    # 600 rows (more than one 256-row block), a truncated rank: the error is far from zero
    g = torch.Generator().manual_seed(4)
    W = torch.randn(600, 40, generator=g)
    F = W + torch.randn(600, 40, generator=g)
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": F}, tmp_path / "f.safetensors")
    adapter, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=5)
    delta = (F - W).double()
    err = float((delta - adapter.delta_weight("x").double()).norm() / delta.norm())
    assert 0.5 < err < 1 and abs(report.modules[0].error - err) < 1e-6
    assert abs(report.modules[0].energy - float(delta.square().sum())) < 1e-6 * float(delta.square().sum())


def test_identical_nan_is_unchanged_not_an_error(tmp_path: Path) -> None:
    W = torch.randn(6, 4)
    W[2, 1] = float("nan")  # the same NaN bits in both: the tensor did not change
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": W.clone()}, tmp_path / "f.safetensors")
    _, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=1)
    assert report.modules == () and report.unchanged == ("x.weight",)


def test_randomized_path_is_deterministic_and_accurate(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(1100, 1030, generator=g) * 0.02
    D = torch.randn(1100, 5, generator=g) @ torch.randn(5, 1030, generator=g) * 0.01
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": W + D}, tmp_path / "f.safetensors")
    a1, r1 = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=5)
    a2, _ = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=5)
    assert r1.modules[0].method == "randomized" and r1.modules[0].error < 1e-3
    assert all(torch.equal(a1.tensors[k], a2.tensors[k]) for k in a1.tensors)
    assert _rel(a1.delta_weight("x"), (W + D) - W) < 1e-4


@pytest.mark.parametrize("true_rank", [5, 40])
def test_energy_on_a_large_matrix_grows_a_randomized_sketch(tmp_path: Path, true_rank: int) -> None:
    # min(m, n) > 1024: energy selection must not need the exact SVD when ΔW is low-rank;
    # rank 40 is past the first sketch (32), so the sketch has to grow to find it
    g = torch.Generator().manual_seed(true_rank)
    W = torch.randn(1100, 1030, generator=g) * 0.02
    D = torch.randn(1100, true_rank, generator=g) @ torch.randn(true_rank, 1030, generator=g) * 0.01
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": W + D}, tmp_path / "f.safetensors")
    adapter, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", energy=0.9999)
    (rec,) = report.modules
    delta = ((W + D) - W).double()
    S = torch.linalg.svdvals(delta)
    want = int((S.square().cumsum(0) / S.square().sum() < 0.9999).sum()) + 1  # smallest k reaching it, from first principles
    assert rec.method == "randomized" and rec.rank == want
    assert abs(rec.energy - float(S.square().sum())) < 1e-6 * float(S.square().sum())
    err = float((delta - adapter.delta_weight("x").double()).norm() / delta.norm())
    assert abs(err - rec.error) < 1e-4 and err**2 <= 1 - 0.9999 + 1e-6


@pytest.mark.parametrize(("m", "n", "true_rank"), [(16, 16, 4), (64, 48, 4), (300, 260, 7), (1100, 1030, 5)])
def test_energy_one_on_an_exact_low_rank_fp32_change_keeps_its_rank(tmp_path: Path, m: int, n: int, true_rank: int) -> None:
    """energy=1.0 asks for all of ΔW: an exact rank-r change stored in fp32 has rank r, and the
    fp32 SVD's rounding (its k values hold 1 - O(ε) of ‖ΔW‖², not all of it) must not read as
    missing energy that only more rank can supply."""
    g = torch.Generator().manual_seed(m + true_rank)
    W = torch.randn(m, n, generator=g) * 0.02
    F = W + torch.randn(m, true_rank, generator=g) @ torch.randn(true_rank, n, generator=g) * 0.01
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": F}, tmp_path / "f.safetensors")
    S = torch.linalg.svdvals((F - W).double())
    assert float(S[true_rank:].square().sum() / S.square().sum()) < 1e-12  # exact rank r, from first principles
    _, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", energy=1.0)
    (rec,) = report.modules
    assert rec.rank == true_rank and rec.energy_kept > 1 - 1e-6


def test_energy_is_a_fraction_of_the_whole_difference_not_of_the_sketch(tmp_path: Path) -> None:
    # ΔW = U·diag(σ)·Vᵀ with σ² = 100, 25, 4, 1 and sixty equal σ² = 0.01: the first sketch (32)
    # holds 130.28 of 130.6, enough for energy 0.9969 (130.195), which needs 20 of the equal
    # ones (k = 24); measured against the sketch's own total it would stop at k = 4
    g = torch.Generator().manual_seed(11)
    U, _ = torch.linalg.qr(torch.randn(1100, 64, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(1030, 64, generator=g, dtype=torch.float64))
    sigma = torch.tensor([10.0, 5.0, 2.0, 1.0] + [0.1] * 60, dtype=torch.float64)
    W = torch.randn(1100, 1030, generator=g) * 0.02
    F = W + (U * sigma) @ V.T
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": F.float()}, tmp_path / "f.safetensors")
    _, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", energy=0.9969)
    (rec,) = report.modules
    S = torch.linalg.svdvals((F.float() - W).double())
    want = int((S.square().cumsum(0) / S.square().sum() < 0.9969).sum()) + 1
    assert want == 24 and rec.method == "randomized" and rec.rank == want


def test_energy_on_a_full_rank_large_matrix_falls_back_to_the_exact_svd(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    W = torch.randn(1040, 1030, generator=g)
    F = W + torch.randn(1040, 1030, generator=g) * 0.1  # flat spectrum: no sketch up to n/4 holds 90%
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": F}, tmp_path / "f.safetensors")
    _, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", energy=0.9)
    (rec,) = report.modules
    S = torch.linalg.svdvals((F - W).double())
    want = int((S.square().cumsum(0) / S.square().sum() < 0.9).sum()) + 1
    assert rec.method == "dense" and rec.rank == want


def test_errors(tmp_path: Path, pair) -> None:
    base, _, ft = pair
    save_file({"a.weight": torch.zeros(3, 4), "b.weight": torch.zeros(3, 4)}, tmp_path / "b.safetensors")
    save_file({"a.weight": torch.zeros(3, 4), "c.weight": torch.zeros(3, 4)}, tmp_path / "keys.safetensors")
    save_file({"a.weight": torch.zeros(3, 5), "b.weight": torch.zeros(3, 4)}, tmp_path / "shape.safetensors")
    save_file({"a.weight": torch.zeros(3, 4, dtype=torch.float16), "b.weight": torch.zeros(3, 4)}, tmp_path / "dtype.safetensors")
    b = tmp_path / "b.safetensors"
    with pytest.raises(AdapterkitError) as e:
        extract(b, tmp_path / "keys.safetensors", rank=2)
    assert e.value.code == "base-mismatch" and "b.weight" in str(e.value) and "c.weight" in str(e.value)
    with pytest.raises(AdapterkitError) as e:
        extract(b, tmp_path / "shape.safetensors", rank=2)
    assert e.value.code == "base-shape-mismatch" and e.value.key == "a.weight"
    with pytest.raises(AdapterkitError) as e:
        extract(b, tmp_path / "dtype.safetensors", rank=2)
    assert e.value.code == "base-mismatch" and e.value.key == "a.weight"
    for kw in ({"rank": 2, "energy": 0.9}, {}, {"rank": 0}, {"energy": 1.5}, {"rank": 2, "targets": "("}):
        with pytest.raises(AdapterkitError) as e:
            extract(base, ft, **kw)
        assert e.value.code == "argument-invalid"
    with pytest.raises(AdapterkitError) as e:
        extract(tmp_path / "nothing-here", ft, rank=2)
    assert e.value.code in {"not-a-checkpoint", "file-not-found"}


def test_cli(pair, tmp_path: Path) -> None:
    base, _, ft = pair
    runner = CliRunner()
    res = runner.invoke(main, ["extract", str(base), str(ft), str(tmp_path / "x.safetensors"), "--rank", "4"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("extracted ") and "6 modules (rank=4)" in res.output and res.output.count("\n") == 1
    assert (tmp_path / "x.safetensors").is_file()
    res = runner.invoke(main, ["extract", str(base), str(ft), str(tmp_path / "x.safetensors"), "--rank", "4"])
    assert res.exit_code == 2 and "[output-exists]" in res.output
    res = runner.invoke(main, ["extract", str(base), str(ft), str(tmp_path / "x.safetensors"), "--energy", "0.999999", "--overwrite", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert len(data["modules"]) == 6 and data["relative_error"] < 1e-5 and data["not_extracted"] == {}
    res = runner.invoke(main, ["extract", str(base), str(ft), str(tmp_path / "y"), "--rank", "2", "--energy", "0.5"])
    assert res.exit_code == 2


def test_default_targets_biases_scalars_and_save_changed(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    base = {"m.lin.weight": torch.randn(6, 5, generator=g), "m.lin.bias": torch.randn(6, generator=g),
            "m.embed_tokens.weight": torch.randn(10, 5, generator=g), "lm_head.weight": torch.randn(10, 5, generator=g),
            "m.step": torch.tensor(3.0), "m.ids": torch.arange(4)}
    ft = dict(base)
    ft["m.lin.weight"] = base["m.lin.weight"] + torch.randn(6, 1, generator=g) @ torch.randn(1, 5, generator=g)
    for k in ("m.lin.bias", "m.embed_tokens.weight", "lm_head.weight"):
        ft[k] = base[k] + 1
    save_file(base, tmp_path / "b.safetensors")
    save_file(ft, tmp_path / "f.safetensors")
    adapter, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=1)
    assert [m.name for m in report.modules] == ["m.lin"] and set(report.unchanged) == {"m.step", "m.ids"}
    assert report.not_extracted == {"m.lin.bias": 24, "m.embed_tokens.weight": 200, "lm_head.weight": 200}
    adapter, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=1, save_changed=True)
    assert report.not_extracted == {} and set(report.saved_whole) == {"m.lin.bias", "m.embed_tokens.weight", "lm_head.weight"}
    assert adapter.config.modules_to_save == ["lm_head", "m.embed_tokens"] and adapter.config.bias == "all"
    assert adapterkit.validate(adapterkit.save(adapter, tmp_path / "out")) == []
    _, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=1, targets=r"head|lin")
    assert [m.name for m in report.modules] == ["lm_head", "m.lin"]
    # an embedding's LoRA layout depends on its layer type (nn.Embedding: lora_embedding_A/B), which
    # a checkpoint does not say: lora_A/B on an nn.Embedding would be ignored by PEFT, so it is refused
    with pytest.raises(AdapterkitError) as info:
        extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=1, targets=r"embed|lin")
    assert info.value.code == "not-supported" and "m.embed_tokens" in str(info.value)


def test_cli_targets_and_save_changed(pair, tmp_path: Path) -> None:
    base, _, ft = pair
    runner = CliRunner()
    res = runner.invoke(main, ["extract", str(base), str(ft), str(tmp_path / "q"), "--rank", "4", "--targets", r"q_proj$", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [m["name"].rsplit(".", 1)[-1] for m in data["modules"]] == ["q_proj", "q_proj"] and len(data["not_extracted"]) == 4
    res = runner.invoke(main, ["extract", str(base), str(ft), str(tmp_path / "all"), "--rank", "4", "--targets", r"q_proj$", "--save-changed"])
    assert res.exit_code == 0 and "4 saved whole (0.01 MB)" in res.output, res.output  # 2 x (v 8x16 + down 16x32) fp32 = 5120 bytes
    res = runner.invoke(main, ["extract", str(base), str(ft), str(tmp_path / "m"), "--rank", "2", "--targets", r"q_proj$", "--modules"])
    lines = res.output.splitlines()
    assert res.exit_code == 0 and len(lines) == 3 and lines[-1].startswith("extracted "), res.output
    for i, line in enumerate(lines[:2]):
        assert line.startswith(f"  model.layers.{i}.self_attn.q_proj  16x16  rank 2  energy kept ") and "relative error" in line
    assert adapterkit.validate(tmp_path / "all") == []
    res = runner.invoke(main, ["extract", str(base), str(tmp_path / "missing"), str(tmp_path / "z"), "--rank", "4"])
    assert res.exit_code == 2 and res.output.startswith("adapterkit: error:")


def test_block_comparison_of_non_targets(tmp_path: Path, monkeypatch) -> None:
    import adapterkit.ops.extract as ex

    monkeypatch.setattr(ex, "_BLOCK", 7)  # 40-byte tensors in blocks of 7 bytes, the last one short
    emb = torch.randn(2, 5)
    late, early = emb.clone(), emb.clone()
    late[1, 4] += 1
    early[0, 0] += 1
    save_file({"a.embed.weight": emb, "b.embed.weight": emb.clone(), "c.embed.weight": emb.clone(), "e.embed.weight": torch.zeros(0, 5)},
              tmp_path / "b.safetensors")
    save_file({"a.embed.weight": emb.clone(), "b.embed.weight": late, "c.embed.weight": early, "e.embed.weight": torch.zeros(0, 5)},
              tmp_path / "f.safetensors")
    _, report = ex.extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=1)
    assert set(report.unchanged) == {"a.embed.weight", "e.embed.weight"} and report.modules == ()
    assert report.not_extracted == {"b.embed.weight": 40, "c.embed.weight": 40}


def test_non_finite_difference_is_an_adapterkit_error(tmp_path: Path) -> None:
    """A diverged fine-tune (NaN in a targeted weight) gives ``non-finite`` naming the tensor,
    not torch's SVD failure."""
    g = torch.Generator().manual_seed(0)
    base = {"m.q.weight": torch.randn(6, 5, generator=g)}
    ft = {"m.q.weight": base["m.q.weight"].clone()}
    ft["m.q.weight"][2, 3] = float("nan")
    ft["m.q.weight"][0, 0], ft["m.q.weight"][5, 4] = float("inf"), -float("inf")
    save_file(base, tmp_path / "base.safetensors")
    save_file(ft, tmp_path / "ft.safetensors")
    with pytest.raises(AdapterkitError) as info:
        extract(tmp_path / "base.safetensors", tmp_path / "ft.safetensors", rank=2)
    assert info.value.code == "non-finite" and "m.q.weight" in str(info.value)
    assert info.value.actual == "3 non-finite of 30"  # NaN, +Inf and -Inf counted


def test_default_targets_exclude_only_exact_head_names(tmp_path: Path) -> None:
    """The default rule excludes a last name containing ``embed`` or equal to ``lm_head``, ``wte``,
    ``wpe``, ``shared``: Qwen2-MoE's ``shared_expert_gate`` or a ``shared_proj`` are Linear layers
    like any other and are extracted (exactly: rank 1 is their full rank here)."""
    g = torch.Generator().manual_seed(0)
    names = ["mlp.shared_expert_gate", "mlp.shared_proj", "mlp.wte_proj", "lm_head_proj"]
    base = {f"{n}.weight": torch.randn(1, 6, generator=g) for n in names}
    ft = {k: v + torch.randn(1, 6, generator=g) for k, v in base.items()}
    save_file(base, tmp_path / "b.safetensors")
    save_file(ft, tmp_path / "f.safetensors")
    adapter, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=1)
    assert sorted(m.name for m in report.modules) == sorted(names)
    assert report.not_extracted == {} and report.unchanged == ()
    for n in names:
        torch.testing.assert_close(adapter.delta_weight(n), ft[f"{n}.weight"] - base[f"{n}.weight"], atol=1e-6, rtol=0)


def test_rank_above_a_quarter_of_a_large_matrix_uses_the_exact_svd(tmp_path: Path) -> None:
    """min(m, n) = 1030 > 1024 and rank 300 > 1030 / 4: the randomized path is not taken; the
    factors hold the best rank-300 approximation (Eckart-Young, from torch.linalg.svdvals)."""
    g = torch.Generator().manual_seed(7)
    W = torch.randn(1100, 1030, generator=g)
    F = W + torch.randn(1100, 1030, generator=g) * 0.1  # flat spectrum: a sketch is visibly worse
    save_file({"x.weight": W}, tmp_path / "b.safetensors")
    save_file({"x.weight": F}, tmp_path / "f.safetensors")
    adapter, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=300)
    (rec,) = report.modules
    delta = (F - W).double()
    S2 = torch.linalg.svdvals(delta).square()
    best = float((S2[300:].sum() / S2.sum()).sqrt())  # the smallest relative error any rank-300 B·A has
    err = float((delta - adapter.delta_weight("x").double()).norm() / delta.norm())
    assert rec.method == "dense" and rec.rank == 300
    assert abs(err - best) < 1e-5 and abs(rec.error - best) < 1e-5


def test_an_embedding_of_unknown_tie_adds_no_output_embedding_to_the_report(tmp_path: Path) -> None:
    """Single files (no config.json) storing an input embedding and no lm_head: the tie is
    unknown, so the report names only stored keys (no `lm_head.weight` beside the embedding);
    with a config.json saying tied on one side only, the pair is refused (``tied-embeddings``)."""
    g = torch.Generator().manual_seed(0)
    base = {"model.embed_tokens.weight": torch.randn(10, 6, generator=g), "model.up_proj.weight": torch.randn(4, 6, generator=g)}
    ft = {"model.embed_tokens.weight": base["model.embed_tokens.weight"].clone(), "model.up_proj.weight": base["model.up_proj.weight"] + 1}
    moved = {**ft, "model.embed_tokens.weight": base["model.embed_tokens.weight"] + 1}
    save_file(base, tmp_path / "b.safetensors")
    save_file(ft, tmp_path / "f.safetensors")
    save_file(moved, tmp_path / "moved.safetensors")
    _, report = extract(tmp_path / "b.safetensors", tmp_path / "f.safetensors", rank=4)
    assert report.unchanged == ("model.embed_tokens.weight",) and report.not_extracted == {}
    assert [m.name for m in report.modules] == ["model.up_proj"]
    _, report = extract(tmp_path / "b.safetensors", tmp_path / "moved.safetensors", rank=4)
    assert report.unchanged == () and report.not_extracted == {"model.embed_tokens.weight": 240}
    tied = tmp_path / "tied"
    tied.mkdir()
    save_file(base, tied / "model.safetensors")
    (tied / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    with pytest.raises(AdapterkitError) as info:
        extract(tied, tmp_path / "f.safetensors", rank=4)
    assert info.value.code == "tied-embeddings" and "fine-tuned" in str(info.value)
