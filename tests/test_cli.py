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


def _lora(tmp_path: Path, digest: bool = True, **cfg) -> Path:
    config = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj"), rank_pattern={"v_proj": 1}, **cfg)
    g = torch.Generator().manual_seed(0)
    tensors = {
        "base_model.model.model.layers.0.q_proj.lora_A.weight": torch.randn(2, 8, generator=g),
        "base_model.model.model.layers.0.q_proj.lora_B.weight": torch.randn(6, 2, generator=g),
        "base_model.model.model.layers.0.v_proj.lora_A.weight": torch.randn(1, 8, generator=g),
        "base_model.model.model.layers.0.v_proj.lora_B.weight": torch.randn(4, 1, generator=g),
    }
    out = tmp_path / "lora"
    adapterkit.save(Adapter.from_tensors(config, tensors), out, digest=digest)
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
    assert data["kind"] == "LORA" and data["format"] == "adapterkit 1.3" and data["digest"].startswith("sha256:")
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
    path = _lora(tmp_path, digest=False)  # its config is edited below: no content digest to disagree
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
    assert res.exit_code == 2  # the same status as without --debug
    assert "Traceback (most recent call last)" in res.output and "FormatError" in res.output
    assert res.output.rstrip().splitlines()[-1].startswith("adapterkit: error:")


