"""The fast read/write paths behave exactly like the plain ones.

``load`` reads the data region once into a private buffer and checks finite values one span
(a run of back-to-back tensors of one dtype) at a time; only a non-finite span leads to the
per-tensor pass that names the key and the count.  ``read_header`` remembers parsed headers by
their bytes.  ``write_atomic(durable=False)`` skips only the fsync.  No timings are asserted.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.dtypes import DTYPE_NAMES
from adapterkit.errors import AdapterkitError
from adapterkit.io import atomic, safetensors_file
from adapterkit.io.checks import _spans, value_problems
from adapterkit.io.safetensors_file import read_all, read_header, write_file

P = "base_model.model."
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
BAD = [float("nan"), float("inf"), float("-inf")]


def key(i: int, part: str) -> str:
    return f"{P}layers.{i}.q.lora_{part}.weight"


def lora_tensors(n: int, dtype: torch.dtype, r: int = 2, d_in: int = 3, d_out: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(n):
        out[key(i, "A")] = torch.randn(r, d_in, generator=g).to(dtype)
        out[key(i, "B")] = torch.randn(d_out, r, generator=g).to(dtype)
    return out


def config(r: int = 2) -> ak.LoraConfig:
    return ak.LoraConfig(r=r, lora_alpha=4, target_modules=("q",))


def write_dir(path: Path, ts: dict[str, torch.Tensor], r: int = 2) -> Path:
    """A PEFT-layout directory written by the raw writer (no value checks)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config(r).to_dict()))
    write_file(path / "adapter_model.safetensors", ts, {"format": "pt"})
    return path


def layout(path: Path) -> list[str]:
    """Keys in the order of their bytes in the data region."""
    header = read_header(path)
    return [i.key for i in sorted(header.tensors.values(), key=lambda i: i.begin)]


def non_finite(path: Path) -> list[tuple[str, str]]:
    return [(p.key, p.actual) for p in ak.validate(path) if p.code == "non-finite"]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


