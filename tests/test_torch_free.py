"""The torch-free inspection path (issue 19): ``info``, ``validate``, ``check --for`` and
``diff --conflict off`` on numpy give what the torch path gives.

Each check runs both paths on every conformance vector and on random adapters: the torch path
is the one ``load`` and the operations use (torch tensors; ``describe(device="cpu")``,
``diff(device="cpu")``), the numpy path the one the commands now take.  Problems, errors,
digests, counts and shapes are equal exactly; the statistics (fp64 products summed by another
BLAS) within a stated bound.  The decoding and the bit tests are checked against torch on every
bit pattern of every 8- and 16-bit float type.  The commands themselves run in a subprocess
where importing torch fails.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapterkit
from adapterkit.adapter import Adapter, MemoryStore
from adapterkit.arrays import decode, nonfinite_count
from adapterkit.errors import AdapterkitError
from adapterkit.inspect.compare import diff
from adapterkit.io.array_store import load_arrays
from adapterkit.io.checks import structural_problems, value_problems
from adapterkit.io.lazy_store import LazyStore
from adapterkit.io.reader import digest_problems, open_adapter, open_with_config
from adapterkit.io.safetensors_file import read_all
from adapterkit.ops.export import CONSUMERS
from adapterkit.ops.export import check as check_adapter
from adapterkit.summary import describe
from adapterkit.testing.strategies import adapters, lora_adapters
from adapterkit.validation import validate

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "v1" / "vectors"
REL = 1e-12  # fp64 statistics: the same products summed in another order (a few ulps, far below this)
TINY = 1e-14  # absolute, for figures that are zero up to rounding (an energy share of orthogonal spaces)
ANGLE = 1e-6  # radians: arccos near 0 turns an fp64 rounding δ of a cosine into √(2δ)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _vectors() -> list[tuple[Path, dict]]:
    out = []
    for kind in ("valid", "invalid"):
        for vector in sorted((VECTORS / kind).iterdir()):
            exp = json.loads((vector / "expected.json").read_text())
            kw = {"adapter_name": exp["adapter_name"]} if "adapter_name" in exp else {}
            out.append((vector / exp["path"], kw))
    return out


VECTOR_CASES = _vectors()
VECTOR_IDS = [f"{p.parent.parent.name}/{p.parent.name}" if p.name in ("adapter_model.safetensors", "adapter_config.json")
              else f"{p.parent.name}/{p.name}" for p, _ in VECTOR_CASES]


def _outcome(fn, *args, **kwargs):
    """("ok", value) or ("error", code, key): what a call gives, in comparable form."""
    try:
        return ("ok", fn(*args, **kwargs))
    except AdapterkitError as exc:
        return ("error", exc.code, exc.key)


def _close(a, b, path="") -> list[str]:
    """Where two JSON-like values differ: floats beyond REL (relative), anything else at all."""
    if isinstance(a, float) and isinstance(b, float):
        ok = a == b or (math.isnan(a) and math.isnan(b)) or (math.isfinite(a) and abs(a - b) <= max(REL * max(abs(a), abs(b)), TINY))
        return [] if ok else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]


# ----------------------------------------------------------------------------- the torch path, as load runs it


def _torch_validate(path: Path, **kw) -> list:
    """validate's problems computed the way ``load`` checks: torch tensors from one read, the
    reader's digest check (``digest_problems``) and torch's NaN/Inf check (``value_problems``)."""
    problems: list = []
    try:
        adapter, data = open_with_config(path, strict=False, config_problems=problems, **kw)
    except AdapterkitError as exc:
        return [*problems, (exc.code, exc.key, "error", exc.actual)]
    problems = [*problems, *structural_problems(adapter)]
    try:
        if isinstance(adapter.tensors, LazyStore):
            tensors = read_all(adapter.tensors.header)
            problems += digest_problems(adapter, data)  # each tensor read by torch and hashed
            problems += value_problems(Adapter(adapter.config, MemoryStore(tensors), adapter.source))
        else:
            problems += value_problems(adapter)
    except AdapterkitError as exc:
        problems.append((exc.code, exc.key, "error", exc.actual))
    return [p if isinstance(p, tuple) else (p.code, p.key, p.severity, p.actual) for p in problems]


def _numpy_validate(path: Path, **kw) -> list:
    return [p if isinstance(p, tuple) else (p.code, p.key, p.severity, p.actual) for p in validate(path, **kw)]


# ----------------------------------------------------------------------------- decoding and bits, against torch


@pytest.mark.parametrize("name, dtype", [("BF16", torch.bfloat16), ("F16", torch.float16), ("F8_E4M3", torch.float8_e4m3fn),
                                         ("F8_E5M2", torch.float8_e5m2)])
def test_every_bit_pattern_decodes_and_counts_as_torch_reads_it(name: str, dtype: torch.dtype) -> None:
    bits = torch.arange(2 ** (8 * dtype.itemsize), dtype=torch.int32)
    raw = bits.to(torch.int16 if dtype.itemsize == 2 else torch.uint8).numpy().tobytes()
    ours = decode(name, (len(bits),), raw)
    theirs = torch.frombuffer(bytearray(raw), dtype=dtype).float().numpy()
    assert ours.dtype == (np.float16 if name == "F16" else np.float32)  # numpy's own half; the others widened exactly
    ours = ours.astype(np.float32)
    same = (ours.view(np.uint32) == theirs.view(np.uint32)) | (np.isnan(ours) & np.isnan(theirs))
    assert same.all(), f"{int((~same).sum())} patterns decode differently, e.g. {np.flatnonzero(~same)[:5]}"
    assert nonfinite_count(name, raw) == int((~torch.isfinite(torch.frombuffer(bytearray(raw), dtype=dtype).float())).sum())


@pytest.mark.parametrize("name, dtype", [("F32", torch.float32), ("F64", torch.float64)])
def test_wide_floats_count_nan_and_inf_by_their_bits(name: str, dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    specials = torch.tensor([0.0, -0.0, 1.0, info.max, -info.max, info.tiny, info.tiny / 4, math.inf, -math.inf, math.nan], dtype=dtype)
    payloads = torch.tensor([0x7FF8_0000_0000_0001, -1, 0x7FF0_0000_0000_0001] if dtype == torch.float64 else [0x7FC0_0001, -1, 0x7F80_0001],
                            dtype=torch.int64 if dtype == torch.float64 else torch.int32).view(dtype)  # NaN payloads, sign set
    values = torch.cat([specials, payloads, torch.randn(3 * 2**20 + 5, dtype=dtype)])  # crosses the chunking
    values[2**20 + 7] = math.inf
    raw = values.numpy().tobytes()
    assert nonfinite_count(name, raw) == int((~torch.isfinite(values)).sum()) == 7
    assert (decode(name, tuple(values.shape), raw).view(np.uint8) == values.numpy().view(np.uint8)).all()


def test_integer_and_empty_tensors_hold_no_nan() -> None:
    assert nonfinite_count("I32", np.array([-1, 0x7F800000], dtype="<i4").tobytes()) == 0
    assert nonfinite_count("F32", b"") == 0
    assert decode("I16", (2,), np.array([-1, 5], dtype="<i2").tobytes()).tolist() == [-1, 5]


# ----------------------------------------------------------------------------- every conformance vector


@pytest.mark.parametrize("path, kw", VECTOR_CASES, ids=VECTOR_IDS)
def test_validate_on_numpy_reports_what_the_torch_checks_report(path: Path, kw: dict) -> None:
    assert _numpy_validate(path, **kw) == _torch_validate(path, **kw)


@pytest.mark.parametrize("path, kw", VECTOR_CASES, ids=VECTOR_IDS)
def test_load_arrays_accepts_and_refuses_as_load_does(path: Path, kw: dict) -> None:
    ours, theirs = _outcome(load_arrays, path, **kw), _outcome(adapterkit.load, path, **kw)
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "error":
        assert ours == theirs
    else:
        a, t = ours[1], theirs[1]
        assert set(a.tensors) == set(t.tensors)
        for key in t.tensors:
            want = t.tensors[key]
            got = a.tensors[key]
            if isinstance(got, torch.Tensor):  # a .bin is torch's format: load_arrays reads it as load does
                assert torch.equal(got, want) and got.dtype == want.dtype
                continue
            assert tuple(got.shape) == tuple(want.shape) and a.meta(key).dtype == t.meta(key).dtype
            if want.is_floating_point():
                assert np.array_equal(got.astype(np.float64), want.double().numpy(), equal_nan=True), key
            else:
                assert np.array_equal(got, want.numpy()), key


@pytest.mark.parametrize("path, kw", VECTOR_CASES, ids=VECTOR_IDS)
def test_info_on_numpy_gives_the_torch_summary(path: Path, kw: dict) -> None:
    opened = _outcome(open_adapter, path, **kw)
    if opened[0] == "error":
        return  # info raises open_adapter's error on both paths
    a = opened[1]
    ours, theirs = _outcome(describe, a), _outcome(describe, a, device="cpu")
    if ours[0] == "error" or theirs[0] == "error":
        assert ours == theirs
        return
    assert _close(ours[1], theirs[1]) == []


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("path, kw", VECTOR_CASES, ids=VECTOR_IDS)
def test_check_on_numpy_gives_the_problems_of_the_torch_path(path: Path, kw: dict, consumer: str) -> None:
    ours = _outcome(adapterkit.check, path, consumer, **kw)
    loaded = _outcome(adapterkit.load, path, **kw)
    theirs = loaded if loaded[0] == "error" else _outcome(check_adapter, loaded[1], consumer)
    if ours[0] == "ok" and theirs[0] == "ok":
        assert [(p.code, p.key, p.severity, str(p)) for p in ours[1]] == [(p.code, p.key, p.severity, str(p)) for p in theirs[1]]
    else:
        assert ours == theirs


# ----------------------------------------------------------------------------- random adapters


def _poison(adapter: Adapter, data: st.DataObject) -> Adapter:
    """``adapter`` with NaN/Inf written into some floating-point tensors (or none)."""
    tensors = {k: v.clone() for k, v in adapter.tensors.items()}
    for key in data.draw(st.lists(st.sampled_from(sorted(tensors)), max_size=2, unique=True)):
        t = tensors[key]
        if t.numel():
            flat = t.view(-1)
            flat[data.draw(st.integers(0, t.numel() - 1))] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return Adapter.from_tensors(adapter.config, tensors)


@SETTINGS
@given(adapter=adapters(), data=st.data(), form=st.sampled_from(["dir", "file"]))
def test_random_adapters_give_the_same_report_on_both_paths(tmp_path_factory, adapter: Adapter, data, form: str) -> None:
    tmp = tmp_path_factory.mktemp("tf")
    path = adapterkit.save(_poison(adapter, data), tmp / ("a.safetensors" if form == "file" else "a"), form=form)
    assert _numpy_validate(path) == _torch_validate(path)
    opened = open_adapter(path)
    assert _close(describe(opened), describe(opened, device="cpu")) == []
    for consumer in CONSUMERS:
        ours = _outcome(adapterkit.check, path, consumer)
        loaded = _outcome(adapterkit.load, path)
        theirs = loaded if loaded[0] == "error" else _outcome(check_adapter, loaded[1], consumer)
        assert (ours[0], [(p.code, p.key, str(p)) for p in ours[1]] if ours[0] == "ok" else ours[1:]) == \
               (theirs[0], [(p.code, p.key, str(p)) for p in theirs[1]] if theirs[0] == "ok" else theirs[1:])


def _report(r) -> dict:
    return r.to_dict()


def _diff_close(ours: dict, theirs: dict) -> list[str]:
    """The two diff reports equal but for rounding: REL on norms, cosines and energies; ANGLE on angles."""
    bad = []
    for m, n in zip(ours["modules"], theirs["modules"], strict=True):
        for key in m:
            x, y = m[key], n[key]
            if key.endswith("angles"):
                if len(x) != len(y) or not all(abs(a - b) <= ANGLE for a, b in zip(x, y)):  # NaN fails
                    bad.append(f"{m['name']}.{key}: {x} != {y}")
            else:
                bad += _close(x, y, f"{m['name']}.{key}")
    return bad + _close({k: v for k, v in ours.items() if k != "modules"}, {k: v for k, v in theirs.items() if k != "modules"})


@SETTINGS
@given(pair=st.one_of(
    st.tuples(lora_adapters(use_dora=st.just(False)), lora_adapters(use_dora=st.just(False))),
    st.tuples(adapters(use_dora=st.just(False)), adapters(use_dora=st.just(False))),
))
def test_diff_without_conflicts_agrees_on_both_paths(tmp_path_factory, pair: tuple[Adapter, Adapter]) -> None:
    a, b = pair
    if a.peft_type != b.peft_type:
        b = a  # the same kind on both sides (a different kind is refused on both paths alike: tested below)
    tmp = tmp_path_factory.mktemp("tfd")
    pa, pb = adapterkit.save(a, tmp / "a"), adapterkit.save(b, tmp / "b")
    ours = _outcome(diff, load_arrays(pa), load_arrays(pb), conflict="off")
    theirs = _outcome(diff, adapterkit.load(pa), adapterkit.load(pb), conflict="off", device="cpu")
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "error":
        assert ours == theirs
    else:
        assert _diff_close(_report(ours[1]), _report(theirs[1])) == []


def _small(tmp_path: Path, name: str, nan: bool = False, bad: float = math.nan) -> Path:
    cfg = adapterkit.LoraConfig(r=2, lora_alpha=2, target_modules=("q",))
    t = {"base_model.model.q.lora_A.weight": torch.ones(2, 3), "base_model.model.q.lora_B.weight": torch.ones(3, 2)}
    if nan:
        t["base_model.model.q.lora_B.weight"][1, 1] = bad
    return adapterkit.save(Adapter.from_tensors(cfg, t), tmp_path / name)


def test_diff_refuses_numpy_adapters_for_what_needs_torch(tmp_path: Path) -> None:
    a = _small(tmp_path, "a")
    arrays = load_arrays(a)
    for kwargs in ({"conflict": "block"}, {"conflict": "sample"}, {"conflict": "off", "device": "meta"}):
        with pytest.raises(AdapterkitError) as err:
            diff(arrays, arrays, **kwargs)
        assert err.value.code == "argument-invalid"
    with pytest.raises(AdapterkitError) as err:
        diff(arrays, adapterkit.load(a), conflict="off")
    assert err.value.code == "argument-invalid" and "1 of 2" in str(err.value)


# ----------------------------------------------------------------------------- the commands, with torch unimportable


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    """An environment in which ``import torch`` fails (a sitecustomize that blocks it)."""
    site = tmp_path_factory.mktemp("notorch")
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adapterkit", *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_four_commands_run_without_torch_and_print_what_the_torch_path_prints(tmp_path: Path, no_torch) -> None:
    gen = torch.Generator().manual_seed(5)
    cfg = adapterkit.LoraConfig(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"))
    tensors = {}
    for i in range(2):
        for m in ("q_proj", "v_proj"):
            tensors[f"base_model.model.layers.{i}.{m}.lora_A.weight"] = torch.randn(4, 32, generator=gen).bfloat16()
            tensors[f"base_model.model.layers.{i}.{m}.lora_B.weight"] = torch.randn(24, 4, generator=gen).bfloat16()
    a = adapterkit.save(Adapter.from_tensors(cfg, tensors), tmp_path / "a")
    b = adapterkit.save(Adapter.from_tensors(cfg, {k: v * 2 + 1 for k, v in tensors.items()}), tmp_path / "b")
    blocked = _cli(["info", str(a), "--json"], no_torch)
    assert blocked.returncode == 0, blocked.stderr
    assert _close(json.loads(blocked.stdout), json.loads(_cli(["info", str(a), "--json", "--device", "cpu"]).stdout)) == []
    for args in (["validate", str(a), "--json"], ["check", str(a), "--for", "vllm", "--json"], ["check", str(a), "--for", "peft"]):
        ours, theirs = _cli(args, no_torch), _cli(args)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), args
        assert ours.returncode == 0, ours.stderr
    ours = _cli(["diff", str(a), str(b), "--conflict", "off", "--json"], no_torch)
    theirs = _cli(["diff", str(a), str(b), "--conflict", "off", "--json", "--device", "cpu"])
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    o, t = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert _diff_close(o, t) == [] and o["summary"] == t["summary"]
    assert "import of torch halted" in _cli(["diff", str(a), str(b)], no_torch).stderr  # sign conflicts need torch


def test_a_nan_adapter_is_refused_alike_without_torch(tmp_path: Path, no_torch) -> None:
    a = _small(tmp_path, "a", nan=True)
    validated = _cli(["validate", str(a), "--json"], no_torch)
    assert validated.returncode == 1 and [p["code"] for p in json.loads(validated.stdout)["problems"]] == ["non-finite"]
    checked = _cli(["check", str(a), "--for", "vllm"], no_torch)
    assert checked.returncode == 2 and "non-finite" in checked.stderr  # as load refuses it
    info = _cli(["info", str(a), "--json"], no_torch)
    assert info.returncode == _cli(["info", str(a), "--json", "--device", "cpu"]).returncode == 1, info.stderr  # an error found
    assert _close(json.loads(info.stdout), json.loads(_cli(["info", str(a), "--json", "--device", "cpu"]).stdout)) == []
    assert [p["code"] for p in json.loads(info.stdout)["problems"]] == ["non-finite"]


# ----------------------------------------------------------------------------- survivors of the torchfree mutation list


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_each_dtype_gives_the_torch_figures_on_numpy(tmp_path: Path, dtype: torch.dtype) -> None:
    """Fixed adapters of every float dtype (random draws may miss one): fp64 factors are read in
    fp64 on both paths (rounded to fp32 they would move ‖ΔW‖ by ~1e-8, far beyond REL)."""
    gen = torch.Generator().manual_seed(11)
    cfg = adapterkit.LoraConfig(r=3, lora_alpha=5, target_modules=("q", "v"))
    pair = []
    for side in range(2):
        t = {}
        for m in ("q", "v"):
            t[f"base_model.model.{m}.lora_A.weight"] = torch.randn(3, 40, generator=gen, dtype=torch.float64).to(dtype)
            t[f"base_model.model.{m}.lora_B.weight"] = torch.randn(30, 3, generator=gen, dtype=torch.float64).to(dtype)
        pair.append(adapterkit.save(Adapter.from_tensors(cfg, t), tmp_path / f"a{side}"))
    opened = open_adapter(pair[0])
    assert _close(describe(opened), describe(opened, device="cpu")) == []
    ours = diff(load_arrays(pair[0]), load_arrays(pair[1]), conflict="off").to_dict()
    theirs = diff(adapterkit.load(pair[0]), adapterkit.load(pair[1]), conflict="off", device="cpu").to_dict()
    assert _diff_close(ours, theirs) == []


def test_an_adapter_against_itself_has_zero_angles_on_numpy(tmp_path: Path) -> None:
    """cos θ computed as 1 + a rounding must not become NaN (arccos is clipped to [0, 1])."""
    gen = torch.Generator().manual_seed(3)
    cfg = adapterkit.LoraConfig(r=8, lora_alpha=8, target_modules=("q",))
    path = adapterkit.save(Adapter.from_tensors(cfg, {"base_model.model.q.lora_A.weight": torch.randn(8, 96, generator=gen),
                                                     "base_model.model.q.lora_B.weight": torch.randn(64, 8, generator=gen)}), tmp_path / "a")
    (m,) = diff(load_arrays(path), load_arrays(path), conflict="off").modules
    assert len(m.col_angles) == len(m.row_angles) == 8
    assert all(0 <= a <= ANGLE for a in (*m.col_angles, *m.row_angles)), (m.col_angles, m.row_angles)
    assert m.cosine == pytest.approx(1.0, abs=1e-12)


def test_numpy_keeps_quiet_about_nan_as_torch_does(tmp_path: Path) -> None:
    """A NaN or Inf in a factor gives a NaN or Inf statistic (reported once, as a problem), never a
    RuntimeWarning (Inf·0 and Inf − Inf raise numpy's "invalid value" where torch says nothing)."""
    import warnings

    path = _small(tmp_path, "a", nan=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = describe(open_adapter(path))
        for bad in (math.inf, -math.inf):
            opened = open_adapter(_small(tmp_path, f"inf{bad}", nan=True, bad=bad))
            inf = describe(opened)
            assert [p["code"] for p in inf["problems"]] == ["non-finite"]
            assert _close(inf, describe(opened, device="cpu")) == []
        report = diff(*(load_arrays(_small(tmp_path, n)) for n in ("x", "y")), conflict="off")
    assert math.isnan(summary["per_module"]["q"]["delta_norm"]) and [p["code"] for p in summary["problems"]] == ["non-finite"]
    assert report.modules[0].cosine == pytest.approx(1.0)  # (diff never sees NaN: load_arrays refuses it, as load does)


def test_numpy_blas_threads_follow_the_users_choice_else_one() -> None:
    code = "import os, adapterkit.arrays as a; a._numpy(); print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, check=True)  # noqa: E731
    assert run({}).stdout.strip() == "1"
    assert run({"OPENBLAS_NUM_THREADS": "3"}).stdout.strip() == "3"


def test_a_bin_adapter_holding_nan_is_refused_by_check_as_load_refuses_it(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    adapterkit.save(Adapter.from_tensors(adapterkit.LoraConfig(r=2, lora_alpha=2, target_modules=("q",)), {
        "base_model.model.q.lora_A.weight": torch.ones(2, 3), "base_model.model.q.lora_B.weight": torch.ones(3, 2)}), tmp_path / "st")
    (folder / "adapter_config.json").write_bytes((tmp_path / "st" / "adapter_config.json").read_bytes())
    b = torch.ones(3, 2)
    b[0, 0] = math.nan
    torch.save({"base_model.model.q.lora_A.weight": torch.ones(2, 3), "base_model.model.q.lora_B.weight": b}, folder / "adapter_model.bin")
    for run in (adapterkit.load, load_arrays, lambda p: adapterkit.check(p, "vllm")):
        with pytest.raises(AdapterkitError) as err:
            run(folder)
        assert (err.value.code, err.value.key) == ("non-finite", "base_model.model.q.lora_B.weight")


def test_info_figures_of_ia3_and_prompt_adapters_from_first_principles(tmp_path: Path) -> None:
    """size = the entries of ia3_l (a feedforward one is (1, in)); a prompt's norm is the Frobenius norm of all tokens."""
    gen = torch.Generator().manual_seed(9)
    ia3 = adapterkit.IA3Config(target_modules=("k", "down"), feedforward_modules=("down",))
    l_k, l_down = torch.rand(12, 1, generator=gen) + 0.5, torch.rand(1, 20, generator=gen) + 0.5
    path = adapterkit.save(Adapter.from_tensors(ia3, {"base_model.model.k.ia3_l": l_k, "base_model.model.down.ia3_l": l_down}), tmp_path / "ia3")
    stats = describe(open_adapter(path))["per_module"]
    assert stats["k"]["size"] == 12 and stats["down"]["size"] == 20
    assert stats["down"]["scale_distance"] == pytest.approx(float(((l_down.double() - 1) ** 2).sum().sqrt()), rel=1e-12)
    emb = torch.randn(5, 8, generator=gen)
    prompt = adapterkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, token_dim=8, num_transformer_submodules=1,
                                           num_attention_heads=1, num_layers=1)
    path = adapterkit.save(Adapter.from_tensors(prompt, {"prompt_embeddings": emb}), tmp_path / "prompt")
    (stats,) = describe(open_adapter(path))["per_module"].values()
    assert stats["virtual_tokens"] == 5
    assert stats["norm"] == pytest.approx(math.sqrt(sum(float(x) ** 2 for x in emb.double().reshape(-1))), rel=1e-12)


def test_diff_of_a_bin_adapter_beside_a_safetensors_one_runs_on_torch(tmp_path: Path) -> None:
    st = _small(tmp_path, "st")
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((st / "adapter_config.json").read_bytes())
    torch.save({k: v * 2 for k, v in adapterkit.load(st).tensors.items()}, folder / "adapter_model.bin")
    for args in ([str(st), str(folder)], [str(folder), str(st)]):
        done = _cli(["diff", *args, "--conflict", "off", "--json"])
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["modules"][0]["cosine"] == pytest.approx(1.0)


def test_a_device_that_cannot_be_used_is_refused_even_without_statistics(tmp_path: Path) -> None:
    """The numpy path reads no device, but a bad ``--device`` is still the user's error to hear."""
    path = _small(tmp_path, "a")
    for no_modules in (True, False):
        with pytest.raises(AdapterkitError) as err:
            adapterkit.info(path, no_modules=no_modules, device="nosuchdevice")
        assert err.value.code == "device-unavailable"