def test_console_script_runs(tmp_path):
    path = _lora(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "adapterkit.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_validate_warns_when_peft_sorted_save_changes_pattern_winner(tmp_path):
    path = _lora(tmp_path, digest=False)  # its config is edited below: no content digest to disagree
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
    try:  # torch's own message, computed here, must appear whole (it was cut mid-sentence)
        torch.device("bogus")
    except RuntimeError as exc:
        assert str(exc).splitlines()[0] in res.output
    adapter = adapterkit.load(path)
    for device in ("bogus", "cuda:7" if not torch.cuda.is_available() else "bogus:0"):
        with pytest.raises(adapterkit.AdapterkitError) as info:
            adapter.delta_weight("model.layers.0.q_proj", device=device)
        assert info.value.code == "device-unavailable" and info.value.key == "device"
        with pytest.raises(adapterkit.AdapterkitError):
            adapterkit.load(path, device=device)
    assert adapter.delta_weight("model.layers.0.q_proj", device="cpu").device.type == "cpu"


# ----------------------------------------------------------------------------- first run: startup, help, -m


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["info", "--help"], ["validate", "--help"], ["convert", "--help"],
    ["info", "--bogus"], ["convert", "only-one-arg"], ["nosuchcommand"],
    ["convert", "src", "out.safetensors", "--form", "dir"], ["info", "/no/such/path"],
    ["combine", "--help"], ["combine", "a", "b", "-o", "out", "--method", "bogus"], ["combine", "a", "b", "-o", "out", "--weights", "x"],
    ["resize", "--help"], ["rebalance", "--help"], ["prune", "--help"], ["resize", "in", "out"],
    ["resize", "in", "out", "--rank", "2", "--energy", "0.5"], ["rebalance", "in", "out"], ["prune", "in", "out"],
    ["prune", "in", "out", "--layers", "x"], ["resize", "/no/such/path", "out", "--rank", "2"],
    ["extract", "--help"], ["extract", "a", "b", "out"], ["extract", "a", "b", "out", "--rank", "2", "--energy", "0.5"],
    ["extract", "/no/such/base", "/no/such/ft", "out", "--rank", "2"],
    ["check", "--help"], ["check", "x", "--for", "bogus"], ["check", "/no/such/path", "--for", "vllm"],
    ["convert", "src", "out", "--for", "bogus"],
    ["info", "./nope/adapter"], ["info", "./org/name"], ["merge", "./nope", "org/lora", "out"],  # paths by their shape: no Hub, no torch
])
def test_help_version_and_usage_errors_do_not_import_torch(args):
    code = (
        "import sys\n"
        "from adapterkit.cli import main\n"
        "try:\n"
        f"    main({args!r}, prog_name='adapterkit')\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    proc = _fresh_python(code)
    assert proc.stdout.strip().endswith("no torch"), proc.stdout + proc.stderr


def test_python_dash_m_adapterkit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adapterkit", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"adapterkit, version {adapterkit.__version__}"
    path = _lora(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "adapterkit", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "valid (0 errors, 0 warnings)" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "adapterkit", "info", "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.rstrip().endswith("[usage]")
    assert "Usage: adapterkit" in subprocess.run([sys.executable, "-m", "adapterkit"], capture_output=True, text=True).stdout


def test_every_help_has_an_example_and_whole_descriptions():
    top = run("--help").output
    assert "Examples:" in top
    listing = top.split("Commands:")[1]
    assert "..." not in listing  # click cuts long first sentences with '...'
    for name in ("info", "validate", "convert", "resize", "rebalance", "prune"):
        line = next(ln for ln in listing.splitlines() if ln.strip().startswith(name))
        assert line.rstrip().endswith("."), line
        text = run(name, "--help").output
        assert "Examples:" in text and f"adapterkit {name} " in text.split("Examples:")[1]


def test_usage_errors_are_one_line_with_a_code():
    res = CliRunner().invoke(main, ["info", "--bogus"])
    assert res.exit_code == 2
    out = res.output.strip()
    assert out.count("\n") == 0 and out.startswith("adapterkit: error:") and out.endswith("[usage]") and "--bogus" in out


# ----------------------------------------------------------------------------- convert


def _nan_lora(tmp_path: Path) -> Path:
    path = _lora(tmp_path)
    tensors = dict(adapterkit.load(path).tensors)
    tensors["base_model.model.model.layers.0.v_proj.lora_A.weight"] = torch.full((1, 8), float("nan"))
    from adapterkit.io.safetensors_file import write_file
    write_file(path / "adapter_model.safetensors", tensors, {"format": "pt"})
    return path


def test_convert_form_follows_the_name(tmp_path):
    path = _lora(tmp_path)
    res = run("convert", path, tmp_path / "out.safetensors")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out.safetensors").is_file() and "form=file" in res.output
    assert adapterkit.load(tmp_path / "out.safetensors") == adapterkit.load(path)
    res = run("convert", tmp_path / "out.safetensors", tmp_path / "back")
    assert res.exit_code == 0 and (tmp_path / "back").is_dir() and "form=dir" in res.output
    assert "4 tensors" in res.output


@pytest.mark.parametrize(("name", "form"), [("out.safetensors", "dir"), ("out", "file"), ("out.bin", "file")])
def test_convert_form_contradicting_the_name_is_a_usage_error(tmp_path, name, form):
    path = _lora(tmp_path)
    res = run("convert", path, tmp_path / name, "--form", form)
    assert res.exit_code == 2 and "[usage]" in res.output and "contradicts" in res.output
    assert not (tmp_path / name).exists()


def test_convert_refuses_an_existing_output_unless_overwrite(tmp_path):
    lora = _lora(tmp_path)
    ia3 = tmp_path / "ia3"
    adapterkit.save(Adapter.from_tensors(IA3Config(target_modules=("k",)), {"base_model.model.m.k.ia3_l": torch.ones(3, 1)}), ia3)
    out = tmp_path / "out"
    assert run("convert", lora, out).exit_code == 0
    (out / "README.md").write_text("PEFT's model card of the LoRA")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = run("convert", ia3, out)
    assert res.exit_code == 2 and "[output-exists]" in res.output and "--overwrite" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    res = run("convert", ia3, out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]  # no stale README
    assert adapterkit.load(out).peft_type == "IA3"
    # a model checkpoint's folder is an existing output too
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    res = run("convert", lora, model)
    assert res.exit_code == 2 and "[output-exists]" in res.output
    assert [p.name for p in model.iterdir()] == ["config.json"]
    # a file output likewise
    one = tmp_path / "one.safetensors"
    one.write_bytes(b"precious")
    assert run("convert", lora, one).exit_code == 2 and one.read_bytes() == b"precious"
    assert run("convert", lora, one, "--overwrite").exit_code == 0 and adapterkit.load(one) == adapterkit.load(lora)


def test_convert_never_replaces_its_own_input(tmp_path):
    multi = tmp_path / "multi"
    multi.mkdir()
    _lora(tmp_path).rename(multi / "second")
    before = (multi / "second" / "adapter_model.safetensors").read_bytes()
    res = run("convert", multi, multi, "--adapter-name", "second", "--overwrite")
    assert res.exit_code == 2 and "[overwrite-input]" in res.output
    assert (multi / "second" / "adapter_model.safetensors").read_bytes() == before


def test_convert_refuses_what_load_refuses(tmp_path):
    path = _nan_lora(tmp_path)
    res = run("convert", path, tmp_path / "out.safetensors")
    assert res.exit_code == 2 and "[non-finite]" in res.output and "v_proj.lora_A.weight" in res.output
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(adapterkit.AdapterkitError):
        adapterkit.load(path)


# ----------------------------------------------------------------------------- info


def test_info_shows_variants(tmp_path):
    config = LoraConfig(r=2, lora_alpha=4, target_modules=("c_attn",), use_rslora=True, use_dora=True, lora_bias=True, fan_in_fan_out=True)
    tensors = {
        "base_model.model.h.0.c_attn.lora_A.weight": torch.ones(2, 8),
        "base_model.model.h.0.c_attn.lora_B.weight": torch.ones(6, 2),
        "base_model.model.h.0.c_attn.lora_B.bias": torch.ones(6),
        "base_model.model.h.0.c_attn.lora_magnitude_vector": torch.ones(6),
    }
    adapterkit.save(Adapter.from_tensors(config, tensors), tmp_path / "v")
    text = run("info", tmp_path / "v").output
    assert "variants:        DoRA, rsLoRA, lora_bias, fan_in_fan_out" in text
    assert "use_rslora=true" in text and "base model:      (not recorded)" in text and "None" not in text
    data = json.loads(run("info", tmp_path / "v", "--json").output)
    f = data["features"]
    assert (f["use_dora"], f["use_rslora"], f["lora_bias"], f["fan_in_fan_out"]) == (True, True, True, True)
    assert data["per_module"]["h.0.c_attn"]["scaling"] == pytest.approx(4 / 2**0.5)
    plain = json.loads(run("info", _lora(tmp_path), "--json").output)["features"]
    assert plain["variants"] == [] and not plain["use_dora"] and not plain["use_rslora"]
    assert "variants:        plain LoRA" in run("info", tmp_path / "lora").output


def test_info_counts_modules_to_save(tmp_path):
    config = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj",), modules_to_save=("score",))
    tensors = {
        "base_model.model.model.layers.0.q_proj.lora_A.weight": torch.ones(2, 8),
        "base_model.model.model.layers.0.q_proj.lora_B.weight": torch.ones(6, 2),
        "base_model.model.score.weight": torch.ones(3, 8),
        "base_model.model.score.bias": torch.ones(3),
    }
    adapterkit.save(Adapter.from_tensors(config, tensors), tmp_path / "m")
    data = json.loads(run("info", tmp_path / "m", "--json").output)
    assert data["saved_whole"] == {"modules": ["score"], "tensors": 2, "parameters": 27, "bytes": 108}
    assert data["parameters"] == 16 + 12 + 27
    text = run("info", tmp_path / "m").output
    assert "saved whole:     2 tensors, 27 parameters, 108 bytes (score)" in text


def test_info_mentions_other_adapters_in_the_folder(tmp_path):
    multi = _lora(tmp_path)  # the top-level (default) adapter
    adapterkit.save(Adapter.from_tensors(IA3Config(target_modules=("k",)), {"base_model.model.m.k.ia3_l": torch.ones(3, 1)}), multi / "second")
    adapterkit.save(Adapter.from_tensors(IA3Config(target_modules=("k",)), {"base_model.model.m.k.ia3_l": torch.ones(3, 1)}), multi / "third")
    data = json.loads(run("info", multi, "--json").output)
    assert data["kind"] == "LORA" and data["other_adapters"] == ["second", "third"]
    assert "also here:       second, third" in run("info", multi).output
    data = json.loads(run("info", multi, "--adapter-name", "second", "--json").output)
    assert data["kind"] == "IA3" and data["other_adapters"] == [".", "third"]
    alone = json.loads(run("info", multi / "third", "--json").output)
    assert alone["other_adapters"] == []
    assert run("convert", multi, tmp_path / "one.safetensors").exit_code == 0  # not into the input's folder: overwrite-input
    (tmp_path / "one.safetensors").rename(multi / "one.safetensors")  # a single file stands alone
    assert json.loads(run("info", multi / "one.safetensors", "--json").output)["other_adapters"] == []


def test_info_flags_non_finite_values(tmp_path):
    path = _nan_lora(tmp_path)
    res = run("info", path)
    assert res.exit_code == 1
    assert "error:" in res.output and "[non-finite]" in res.output and "v_proj.lora_A.weight" in res.output
    data = json.loads(run("info", path, "--json").output)
    assert [p["code"] for p in data["problems"]] == ["non-finite"]
    res = run("info", path, "--no-modules")  # no data read: says so instead of vouching for the values
    assert res.exit_code == 0 and "not read (--no-modules)" in res.output
    assert run("info", _lora(tmp_path / "ok")).exit_code == 0


def test_info_on_a_model_checkpoint_or_a_config_file(tmp_path):
    from adapterkit.io.safetensors_file import write_file

    model = tmp_path / "model"
    write_file(model / "model.safetensors", {"model.embed_tokens.weight": torch.zeros(4, 2), "lm_head.weight": torch.zeros(4, 2)}, {"format": "pt"})
    (model / "config.json").write_text("{}")
    for target in (model, model / "model.safetensors"):
        res = run("validate", target)
        assert res.exit_code == 2 and "looks like a model checkpoint" in res.output and "[not-an-adapter]" in res.output
        assert "config-missing" not in res.output
        res = run("info", target)  # info summarises a checkpoint instead (what `adapterkit merge` writes)
        assert res.exit_code == 0 and "kind:            model checkpoint" in res.output, res.output
        assert "tensors:         2 (F32 x2)" in res.output
    (model / "model.safetensors").unlink()
    res = run("info", model)  # neither an adapter nor a checkpoint: the adapter reader's message
    assert res.exit_code == 2 and "looks like a model checkpoint" in res.output
    path = _lora(tmp_path)
    res = run("info", path / "adapter_config.json")
    assert res.exit_code == 2 and "name its folder" in res.output and str(path) in res.output


# ----------------------------------------------------------------------------- validate


def test_validate_reports_config_and_tensor_problems_together(tmp_path):
    path = _lora(tmp_path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["r"] = -1
    cfg["lora_alpha"] = "big"
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = dict(adapterkit.load(_lora(tmp_path / "src")).tensors)
    tensors["base_model.model.model.layers.0.q_proj.lora_B.weight"] = torch.zeros(6, 3)  # disagrees with lora_A's rank 2
    tensors["base_model.model.model.layers.0.v_proj.lora_A.weight"] = torch.full((1, 8), float("inf"))
    del tensors["base_model.model.model.layers.0.v_proj.lora_B.weight"]
    tensors["base_model.model.model.layers.1.k_proj.lora_A.weight"] = torch.zeros(2, 8)
    tensors["base_model.model.model.layers.1.k_proj.lora_B.weight"] = torch.zeros(6, 2)
    from adapterkit.io.safetensors_file import write_file
    write_file(path / "adapter_model.safetensors", tensors, {"format": "pt"})
    res = run("validate", path, "--json")
    assert res.exit_code == 1
    found = sorted((p["code"], p["key"]) for p in json.loads(res.output)["problems"])
    assert found == sorted([
        ("config-invalid", "r"),
        ("config-invalid", "lora_alpha"),
        ("shape-mismatch", "base_model.model.model.layers.0.q_proj.lora_B.weight"),
        ("missing-partner", "base_model.model.model.layers.0.v_proj.lora_A.weight"),
        ("non-finite", "base_model.model.model.layers.0.v_proj.lora_A.weight"),
    ])  # layers.1.k_proj is consistent: no rank is blamed on the invalid r
    text = run("validate", path).output
    assert text.rstrip().endswith("INVALID (5 errors, 0 warnings)")


@pytest.mark.parametrize(("field", "value", "tensor", "shape"), [
    ("num_virtual_tokens", 0, "prompt_embeddings", (3, 4, 1)),
    ("token_dim", "4", "prompt_embeddings", (3, 4, 1)),
])
def test_validate_prompt_config_and_tensor_problems_together(tmp_path, field, value, tensor, shape):
    from adapterkit.io.safetensors_file import write_file
    d = tmp_path / "pt"
    write_file(d / "adapter_model.safetensors", {tensor: torch.zeros(shape)}, {"format": "pt"})
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3, "token_dim": 4, field: value}))
    problems = adapterkit.validate(d)
    assert sorted((p.code, p.key) for p in problems) == [("config-invalid", field), ("shape-mismatch", tensor)]


