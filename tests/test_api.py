"""The public functions that match the CLI (issue 18 point 3): every command has a top-level
function of the same name taking the command's options, and the ones that take paths
(``adapterkit.api``) give what the command prints or writes."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import adapterkit
from adapterkit import Adapter, LoraConfig
from adapterkit.cli import main

P = "base_model.model."


def _lora(path: Path) -> Path:
    config = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj"), rank_pattern={"v_proj": 1})
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"{P}model.layers.0.q_proj.lora_A.weight": torch.randn(2, 8, generator=g),
        f"{P}model.layers.0.q_proj.lora_B.weight": torch.randn(6, 2, generator=g),
        f"{P}model.layers.0.v_proj.lora_A.weight": torch.randn(1, 8, generator=g),
        f"{P}model.layers.0.v_proj.lora_B.weight": torch.randn(4, 1, generator=g),
    }
    return adapterkit.save(Adapter.from_tensors(config, tensors), path)


def _checkpoint(path: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    path.mkdir()
    save_file({"model.layers.0.q_proj.weight": torch.randn(6, 8, generator=g),
               "model.layers.0.v_proj.weight": torch.randn(4, 8, generator=g),
               "model.norm.weight": torch.randn(8, generator=g)}, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    return path


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# the command's options (python names) each function takes; display-only options (--json,
# extract --modules), merge --push-to (publishing is push's) and --threads (in Python:
# ADAPTERKIT_THREADS or `with adapterkit.threads.override(n):`) are the CLI's own
OPTIONS = {
    "info": {"path", "adapter_name", "no_modules", "device", "plot", "overwrite"},
    "validate": {"path", "adapter_name"},
    "convert": {"src", "out", "adapter_name", "form", "overwrite", "consumer"},
    "check": {"adapter", "consumer", "adapter_name", "max_rank"},
    "merge": {"base", "adapters", "out", "weights", "device", "dtype", "max_shard_size", "safe", "tied_embeddings",
              "fan_in_fan_out", "overwrite", "again"},
    "unmerge": {"merged", "adapters", "out", "weights", "device", "dtype", "max_shard_size", "safe", "tied_embeddings",
                "fan_in_fan_out", "overwrite", "force"},
    "extract": {"base", "finetuned", "rank", "energy", "targets", "save_changed", "device"},
}


def test_every_command_has_a_function_of_its_name():
    for name in main.commands:
        assert name in adapterkit.__all__ and callable(getattr(adapterkit, name)), name
    assert callable(adapterkit.plot_spectrum)  # info --plot
    for name, options in OPTIONS.items():
        params = set(inspect.signature(getattr(adapterkit, name)).parameters)
        assert options <= params, (name, options - params)


def test_merge_is_the_checkpoint_merge_with_merge_checkpoints_arguments():
    from adapterkit.ops.merging import merge_checkpoint

    ours = inspect.signature(adapterkit.merge).parameters
    theirs = inspect.signature(merge_checkpoint).parameters
    assert list(ours) == [p for p in theirs if p != "locate"]
    assert all(ours[p].default == theirs[p].default for p in ours)
    assert adapterkit.merge_attached is not adapterkit.merge and adapterkit.merge_attached.__module__ == "adapterkit.inject.merge"


def test_info_is_what_the_command_prints(tmp_path):
    lora = _lora(tmp_path / "lora")
    assert adapterkit.info(lora) == json.loads(run("info", lora, "--json").output)
    assert adapterkit.info(lora, no_modules=True) == json.loads(run("info", lora, "--json", "--no-modules").output)
    base = _checkpoint(tmp_path / "base")
    summary = adapterkit.info(base)
    assert summary == json.loads(run("info", base, "--json").output) and summary["kind"] == "model checkpoint"
    with pytest.raises(adapterkit.AdapterkitError) as err:
        adapterkit.info(base, plot=tmp_path / "s.png")
    assert err.value.code == "argument-invalid" and not (tmp_path / "s.png").exists()
    with pytest.raises(adapterkit.AdapterkitError) as err:
        adapterkit.info(tmp_path / "missing")
    assert err.value.code == "file-not-found"


def test_info_plot(tmp_path):
    pytest.importorskip("matplotlib")
    lora = _lora(tmp_path / "lora")
    summary = adapterkit.info(lora, plot=tmp_path / "s.png")
    data = json.loads(run("info", lora, "--json", "--plot", tmp_path / "t.png").output)
    assert summary["plot"]["modules"] == 2 and (tmp_path / "s.png").is_file()
    assert {**summary["plot"], "path": None} == {**data["plot"], "path": None}
    with pytest.raises(adapterkit.AdapterkitError) as err:
        adapterkit.info(lora, plot=tmp_path / "s.png")
    assert err.value.code == "output-exists"


def test_validate_reports_a_missing_path_as_a_problem(tmp_path):
    assert adapterkit.validate(_lora(tmp_path / "lora")) == []
    problems = adapterkit.validate(tmp_path / "missing")
    assert [(p.code, p.severity) for p in problems] == [("file-not-found", "error")]


def test_convert_writes_what_the_command_writes(tmp_path):
    lora = _lora(tmp_path / "lora")
    done = adapterkit.convert(lora, tmp_path / "a.safetensors")
    assert run("convert", lora, tmp_path / "b.safetensors").exit_code == 0
    assert done.form == "file" and done.path == tmp_path / "a.safetensors" and done.adapter == adapterkit.load(lora)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    vllm = adapterkit.convert(lora, tmp_path / "v", consumer="vllm")
    assert run("convert", lora, tmp_path / "w", "--for", "vllm").exit_code == 0
    assert vllm.form == "dir" and adapterkit.load(tmp_path / "v") == adapterkit.load(tmp_path / "w")
    for kwargs in ({"form": "dir"}, {"consumer": "vllm"}):  # a one-file name: contradicts dir; vLLM reads folders
        with pytest.raises(adapterkit.AdapterkitError) as err:
            adapterkit.convert(lora, tmp_path / "c.safetensors", **kwargs)
        assert err.value.code == "argument-invalid" and not (tmp_path / "c.safetensors").exists()
    with pytest.raises(adapterkit.AdapterkitError) as err:  # not a form at all: named as such, not as a contradiction
        adapterkit.convert(lora, tmp_path / "d", form="folder")
    assert err.value.code == "argument-invalid" and err.value.expected == "dir | file" and not (tmp_path / "d").exists()


def test_check_takes_a_path_or_an_adapter(tmp_path):
    lora = _lora(tmp_path / "lora")
    assert adapterkit.check(lora, "vllm") == adapterkit.check(adapterkit.load(lora), "vllm")
    assert [p.code for p in adapterkit.check(lora, "vllm", max_rank=1)] == [p.code for p in adapterkit.check(adapterkit.load(lora), "vllm", max_rank=1)]


def test_merge_and_unmerge_write_what_the_commands_write(tmp_path):
    lora, base = _lora(tmp_path / "lora"), _checkpoint(tmp_path / "base")
    report = adapterkit.merge(base, [lora], tmp_path / "m1")
    assert run("merge", base, lora, tmp_path / "m2").exit_code == 0
    assert report.changed == 2
    merged = load_file(tmp_path / "m1" / "model.safetensors")
    assert merged.keys() == load_file(tmp_path / "m2" / "model.safetensors").keys()
    for key, value in load_file(tmp_path / "m2" / "model.safetensors").items():
        assert torch.equal(merged[key], value), key
    adapterkit.unmerge(tmp_path / "m1", [lora], tmp_path / "back")
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    for key, value in before.items():
        torch.testing.assert_close(after[key], value)