# ----------------------------------------------------------------------------- fused finite check


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_non_finite_found_anywhere_in_a_run(tmp_path, dtype, where, bad):
    ts = lora_tensors(4, dtype)
    d = write_dir(tmp_path / "d", ts)
    order = layout(d / "adapter_model.safetensors")  # one run of 8 back-to-back tensors
    victim = {"first": order[0], "middle": order[3], "last": order[-1]}[where]
    flat = ts[victim].reshape(-1)
    flat[0 if where == "first" else -1] = bad  # the run's first or last element, or inside
    write_dir(d, ts)
    with pytest.raises(AdapterkitError) as info:
        ak.load(d)
    exc = info.value
    assert (exc.code, exc.key, exc.actual) == ("non-finite", victim, f"1 non-finite of {flat.numel()}")
    assert Path(exc.path) == d / "adapter_model.safetensors"
    assert non_finite(d) == [(victim, f"1 non-finite of {flat.numel()}")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_finite_adapter_loads_bit_exact(tmp_path, dtype):
    ts = lora_tensors(3, dtype)
    d = write_dir(tmp_path / "d", ts)
    loaded = ak.load(d)
    reference = load_file(d / "adapter_model.safetensors")
    assert set(loaded.tensors) == set(ts)
    for k, t in ts.items():
        assert same(loaded.tensors[k], t) and same(loaded.tensors[k], reference[k])
        assert loaded.tensors[k].is_contiguous() and loaded.tensors[k].stride() == t.stride()


def test_mixed_dtypes_every_bad_tensor_reported_in_key_order(tmp_path):
    ts = {**lora_tensors(2, torch.float16), key(2, "A"): torch.randn(2, 3, dtype=torch.float64), key(2, "B"): torch.randn(4, 2, dtype=torch.float64),
          key(3, "A"): torch.randn(2, 3).bfloat16(), key(3, "B"): torch.randn(4, 2).bfloat16()}
    ts[key(0, "B")][1, 1] = float("nan")
    ts[key(0, "B")][2, 0] = float("inf")
    ts[key(2, "A")][0, 0] = float("-inf")
    ts[key(3, "B")][3, 1] = float("nan")
    d = write_dir(tmp_path / "d", ts)
    assert non_finite(d) == [(key(0, "B"), "2 non-finite of 8"), (key(2, "A"), "1 non-finite of 6"), (key(3, "B"), "1 non-finite of 8")]
    with pytest.raises(AdapterkitError) as info:
        ak.load(d)
    assert info.value.key == key(0, "B")


def test_zero_size_tensors_in_a_run(tmp_path):
    # r=0 is not a valid config rank, so the empty tensors are extra whole-module tensors (of modules without LoRA factors)
    ts = lora_tensors(2, torch.float32)
    ts[P + "layers.0.qw.weight"] = torch.empty(0, 3)
    ts[P + "layers.1.qw.weight"] = torch.empty(4, 0)
    ts[P + "layers.1.k.bias"] = torch.randn(2, 1, 3)  # an extra 3-D tensor of no LoRA module (unexpected-key is only a warning)
    d = write_dir(tmp_path / "d", ts)
    assert non_finite(d) == []
    loaded = ak.load(d)
    for k, t in ts.items():  # strides as torch makes them, a 0 dim counting as 1
        assert same(loaded.tensors[k], t) and loaded.tensors[k].stride() == t.stride()
    assert loaded.tensors[P + "layers.1.qw.weight"].stride() == (1, 1)
    ts[key(1, "B")][3, 1] = float("nan")  # after the empty ones in the layout
    write_dir(d, ts)
    assert non_finite(d) == [(key(1, "B"), "1 non-finite of 8")]


def test_unaligned_tensors_of_foreign_files_are_checked(tmp_path):
    # other writers may put an F32 tensor at an offset that is not a multiple of 4
    d = tmp_path / "d"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(config(1).to_dict()))
    k = {name: f"{P}layers.0.{m}.lora_{p}.weight" for name, m, p in [("qa", "q", "A"), ("qb", "q", "B"), ("ka", "k", "A"), ("kb", "k", "B")]}
    parts = [
        (k["qb"], torch.tensor([[1.5]], dtype=torch.float16)),  # 2 bytes: the next begins at 2
        (k["qa"], torch.tensor([[2.5, float("nan"), 3.0]])),  # F32 at offset 2, NaN inside
        (k["kb"], torch.tensor([[0.5]], dtype=torch.float16)),
        (k["ka"], torch.tensor([[1.0, 2.0, float("inf")]])),  # F32 at offset 16: aligned, Inf at its end
    ]
    header, body = {}, b""
    for name, t in parts:
        raw = bytes(safetensors_file.tensor_bytes(t))
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    raw_header = json.dumps(header).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + body)
    assert non_finite(d) == [(k["qa"], "1 non-finite of 3"), (k["ka"], "1 non-finite of 3")]
    with pytest.raises(AdapterkitError) as info:
        ak.load(d)
    assert (info.value.key, info.value.actual) == (k["qa"], "1 non-finite of 3")


def test_spans_cover_exactly_the_tensors():
    base = torch.zeros(20)
    base[5] = float("nan")  # in a gap between tensors: not part of any tensor
    base[19] = float("inf")  # after the last one
    views = [base[0:3], base[3:5], base[6:10], base[8:12], base[12:12], base[13:19]]  # adjacent, gap, overlap, empty
    spans = _spans(views)
    covered = sorted((s.storage_offset(), s.storage_offset() + s.numel()) for s in spans)
    assert covered == [(0, 5), (6, 12), (13, 19)]
    adapter = ak.Adapter.from_tensors(config(), {f"t{i}": v for i, v in enumerate(views)})
    assert value_problems(adapter) == []
    base[18] = float("nan")  # now inside the last view
    assert [(p.key, p.actual) for p in value_problems(adapter)] == [("t5", "1 non-finite of 6")]