def test_validate_one_error_and_one_warning_are_singular(tmp_path):
    path = _lora(tmp_path, digest=False)  # its config is edited below: no content digest to disagree
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["r"] = 0
    cfg["rank_pattern"]["nope_proj"] = 4
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    text = run("validate", path).output
    assert text.rstrip().endswith("INVALID (1 error, 1 warning)"), text


def test_public_names_resolve_lazily():
    proc = _fresh_python(
        "import sys, adapterkit\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(adapterkit.validate) and callable(adapterkit.load)\n"
        "for name in adapterkit.__all__:\n"
        "    getattr(adapterkit, name)\n"
        "import adapterkit.validation as v\n"
        "assert callable(adapterkit.validate)\n"
        "print('ok')\n"
    )
    assert proc.stdout.strip() == "ok", proc.stderr


def test_validate_a_missing_named_adapter_is_a_usage_error(tmp_path):
    path = _lora(tmp_path)
    res = run("validate", path, "--adapter-name", "nope")
    assert res.exit_code == 2 and "[adapter-not-found]" in res.output and res.output.startswith("adapterkit: error:")
    res = run("validate", path / "missing")
    assert res.exit_code == 2 and "[file-not-found]" in res.output


# ----------------------------------------------------------------------------- usage lines, arguments before torch (issue 17 point 8)

