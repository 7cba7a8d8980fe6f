"""Hostile input: every reader ends in success or an AdapterkitError, within bounds (issue 11).

* A bounded sample of ``scripts/fuzz.py``'s campaign (case numbers drawn by hypothesis).
* Hypothesis-built files (random bytes; headers built from parts) against the ``safetensors``
  library: what the library refuses is refused, what both read is bitwise identical, and what
  only the library reads breaks a rule of the documented stricter list.
* One test per mutation class: truncation at every byte, overlapping / out-of-range / negative
  offsets, huge header lengths, dtype vs byte count, repeated names, non-UTF-8 and surrogate
  names, nesting, huge shapes, ``-0`` and long integers; configs with wrong types, NaN or
  enormous ``r``; index files naming shards with ``..`` or absolute paths.
* A header claiming far more data than the file holds is refused before any allocation.
* Malicious pickles (several payload styles) given to every entry point that can see a ``.bin``:
  refused with ``unsafe-pickle``, and the code never runs (a marker file never appears).
* ``info`` / ``validate`` on a 512 MiB adapter and ``info`` on a 512 MiB sharded checkpoint, in a
  subprocess: peak memory and bytes read, header-only where no tensor is needed.

Oracles: the safetensors library, byte positions computed here from the format's layout, and
file-system facts (a marker file); never adapterkit's own helpers.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import adapterkit as ak
from adapterkit.checkpoint import open_checkpoint
from adapterkit.cli import main
from adapterkit.errors import CODES, AdapterkitError
from adapterkit.io import safetensors_file
from adapterkit.io.safetensors_file import read_all, read_header

ROOT = Path(__file__).resolve().parents[1]
P = "base_model.model."
A, B = P + "layers.0.q.lora_A.weight", P + "layers.0.q.lora_B.weight"


def _fuzz():
    if "fuzz" in sys.modules:
        return sys.modules["fuzz"]
    spec = importlib.util.spec_from_file_location("fuzz", ROOT / "scripts" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz"] = module
    spec.loader.exec_module(module)
    return module


def st_file(header: dict | bytes, body: bytes = b"") -> bytes:
    """A safetensors file from a header (a dict, or raw JSON text) and a data buffer."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def write(tmp_path: Path, data: bytes, name: str = "x.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def library_reads(path: Path) -> dict[str, torch.Tensor] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # any refusal
        return None


def ours(path: Path) -> dict[str, torch.Tensor] | AdapterkitError:
    try:
        return read_all(read_header(path))
    except AdapterkitError as exc:
        return exc


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_agrees_with_library(path: Path) -> str:
    """The differential: returns 'both-read', 'both-refuse' or 'stricter:<rule>'."""
    theirs, mine = library_reads(path), ours(path)
    if theirs is None:
        assert isinstance(mine, AdapterkitError), f"the library refuses {path.name}, adapterkit reads it"
        return "both-refuse"
    if isinstance(mine, AdapterkitError):
        rule = _fuzz().stricter_rule(mine)
        assert rule is not None, f"adapterkit refuses what the library reads, with no documented rule: {mine}"
        return f"stricter:{rule}"
    assert sorted(mine) == sorted(theirs)
    for key in mine:
        assert (mine[key].dtype, mine[key].shape, raw(mine[key])) == (theirs[key].dtype, theirs[key].shape, raw(theirs[key])), key
    return "both-read"


def refuses(path: Path, code: str | set[str], via=None) -> AdapterkitError:
    via = via or (lambda p: read_all(read_header(p)))
    with pytest.raises(AdapterkitError) as info:
        via(path)
    assert info.value.code in ({code} if isinstance(code, str) else code), info.value
    assert info.value.path is not None
    return info.value


# ----------------------------------------------------------------------------- the campaign, sampled


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _fuzz().make_all_seeds(tmp_path_factory.mktemp("seeds"))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=st.integers(0, 2**32))
def test_campaign_sample(seeds, tmp_path, case):
    fuzz = _fuzz()
    result = fuzz.Result()
    work = tmp_path / f"case{case}"
    old = safetensors_file._private_buffer
    safetensors_file._private_buffer = fuzz._recording_private_buffer
    try:
        import signal

        previous = signal.signal(signal.SIGALRM, fuzz._alarm)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tracemalloc.start()
                try:
                    fuzz.run_case(result, fuzz.random.Random(f"7:{case}"), seeds, work, f"#{case}", 30.0, True)
                finally:
                    tracemalloc.stop()
        finally:
            signal.signal(signal.SIGALRM, previous)
    finally:
        safetensors_file._private_buffer = old
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    assert not result.kinds, result.failures
    assert all(k.split(":", 1)[1] in CODES or k.split(":", 1)[1] in ("ok", "clean", "both-read", "both-refuse")
               or k.startswith(("validate:", "diff:stricter:")) for k in result.outcomes), result.outcomes