def test_spans_keep_storages_dtypes_and_layouts_apart():
    one, two = torch.zeros(8), torch.zeros(8)
    as_half = torch.zeros(8, dtype=torch.float16)
    transposed = torch.zeros(3, 4).T  # not contiguous: its own span
    fp8 = torch.zeros(4).to(torch.float8_e4m3fn)
    ints = torch.zeros(4, dtype=torch.int32)  # not floating point: not checked
    spans = _spans([one[:4], two[4:], one[4:], as_half, transposed, fp8, ints])
    assert sorted(s.numel() for s in spans) == [4, 4, 8, 8, 12]
    tensors = {"one_a": one[:4], "two": two[4:], "one_b": one[4:], "half": as_half, "t": transposed, "fp8": fp8, "ints": ints}
    adapter = ak.Adapter.from_tensors(config(), tensors)
    assert value_problems(adapter) == []
    for name, poison in [("two", lambda: two.__setitem__(7, float("nan"))), ("t", lambda: transposed.__setitem__((3, 2), float("inf"))),
                         ("half", lambda: as_half.__setitem__(0, float("-inf"))), ("fp8", lambda: fp8.__setitem__(3, float("nan")))]:
        poison()
        assert [(p.key, p.actual) for p in value_problems(adapter)] == [(name, f"1 non-finite of {tensors[name].numel()}")]
        tensors[name].zero_()


def test_value_problems_of_a_lazy_adapter_read_each_tensor(tmp_path):
    ts = lora_tensors(2, torch.float16)
    ts[key(1, "A")][0, 2] = float("nan")
    d = write_dir(tmp_path / "d", ts)
    lazy = ak.open_adapter(d)
    assert [(p.key, p.actual) for p in value_problems(lazy)] == [(key(1, "A"), "1 non-finite of 6")]


# ----------------------------------------------------------------------------- the read itself


@pytest.mark.parametrize("n", [2, 600], ids=["small", "over-2MB"])  # torch.empty vs huge-page buffer
def test_loaded_tensors_own_their_memory(tmp_path, n):
    ts = lora_tensors(n, torch.float32, r=8, d_in=64, d_out=64)
    d = write_dir(tmp_path / "d", ts, r=8)
    weights = d / "adapter_model.safetensors"
    before = weights.read_bytes()
    loaded = ak.load(d)
    assert max(i.end for i in read_header(weights).tensors.values()) >= (2 * 1024 * 1024 if n > 2 else 0)
    # the file is not held open, and neither replacing nor truncating it touches the tensors
    if Path("/proc/self/fd").is_dir():
        assert all(os.path.realpath(f"/proc/self/fd/{fd}") != str(weights.resolve()) for fd in os.listdir("/proc/self/fd"))
    with open(weights, "r+b") as f:  # in place, the very file that was read (a mapping would SIGBUS)
        f.truncate(0)
    for k, t in ts.items():
        assert same(loaded.tensors[k], t)
    write_dir(d, {k: torch.zeros_like(t) for k, t in ts.items()}, r=8)  # atomic replace
    for k, t in ts.items():
        assert same(loaded.tensors[k], t)
    loaded.tensors[key(0, "A")].add_(1)  # writable, and private
    weights.write_bytes(before)
    assert same(ak.load(d).tensors[key(0, "A")], ts[key(0, "A")])


def test_read_loops_over_short_reads(tmp_path, monkeypatch):
    ts = lora_tensors(3, torch.float64)
    d = write_dir(tmp_path / "d", ts)
    header = read_header(d / "adapter_model.safetensors")
    real = safetensors_file._read_into

    class Trickle:  # a file that hands out at most 5 bytes per read
        def __init__(self, f):
            self.f = f

        def readinto(self, view):
            return self.f.readinto(view[:5])

    monkeypatch.setattr(safetensors_file, "_read_into", lambda f, view: real(Trickle(f), view))
    out = read_all(header)
    for k, t in ts.items():
        assert same(out[k], t)


def test_file_shrunk_after_the_header_was_read(tmp_path):
    d = write_dir(tmp_path / "d", lora_tensors(2, torch.float32))
    weights = d / "adapter_model.safetensors"
    header = read_header(weights)
    data = weights.read_bytes()
    weights.write_bytes(data[:-3])
    with pytest.raises(AdapterkitError) as info:
        read_all(header)
    assert info.value.code == "truncated-file" and "changed while reading" in info.value.message


# ----------------------------------------------------------------------------- the header memo