USAGE_LINES = {
    "info": "PATH", "validate": "PATH", "convert": "SRC OUT", "merge": "BASE [ADAPTER] OUT", "unmerge": "MERGED [ADAPTER] OUT",
    "combine": "-o OUT [OPTIONS] ADAPTERS...", "resize": "IN OUT", "rebalance": "IN OUT", "prune": "IN OUT", "check": "PATH",
    "extract": "BASE FINETUNED OUT", "push": "ADAPTER REPO_ID", "pull": "REPO OUT", "diff": "A B",
}


def test_every_usage_line_names_its_arguments():
    assert set(USAGE_LINES) == set(main.commands)
    for name, args in USAGE_LINES.items():
        usage = CliRunner().invoke(main, [name, "--help"], prog_name="adapterkit").output.splitlines()[0]
        assert usage.startswith(f"Usage: adapterkit {name} ") and usage.endswith(args) and "PATHS" not in usage, usage


# the package adapterkit/cli/: one module per family of commands (issue 18); each stays a thin layer
FAMILIES = {
    "adapters": {"info", "validate", "convert", "check"}, "checkpoints": {"merge", "unmerge", "extract"},
    "surgery": {"combine", "resize", "rebalance", "prune"}, "hub": {"push", "pull"}, "inspect": {"diff"},
}