def test_campaign_run_counts_and_reports(tmp_path):
    """A short fixed run through ``run``: every family of seeds is reached, the mutations reach
    deep enough to produce a spread of outcomes, and the summary reports them."""
    fuzz = _fuzz()
    result = fuzz.run(iterations=200, seed=3, workdir=tmp_path)
    assert result.iterations == 200 and not result.kinds, result.failures[:3]
    steps = {k.split(":")[0] for k in result.outcomes}
    assert {"open", "load", "validate", "ckpt", "ckpt-index", "ckpt-read", "diff", "reload-file"} <= steps, steps
    codes = {k.split(":", 1)[1] for k in result.outcomes if k.startswith("open:")}
    assert {"ok", "header-invalid", "truncated-file", "offset-out-of-range", "config-invalid", "bin-invalid"} <= codes, result.outcomes
    assert all(c in CODES or c == "ok" for c in codes)
    assert result.outcomes["load:non-finite"] and result.outcomes["ckpt:checkpoint-invalid"], result.outcomes
    assert result.outcomes["load:digest-mismatch"], result.outcomes  # digested seeds: data edits are caught by the digest
    assert result.outcomes["diff:both-read"] and result.outcomes["diff:both-refuse"], result.outcomes
    text = fuzz.summary(result)
    assert text.startswith("200 cases, 0 failures") and "slowest case:" in text


