"""Round-trip properties over generated adapters of every kind (the heart of the suite)."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import adapterkit
from adapterkit import Adapter
from adapterkit.io.checks import structural_problems, value_problems
from adapterkit.io.safetensors_file import encode
from adapterkit.kinds import config_from_dict
from adapterkit.kinds.lora import factor_norm
from adapterkit.testing import strategies as aks


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@given(aks.adapters())
def test_strategies_generate_valid_adapters(adapter):
    problems = structural_problems(adapter) + value_problems(adapter)
    assert [p for p in problems if p.severity == "error"] == []


@pytest.mark.parametrize("form", ["dir", "file"])
@given(adapter=aks.adapters())
def test_load_save_roundtrip_is_bit_exact(adapter, form):
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / ("a" if form == "dir" else "a.safetensors")
        adapterkit.save(adapter, target, form=form)
        loaded = adapterkit.load(target)
        assert loaded == adapter
        assert loaded.config == adapter.config
        assert loaded.format_version == adapterkit.FORMAT_VERSION
        lazy = adapterkit.open_adapter(target)
        assert lazy == adapter


@given(aks.adapters())
def test_dir_to_file_to_dir_is_byte_stable(adapter):
    with tempfile.TemporaryDirectory() as tmp:
        d1, f, d2 = Path(tmp) / "d1", Path(tmp) / "a.safetensors", Path(tmp) / "d2"
        adapterkit.save(adapter, d1)
        adapterkit.save(adapterkit.open_adapter(d1), f, form="file")
        adapterkit.save(adapterkit.open_adapter(f), d2)
        assert _files(d1) == _files(d2)
        f2 = Path(tmp) / "b.safetensors"
        adapterkit.save(adapterkit.open_adapter(d2), f2, form="file")
        assert f.read_bytes() == f2.read_bytes()


@given(aks.adapters(), st.randoms(use_true_random=False))
def test_bytes_do_not_depend_on_insertion_order(adapter, rnd: random.Random):
    keys = list(adapter.tensors)
    rnd.shuffle(keys)
    shuffled = Adapter.from_tensors(adapter.config, {k: adapter.tensors[k] for k in keys})
    meta = {"format": "pt", "adapterkit.version": "1.0"}
    assert b"".join(encode(adapter.tensors, meta)) == b"".join(encode(shuffled.tensors, meta))
    with tempfile.TemporaryDirectory() as tmp:
        adapterkit.save(adapter, Path(tmp) / "a")
        adapterkit.save(shuffled, Path(tmp) / "b")
        assert _files(Path(tmp) / "a") == _files(Path(tmp) / "b")


@given(aks.adapters())
def test_config_dict_roundtrip(adapter):
    data = adapter.config.to_dict()
    assert config_from_dict(data) == adapter.config
    assert config_from_dict(data).to_dict() == data


@given(aks.lora_adapters(dtypes=st.just(torch.float64)))
def test_factor_norm_equals_dense_delta_norm(adapter):
    for name, view in adapter.modules.items():
        dense = adapter.delta_weight(name).norm().item()
        stats = adapter.kind.stats(adapter, name, None)
        assert stats["delta_norm"] == pytest.approx(dense, rel=1e-9, abs=1e-12)
        assert factor_norm(view.lora_A, view.lora_B) * abs(view.scaling) == pytest.approx(dense, rel=1e-9, abs=1e-12)


@given(aks.lora_adapters(layer_types=("linear",), dtypes=st.just(torch.float32)))
def test_delta_weight_is_scaled_product(adapter):
    for name, view in adapter.modules.items():
        expected = view.lora_B @ view.lora_A
        if view.fan_in_fan_out:
            expected = expected.T
        assert torch.equal(adapter.delta_weight(name), expected * view.scaling)
        r, _ = adapter.config.rank_for(name)
        alpha, _ = adapter.config.alpha_for(name)
        want = alpha / r**0.5 if adapter.config.use_rslora else alpha / r
        assert view.scaling == want


FEATURES = {
    "embedding": lambda a: any(v.layer_type == "embedding" for v in a.modules.values()),
    "conv1d": lambda a: any(v.layer_type == "conv1d" for v in a.modules.values()),
    "conv2d": lambda a: any(v.layer_type == "conv2d" for v in a.modules.values()),
    "conv3d": lambda a: any(v.layer_type == "conv3d" for v in a.modules.values()),
    "fan_in_fan_out": lambda a: a.config.fan_in_fan_out,
    "dora": lambda a: a.config.use_dora,
    "bias": lambda a: a.config.lora_bias,
    "rslora": lambda a: a.config.use_rslora,
    "pattern": lambda a: bool(a.config.rank_pattern) and bool(a.config.alpha_pattern),
    "modules_to_save": lambda a: bool(a.config.modules_to_save),
    "bf16": lambda a: any(a.meta(k).dtype == "BF16" for k in a.tensors),
}


def test_strategies_reach_every_kind_and_lora_feature():
    """The strategies are not silently narrow: a bounded run covers all five kinds and every LoRA feature."""
    kinds, features = set(), set()

    @settings(max_examples=300, phases=[Phase.generate], derandomize=True, database=None)
    @given(aks.adapters())
    def collect(adapter):
        kinds.add(adapter.peft_type)
        if adapter.peft_type == "LORA":
            features.update(f for f, check in FEATURES.items() if check(adapter))

    collect()
    assert kinds == {"LORA", "IA3", "PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING"}
    assert features == set(FEATURES)