def test_each_command_lives_in_its_family_module_and_no_module_grows_past_300_lines():
    assert {n: f"adapterkit.cli.{family}" for family, names in FAMILIES.items() for n in names} == {
        n: c.callback.__module__ for n, c in main.commands.items()}
    package = Path(adapterkit.__file__).parent / "cli"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in package.glob("*.py")}
    assert max(sizes.values()) < 300, sizes


BAD_ARGUMENTS = [
    ["resize", "in", "out", "--rank", "0"], ["resize", "in", "out", "--rank", "-3"], ["resize", "in", "out", "--energy", "0"],
    ["resize", "in", "out", "--energy", "1.5"], ["resize", "in", "out", "--energy", "nan"], ["resize", "in", "out", "--sv-ratio", "0.5"],
    ["rebalance", "in", "out", "--budget", "-5"], ["rebalance", "in", "out", "--budget", "0"], ["rebalance", "in", "out", "--rank", "0"],
    ["extract", "a", "b", "out", "--rank", "0"], ["extract", "a", "b", "out", "--energy", "2"],
    ["combine", "a", "b", "-o", "out", "--weights", "1,2,3"], ["combine", "a", "b", "-o", "out", "--weights", "1,inf"],
    ["combine", "a", "b", "-o", "out", "--method", "ties"], ["combine", "a", "b", "-o", "out", "--method", "dare_linear_svd"],
    ["combine", "a", "b", "-o", "out", "--method", "magnitude_prune", "--density", "0"],
    ["combine", "a", "b", "-o", "out", "--method", "dare_ties", "--density", "1.5"], ["combine", "a", "b", "-o", "out", "--density", "0.5"],
    ["combine", "a", "b", "-o", "out", "--rank", "0"], ["combine", "a", "b", "-o", "out", "--method", "cat", "--rank", "2"],
    ["combine", "a", "b", "-o", "out", "--svd-clamp", "2"], ["combine", "a", "b", "-o", "out", "--method", "cat", "--svd-clamp", "0.9"],
    ["merge", "base", "a", "out", "--max-shard-size", "lots"], ["merge", "base", "a", "out", "--max-shard-size", "0"],
    ["merge", "base", "a", "out", "--max-shard-size", "0.1B"], ["merge", "base", "out", "--adapter", "a", "--weight", "1", "--weight", "2"],
    ["unmerge", "base", "a", "out", "--weight", "1", "--weight", "2"],
    ["merge", "base", "a", "out", "--weight", "nan"], ["merge", "base", "out", "--adapter", "a", "--adapter", "b", "--weight", "1", "--weight", "inf"],
    ["prune", "in", "out", "--keep-fraction", "0"], ["prune", "in", "out", "--min-energy", "2"],
]


