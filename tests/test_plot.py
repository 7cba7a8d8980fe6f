"""adapterkit.plot_spectrum and `adapterkit info --plot`: the numbers drawn against an exact
dense SVD formed here, the PNG, and the one-line error without the plot extra."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import adapterkit
from adapterkit import Adapter, IA3Config, LoraConfig
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError
from adapterkit.inspect.spectra import spectrum

P = "base_model.model."
PNG = b"\x89PNG\r\n\x1a\n"


@st.composite
def loras(draw) -> Adapter:
    """A LoRA adapter of linear, embedding and conv2d modules with rank/alpha patterns and rsLoRA."""
    n = draw(st.integers(1, 4))
    r, alpha, rslora = draw(st.integers(1, 5)), draw(st.sampled_from([1, 4, 0.5])), draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    tensors, rank_pattern = {}, {}
    for i in range(n):
        name, layer = f"layers.{i}.mod", draw(st.sampled_from(["linear", "embedding", "conv2d"]))
        rank = rank_pattern[name] = draw(st.integers(1, 6)) if draw(st.booleans()) else r
        out_f, in_f = draw(st.integers(1, 7)), draw(st.integers(1, 7))
        A, B = torch.randn(rank, in_f, generator=gen), torch.randn(out_f, rank, generator=gen)
        if layer == "embedding":
            tensors[f"{P}{name}.lora_embedding_A"], tensors[f"{P}{name}.lora_embedding_B"] = A, B
        elif layer == "conv2d":
            tensors[f"{P}{name}.lora_A.weight"] = torch.randn(rank, in_f, 2, 1, generator=gen)
            tensors[f"{P}{name}.lora_B.weight"] = B[:, :, None, None]
        else:
            tensors[f"{P}{name}.lora_A.weight"], tensors[f"{P}{name}.lora_B.weight"] = A, B
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=("mod",), rank_pattern={k: v for k, v in rank_pattern.items() if v != r},
                     use_rslora=rslora)
    return Adapter.from_tensors(cfg, tensors)


def dense_delta(adapter: Adapter, name: str) -> torch.Tensor:
    """ΔW in fp64 from PEFT's formula (scaling alpha/r or alpha/√r; embedding transposed; conv
    2-D as out × (in·kernel))."""
    cfg: LoraConfig = adapter.config
    rank = cfg.rank_pattern.get(name, cfg.r)
    s = cfg.lora_alpha / (math.sqrt(rank) if cfg.use_rslora else rank)
    t = adapter.tensors
    if f"{P}{name}.lora_embedding_A" in t:
        return (t[f"{P}{name}.lora_embedding_B"].double() @ t[f"{P}{name}.lora_embedding_A"].double()).T * s
    A, B = t[f"{P}{name}.lora_A.weight"].double(), t[f"{P}{name}.lora_B.weight"].double()
    return B.reshape(B.shape[0], -1) @ A.reshape(A.shape[0], -1) * s


def check_exact(adapter: Adapter, data) -> None:
    """``data`` (what plot_spectrum draws) against the dense SVD and rebalance itself."""
    assert [m.name for m in data.modules] == sorted(adapter.modules)
    for m in data.modules:
        d = dense_delta(adapter, m.name)
        S = torch.linalg.svdvals(d)
        rank = len(m.singular_values)
        assert rank == min(*d.shape, adapter.config.rank_pattern.get(m.name, adapter.config.r))
        assert list(m.singular_values) == pytest.approx(S[:rank].tolist(), rel=1e-5, abs=1e-6)
        energy = (S**2).cumsum(0) / (S**2).sum()
        assert list(m.cumulative_energy) == pytest.approx(energy[:rank].tolist(), abs=1e-6)
        for level in (0.90, 0.95, 0.99):
            assert m.ranks[level] == next(k + 1 for k, e in enumerate(energy.tolist()) if e >= level - 1e-9)
        assert m.rank_cost == d.shape[0] + d.shape[1]
    top = max(len(m.singular_values) for m in data.modules)
    assert [avg for avg, _, _ in data.budgets] == sorted({max(1, top // 8), max(1, top // 4), max(1, top // 2)})
    for avg, budget, ranks in data.budgets:  # what rebalance itself gives at that budget
        _, report = adapterkit.rebalance(adapter, rank=avg)
        assert budget == avg * sum(m.rank_cost for m in data.modules)
        assert list(ranks) == [m.rank_after for m in report.modules]


@given(loras())
def test_spectrum_numbers_are_exact(adapter):
    check_exact(adapter, spectrum(adapter))


@settings(max_examples=3)
@given(loras())
def test_plotted_numbers_are_the_exact_spectrum(tmp_path_factory, adapter):
    out = tmp_path_factory.mktemp("plot") / "spectrum.png"
    data = adapterkit.plot_spectrum(adapter, out)
    assert out.read_bytes().startswith(PNG)
    check_exact(adapter, data)


def test_picture_and_refusing_an_existing_output(tmp_path):
    g = torch.Generator().manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=("q",))
    adapter = Adapter.from_tensors(cfg, {f"{P}l.{i}.q.lora_A.weight": torch.randn(4, 16, generator=g) for i in range(3)}
                                   | {f"{P}l.{i}.q.lora_B.weight": torch.randn(16, 4, generator=g) for i in range(3)})
    out = tmp_path / "sub" / "s.png"
    data = adapterkit.plot_spectrum(adapter, out, average_ranks=(1, 3))
    assert [(avg, len(r)) for avg, _, r in data.budgets] == [(1, 3), (3, 3)]
    from matplotlib.image import imread

    height, width, _ = imread(out).shape
    assert width > 2 * height > 400 and out.stat().st_size < 150_000
    before = out.read_bytes()
    with pytest.raises(AdapterkitError) as err:
        adapterkit.plot_spectrum(adapter, out)
    assert err.value.code == "output-exists" and out.read_bytes() == before
    import adapterkit.inspect.spectra as spectra

    def no_work(*args, **kwargs):
        raise AssertionError("the spectrum was computed before the existing output was refused")

    original, spectra.spectrum = spectra.spectrum, no_work
    try:  # refused before any work, not by the writer once the picture is drawn
        with pytest.raises(AdapterkitError) as err:
            adapterkit.plot_spectrum(adapter, out)
        assert err.value.code == "output-exists"
    finally:
        spectra.spectrum = original
    adapterkit.plot_spectrum(adapter, out, overwrite=True)
    assert out.read_bytes().startswith(PNG)
    saved = tmp_path / "a.safetensors"
    adapterkit.save(adapter, saved)
    with pytest.raises(AdapterkitError) as err:
        adapterkit.plot_spectrum(adapterkit.load(saved), saved, overwrite=True)
    assert err.value.code == "overwrite-input" and saved.read_bytes()[:8] != PNG
    with pytest.raises(AdapterkitError) as err:
        adapterkit.plot_spectrum(Adapter.from_tensors(IA3Config(target_modules=("k",)), {f"{P}k.ia3_l": torch.ones(3, 1)}), tmp_path / "x.png")
    assert err.value.code == "not-supported" and not (tmp_path / "x.png").exists()


def _hide_matplotlib(monkeypatch) -> None:
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib` now raises ImportError


def _lora_dir(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    cfg = LoraConfig(r=2, lora_alpha=2, target_modules=("q",))
    out = tmp_path / "lora"
    adapterkit.save(Adapter.from_tensors(cfg, {f"{P}q.lora_A.weight": torch.randn(2, 5, generator=g),
                                               f"{P}q.lora_B.weight": torch.randn(4, 2, generator=g)}), out)
    return out


def test_without_the_extra_a_one_line_error_names_it(tmp_path, monkeypatch):
    path = _lora_dir(tmp_path)
    _hide_matplotlib(monkeypatch)
    with pytest.raises(AdapterkitError) as err:
        adapterkit.plot_spectrum(adapterkit.load(path), tmp_path / "s.png")
    assert err.value.code == "extra-missing" and "pip install 'adapterkit[plot]'" in str(err.value)
    res = CliRunner().invoke(main, ["info", str(path), "--plot", str(tmp_path / "s.png")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert res.output.startswith("adapterkit: error:") and "pip install 'adapterkit[plot]'" in res.output and res.output.rstrip().endswith("[extra-missing]")
    assert not (tmp_path / "s.png").exists()


def test_info_plot_text_and_json(tmp_path):
    path = _lora_dir(tmp_path)
    res = CliRunner().invoke(main, ["info", str(path), "--plot", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    assert f"spectrum plot:   {tmp_path / 's.png'} (1 module)" in res.output and (tmp_path / "s.png").read_bytes().startswith(PNG)
    res = CliRunner().invoke(main, ["info", str(path), "--plot", str(tmp_path / "s.png"), "--json"])
    assert res.exit_code == 2 and "[output-exists]" in res.output
    res = CliRunner().invoke(main, ["info", str(path), "--plot", str(tmp_path / "s.png"), "--json", "--overwrite"])
    plot = json.loads(res.output)["plot"]
    S = torch.linalg.svdvals(dense_delta(adapterkit.load(path), "q"))
    energy = ((S**2).cumsum(0) / (S**2).sum()).tolist()
    assert plot["modules"] == 1 and plot["ranks_keeping"]["90%"] == [next(k + 1 for k, e in enumerate(energy) if e >= 0.9)]
    assert [b["average_rank"] for b in plot["rebalance"]] == [1]