def test_header_memo_sees_every_change(tmp_path):
    d = write_dir(tmp_path / "d", lora_tensors(2, torch.float16))
    weights = d / "adapter_model.safetensors"
    first, again = read_header(weights), read_header(weights)
    assert first == again and first.tensors is not again.tensors and first.metadata is not again.metadata
    again.tensors.clear()  # callers may do as they like with their copy
    assert read_header(weights).tensors == first.tensors
    write_dir(d, lora_tensors(3, torch.float32))  # same path, new header
    assert len(read_header(weights).tensors) == 6
    good = weights.read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    renamed = good[:8] + good[8 : 8 + n].replace(b"layers.2.", b"layers.7.") + good[8 + n :]  # same size, new keys
    weights.write_bytes(renamed)
    assert sorted(read_header(weights).tensors)[-1] == key(7, "B")
    weights.write_bytes(good)
    assert sorted(read_header(weights).tensors)[-1] == key(2, "B")
    bad = good[:8] + good[8 : 8 + n].replace(b'"F32"', b'"F33"', 1) + good[8 + n :]
    for _ in range(2):  # errors are raised every time, never remembered
        weights.write_bytes(bad)
        with pytest.raises(AdapterkitError) as info:
            read_header(weights)
        assert info.value.code == "header-invalid"
        weights.write_bytes(good)
        assert len(read_header(weights).tensors) == 6


def test_header_over_the_memo_limit_is_parsed_each_time(tmp_path, monkeypatch):
    d = write_dir(tmp_path / "d", lora_tensors(1, torch.float32))
    weights = d / "adapter_model.safetensors"
    monkeypatch.setattr(safetensors_file, "_MEMO_MAX_BYTES", 0)
    calls = []
    real = safetensors_file._parse_header
    monkeypatch.setattr(safetensors_file, "_parse_header", lambda *a: calls.append(1) or real(*a))
    assert read_header(weights) == read_header(weights)
    assert len(calls) == 2


# ----------------------------------------------------------------------------- writes


def test_write_atomic_durable_false_skips_only_the_fsync(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    atomic.write_atomic(target, [b"new ", memoryview(b"bytes")], durable=False)
    assert target.read_bytes() == b"new bytes" and synced == []
    atomic.write_atomic(target, [b"durable"])
    assert target.read_bytes() == b"durable" and len(synced) == 1

    def chunks():
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(AdapterkitError):
        atomic.write_atomic(target, chunks(), durable=False)
    assert target.read_bytes() == b"durable"
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]


@pytest.mark.parametrize("form", ["dir", "file"])
def test_save_durable_false_writes_the_same_bytes(tmp_path, form, monkeypatch):
    adapter = ak.Adapter.from_tensors(config(), lora_tensors(2, torch.bfloat16))
    a = ak.save(adapter, tmp_path / ("a.safetensors" if form == "file" else "a"), form=form)
    synced = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd))
    b = ak.save(adapter, tmp_path / ("b.safetensors" if form == "file" else "b"), form=form, durable=False)
    assert synced == []
    files = ["."] if form == "file" else ["adapter_model.safetensors", "adapter_config.json"]
    for name in files:
        assert (a / name if form == "dir" else a).read_bytes() == (b / name if form == "dir" else b).read_bytes()
    assert ak.load(b) == adapter


# ----------------------------------------------------------------------------- header rules, unchanged by the faster loop


@pytest.mark.parametrize(("shape", "offsets", "match"), [
    ([2**62, 4, -1], [0, 0], "shape must be"),  # a bad dim after an overflow: the type rule is reported
    ([2**62, 4, 1.0], [0, 0], "shape must be"),
    ([2**64], [0, 0], "too large"),
    ([0] + [2**62] * 2000, [0, 0], "too large"),  # many huge dims: no huge integers built
    ([2, 2], [True, 16], "data_offsets must be"),
    ([2, 2], [0, 16, 32], "data_offsets must be"),
])
def test_header_rule_precedence(tmp_path, shape, offsets, match):
    d = write_dir(tmp_path / "d", lora_tensors(1, torch.float32))
    weights = d / "adapter_model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["extra"] = {"dtype": "F32", "shape": shape, "data_offsets": offsets}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(AdapterkitError) as info:
        read_header(weights)
    assert info.value.code == "header-invalid" and info.value.key == "extra" and match in info.value.message
