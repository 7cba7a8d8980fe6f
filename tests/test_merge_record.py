"""The merge record (``adapterkit.merged``) is written, carried and enforced; ``--dtype`` edges.

Expected values come from first principles: the base's own tensors (an unmerge must give them
back), ΔW = B·A·α/r and IA3's row scaling computed here, and the content digest adapterkit
writes when it saves the adapter (spec §5.5).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import adapterkit
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError
from adapterkit.ops import merge_checkpoint

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"
P = "base_model.model."


def save_base(path: Path, *, extra: dict | None = None, config: dict | None = None) -> Path:
    g = torch.Generator().manual_seed(0)
    tensors = {f"{m}.weight": torch.randn(8, 8, generator=g) for m in (Q, V)}
    tensors[f"{Q}.bias"] = torch.randn(8, generator=g)
    tensors.update(extra or {})
    path.mkdir(parents=True)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def lora(path: Path, seed: int, modules=(Q,), r: int = 2, alpha: float = 4.0) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for m in modules:
        tensors[f"{P}{m}.lora_A.weight"] = torch.randn(r, 8, generator=g)
        tensors[f"{P}{m}.lora_B.weight"] = torch.randn(8, r, generator=g)
    cfg = adapterkit.LoraConfig(r=r, lora_alpha=alpha, target_modules=[m.rsplit(".", 1)[1] for m in modules])
    adapterkit.save(adapterkit.Adapter.from_tensors(cfg, tensors), path)
    return path


def ia3(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    cfg = adapterkit.IA3Config(target_modules=["q_proj"], feedforward_modules=[])
    adapterkit.save(adapterkit.Adapter.from_tensors(cfg, {f"{P}{Q}.ia3_l": 1 + 0.3 * torch.randn(8, 1, generator=g)}), path)
    return path


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def record(path: Path) -> list[dict]:
    with safe_open(path / "model.safetensors", "pt") as f:
        meta = f.metadata()
    return json.loads(meta["adapterkit.merged"]) if "adapterkit.merged" in meta else []


def saved_digest(adapter: Path) -> str:
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        return f.metadata()["adapterkit.digest"]


def delta(adapter: Path, module: str = Q) -> torch.Tensor:
    a = adapterkit.load(adapter)
    view = a.module(module)
    return view.lora_B.double() @ view.lora_A.double() * view.scaling


# ----------------------------------------------------------------------------- the record


def test_record_holds_digest_and_weight_and_accumulates(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base")
    a, b = lora(tmp_path / "a", 1), lora(tmp_path / "b", 2, modules=(V,))
    merge_checkpoint(base, [a], tmp_path / "m1", weights=[0.5])
    merge_checkpoint(tmp_path / "m1", [b], tmp_path / "m2")
    rec = record(tmp_path / "m2")
    assert [(e["digest"], e["weight"]) for e in rec] == [(saved_digest(a), 0.5), (saved_digest(b), 1.0)]
    assert rec[0]["added"] == [f"{Q}.weight"] and rec[1]["added"] == [f"{V}.weight"]
    # an adapter given as an object is known by the same digest as its file
    merge_checkpoint(base, [adapterkit.load(a)], tmp_path / "obj")
    assert record(tmp_path / "obj")[0]["digest"] == saved_digest(a)


def test_merging_a_recorded_adapter_again_is_refused_unless_asked(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base")
    a, b = lora(tmp_path / "a", 1), lora(tmp_path / "b", 2)
    merge_checkpoint(base, [a], tmp_path / "m")
    copy = tmp_path / "copy"  # the same adapter under another path: known by its content
    copy.mkdir()
    for f in a.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    for again in ([a], [copy], [b, a]):
        with pytest.raises(AdapterkitError) as info:
            merge_checkpoint(tmp_path / "m", again, tmp_path / "x")
        assert info.value.code == "merge-record" and "already merged" in str(info.value) and "--again" in str(info.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [a, copy], tmp_path / "x")  # one adapter listed twice
    assert info.value.code == "merge-record" and "listed twice" in str(info.value)
    merge_checkpoint(tmp_path / "m", [a], tmp_path / "twice", again=True)
    W = tensors(base)[f"{Q}.weight"].double()
    torch.testing.assert_close(tensors(tmp_path / "twice")[f"{Q}.weight"].double(), W + 2 * delta(a), rtol=0, atol=1e-5)
    assert [e["digest"] for e in record(tmp_path / "twice")] == [saved_digest(a)] * 2
    run = CliRunner().invoke
    res = run(main, ["merge", str(tmp_path / "m"), str(a), str(tmp_path / "cli")])
    assert res.exit_code == 2 and "[merge-record]" in res.output and len(res.output.strip().splitlines()) == 1
    res = run(main, ["merge", str(tmp_path / "m"), str(a), str(tmp_path / "cli"), "--again"])
    assert res.exit_code == 0, res.output


def test_unmerge_takes_the_recorded_weights(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base")
    a, b = lora(tmp_path / "a", 1), lora(tmp_path / "b", 2, modules=(Q, V))
    merge_checkpoint(base, [a, b], tmp_path / "m", weights=[0.5, -1.25])
    merge_checkpoint(tmp_path / "m", [b, a], tmp_path / "back", unmerge=True)  # no weights: the record's
    for key, value in tensors(base).items():
        torch.testing.assert_close(tensors(tmp_path / "back")[key], value, rtol=0, atol=1e-5, msg=key)
    assert record(tmp_path / "back") == []
    res = CliRunner().invoke(main, ["unmerge", str(tmp_path / "m"), str(tmp_path / "cli"), "--adapter", str(a), "--adapter", str(b)])
    assert res.exit_code == 0, res.output
    assert "x0.5" in res.output and "x-1.25" in res.output


def test_unmerge_refuses_what_the_record_does_not_hold(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base")
    a, b = lora(tmp_path / "a", 1), lora(tmp_path / "b", 2)
    merge_checkpoint(base, [a], tmp_path / "m", weights=[0.5])
    cases = [([b], None, "not merged into this checkpoint"), ([a], [1.0], "weight 0.5, not 1"),
             ([a, a], None, "not merged into this checkpoint")]
    for adapters, weights, text in cases:
        with pytest.raises(AdapterkitError) as info:
            merge_checkpoint(tmp_path / "m", adapters, tmp_path / "x", weights=weights, unmerge=True)
        assert info.value.code == "merge-record" and text in str(info.value) and "--force" in str(info.value), str(info.value)
    with pytest.raises(AdapterkitError) as info:  # a checkpoint that records nothing
        merge_checkpoint(base, [a], tmp_path / "x", unmerge=True)
    assert info.value.code == "merge-record" and "records no merge" in str(info.value)
    assert not (tmp_path / "x").exists()
    # forced: as asked, and the record keeps what it holds
    report = merge_checkpoint(tmp_path / "m", [b], tmp_path / "forced", unmerge=True, force=True)
    W = tensors(tmp_path / "m")[f"{Q}.weight"].double()
    torch.testing.assert_close(tensors(tmp_path / "forced")[f"{Q}.weight"].double(), W - delta(b), rtol=0, atol=1e-5)
    assert [e["digest"] for e in record(tmp_path / "forced")] == [saved_digest(a)] and any("forced" in n for n in report.notes)
    res = CliRunner().invoke(main, ["unmerge", str(tmp_path / "m"), str(a), str(tmp_path / "cli"), "--weight", "2"])
    assert res.exit_code == 2 and "[merge-record]" in res.output
    res = CliRunner().invoke(main, ["unmerge", str(tmp_path / "m"), str(a), str(tmp_path / "cli"), "--weight", "2", "--force"])
    assert res.exit_code == 0, res.output


def test_unmerge_order_follows_the_record_when_merges_do_not_commute(tmp_path: Path) -> None:
    """LoRA then IA3 on one weight: merged = l·(W + ΔW).  Taking the LoRA out while the IA3 stays
    cannot be done by subtracting ΔW: refused.  Both together, listed in either order, are taken
    out newest first (IA3, then LoRA), which gives W back."""
    base = save_base(tmp_path / "base")
    a, s = lora(tmp_path / "a", 1), ia3(tmp_path / "s", 2)
    merge_checkpoint(base, [a], tmp_path / "m1")
    merge_checkpoint(tmp_path / "m1", [s], tmp_path / "m2")
    W, b = tensors(base)[f"{Q}.weight"].double(), tensors(base)[f"{Q}.bias"].double()
    scale = adapterkit.load(s).tensors[f"{P}{Q}.ia3_l"].double()
    torch.testing.assert_close(tensors(tmp_path / "m2")[f"{Q}.weight"].double(), scale * (W + delta(a)), rtol=0, atol=1e-5)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(tmp_path / "m2", [a], tmp_path / "x", unmerge=True)
    assert info.value.code == "merge-record" and "do not commute" in str(info.value) and f"{Q}.weight" in str(info.value)
    for order in ([a, s], [s, a]):
        out = tmp_path / f"back{len(list(tmp_path.iterdir()))}"
        merge_checkpoint(tmp_path / "m2", order, out, unmerge=True)
        torch.testing.assert_close(tensors(out)[f"{Q}.weight"].double(), W, rtol=0, atol=1e-5)
        torch.testing.assert_close(tensors(out)[f"{Q}.bias"].double(), b, rtol=0, atol=1e-5)
    # taking the IA3 (the newest) out alone is fine
    merge_checkpoint(tmp_path / "m2", [s], tmp_path / "no_ia3", unmerge=True)
    torch.testing.assert_close(tensors(tmp_path / "no_ia3")[f"{Q}.weight"].double(), W + delta(a), rtol=0, atol=1e-5)


def test_additive_merges_commute_so_any_one_comes_out(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base")
    a, b = lora(tmp_path / "a", 1), lora(tmp_path / "b", 2)
    merge_checkpoint(base, [a], tmp_path / "m1", weights=[0.5])
    merge_checkpoint(tmp_path / "m1", [b], tmp_path / "m2", weights=[2.0])
    merge_checkpoint(tmp_path / "m2", [a], tmp_path / "only_b", unmerge=True)
    W = tensors(base)[f"{Q}.weight"].double()
    torch.testing.assert_close(tensors(tmp_path / "only_b")[f"{Q}.weight"].double(), W + 2 * delta(b), rtol=0, atol=1e-5)
    rec = record(tmp_path / "only_b")
    assert [(e["digest"], e["weight"]) for e in rec] == [(saved_digest(b), 2.0)]


def test_old_records_without_digests_stay_readable(tmp_path: Path) -> None:
    """A record written before digests were recorded: info shows it, merge carries it forward
    with a note, unmerge cannot match it (refused; forced, it drops the entry of that path)."""
    base = save_base(tmp_path / "base")
    a = lora(tmp_path / "a", 1)
    old = tmp_path / "old"
    old.mkdir()
    merged = tensors(base)
    merged[f"{Q}.weight"] = (merged[f"{Q}.weight"].double() + delta(a)).float()
    legacy = [{"adapter": str(a), "kind": "LORA", "weight": 1.0, "base_model": None}]
    save_file(merged, old / "model.safetensors", metadata={"format": "pt", "adapterkit.merged": json.dumps(legacy)})
    res = CliRunner().invoke(main, ["info", str(old)])
    assert res.exit_code == 0 and "no digest (recorded by an older adapterkit)" in res.output, res.output
    b = lora(tmp_path / "b", 2, modules=(V,))
    report = merge_checkpoint(old, [b], tmp_path / "more")
    assert any("did not record digests" in n for n in report.notes)
    assert record(tmp_path / "more")[0] == legacy[0] and record(tmp_path / "more")[1]["digest"] == saved_digest(b)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(old, [a], tmp_path / "x", unmerge=True)
    assert info.value.code == "merge-record" and "without digests" in str(info.value)
    merge_checkpoint(old, [a], tmp_path / "back", unmerge=True, force=True)
    torch.testing.assert_close(tensors(tmp_path / "back")[f"{Q}.weight"], tensors(base)[f"{Q}.weight"], rtol=0, atol=1e-5)
    assert record(tmp_path / "back") == []


def test_info_shows_the_record(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base")
    a = lora(tmp_path / "a", 1)
    merge_checkpoint(base, [a], tmp_path / "m", weights=[0.25])
    res = CliRunner().invoke(main, ["info", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert f"merged:          LORA adapter {a / 'adapter_model.safetensors'}, weight 0.25, digest {saved_digest(a)}, 1 tensors" in res.output
    res = CliRunner().invoke(main, ["info", str(tmp_path / "m"), "--json"])
    entry = json.loads(res.output)["adapterkit"]["merged"][0]
    assert entry["digest"] == saved_digest(a) and entry["weight"] == 0.25


# ----------------------------------------------------------------------------- --dtype


def test_dtype_reaches_config_json(tmp_path: Path) -> None:
    """transformers loads in config.json's dtype (torch_dtype in older configs): it must name
    the dtype the merge stored, or bf16 weights come back as fp32."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert config.get("dtype") == "float32"
    config["torch_dtype"] = "float32"  # a config written before transformers 4.56 as well
    config["text_config"] = {"dtype": "float32"}
    (tmp_path / "base" / "config.json").write_text(json.dumps(config))
    a = lora(tmp_path / "a", 1, modules=("model.layers.0.self_attn.q_proj",))
    report = merge_checkpoint(tmp_path / "base", [a], tmp_path / "bf16", dtype="BF16")
    out = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert out["dtype"] == out["torch_dtype"] == out["text_config"]["dtype"] == "bfloat16"
    assert any("config.json" in n for n in report.notes)
    del out["text_config"]
    (tmp_path / "bf16" / "config.json").write_text(json.dumps(out))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    merge_checkpoint(tmp_path / "base", [a], tmp_path / "same")  # no --dtype: config.json copied as it is
    assert (tmp_path / "same" / "config.json").read_bytes() == (tmp_path / "base" / "config.json").read_bytes()


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F64"])
def test_dtype_leaves_integer_and_bool_tensors_alone(dtype: str, tmp_path: Path) -> None:
    extra = {"model.position_ids": torch.arange(8, dtype=torch.int64), "model.mask": torch.tensor([True, False, True]),
             "model.codes": torch.tensor([[-3, 7]], dtype=torch.int32), "model.small": torch.tensor([1, 200], dtype=torch.uint8)}
    base = save_base(tmp_path / "base", extra=extra)
    a = lora(tmp_path / "a", 1)
    merge_checkpoint(base, [a], tmp_path / "out", dtype=dtype)
    out = tensors(tmp_path / "out")
    for key, value in extra.items():
        assert out[key].dtype == value.dtype and torch.equal(out[key], value), key
    want = {"BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}[dtype]
    assert out[f"{Q}.weight"].dtype == out[f"{V}.weight"].dtype == want
