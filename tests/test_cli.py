"""The adapterkit command: info / validate / convert, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import adapterkit
from adapterkit import Adapter, IA3Config, LoraConfig, PromptTuningConfig
from adapterkit.cli import main


def _lora(tmp_path: Path, **cfg) -> Path:
    config = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj"), rank_pattern={"v_proj": 1}, **cfg)
    g = torch.Generator().manual_seed(0)
    tensors = {
        "base_model.model.model.layers.0.q_proj.lora_A.weight": torch.randn(2, 8, generator=g),
        "base_model.model.model.layers.0.q_proj.lora_B.weight": torch.randn(6, 2, generator=g),
        "base_model.model.model.layers.0.v_proj.lora_A.weight": torch.randn(1, 8, generator=g),
        "base_model.model.model.layers.0.v_proj.lora_B.weight": torch.randn(4, 1, generator=g),
    }
    out = tmp_path / "lora"
    adapterkit.save(Adapter.from_tensors(config, tensors), out)
    return out


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_info_text_and_json(tmp_path):
    path = _lora(tmp_path)
    res = run("info", path)
    assert res.exit_code == 0, res.output
    assert "kind:            LORA" in res.output
    assert "ranks:           r=1: 1, r=2: 1" in res.output
    assert "model.layers.0.v_proj" in res.output and "delta_norm=" in res.output
    res = run("info", path, "--json")
    data = json.loads(res.output)
    assert data["kind"] == "LORA" and data["format"] == "adapterkit 1.0"
    assert data["rank_histogram"] == {"1": 1, "2": 1}
    assert data["parameters"] == 2 * 8 + 6 * 2 + 8 + 4
    assert data["bytes"] == data["parameters"] * 4
    a = adapterkit.load(path)
    for name, st in data["per_module"].items():
        assert st["delta_norm"] == pytest.approx(a.delta_weight(name).norm().item(), rel=1e-5)


def test_info_other_kinds(tmp_path):
    ia3 = Adapter.from_tensors(IA3Config(target_modules=("k", "ff"), feedforward_modules=("ff",)), {
        "base_model.model.m.k.ia3_l": torch.ones(3, 1), "base_model.model.m.ff.ia3_l": torch.full((1, 5), 2.0)})
    adapterkit.save(ia3, tmp_path / "ia3")
    res = run("info", tmp_path / "ia3", "--json")
    data = json.loads(res.output)
    assert data["kind"] == "IA3" and data["per_module"]["m.ff"]["scale_distance"] == pytest.approx(5**0.5)
    pt = Adapter.from_tensors(PromptTuningConfig(num_virtual_tokens=3, token_dim=4), {"prompt_embeddings": torch.zeros(3, 4)})
    adapterkit.save(pt, tmp_path / "pt.safetensors", form="file")
    res = run("info", tmp_path / "pt.safetensors")
    assert res.exit_code == 0 and "PROMPT_TUNING" in res.output


def test_validate_exit_codes(tmp_path):
    path = _lora(tmp_path)
    res = run("validate", path)
    assert res.exit_code == 0 and "valid (0 errors" in res.output
    # break it: lora_B of q_proj disagrees with r, and a NaN elsewhere -> both reported, exit 1
    tensors = dict(adapterkit.load(path).tensors)
    tensors["base_model.model.model.layers.0.q_proj.lora_B.weight"] = torch.zeros(6, 3)
    tensors["base_model.model.model.layers.0.v_proj.lora_A.weight"] = torch.full((1, 8), float("nan"))
    from adapterkit.io.safetensors_file import write_file
    write_file(path / "adapter_model.safetensors", tensors, {"format": "pt"})
    res = run("validate", path, "--json")
    assert res.exit_code == 1
    codes = sorted(p["code"] for p in json.loads(res.output)["problems"])
    assert codes == ["non-finite", "shape-mismatch"]
    res = run("validate", tmp_path / "missing")
    assert res.exit_code == 2 and res.output.startswith("adapterkit: error:")


def test_validate_warns_unmatched_pattern(tmp_path):
    path = _lora(tmp_path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["rank_pattern"]["nope_proj"] = 4
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    res = run("validate", path)
    assert res.exit_code == 0
    assert "warning:" in res.output and "pattern-unmatched" in res.output and "nope_proj" in res.output


def test_convert_both_forms_and_refuses_input(tmp_path):
    path = _lora(tmp_path)
    res = run("convert", path, tmp_path / "one.safetensors", "--form", "file")
    assert res.exit_code == 0, res.output
    res = run("convert", tmp_path / "one.safetensors", tmp_path / "back")
    assert res.exit_code == 0
    assert (tmp_path / "back" / "adapter_model.safetensors").read_bytes() == (path / "adapter_model.safetensors").read_bytes()
    assert (tmp_path / "back" / "adapter_config.json").read_bytes() == (path / "adapter_config.json").read_bytes()
    before = (path / "adapter_model.safetensors").read_bytes()
    res = run("convert", path, path)
    assert res.exit_code == 2 and "[overwrite-input]" in res.output
    assert (path / "adapter_model.safetensors").read_bytes() == before


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00")
    res = CliRunner().invoke(main, ["info", str(bad)])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0
    assert "bad.safetensors" in res.output and "[truncated-file]" in res.output
    res = CliRunner().invoke(main, ["--debug", "info", str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, adapterkit.AdapterkitError)


def test_console_script_runs(tmp_path):
    path = _lora(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "adapterkit.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_validate_warns_when_peft_sorted_save_changes_pattern_winner(tmp_path):
    path = _lora(tmp_path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {"v_proj": 1, "layers.0.v_proj": 3}  # first match wins: v_proj -> 1 (file is valid)
    (path / "adapter_config.json").write_text(json.dumps(cfg))  # not sorted: as another tool might write it
    res = run("validate", path)
    assert res.exit_code == 0
    assert "[pattern-order]" in res.output and "'layers.0.v_proj' wins" in res.output


def test_unavailable_device_is_a_clear_error(tmp_path):
    path = _lora(tmp_path)
    res = run("info", path, "--device", "bogus")
    assert res.exit_code == 2 and "[device-unavailable]" in res.output and "bogus" in res.output
    adapter = adapterkit.load(path)
    for device in ("bogus", "cuda:7" if not torch.cuda.is_available() else "bogus:0"):
        with pytest.raises(adapterkit.AdapterkitError) as info:
            adapter.delta_weight("model.layers.0.q_proj", device=device)
        assert info.value.code == "device-unavailable" and info.value.key == "device"
        with pytest.raises(adapterkit.AdapterkitError):
            adapterkit.load(path, device=device)
    assert adapter.delta_weight("model.layers.0.q_proj", device="cpu").device.type == "cpu"