def test_bad_numeric_arguments_are_argument_invalid_before_torch():
    """One fresh process runs every case (the paths do not exist: the arguments come first)."""
    code = (
        "import contextlib, io, sys\n"
        "from adapterkit.cli import main\n"
        f"for args in {BAD_ARGUMENTS!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            main(args, prog_name='adapterkit')\n"
        "        except SystemExit as e:\n"
        "            print(e.code, err.getvalue().strip())\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    proc = _fresh_python(code)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "no torch", proc.stdout + proc.stderr
    assert len(lines) == len(BAD_ARGUMENTS) + 1, proc.stdout + proc.stderr
    for args, line in zip(BAD_ARGUMENTS, lines):
        assert line.startswith("2 adapterkit: error: --") and line.endswith("[argument-invalid]"), (args, line)


def test_the_library_refuses_the_same_arguments(tmp_path):
    """The CLI's early checks (adapterkit/arguments.py) and the operations agree."""
    import adapterkit.arguments as early
    import adapterkit.ops.combining as ops_combine

    assert early.FACTOR_METHODS == ops_combine.FACTOR_METHODS and early.DENSITY_METHODS == ops_combine.DENSITY_METHODS
    a = adapterkit.load(_lora(tmp_path))
    for call in (lambda: adapterkit.resize(a, rank=0), lambda: adapterkit.resize(a, energy=1.5), lambda: adapterkit.resize(a, sv_ratio=0.5),
                 lambda: adapterkit.rebalance(a, budget=-5), lambda: adapterkit.combine([a, a], [1.0, 2.0, 3.0], "svd"),
                 lambda: adapterkit.combine([a, a], [1.0, 1.0], "ties"), lambda: adapterkit.combine([a, a], [1.0, 1.0], "cat", rank=2),
                 lambda: adapterkit.combine([a, a], [1.0, 1.0], "svd", svd_clamp=2.0),
                 lambda: adapterkit.prune(a, keep_fraction=0.0), lambda: adapterkit.prune(a, min_energy=2.0)):
        with pytest.raises(adapterkit.AdapterkitError) as err:
            call()
        assert err.value.code == "argument-invalid", err.value


def _three_layer_lora(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(3):
        tensors[f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight"] = torch.randn(2, 8, generator=g)
        tensors[f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight"] = torch.randn(8, 2, generator=g)
    out = tmp_path / "three"
    adapterkit.save(Adapter.from_tensors(LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj",)), tensors), out)
    return out


def test_prune_layers_that_do_not_exist_is_an_error_naming_those_that_do(tmp_path):
    src = _three_layer_lora(tmp_path)
    res = run("prune", src, tmp_path / "out", "--layers", "7")
    assert res.exit_code == 2 and res.output.rstrip().endswith("[argument-invalid]"), res.output
    assert "no module of the adapter is in layer 7; its layers are 0-2" in res.output
    assert not (tmp_path / "out").exists()
    res = run("prune", src, tmp_path / "out", "--layers", "1,3-4")
    assert res.exit_code == 2 and "layer 3-4; its layers are 0-2" in res.output, res.output
    with pytest.raises(adapterkit.AdapterkitError) as err:
        adapterkit.prune(adapterkit.load(src), layers=[5])
    assert err.value.code == "argument-invalid" and err.value.key == "layers"
    res = run("prune", src, tmp_path / "out", "--layers", "1", "--json")  # an existing layer still works
    assert res.exit_code == 0 and sorted(json.loads(res.output)["dropped"]) == ["model.layers.1.self_attn.q_proj"], res.output


def test_no_safe_merges_nan_as_peft_safe_merge_false_does(tmp_path):
    """--safe (the default) refuses a NaN in the adapter as PEFT's safe_merge=True does; --no-safe
    writes what PEFT's safe_merge=False merge gives, NaN included."""
    import warnings

    pytest.importorskip("peft")
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model
    from peft_models import llama, shards

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llama().save_pretrained(tmp_path / "base")
        model = get_peft_model(llama(), PeftLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                    if "layers.0.self_attn.q_proj.lora_B" in name:
                        p[1, 0] = float("nan")
        model.save_pretrained(tmp_path / "nan-lora")
        with pytest.raises(ValueError, match="NaN"):
            PeftModel.from_pretrained(llama(), tmp_path / "nan-lora").merge_and_unload(safe_merge=True)
        theirs = PeftModel.from_pretrained(llama(), tmp_path / "nan-lora").merge_and_unload(safe_merge=False).state_dict()
    res = run("merge", tmp_path / "base", tmp_path / "nan-lora", tmp_path / "safe")
    assert res.exit_code == 2 and "[non-finite]" in res.output and not (tmp_path / "safe").exists(), res.output
    res = run("merge", tmp_path / "base", tmp_path / "nan-lora", tmp_path / "unsafe", "--no-safe")
    assert res.exit_code == 0, res.output
    ours = shards(tmp_path / "unsafe")
    assert set(ours) == {k for k in theirs if k != "lm_head.weight"} | ({"lm_head.weight"} & set(ours))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.isnan(ours[q][1]).all() and not torch.isnan(ours[q][0]).any()  # row 1 of B·A is NaN, as in PEFT's
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, equal_nan=True, msg=key)