def test_campaign_counts_a_crash_as_a_failure(tmp_path, monkeypatch):
    """The harness itself: an exception that is not an AdapterkitError, a disagreement with the
    library, a timeout and an outsized allocation are each counted as failures."""
    fuzz = _fuzz()
    result = fuzz.Result()
    fuzz._attempt(result, "open", "x", lambda: 1 / 0)
    assert result.kinds == {"crash": 1} and result.outcomes["open:CRASH"] == 1

    def converted_memory_error():
        try:
            raise MemoryError
        except MemoryError as exc:
            raise ak.errors.FormatError("m") from exc

    fuzz._attempt(result, "open", "x", converted_memory_error)
    assert result.kinds["allocation"] == 1
    path = write(tmp_path, st_file(b' {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)))
    monkeypatch.setattr(fuzz, "read_header", lambda p: (_ for _ in ()).throw(ak.errors.FormatError("no", path=p)))
    assert fuzz.differential(path)[0] == "CRASH"  # adapterkit refuses, the library reads, no rule explains it
    monkeypatch.undo()
    assert fuzz.differential(path) == ("both-read", None)
    monkeypatch.setattr(fuzz, "read_all", lambda h: {"a": torch.ones(1)})  # same key, dtype and shape; other bytes
    assert fuzz.differential(path)[0] == "CRASH"


def test_mutators_survive_damaged_input():
    """Mutations stack: a mutator meets what an earlier one made of the file (a weight_map whose
    values are objects ended a 100k campaign once).  Every mutator returns bytes for any of these."""
    fuzz = _fuzz()
    inputs = [b"", b"{}", b"[]", b'{"weight_map": {"a": {"x": 1}, "b": [1], "c": null}}', b'{"weight_map": {"a": "m.safetensors"}, "metadata": 3}',
              st_file({"a": ["F32", [1], [0, 4]], "b": {"dtype": "F32"}}, bytes(4)), st_file({"__metadata__": 5}), b"\xff" * 9]
    mutators = {*fuzz.SAFETENSORS_MUTATORS, *fuzz.BYTES_MUTATORS, *fuzz.CONFIG_MUTATORS, *fuzz.INDEX_MUTATORS}
    for mutator in sorted(mutators, key=lambda m: m.__name__):
        for i, data in enumerate(inputs):
            for seed in range(12):
                assert isinstance(mutator(fuzz.random.Random(seed), data), bytes), (mutator.__name__, i, seed)


# ----------------------------------------------------------------------------- hypothesis vs the library

LIB_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "C64": 8}


@st.composite
def headers(draw):
    """A header of up to 4 entries laid out back to back, then one part possibly damaged."""
    n = draw(st.integers(0, 4))
    header: dict = {}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.sampled_from(["format", "adapterkit.version", "k"]),
                                                      st.sampled_from(["pt", "1.0", "2.0", "x", ""]), max_size=2))
    offset = 0
    for i in range(n):
        dtype = draw(st.sampled_from(sorted(LIB_DTYPES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        size = LIB_DTYPES[dtype]
        for d in shape:
            size *= d
        header[draw(st.sampled_from(["a", "b", "é", "a.b", f"t{i}"])) + str(i)] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    body = bytes(draw(st.lists(st.integers(0, 255), min_size=offset, max_size=offset)))
    damage = draw(st.sampled_from(["none", "offset", "shape", "dtype", "body", "extra"]))
    keys = [k for k in header if k != "__metadata__"]
    if keys and damage != "none":
        entry = header[draw(st.sampled_from(keys))]
        if damage == "offset":
            entry["data_offsets"][draw(st.integers(0, 1))] += draw(st.sampled_from([-1, 1, 2**40, -(2**40)]))
        elif damage == "shape":
            entry["shape"] = draw(st.lists(st.integers(-1, 2**64), max_size=3))
        elif damage == "dtype":
            entry["dtype"] = draw(st.sampled_from(["F32", "U8", "X", "f32", "F8_E8M0"]))
        elif damage == "body":
            body = body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=3))
        else:
            entry["x"] = draw(st.recursive(st.none() | st.integers() | st.text(max_size=3), lambda c: st.lists(c, max_size=2), max_leaves=5))
    return header, body


@given(data=st.binary(max_size=64))
def test_random_bytes(tmp_path_factory, data):
    path = write(tmp_path_factory.mktemp("b"), data)
    assert assert_agrees_with_library(path) in ("both-refuse", "both-read")


@given(hb=headers())
def test_built_headers_agree_with_the_library(tmp_path_factory, hb):
    header, body = hb
    path = write(tmp_path_factory.mktemp("h"), st_file(header, body))
    assert_agrees_with_library(path)


@pytest.mark.parametrize("vector", sorted((ROOT / "spec" / "v1" / "vectors").rglob("*.safetensors")), ids=lambda p: p.parent.name)
def test_spec_vectors_agree_with_the_library(vector):
    assert_agrees_with_library(vector)


# ----------------------------------------------------------------------------- mutation classes, one by one


def valid_file() -> tuple[bytes, int]:
    """A small valid file (two tensors) and its header length N."""
    header = {"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}}
    raw_header = json.dumps(header).encode()
    return st_file(raw_header, bytes(range(32))), len(raw_header)


def test_truncation_at_every_byte(tmp_path):
    data, n = valid_file()
    for cut in range(len(data)):
        path = write(tmp_path, data[:cut])
        exc = refuses(path, "truncated-file")  # inside the 8-byte prefix, the header or the data alike
        region = "prefix" if cut < 8 else "header" if cut < 8 + n else "data"
        assert exc.key is None or region == "data", (cut, exc)  # only a cut in the data names a tensor
        assert library_reads(path) is None, cut
    assert assert_agrees_with_library(write(tmp_path, data)) == "both-read"
    assert n > 8


@pytest.mark.parametrize(("offsets", "code"), [
    ({"a": [0, 24], "b": [16, 24]}, "offset-out-of-range"),  # b overlaps a (and is the wrong size)
    ({"a": [0, 24], "b": [20, 28]}, "offset-out-of-range"),  # b starts inside a's bytes
    ({"a": [0, 24], "b": [32, 40]}, "offset-out-of-range"),  # a hole
    ({"a": [0, 24], "b": [24, 2**64 + 8]}, "offset-out-of-range"),  # out of range of u64
    ({"a": [0, 24], "b": [2**40, 2**40 + 8]}, "offset-out-of-range"),
    ({"a": [-24, 0], "b": [24, 32]}, "header-invalid"),  # negative
    ({"a": [0, 24], "b": [24, -8]}, "header-invalid"),
])
def test_bad_offsets(tmp_path, offsets, code):
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": offsets["a"]}, "b": {"dtype": "BF16", "shape": [4], "data_offsets": offsets["b"]}}
    path = write(tmp_path, st_file(header, bytes(32)))
    refuses(path, code)
    assert assert_agrees_with_library(path) == "both-refuse"


@pytest.mark.parametrize(("b", "size"), [([16, 24], 24), ([0, 8], 24), ([20, 28], 28)])
def test_overlap_inside_the_data(tmp_path, b, size):
    """b's bytes lie inside a's, and the file ends where the last tensor ends: only the overlap is wrong."""
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "b": {"dtype": "BF16", "shape": [4], "data_offsets": b}}
    path = write(tmp_path, st_file(header, bytes(size)))
    refuses(path, "offset-out-of-range")
    assert assert_agrees_with_library(path) == "both-refuse"


@pytest.mark.parametrize("n", [2**63, 2**64 - 1, 10**8 + 1, 10**9])
def test_huge_header_length(tmp_path, n):
    path = write(tmp_path, struct.pack("<Q", n) + b"{}" + bytes(64))
    tracemalloc.start()
    try:
        refuses(path, "header-invalid")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the header length is checked before it is read
    assert assert_agrees_with_library(path) == "both-refuse"


@pytest.mark.parametrize("dtype", ["F64", "F16", "U8", "BOOL", "I64"])
def test_dtype_disagrees_with_byte_count(tmp_path, dtype):
    path = write(tmp_path, st_file({"a": {"dtype": dtype, "shape": [2, 3], "data_offsets": [0, 24]}}, bytes(24)))
    refuses(path, "offset-out-of-range")
    assert assert_agrees_with_library(path) == "both-refuse"


def test_repeated_names(tmp_path):
    entry = b'{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    twice = write(tmp_path, st_file(b'{"a":' + entry + b',"a":' + entry + b"}", bytes(4)))
    refuses(twice, "header-invalid")
    assert assert_agrees_with_library(twice) == "stricter:R1-1"  # the library keeps one of them
    field = write(tmp_path, st_file(b'{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)), "f.safetensors")
    refuses(field, "header-invalid")
    assert assert_agrees_with_library(field) == "both-refuse"


@pytest.mark.parametrize("name", [b"a\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"a\\ud800", b"\\udfff", b"\\ude00\\ud83d"])
def test_names_without_utf8(tmp_path, name):
    path = write(tmp_path, st_file(b'{"' + name + b'":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)))
    refuses(path, "header-invalid")
    assert assert_agrees_with_library(path) == "both-refuse"


@pytest.mark.parametrize("member", [b'"x":"\\uD800"', b'"x":["a","\\udc00"]', b'"x":{"k":[{"j":"\\uDBFF"}]}', b'"x\\ud800":1'])
def test_surrogates_in_ignored_members(tmp_path, member):
    """Anywhere in the text, any case of hex digits: values, arrays, nested objects, member names."""
    path = write(tmp_path, st_file(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],' + member + b"}}", bytes(4)))
    refuses(path, "header-invalid")
    assert assert_agrees_with_library(path) == "both-refuse"
    meta = write(tmp_path, st_file(b'{"__metadata__":{"k":"v\\uDFFF"}}'), "m.safetensors")
    refuses(meta, "header-invalid")
    assert assert_agrees_with_library(meta) == "both-refuse"


def test_surrogate_pair_and_escaped_nul_are_names(tmp_path):
    path = write(tmp_path, st_file(b'{"a\\ud83d\\ude00\\u0000":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)))
    assert list(read_header(path).tensors) == ["a\U0001f600\x00"]
    assert assert_agrees_with_library(path) == "both-read"


@pytest.mark.parametrize(("depth", "ok"), [(125, True), (126, False), (127, False), (5000, False), (200_000, False)])
def test_nesting(tmp_path, depth, ok):
    """An ignored member nested ``depth`` deep: the header and the entry are two levels more;
    128 in all is past the library's limit (serde_json's 128)."""
    for nested in ("[" * depth + "]" * depth, '{"k":' * depth + "1" + "}" * depth):
        path = write(tmp_path, st_file(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + nested.encode() + b"}}", bytes(4)))
        if ok:
            assert list(read_header(path).tensors) == ["a"]
        else:
            refuses(path, "header-invalid")
        assert assert_agrees_with_library(path) == ("both-read" if ok else "both-refuse")
    whole = write(tmp_path, st_file(("[" * depth + "]" * depth).encode()), "w.safetensors")
    refuses(whole, "header-invalid")


@pytest.mark.parametrize(("shape", "offsets", "code"), [
    ([2**20, 2**20], [0, 4 * 2**40], "truncated-file"),  # agrees with its offsets; only the file size refutes it
    ([2**62], [0, 2**64], "truncated-file"),  # offsets past u64, still consistent with the shape
    ([2**31, 2**32], [0, 0], "header-invalid"),  # 2^63 elements
    ([2**64], [0, 0], "header-invalid"),
    ([1] * 100_000 + [2], [0, 8], "offset-out-of-range"),  # a long shape of a wrong size
])
def test_huge_shapes(tmp_path, shape, offsets, code):
    path = write(tmp_path, st_file({"a": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}, bytes(16)))
    refuses(path, code)
    assert assert_agrees_with_library(path) == "both-refuse"


def test_entry_as_an_array_is_a_stricter_rule(tmp_path):
    """The library reads ["F32", [1], [0, 4]] as an entry (a record from the array of its fields)."""
    path = write(tmp_path, st_file(b'{"a":["F32",[1],[0,4]]}', bytes(4)))
    refuses(path, "header-invalid")
    assert assert_agrees_with_library(path) == "stricter:R5.2-8"
    for entry in (b'["F32",[1],[0,4],1]', b'[[1],"F32",[0,4]]', b'"F32"', b"null"):
        path = write(tmp_path, st_file(b'{"a":' + entry + b"}", bytes(4)))
        refuses(path, "header-invalid")
        assert assert_agrees_with_library(path) == "both-refuse"


def test_empty_tensor_with_unaddressable_shape_is_a_stricter_rule(tmp_path):
    path = write(tmp_path, st_file({"a": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}))
    refuses(path, "header-invalid")
    assert assert_agrees_with_library(path) == "stricter:R5.2-8"


@pytest.mark.parametrize("text", [b'"data_offsets":[-0,4]', b'"data_offsets":[0,4],"shape":[-0]', b'"data_offsets":[0,4],"x":1' + b"0" * 309,
                                  b'"data_offsets":[0,4],"x":1' + b"0" * 5000, b'"data_offsets":[0,4.0]', b'"data_offsets":[0,4e0]'])
def test_integers(tmp_path, text):
    body = text if b"shape" in text else text + b',"shape":[1]'
    path = write(tmp_path, st_file(b'{"a":{"dtype":"F32",' + body + b"}}", bytes(4)))
    refuses(path, "header-invalid")
    assert assert_agrees_with_library(path) == "both-refuse"


@pytest.mark.parametrize("digits", [b"2" + b"0" * 308, b"-17976931348623159" + b"0" * 292])
def test_integers_of_309_digits_beyond_a_double(tmp_path, digits):
    path = write(tmp_path, st_file(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + digits + b"}}", bytes(4)))
    refuses(path, "header-invalid")
    assert assert_agrees_with_library(path) == "both-refuse"


def test_integers_that_stay_valid(tmp_path):
    # 309 digits, inside a double's range.  (The library refuses 17976931348623157 followed by 292
    # zeros, the largest double written as an integer, though it reads 17976931348623157e292: its
    # integer path overflows at the very top of the range, a flaw of the library, not a rule.)
    big = b"1" + b"0" * 308 + b",-17976931348623156" + b"0" * 292
    path = write(tmp_path, st_file(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[-0,' + big + b',-0.0]}}', bytes(4)))
    assert list(read_header(path).tensors) == ["a"]
    assert assert_agrees_with_library(path) == "both-read"


@pytest.mark.parametrize("version", ["1" * 5000 + ".0", "2.0", "0.9"])
def test_unknown_major_version_of_any_length(tmp_path, version):
    path = write(tmp_path, st_file({"__metadata__": {"adapterkit.version": version}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)))
    refuses(path, "version-unsupported")
    assert assert_agrees_with_library(path) == "stricter:R5.2-7"


def test_header_claiming_more_than_the_file_is_refused_before_allocation(tmp_path, monkeypatch):
    """4 TiB claimed by a 100-byte file, in an adapter and in a checkpoint shard: refused by the
    header checks, and no buffer is ever requested (each allocating call is made to fail)."""
    def no_alloc(*a, **k):
        raise AssertionError("an allocation was attempted")

    claim = {"__metadata__": {"format": "pt"}, A: {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4 * 2**40]}}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(ak.LoraConfig(r=2, lora_alpha=2, target_modules=("q",)).to_dict()))
    write(adapter, st_file(claim, bytes(64)), "adapter_model.safetensors")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write(ckpt, st_file({"model.w": claim[A]}, bytes(64)), "model.safetensors")
    monkeypatch.setattr(safetensors_file, "_private_buffer", no_alloc)
    monkeypatch.setattr(torch, "empty", no_alloc)
    monkeypatch.setattr(torch, "frombuffer", no_alloc)
    tracemalloc.start()
    try:
        for via, path in ((ak.open_adapter, adapter), (ak.load, adapter), (open_checkpoint, ckpt)):
            refuses(path, "truncated-file", via=via)
        problems = ak.validate(adapter)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [p.code for p in problems] == ["truncated-file"]
    assert peak < 1 << 20


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400, "1" + "0" * 5000, "-0", "2.0", "1e0",
                                   "true", "null", '"8"', "[8]", "0", "-1", "9223372036854775808", "1e18", "1000000000000000000"])
def test_config_r(tmp_path, value):
    """r that is not a positive integer of sane size: config-invalid, from every reader."""
    d = tmp_path / "a"
    d.mkdir()
    base = ak.LoraConfig(r=2, lora_alpha=2, target_modules=("q",)).to_dict()
    text = json.dumps(base).replace('"r": 2', f'"r": {value}')
    assert f'"r": {value}' in text
    (d / "adapter_config.json").write_text(text)
    safetensors_file.write_file(d / "adapter_model.safetensors", {A: torch.zeros(2, 3), B: torch.zeros(4, 2)}, {"format": "pt"})
    for via in (ak.open_adapter, ak.load):
        with pytest.raises(AdapterkitError) as info:
            via(d)
        assert info.value.code in ("config-invalid", "shape-mismatch"), info.value
    assert {p.code for p in ak.validate(d) if p.severity == "error"} & {"config-invalid", "shape-mismatch"}


@pytest.mark.parametrize("field", ["target_modules", "lora_alpha", "peft_type", "rank_pattern", "use_dora", "lora_dropout"])
@pytest.mark.parametrize("value", [None, 3, "x", [], {}, [1, 2], {"a": "b"}, True, 1e300])
def test_config_wrong_types(tmp_path, field, value):
    d = tmp_path / "a"
    d.mkdir()
    data = ak.LoraConfig(r=2, lora_alpha=2, target_modules=("q",)).to_dict()
    data[field] = value
    (d / "adapter_config.json").write_text(json.dumps(data))
    safetensors_file.write_file(d / "adapter_model.safetensors", {A: torch.zeros(2, 3), B: torch.zeros(4, 2)}, {"format": "pt"})
    for via in (ak.open_adapter, ak.load, ak.validate):
        try:
            via(d)
        except AdapterkitError as exc:
            assert exc.code in CODES
    # no exception other than AdapterkitError escaped


# ----------------------------------------------------------------------------- checkpoint indexes


def _sharded(tmp_path: Path) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    safetensors_file.write_file(d / names[0], {"model.a": torch.ones(2)}, {"format": "pt"})
    safetensors_file.write_file(d / names[1], {"model.b": torch.ones(3)}, {"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"model.a": names[0], "model.b": names[1]}}))
    return d


@pytest.mark.parametrize("name", ["../model-00002-of-00002.safetensors", "..", "sub/../model-00002-of-00002.safetensors", "ABS",
                                  "..\\model-00002-of-00002.safetensors", "sub\\model-00002-of-00002.safetensors", "./model-00002-of-00002.safetensors", ".hidden.safetensors",
                                  "sub/model-00002-of-00002.safetensors", "", "model-00002-of-00002.bin"])
def test_index_shard_names_that_leave_the_folder(tmp_path, monkeypatch, name):
    """Each named file exists where the name points, so a reader that followed it would succeed;
    the name is refused before any file outside the folder is opened (it could be a FIFO)."""
    d = _sharded(tmp_path)
    outside = tmp_path / "model-00002-of-00002.safetensors"
    safetensors_file.write_file(outside, {"model.b": torch.ones(3)}, {"format": "pt"})
    (d / "sub").mkdir()
    for where in (d / "sub" / "model-00002-of-00002.safetensors", d / ".hidden.safetensors", d / "..\\model-00002-of-00002.safetensors",
                  d / "sub\\model-00002-of-00002.safetensors"):
        safetensors_file.write_file(where, {"model.b": torch.ones(3)}, {"format": "pt"})
    name = str(outside) if name == "ABS" else name
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.b"] = name
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    import adapterkit.checkpoint.reader as checkpoint_reader

    opened = []
    real = checkpoint_reader.read_header
    monkeypatch.setattr(checkpoint_reader, "read_header", lambda path: opened.append(Path(path)) or real(path))
    for target in (d, d / "model.safetensors.index.json"):
        refuses(target, "checkpoint-invalid", via=open_checkpoint)
    assert all(p.parent == d and p.name.startswith("model-") for p in opened), opened


# ----------------------------------------------------------------------------- malicious .bin (part 2)


@pytest.mark.parametrize("claim", [
    b"X" + struct.pack("<I", 0xF0000000) + b"abc.",  # BINUNICODE: a 4 GB string in a few bytes
    b"\x80\x04B" + struct.pack("<I", 0xF0000000) + b"abc.",  # BINBYTES
    b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.",  # BINBYTES8
    b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abc.",  # BINUNICODE8
], ids=["binunicode", "binbytes", "binbytes8", "binunicode8"])
def test_bin_claiming_a_huge_string_allocates_nothing_of_it(tmp_path, claim):
    """Found by scripts/fuzz.py (a random .bin): the unpickler reads the claimed length at once, and
    a plain file object allocates that many bytes before reading.  Refused, with ~the file's size."""
    d = _malicious_dir(tmp_path, claim)
    tracemalloc.start()
    try:
        for via in (ak.open_adapter, ak.load):
            exc = refuses(d, {"bin-invalid", "unsafe-pickle"}, via=via)  # opcodes torch's unpickler lacks are unsafe-pickle
            assert "MemoryError" not in str(exc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB
    (tmp_path / "e").mkdir()
    empty = _malicious_dir(tmp_path / "e", b"")
    refuses(empty, "bin-invalid", via=ak.load)


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles whose load would create ``marker``, in several styles."""
    code = f"open({str(marker)!r}, 'w').write('ran')"
    shell = f"touch {marker}"
    p0_exec = f"cbuiltins\nexec\n(V{code}\ntR.".encode()  # protocol 0: GLOBAL + TUPLE + REDUCE
    p2_system = b"\x80\x02cposix\nsystem\nq\x00X" + struct.pack("<I", len(shell)) + shell.encode() + b"\x85R."  # protocol 2
    p4_stack_global = (b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93X" + struct.pack("<I", len(code)) + code.encode() + b"\x85R.")

    class Reduce:
        def __reduce__(self):
            return (os.system, (shell,))

    in_dict = pickle.dumps({A: torch.zeros(2, 3), B: Reduce()}, protocol=2)
    eval_in_dict = pickle.dumps({"x": _Eval(code)}, protocol=0)
    zipped = io.BytesIO()
    torch.save({A: torch.zeros(2, 3)}, zipped)
    zipped = _replace_data_pkl(zipped.getvalue(), p2_system)
    zipped_exec = io.BytesIO()
    torch.save({A: torch.zeros(2, 3)}, zipped_exec)
    zipped_exec = _replace_data_pkl(zipped_exec.getvalue(), p4_stack_global)
    legacy = io.BytesIO()
    torch.save({A: torch.zeros(2, 3), B: Reduce()}, legacy, _use_new_zipfile_serialization=False)
    return {"p0-builtins.exec": p0_exec, "p2-posix.system": p2_system, "p4-stack-global-exec": p4_stack_global,
            "p2-reduce-in-state-dict": in_dict, "p0-eval-in-dict": eval_in_dict, "torch-zip-data.pkl-system": zipped,
            "torch-zip-data.pkl-exec": zipped_exec, "torch-legacy-reduce": legacy.getvalue()}


class _Eval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _replace_data_pkl(archive: bytes, pkl: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            dst.writestr(item, pkl if item.filename.endswith("/data.pkl") else src.read(item.filename))
    return out.getvalue()


def _malicious_dir(tmp_path: Path, payload: bytes) -> Path:
    d = tmp_path / "evil"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(ak.LoraConfig(r=2, lora_alpha=2, target_modules=("q",)).to_dict()))
    (d / "adapter_model.bin").write_bytes(payload)
    return d


def test_payloads_would_run_code(tmp_path):
    """The oracle works: loaded with plain pickle, each payload does create the marker."""
    for name, payload in _payloads(tmp_path / "m").items():
        if name.startswith("torch"):
            continue  # zips and torch's legacy framing are not plain pickles
        marker = tmp_path / f"m-{name}"
        payload = _payloads(marker)[name]
        try:
            pickle.loads(payload)
        except Exception:
            pass
        assert marker.exists(), name


@pytest.mark.parametrize("style", sorted(_payloads(Path("m"))))
def test_malicious_bin_is_refused_everywhere(tmp_path, style):
    marker = tmp_path / "MARKER"
    d = _malicious_dir(tmp_path, _payloads(marker)[style])
    w = d / "adapter_model.bin"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for via, path in ((ak.open_adapter, d), (ak.open_adapter, w), (ak.load, d), (ak.load, w)):
            refuses(path, "unsafe-pickle", via=via)
        for path in (d, w):
            assert [p.code for p in ak.validate(path) if p.severity == "error"] == ["unsafe-pickle"]
        runner = CliRunner()
        out = tmp_path / "out"
        for args in (["info", d], ["info", "--no-modules", d], ["info", "--json", w], ["validate", d], ["validate", "--json", w],
                     ["convert", d, out], ["convert", w, tmp_path / "o.safetensors"], ["check", "--for", "peft", d],
                     ["resize", d, out, "--rank", "1"], ["combine", d, d, "-o", out], ["prune", d, out, "--layers", "0"]):
            res = runner.invoke(main, [str(a) for a in args])
            assert res.exit_code in (1, 2), (args, res.output)
            assert "[unsafe-pickle]" in res.output or '"code": "unsafe-pickle"' in res.output, (args, res.output)
            assert not out.exists()
    # a checkpoint folder holding only the pickle is not read at all
    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "pytorch_model.bin").write_bytes(w.read_bytes())
    refuses(ck, "checkpoint-unsupported", via=open_checkpoint)
    refuses(ck / "pytorch_model.bin", "checkpoint-unsupported", via=open_checkpoint)
    assert not marker.exists()


# ----------------------------------------------------------------------------- resource bounds (part 4)

MiB = 1 << 20
_MEASURE = r"""
import json, resource, sys, os
from pathlib import Path
from click.testing import CliRunner
import torch, adapterkit.summary, adapterkit.validation, adapterkit.checkpoint
from adapterkit.cli import main

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])

runner = CliRunner()
runner.invoke(main, ["info", "--no-modules", sys.argv[3]])  # warm the lazy imports on a tiny adapter
out = {"base": rss()}
# ordered by expected peak: a high-water mark measures each step only if the earlier ones stayed lower
for name, args in (("info-no-modules", ["info", "--no-modules", "--json", sys.argv[1]]), ("info-checkpoint", ["info", "--json", sys.argv[2]]),
                   ("validate", ["validate", sys.argv[1]]), ("info", ["info", "--json", sys.argv[1]])):
    before = rchar()
    res = runner.invoke(main, args)
    assert res.exit_code == 0, (args, res.output)
    out[name] = {"peak": rss(), "read": rchar() - before}
print(json.dumps(out))
"""


def _sparse_st(path: Path, header: dict, data_size: int) -> None:
    raw_header = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw_header)) + raw_header)
        f.truncate(8 + len(raw_header) + data_size)  # zeros, not written: a sparse file


def test_info_and_validate_read_headers_only_and_stay_bounded(tmp_path):
    """A 256 MiB adapter (16 tensors of 16 MiB) and a 512 MiB two-shard checkpoint, as sparse files.
    ``info --no-modules`` and ``info`` on the checkpoint read no tensor data (bytes read from files,
    /proc/self/io) and allocate nothing of its size.  ``validate`` must read every tensor, and holds
    a few at a time.  ``info`` with per-module statistics reads the adapter once into memory by
    design (one read serves the value checks and the statistics, as ``load`` does): one copy of the
    data plus temporaries (measured: ~70-90 MB), never two copies."""
    modules, r, width = 8, 16, 2**18  # each factor r x width F32 = 16 MiB
    tensor = r * width * 4
    header, offset = {}, 0
    for i in range(modules):
        for key, shape in ((f"{P}layers.{i}.q.lora_A.weight", [r, width]), (f"{P}layers.{i}.q.lora_B.weight", [width, r])):
            header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + tensor]}
            offset += tensor
    adapter = tmp_path / "big"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(ak.LoraConfig(r=r, lora_alpha=r, target_modules=("q",)).to_dict()))
    _sparse_st(adapter / "adapter_model.safetensors", header, offset)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for s, name in enumerate(names):
        h, off = {"__metadata__": {"format": "pt"}}, 0
        for i in range(4):
            key = f"model.layers.{s * 4 + i}.mlp.weight"
            h[key] = {"dtype": "BF16", "shape": [8192, 4096], "data_offsets": [off, off + 64 * MiB]}
            off += 64 * MiB
            weight_map[key] = name
        _sparse_st(ckpt / name, h, off)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    small = tmp_path / "small"
    ak.save(ak.Adapter.from_tensors(ak.LoraConfig(r=2, lora_alpha=2, target_modules=("q",)), {A: torch.zeros(2, 3), B: torch.zeros(4, 2)}), small)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(adapter), str(ckpt), str(small)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    base = m["base"]
    print({k: (f"+{(v['peak'] - base) / MiB:.0f} MiB peak, {v['read'] / MiB:.2f} MiB read" if k != "base" else v) for k, v in m.items()})  # figures, with -s
    for name in ("info-no-modules", "info-checkpoint"):
        assert m[name]["read"] < MiB, (name, m)  # headers only: ~2 KB of them
        assert m[name]["peak"] - base < 16 * MiB, (name, m)
    for name in ("validate", "info"):
        assert m[name]["read"] >= offset, (name, m)  # they do read the tensors (the bounds below are not vacuous)
    assert m["validate"]["peak"] - base < 4 * tensor, m  # a few 16 MiB tensors at a time, not 256 MiB
    assert m["info"]["peak"] - base < offset * 3 // 2, m  # one copy of the data and temporaries, not two copies
