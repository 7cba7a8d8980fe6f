"""Every failure a user can cause is an AdapterkitError with a stable code, the file,
the tensor key or config field, and expected/actual -- never a bare traceback from
torch, safetensors or json.  Each case also checks that ``validate`` reports the
same code, and that ``validate`` collects several problems of one file at once.

Also: the writer is deterministic, its files read back with the ``safetensors``
library, and writes are atomic.  (The fuzzing of every reader is tests/test_fuzz.py.)
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
import warnings
from pathlib import Path

import pytest
import torch

import adapterkit as ak
from adapterkit.dtypes import DTYPE_NAMES
from adapterkit.errors import CODES, AdapterkitError
from adapterkit.io import safetensors_file
from adapterkit.io.safetensors_file import read_header, read_tensor, write_file

P = "base_model.model."
A = P + "layers.0.q.lora_A.weight"
B = P + "layers.0.q.lora_B.weight"
BIAS = P + "layers.0.q.lora_B.bias"
MAG = P + "layers.0.q.lora_magnitude_vector"
A2 = P + "layers.0.k.lora_A.weight"
B2 = P + "layers.0.k.lora_B.weight"
VERSION = "__metadata__.adapterkit.version"
EMBEDDED = "__metadata__.adapterkit.config"


# ----------------------------------------------------------------------------- helpers


def cfg(**kw) -> ak.LoraConfig:
    kw.setdefault("target_modules", ("q",))
    return ak.LoraConfig(r=2, lora_alpha=4, **kw)


def tensors(**extra) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {A: torch.randn(2, 3, generator=g), B: torch.randn(4, 2, generator=g)}
    out.update(extra)
    return out


def save_file_form(tmp_path: Path, name: str = "a.safetensors", config: ak.LoraConfig | None = None, ts=None) -> Path:
    """A valid single-file adapter written by ``ak.save``."""
    adapter = ak.Adapter.from_tensors(config or cfg(), tensors() if ts is None else ts)
    return ak.save(adapter, tmp_path / name, form="file")


def save_dir_form(path: Path, config: ak.LoraConfig | None = None, ts=None) -> Path:
    adapter = ak.Adapter.from_tensors(config or cfg(), tensors() if ts is None else ts)
    return ak.save(adapter, path)


def write_unchecked(path: Path, ts: dict[str, torch.Tensor], config=None, *, version: str | None = "1.0", fmt: str | None = "pt", config_text: str | None = None) -> Path:
    """A single-file adapter written by the raw writer, bypassing the structural checks of ``save``."""
    meta: dict[str, str] = {}
    if fmt is not None:
        meta["format"] = fmt
    if version is not None:
        meta["adapterkit.version"] = version
    if config_text is None and config is not None:
        config_text = json.dumps(config.to_dict())
    if config_text is not None:
        meta["adapterkit.config"] = config_text
    write_file(path, ts, meta)
    return path


def write_dir_unchecked(path: Path, ts: dict[str, torch.Tensor], config_data) -> Path:
    """A PEFT-layout directory (config JSON + weights without adapterkit metadata), unchecked."""
    path.mkdir(parents=True, exist_ok=True)
    text = config_data if isinstance(config_data, str) else json.dumps(config_data)
    (path / "adapter_config.json").write_text(text)
    write_file(path / "adapter_model.safetensors", ts, {"format": "pt"})
    return path


def split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(path: Path, header: dict | bytes, body: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def edit_header(path: Path, fn) -> Path:
    header, body = split(path)
    fn(header)
    join(path, header, body)
    return path


def set_meta(path: Path, **values) -> Path:
    """Rewrite ``__metadata__`` entries (None deletes one); names use '_' for '.'."""

    def fn(h):
        for k, v in values.items():
            k = k.replace("_", ".")
            if v is None:
                h["__metadata__"].pop(k, None)
            else:
                h["__metadata__"][k] = v

    return edit_header(path, fn)


def codes_of(path: Path, **kw) -> set[str]:
    return {p.code for p in ak.validate(path, **kw) if p.severity == "error"}


def expect(path: Path, code: str, *, key: str | None = None, where: Path | None = None, match: str | None = None, via=ak.open_adapter, validate: bool = True, **kw) -> AdapterkitError:
    """``via(path)`` raises an AdapterkitError with ``code``, the file ``where`` (default: path),
    the tensor key/config field ``key`` and ``match`` in its message; ``validate`` reports ``code``."""
    with pytest.raises(AdapterkitError) as info:
        via(path, **kw)
    exc = info.value
    assert exc.code == code, str(exc)
    assert code in CODES
    assert type(exc).__name__ == CODES[code][0], (type(exc).__name__, CODES[code])
    assert exc.path is not None and Path(exc.path) == (where or path), (exc.path, where or path)
    if key is not None:
        assert exc.key == key, (exc.key, key)
    if match is not None:
        assert match in exc.message, (match, exc.message)
    text = str(exc)
    assert text.endswith(f"[{code}]") and str(exc.path) in text
    if exc.key:
        assert exc.key in text
    if validate:
        problems = ak.validate(path, **kw)
        found = [p for p in problems if p.code == code and p.severity == "error"]
        assert found, (code, problems)
        if key is not None:
            assert any(p.key == key for p in found), (key, found)
    return exc


# ----------------------------------------------------------------------------- sanity


def test_valid_files_are_clean(tmp_path):
    f = save_file_form(tmp_path)
    d = save_dir_form(tmp_path / "d")
    for p in (f, d):
        assert ak.validate(p) == []
        assert ak.load(p) == ak.Adapter.from_tensors(cfg(), tensors())


def test_every_code_maps_to_an_exception_class():
    from adapterkit import errors

    for code, (cls_name, meaning) in CODES.items():
        assert meaning
        if cls_name:
            exc = errors.error_for(code, "m", path="/x", key="k", expected=1, actual=2)
            assert type(exc).__name__ == cls_name and exc.code == code
            assert str(exc) == f"/x: k: m (expected 1, got 2) [{code}]"


# ----------------------------------------------------------------------------- the container


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_8_bytes(tmp_path, size):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"\x01" * size)
    exc = expect(f, "truncated-file", match="too short")
    assert exc.actual == f"{size} bytes"


def test_header_length_past_eof(tmp_path):
    f = save_file_form(tmp_path)
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    expect(f, "truncated-file", match="inside the header")


def test_header_length_implausible(tmp_path):
    f = save_file_form(tmp_path)
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 2**64 - 1) + data[8:])
    expect(f, "header-invalid", match="implausibly large")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b'{"a": "\xff\xfe"}', "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"[" * 50_000 + b"]" * 50_000, "not valid UTF-8 JSON"),  # nesting deeper than json's recursion limit
        (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, ' + b"9" * 5000 + b"]}}", "not valid UTF-8 JSON"),  # int beyond Python's digit limit
        (b'{"x": 1}', "tensor entry must be an object"),
    ],
    ids=["not-json", "not-utf8", "array", "string", "deep-nesting", "huge-int", "entry-not-object"],
)
def test_header_not_json_utf8_or_object(tmp_path, raw, match):
    f = tmp_path / "a.safetensors"
    join(f, raw, b"")
    expect(f, "header-invalid", match=match)


@pytest.mark.parametrize("meta", [["a"], {"a": 1}, "x", 0, []])
def test_metadata_not_a_string_map(tmp_path, meta):
    f = edit_header(save_file_form(tmp_path), lambda h: h.__setitem__("__metadata__", meta))
    expect(f, "metadata-invalid", key="__metadata__")


@pytest.mark.parametrize("dtype", ["F31", "C64", "f32", "", None, 3, ["F32"], {"a": 1}])
def test_unknown_dtype(tmp_path, dtype):
    f = edit_header(save_file_form(tmp_path), lambda h: h[B].__setitem__("dtype", dtype))
    exc = expect(f, "header-invalid", key=B, match="unknown dtype")
    assert exc.actual == dtype


@pytest.mark.parametrize("shape", [[4, -2], [4.0, 2], "4x2", None, [True, 2]])
def test_bad_shape(tmp_path, shape):
    f = edit_header(save_file_form(tmp_path), lambda h: h[B].__setitem__("shape", shape))
    expect(f, "header-invalid", key=B, match="shape must be")


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**62, 4], [2**70, 0]])
def test_empty_tensor_with_unaddressable_shape(tmp_path, shape):
    # numel is 0, so the offsets agree; torch cannot build the tensor all the same
    def fn(h):
        h["extra.empty"] = {"dtype": "F32", "shape": shape, "data_offsets": [56, 56]}

    f = edit_header(save_file_form(tmp_path), fn)
    expect(f, "header-invalid", key="extra.empty", match="too large")


@pytest.mark.parametrize("offsets", [[24, -32], [24.0, 56], [24], "24-56", None])
def test_malformed_offsets(tmp_path, offsets):
    f = edit_header(save_file_form(tmp_path), lambda h: h[B].__setitem__("data_offsets", offsets))
    expect(f, "header-invalid", key=B, match="data_offsets must be")


def test_offsets_do_not_span_the_shape(tmp_path):
    f = edit_header(save_file_form(tmp_path), lambda h: h[B].__setitem__("data_offsets", [24, 60]))
    exc = expect(f, "offset-out-of-range", key=B, match="do not span")
    assert exc.expected == "32 bytes"


def test_offsets_reversed(tmp_path):
    f = edit_header(save_file_form(tmp_path), lambda h: h[B].__setitem__("data_offsets", [56, 24]))
    expect(f, "offset-out-of-range", key=B)


def test_offsets_beyond_the_data(tmp_path):
    f = edit_header(save_file_form(tmp_path), lambda h: h[B].__setitem__("data_offsets", [1000, 1032]))
    expect(f, "offset-out-of-range", key=B, match="no holes or overlaps")


def test_offsets_overlapping(tmp_path):
    f = edit_header(save_file_form(tmp_path), lambda h: h[B].__setitem__("data_offsets", [16, 48]))
    exc = expect(f, "offset-out-of-range", key=B, match="no holes or overlaps")
    assert (exc.expected, exc.actual) == ("begin 24", "begin 16")


def test_offsets_with_a_hole(tmp_path):
    f = save_file_form(tmp_path)
    header, body = split(f)
    header[B]["data_offsets"] = [32, 64]
    join(f, header, body[:24] + b"\0" * 8 + body[24:])  # the file is long enough: only the hole is wrong
    exc = expect(f, "offset-out-of-range", key=B, match="no holes or overlaps")
    assert exc.actual == "begin 32"


def test_trailing_bytes(tmp_path):
    f = save_file_form(tmp_path)
    f.write_bytes(f.read_bytes() + b"junk")
    exc = expect(f, "offset-out-of-range", match="bytes after the last tensor")
    assert (exc.expected, exc.actual) == ("56 data bytes", "60 data bytes")


@pytest.mark.parametrize("cut", [1, 5, 8, 32])
def test_data_truncated_mid_tensor(tmp_path, cut):
    f = save_file_form(tmp_path)
    f.write_bytes(f.read_bytes()[:-cut])
    # the writer lays tensors out by (alignment, key): B's data comes last, then A's
    exc = expect(f, "truncated-file", key=B if cut <= 32 else A, match="ends before the tensor data")
    assert exc.expected == "56 data bytes"


def test_file_shrinks_after_open(tmp_path):
    f = save_file_form(tmp_path)
    adapter = ak.open_adapter(f)
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(AdapterkitError) as info:
        adapter.tensors[B]
    assert info.value.code == "truncated-file" and info.value.key == B and Path(info.value.path) == f


# ----------------------------------------------------------------------------- structure vs config


def test_lora_A_shape_vs_r(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", tensors(**{A: torch.zeros(3, 3)}), cfg())
    exc = expect(f, "shape-mismatch", key=A, match="config r=2")
    assert exc.actual == (3, 3)
    assert "rank_pattern" not in exc.message


def test_lora_B_shape_vs_rank_pattern(tmp_path):
    config = cfg(rank_pattern={"q": 3})
    f = write_unchecked(tmp_path / "a.safetensors", tensors(**{A: torch.zeros(3, 3)}), config)
    exc = expect(f, "shape-mismatch", key=B, match="rank_pattern matched 'q'")
    assert "r=3" in exc.message and exc.actual == (4, 2)
    assert codes_of(f) == {"shape-mismatch"}  # A (3, 3) agrees with the pattern


def test_lone_lora_A(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", {A: torch.zeros(2, 3)}, cfg())
    exc = expect(f, "missing-partner", key=A, match="has no lora_B.weight")
    assert exc.expected == B


def test_lone_lora_B(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", {B: torch.zeros(4, 2)}, cfg())
    exc = expect(f, "missing-partner", key=B, match="has no lora_A.weight")
    assert exc.expected == A


def test_lora_bias_without_flag(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", tensors(**{BIAS: torch.zeros(4)}), cfg())
    expect(f, "unexpected-key", key=BIAS, match="lora_bias=false")


def test_lora_bias_flag_without_bias(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", tensors(), cfg(lora_bias=True))
    exc = expect(f, "missing-partner", key=B, match="no lora_B.bias")
    assert exc.expected == BIAS


def test_dora_flag_without_magnitude(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", tensors(), cfg(use_dora=True))
    exc = expect(f, "missing-partner", key=B, match="lora_magnitude_vector")
    assert exc.expected == MAG


def test_magnitude_without_dora_flag(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", tensors(**{MAG: torch.ones(4)}), cfg())
    expect(f, "unexpected-key", key=MAG, match="use_dora=false")


def test_dora_magnitude_wrong_shape(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", tensors(**{MAG: torch.ones(3)}), cfg(use_dora=True))
    exc = expect(f, "shape-mismatch", key=MAG, match="DoRA magnitude")
    assert exc.expected == (4,)


def test_prompt_embeddings_missing_and_wrong_shape(tmp_path):
    config = ak.PromptTuningConfig(num_virtual_tokens=3, token_dim=4)
    f = write_unchecked(tmp_path / "a.safetensors", {"other": torch.zeros(3, 4)}, config)
    expect(f, "tensor-missing", key="prompt_embeddings")
    g = write_unchecked(tmp_path / "b.safetensors", {"prompt_embeddings": torch.zeros(4, 3)}, config)
    exc = expect(g, "shape-mismatch", key="prompt_embeddings")
    assert (exc.expected, exc.actual) == ((3, 4), (4, 3))


def test_ia3_wrong_shape(tmp_path):
    config = ak.IA3Config(target_modules=("k",))
    f = write_unchecked(tmp_path / "a.safetensors", {P + "k.ia3_l": torch.ones(1, 4)}, config)
    expect(f, "shape-mismatch", key=P + "k.ia3_l", match="ia3_l")


# ----------------------------------------------------------------------------- values and dtypes


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_non_finite(tmp_path, bad, dtype):
    b = torch.zeros(4, 2, dtype=dtype)
    b[1, 1] = bad
    f = write_unchecked(tmp_path / "a.safetensors", tensors(**{A: torch.zeros(2, 3, dtype=dtype), B: b}), cfg())
    adapter = ak.open_adapter(f)  # lazy: only headers are read
    assert adapter.meta(B).shape == (4, 2)
    exc = expect(f, "non-finite", key=B, via=ak.load, match="NaN or Inf")
    assert exc.actual == "1 non-finite of 8"


def test_non_finite_in_directory_and_bin(tmp_path):
    t = tensors()
    t[A][0, 0] = float("nan")
    d = write_dir_unchecked(tmp_path / "d", t, cfg().to_dict())
    expect(d, "non-finite", key=A, via=ak.load, where=d / "adapter_model.safetensors")
    b = tmp_path / "b"
    b.mkdir()
    (b / "adapter_config.json").write_text(json.dumps(cfg().to_dict()))
    torch.save(t, b / "adapter_model.bin")
    expect(b, "non-finite", key=A, via=ak.load, where=b / "adapter_model.bin")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2])
def test_dtype_unsupported(tmp_path, dtype):
    f = write_unchecked(tmp_path / "a.safetensors", tensors(**{B: torch.ones(4, 2).to(dtype)}), cfg())
    exc = expect(f, "dtype-unsupported", key=B)
    assert exc.actual == DTYPE_NAMES[dtype]
    expect(f, "dtype-unsupported", key=B, via=ak.load, validate=False)


def test_dtype_unsupported_in_bin(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(cfg().to_dict()))
    torch.save(tensors(**{A: torch.zeros(2, 3, dtype=torch.complex64)}), d / "adapter_model.bin")
    expect(d, "dtype-unsupported", key=A, where=d / "adapter_model.bin")


# ----------------------------------------------------------------------------- versions and metadata


def test_unknown_major_version(tmp_path):
    f = set_meta(save_file_form(tmp_path), adapterkit_version="2.0")
    exc = expect(f, "version-unsupported", key=VERSION, match="major version")
    assert (exc.expected, exc.actual) == ("1.x", "2.0")


@pytest.mark.parametrize("version", ["0.9", "10.0"])
def test_other_major_versions(tmp_path, version):
    f = set_meta(save_file_form(tmp_path), adapterkit_version=version)
    expect(f, "version-unsupported", key=VERSION)


def test_unknown_minor_version_reads(tmp_path):
    f = set_meta(save_file_form(tmp_path), adapterkit_version="1.7")
    assert ak.validate(f) == []
    adapter = ak.load(f)
    assert adapter.format_version == "1.7"
    assert adapter == ak.Adapter.from_tensors(cfg(), tensors())


@pytest.mark.parametrize("version", ["1", "v1.0", "01.0", "1.0.0", "1.x", "", " 1.0", "1.0\n", "١.٠"])
def test_malformed_version(tmp_path, version):
    f = set_meta(save_file_form(tmp_path), adapterkit_version=version)
    exc = expect(f, "metadata-invalid", key=VERSION, match="MAJOR.MINOR")
    assert exc.actual == version


def test_single_file_without_version(tmp_path):
    f = set_meta(save_file_form(tmp_path), adapterkit_version=None)
    expect(f, "metadata-invalid", key=VERSION, match="must carry adapterkit.version")


@pytest.mark.parametrize("fmt", ["np", "PT", "", None])
def test_format_not_pt(tmp_path, fmt):
    f = set_meta(save_file_form(tmp_path), format=fmt)
    exc = expect(f, "metadata-invalid", key="__metadata__.format")
    assert exc.expected == "pt"


def test_format_not_pt_in_peft_profile(tmp_path):
    d = save_dir_form(tmp_path / "d")
    w = d / "adapter_model.safetensors"
    edit_header(w, lambda h: h.__setitem__("__metadata__", {"format": "tf"}))
    expect(d, "metadata-invalid", key="__metadata__.format", where=w)


# ----------------------------------------------------------------------------- configs


def test_unsupported_peft_type(tmp_path):
    data = {**cfg().to_dict(), "peft_type": "FOURIERFT"}
    d = write_dir_unchecked(tmp_path / "d", tensors(), data)
    exc = expect(d, "peft-type-unsupported", key="peft_type", where=d / "adapter_config.json")
    assert exc.actual == "FOURIERFT" and "LORA" in exc.expected and "LOHA" in exc.expected


@pytest.mark.parametrize("peft_type", [["LORA"], None, 1])
def test_peft_type_not_a_string(tmp_path, peft_type):
    d = write_dir_unchecked(tmp_path / "d", tensors(), {**cfg().to_dict(), "peft_type": peft_type})
    expect(d, "peft-type-unsupported", key="peft_type", where=d / "adapter_config.json")


def test_missing_peft_type(tmp_path):
    data = cfg().to_dict()
    del data["peft_type"]
    d = write_dir_unchecked(tmp_path / "d", tensors(), data)
    exc = expect(d, "config-invalid", key="peft_type", where=d / "adapter_config.json", match="no peft_type")
    assert exc.actual == "absent"


def test_unsupported_peft_type_embedded(tmp_path):
    data = {**cfg().to_dict(), "peft_type": "FOURIERFT"}
    f = write_unchecked(tmp_path / "a.safetensors", tensors(), config_text=json.dumps(data))
    expect(f, "peft-type-unsupported", key="peft_type")


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"[1, 2]", b"null", b'"LORA"', b"\xff{}", b"[" * 50_000, b'{"r": ' + b"9" * 5000 + b"}"],
    ids=["truncated", "empty", "array", "null", "string", "not-utf8", "deep", "huge-int"],
)
def test_config_json_invalid(tmp_path, raw):
    d = save_dir_form(tmp_path / "d")
    c = d / "adapter_config.json"
    c.write_bytes(raw)
    expect(d, "config-invalid", where=c)


def test_embedded_config_json_invalid(tmp_path):
    f = write_unchecked(tmp_path / "a.safetensors", tensors(), config_text='{"peft_type": "LORA", ')
    expect(f, "config-invalid", key=EMBEDDED, match="not valid JSON")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("r", "8", "must be integer"),
        ("r", 0, "must be >= 1"),
        ("r", -2, "must be >= 1"),
        ("r", 2.0, "must be integer"),
        ("r", True, "must be integer"),
        ("use_dora", "yes", "must be boolean"),
        ("lora_bias", 1, "must be boolean"),
        ("lora_alpha", "16", "must be number"),
        ("bias", "some", "must be one of"),
        ("target_modules", 5, "does not match"),
        ("rank_pattern", {"q": 0}, "must be >= 1"),
        ("rank_pattern", ["q"], "must be object"),
        ("rank_pattern", {"(": 2}, "not a valid regex"),
    ],
)
def test_config_field_wrong_type(tmp_path, field, value, match):
    data = {**cfg().to_dict(), field: value}
    d = write_dir_unchecked(tmp_path / "d", tensors(), data)
    exc = expect(d, "config-invalid", where=d / "adapter_config.json", match=match)
    assert exc.key == field or exc.key.startswith(field + "[")
    f = write_unchecked(tmp_path / "a.safetensors", tensors(), config_text=json.dumps(data))
    assert expect(f, "config-invalid", match=match).key == exc.key


def test_lora_alpha_not_finite(tmp_path):
    # NaN is not RFC 8259 JSON: since spec 1.0 rev 2 (R1-1) the parser refuses the text, so the error
    # names no field; a finite but non-numeric alpha is still refused at the field.
    d = write_dir_unchecked(tmp_path / "d", tensors(), '{"peft_type": "LORA", "r": 2, "lora_alpha": NaN}')
    expect(d, "config-invalid", where=d / "adapter_config.json", match="NaN is not a JSON value")
    d = write_dir_unchecked(tmp_path / "e", tensors(), '{"peft_type": "LORA", "r": 2, "lora_alpha": 1e999}')
    expect(d, "config-invalid", where=d / "adapter_config.json", match="out of the range of a double")


def test_prompt_config_required_field(tmp_path):
    d = write_dir_unchecked(tmp_path / "d", {"prompt_embeddings": torch.zeros(3, 4)}, {"peft_type": "PROMPT_TUNING", "token_dim": 4})
    expect(d, "config-invalid", key="num_virtual_tokens", where=d / "adapter_config.json", match="required field")


def test_missing_config_in_directory(tmp_path):
    d = save_dir_form(tmp_path / "d")
    (d / "adapter_config.json").unlink()
    expect(d, "config-missing", where=d / "adapter_config.json")


def test_missing_config_beside_weights_file(tmp_path):
    d = save_dir_form(tmp_path / "d")
    w = d / "adapter_model.safetensors"
    assert ak.load(w) == ak.load(d)  # a weights file finds the config beside it
    (d / "adapter_config.json").unlink()
    expect(w, "config-missing")
    f = write_unchecked(tmp_path / "lone.safetensors", tensors(), version=None)
    expect(f, "config-missing", match="neither __metadata__")


def test_missing_config_beside_bin(tmp_path):
    (tmp_path / "b").mkdir()
    bin_path = tmp_path / "b" / "adapter_model.bin"
    torch.save(tensors(), bin_path)
    expect(bin_path, "config-missing", where=tmp_path / "b" / "adapter_config.json")


def test_missing_weights(tmp_path):
    d = save_dir_form(tmp_path / "d")
    (d / "adapter_model.safetensors").unlink()
    exc = expect(d, "weights-missing")
    assert "adapter_model.safetensors" in exc.expected


def test_ambiguous_adapter_and_adapter_name(tmp_path):
    root = tmp_path / "root"
    save_dir_form(root / "alpha")
    save_dir_form(root / "beta", ts=tensors(**{A: torch.ones(2, 3)}))
    exc = expect(root, "ambiguous-adapter", match="adapter_name")
    assert "alpha" in exc.expected and "beta" in exc.expected
    beta = ak.load(root, adapter_name="beta")
    assert torch.equal(beta.tensors[A], torch.ones(2, 3))
    assert beta.source == root / "beta" / "adapter_model.safetensors"
    assert ak.validate(root, adapter_name="alpha") == []
    # spec 1.0 rev 2 (§4.1, R4.1-5): a named subfolder that does not exist has its own code
    expect(root, "adapter-not-found", where=root / "gamma", adapter_name="gamma")


def test_single_subfolder_is_chosen(tmp_path):
    save_dir_form(tmp_path / "root" / "only")
    assert ak.validate(tmp_path / "root") == []


def test_nonexistent_path(tmp_path):
    expect(tmp_path / "nope", "file-not-found")
    expect(tmp_path / "nope.safetensors", "file-not-found")
    expect(tmp_path / "nope" / "adapter_model.bin", "file-not-found")


def test_not_an_adapter(tmp_path):
    (tmp_path / "empty").mkdir()
    expect(tmp_path / "empty", "not-an-adapter")
    (tmp_path / "notes.txt").write_text("hi")
    exc = expect(tmp_path / "notes.txt", "not-an-adapter")
    assert exc.actual == ".txt"


# ----------------------------------------------------------------------------- .bin files


def _bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(cfg().to_dict()))
    return d


class _RunsCode:
    """Unpickling this calls ``os.system`` -- a pickle that would run code."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("writer", ["torch.save", "torch.save-legacy", "pickle"])
def test_unsafe_pickle(tmp_path, writer):
    d = _bin_dir(tmp_path)
    sentinel = tmp_path / "SENTINEL"
    payload = {A: torch.zeros(2, 3), B: _RunsCode(sentinel)}
    w = d / "adapter_model.bin"
    if writer == "torch.save":
        torch.save(payload, w)
    elif writer == "torch.save-legacy":
        torch.save(payload, w, _use_new_zipfile_serialization=False)
    else:
        with open(w, "wb") as fh:
            pickle.dump(payload, fh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for via in (ak.open_adapter, ak.load):
            exc = expect(d, "unsafe-pickle", where=w, via=via)
        expect(w, "unsafe-pickle")
    assert "refusing to unpickle" in exc.message
    assert not sentinel.exists()


@pytest.mark.parametrize("data", [b"PK\x03\x04garbage" * 4, b"", b"not a checkpoint at all"], ids=["corrupt-zip", "empty", "text"])
def test_bin_invalid_bytes(tmp_path, data):
    d = _bin_dir(tmp_path)
    (d / "adapter_model.bin").write_bytes(data)
    exc = expect(d, "bin-invalid", where=d / "adapter_model.bin", validate=False)
    assert "not a readable torch checkpoint" in exc.message
    assert codes_of(d) & {"bin-invalid", "unsafe-pickle"}


def test_bin_truncated_zip(tmp_path):
    d = _bin_dir(tmp_path)
    w = d / "adapter_model.bin"
    torch.save(tensors(), w)
    w.write_bytes(w.read_bytes()[:-100])
    expect(d, "bin-invalid", where=w)


@pytest.mark.parametrize(
    ("payload", "key", "actual"),
    [
        ({A: torch.zeros(2, 3), B: 1}, B, "int"),
        ({A: torch.zeros(2, 3), B: [1.0, 2.0]}, B, "list"),
        ({A: torch.zeros(2, 3), 3: torch.zeros(4, 2)}, "3", "Tensor"),
        ([torch.zeros(2, 3)], None, "list"),
        ({A: torch.zeros(2, 3).to_sparse(), B: torch.zeros(4, 2)}, A, "torch.sparse_coo on cpu"),
        ({A: torch.zeros(2, 3, device="meta"), B: torch.zeros(4, 2)}, A, "torch.strided on meta"),
    ],
    ids=["int", "list", "int-key", "not-a-dict", "sparse", "meta"],
)
def test_bin_non_tensor_value(tmp_path, payload, key, actual):
    d = _bin_dir(tmp_path)
    torch.save(payload, d / "adapter_model.bin")
    exc = expect(d, "bin-invalid", where=d / "adapter_model.bin", key=key)
    assert exc.actual == actual
    expect(d, "bin-invalid", where=d / "adapter_model.bin", via=ak.load, validate=False)


# ----------------------------------------------------------------------------- saving


def test_save_over_own_source_file(tmp_path):
    f = save_file_form(tmp_path)
    before = f.read_bytes()
    for adapter in (ak.open_adapter(f), ak.load(f)):
        for target in (f, tmp_path / "." / "a.safetensors", tmp_path / "sub" / ".." / "a.safetensors"):
            (tmp_path / "sub").mkdir(exist_ok=True)
            with pytest.raises(AdapterkitError) as info:
                ak.save(adapter, target, form="file")
            assert info.value.code == "overwrite-input" and Path(info.value.path) == target
            assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "sub"]


def test_save_over_source_via_symlink(tmp_path):
    f = save_file_form(tmp_path)
    before = f.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(f)
    with pytest.raises(AdapterkitError) as info:
        ak.save(ak.open_adapter(f), link, form="file")
    assert info.value.code == "overwrite-input"
    assert f.read_bytes() == before and link.is_symlink()


def test_save_into_source_directory(tmp_path):
    d = save_dir_form(tmp_path / "d")
    files = {p.name: p.read_bytes() for p in d.iterdir()}
    for adapter in (ak.open_adapter(d), ak.load(d), ak.load(d / "adapter_model.safetensors")):
        with pytest.raises(AdapterkitError) as info:
            ak.save(adapter, d)
        assert info.value.code == "overwrite-input" and Path(info.value.path) == d
        assert type(info.value).__name__ == "WriteError"
    assert {p.name: p.read_bytes() for p in d.iterdir()} == files


def test_save_dir_form_into_single_file_source_directory(tmp_path):
    f = save_file_form(tmp_path)
    before = f.read_bytes()
    with pytest.raises(AdapterkitError) as info:
        ak.save(ak.open_adapter(f), tmp_path)
    assert info.value.code == "overwrite-input"
    assert f.read_bytes() == before


def test_save_bin_source_to_its_directory(tmp_path):
    d = _bin_dir(tmp_path)
    torch.save(tensors(), d / "adapter_model.bin")
    before = (d / "adapter_model.bin").read_bytes()
    with pytest.raises(AdapterkitError) as info:
        ak.save(ak.load(d), d)
    assert info.value.code == "overwrite-input"
    assert (d / "adapter_model.bin").read_bytes() == before
    assert not (d / "adapter_model.safetensors").exists()
    out = ak.save(ak.load(d), tmp_path / "converted")  # elsewhere is fine
    assert ak.load(out) == ak.load(d)


@pytest.mark.parametrize("form", ["bogus", "", "DIR"])
def test_save_unknown_form(tmp_path, form):
    adapter = ak.Adapter.from_tensors(cfg(), tensors())
    with pytest.raises(AdapterkitError) as info:
        ak.save(adapter, tmp_path / "out", form=form)
    exc = info.value
    assert exc.code == "write-failed" and "unknown form" in exc.message
    assert Path(exc.path) == tmp_path / "out" and exc.actual == form and "dir" in exc.expected
    assert not (tmp_path / "out").exists()


def test_save_refuses_an_existing_output(tmp_path):
    adapter = ak.Adapter.from_tensors(cfg(), tensors())
    (tmp_path / "afile").write_text("x")
    (tmp_path / "d.safetensors").mkdir()
    for target, kind in ((tmp_path / "afile", "file"), (tmp_path, "directory"), (tmp_path / "d.safetensors", "directory")):
        with pytest.raises(AdapterkitError) as info:
            ak.save(adapter, target)
        assert info.value.code == "output-exists" and info.value.actual == f"existing {kind}"
        assert Path(info.value.path) == target
    assert (tmp_path / "afile").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d.safetensors"]


@pytest.mark.parametrize(("name", "form"), [("out.safetensors", "dir"), ("out", "file"), ("out.bin", "file"), ("out.SAFETENSORS", "file")])
def test_save_form_contradicting_the_name_is_refused(tmp_path, name, form):
    adapter = ak.Adapter.from_tensors(cfg(), tensors())
    with pytest.raises(AdapterkitError) as info:
        ak.save(adapter, tmp_path / name, form=form)
    assert info.value.code == "form-mismatch" and info.value.actual == name
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "is_file"), [("one.safetensors", True), ("peft-dir", False), ("dir.v2", False)])
def test_save_form_follows_the_name(tmp_path, name, is_file):
    adapter = ak.Adapter.from_tensors(cfg(), tensors())
    out = ak.save(adapter, tmp_path / name)
    assert out.is_file() == is_file and out.is_dir() == (not is_file)
    assert ak.load(out) == adapter


@pytest.mark.parametrize("before", ["file", "dir", "dir-form", "symlink"])
@pytest.mark.parametrize("name", ["t.safetensors", "t"])
def test_overwrite_replaces_the_output_whole(tmp_path, before, name):
    target = tmp_path / name
    if before == "file":
        target.write_text("old")
    elif before == "symlink":
        (tmp_path / "elsewhere").write_text("keep")
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
        (target / "README.md").write_text("stale model card")
        (target / "sub").mkdir()
        (target / "sub" / "x").write_text("stale")
        if before == "dir-form":
            ak.save(ak.Adapter.from_tensors(cfg(), tensors()), target / "inner")
    adapter = ak.Adapter.from_tensors(cfg(), tensors(**{A: torch.ones(2, 3)}))
    out = ak.save(adapter, target, overwrite=True)
    assert ak.load(out) == adapter
    if name == "t":
        assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    else:
        assert target.is_file() and not target.is_symlink()
    if before == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "keep"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in (name, "elsewhere"))
    assert leftovers == []


def test_overwrite_never_replaces_a_folder_holding_the_input(tmp_path):
    inner = save_dir_form(tmp_path / "outer" / "second")
    files = {p.name: p.read_bytes() for p in inner.iterdir()}
    for adapter in (ak.open_adapter(inner), ak.load(tmp_path / "outer", adapter_name="second")):
        for target in (tmp_path / "outer", tmp_path):
            with pytest.raises(AdapterkitError) as info:
                ak.save(adapter, target, overwrite=True)
            assert info.value.code == "overwrite-input"
    assert {p.name: p.read_bytes() for p in inner.iterdir()} == files


def test_save_refuses_an_invalid_adapter(tmp_path):
    adapter = ak.Adapter.from_tensors(cfg(), {A: torch.zeros(2, 3)})
    with pytest.raises(AdapterkitError) as info:
        ak.save(adapter, tmp_path / "out")
    assert info.value.code == "missing-partner" and info.value.key == A
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- validate collects everything


def test_validate_reports_every_problem_at_once(tmp_path):
    lone = P + "layers.0.v.lora_A.weight"
    config = cfg(target_modules=("q", "k", "v"), rank_pattern={"k": 3})
    b2 = torch.zeros(4, 3)
    b2[0, 0] = float("inf")
    ts = {
        A: torch.zeros(3, 3),  # shape-mismatch: r=2
        B: torch.zeros(4, 2, dtype=torch.int32),  # dtype-unsupported
        A2: torch.zeros(3, 3),
        B2: b2,  # non-finite
        lone: torch.zeros(2, 3),  # missing-partner
    }
    f = write_unchecked(tmp_path / "a.safetensors", ts, config)
    problems = ak.validate(f)
    found = {(p.code, p.key) for p in problems if p.severity == "error"}
    assert found == {("shape-mismatch", A), ("dtype-unsupported", B), ("non-finite", B2), ("missing-partner", lone)}
    assert all(p.path == str(f) for p in problems)
    # the raising readers stop at the first error, structural before values
    with pytest.raises(AdapterkitError) as info:
        ak.load(f)
    assert info.value.code in {"shape-mismatch", "dtype-unsupported", "missing-partner"}


def test_validate_collects_in_directory_form(tmp_path):
    t = tensors(**{BIAS: torch.zeros(4)})
    t[B][0, 0] = float("nan")
    d = write_dir_unchecked(tmp_path / "d", t, cfg(use_dora=True).to_dict())
    found = {(p.code, p.key) for p in ak.validate(d) if p.severity == "error"}
    assert found == {("unexpected-key", BIAS), ("missing-partner", B), ("non-finite", B)}


def test_validate_warnings_are_not_errors(tmp_path):
    config = cfg(rank_pattern={"nomatch": 4})
    f = write_unchecked(tmp_path / "a.safetensors", tensors(**{P + "stray.weight": torch.zeros(2)}), config)
    problems = ak.validate(f)
    assert {p.code for p in problems} == {"pattern-unmatched", "unexpected-key"}
    assert all(p.severity == "warning" for p in problems)
    ak.load(f)  # warnings never raise


# ----------------------------------------------------------------------------- the writer


def test_writer_is_deterministic(tmp_path):
    g = torch.Generator().manual_seed(1)
    items = [
        (P + "z.lora_A.weight", torch.randn(2, 3, generator=g).half()),
        (P + "z.lora_B.weight", torch.randn(4, 2, generator=g).half()),
        (A, torch.randn(2, 3, generator=g).double()),
        (B, torch.randn(4, 2, generator=g).double()),
        (A2, torch.randn(2, 5, generator=g)),
        (B2, torch.randn(1, 2, generator=g)),
        (P + "m.lora_A.weight", torch.randn(2, 2, generator=g).bfloat16()),
        (P + "m.lora_B.weight", torch.randn(2, 2, generator=g).bfloat16()),
    ]
    config = cfg(target_modules=("q", "k", "z", "m"))
    outputs = []
    for i, order in enumerate([items, items[::-1], items[3:] + items[:3]]):
        adapter = ak.Adapter.from_tensors(config, dict(order))
        f = ak.save(adapter, tmp_path / f"f{i}.safetensors", form="file")
        d = ak.save(adapter, tmp_path / f"d{i}")
        outputs.append((f.read_bytes(), (d / "adapter_model.safetensors").read_bytes(), (d / "adapter_config.json").read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]
    header, _ = split(tmp_path / "f0.safetensors")
    # 8-byte aligned header; entries laid out by (itemsize desc, key)
    assert struct.unpack("<Q", outputs[0][0][:8])[0] % 8 == 0
    begins = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
    assert [k for _, k in begins] == [A, B, A2, B2, P + "m.lora_A.weight", P + "m.lora_B.weight", P + "z.lora_A.weight", P + "z.lora_B.weight"]


def test_load_save_round_trip_is_byte_identical(tmp_path):
    f = save_file_form(tmp_path)
    g = ak.save(ak.load(f), tmp_path / "again.safetensors", form="file")
    assert f.read_bytes() == g.read_bytes()


ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2]


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def test_safetensors_library_reads_our_files(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(2)
    ts = {f"t.{str(d).split('.')[-1]}": (torch.randn(3, 2, generator=g) * 4).to(d) for d in ALL_DTYPES}
    ts["scalar"] = torch.tensor(1.5)
    ts["empty"] = torch.zeros(0, 3)
    ts["empty.bf16"] = torch.zeros(2, 0, dtype=torch.bfloat16)
    ts["vec"] = torch.arange(5, dtype=torch.float16)
    ts["noncontig"] = torch.randn(4, 3, generator=g).T
    meta = {"format": "pt", "k": "v", "unicode": "ΔW ✓"}
    f = tmp_path / "all.safetensors"
    write_file(f, ts, meta)
    loaded = load_file(f)
    assert set(loaded) == set(ts)
    for k, t in ts.items():
        _assert_same(loaded[k], t.contiguous())
    with safetensors.safe_open(f, framework="pt") as sf:
        assert sf.metadata() == meta
        assert set(sf.keys()) == set(ts)
        for k, t in ts.items():
            _assert_same(sf.get_tensor(k), t.contiguous())
    # and our reader agrees
    header = read_header(f)
    assert header.metadata == meta
    for k, t in ts.items():
        _assert_same(read_tensor(header, k), t.contiguous())


def test_safetensors_library_reads_saved_adapters(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    ts = {
        A: torch.randn(2, 3).bfloat16(),
        B: torch.randn(4, 2).bfloat16(),
        A2: torch.randn(2, 3).half(),
        B2: torch.randn(4, 2).half(),
        P + "head.scale": torch.tensor(2.0),  # 0-dim, a warning only (unexpected-key)
        P + "head.empty": torch.zeros(0, 4),
    }
    adapter = ak.Adapter.from_tensors(cfg(target_modules=("q", "k")), ts)
    for path in (ak.save(adapter, tmp_path / "a.safetensors", form="file"), ak.save(adapter, tmp_path / "d") / "adapter_model.safetensors"):
        loaded = load_file(path)
        assert set(loaded) == set(ts)
        for k, t in ts.items():
            _assert_same(loaded[k], t)
        with safetensors.safe_open(path, framework="pt") as sf:
            meta = sf.metadata()
        assert meta["format"] == "pt" and meta["adapterkit.version"] == ak.FORMAT_VERSION
        if path.name == "a.safetensors":
            assert json.loads(meta["adapterkit.config"]) == adapter.config.to_dict()
        assert ak.load(path) == adapter


def test_we_read_safetensors_library_files(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    d = tmp_path / "peft"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(cfg().to_dict()))
    ts = {A: torch.randn(2, 3).half(), B: torch.randn(4, 2).half()}
    save_file(ts, d / "adapter_model.safetensors", metadata={"format": "pt"})
    adapter = ak.load(d)
    assert adapter.format_version is None
    for k, t in ts.items():
        _assert_same(adapter.tensors[k], t)


def test_unaligned_offsets_from_other_writers_load(tmp_path):
    # safetensors does not require alignment: an F16 tensor of 2 bytes followed by an F32 one
    d = tmp_path / "d"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(ak.LoraConfig(r=1, lora_alpha=1, target_modules=("q",)).to_dict()))
    b, a = torch.tensor([[1.5]], dtype=torch.float16), torch.tensor([[2.5]])
    header = {
        B: {"dtype": "F16", "shape": [1, 1], "data_offsets": [0, 2]},
        A: {"dtype": "F32", "shape": [1, 1], "data_offsets": [2, 6]},
    }
    join(d / "adapter_model.safetensors", header, bytes(safetensors_file.tensor_bytes(b)) + bytes(safetensors_file.tensor_bytes(a)))
    loaded = ak.load(d)
    _assert_same(loaded.tensors[A], a)
    _assert_same(loaded.tensors[B], b)
    _assert_same(ak.open_adapter(d).tensors[A], a)
    assert ak.validate(d) == []


# ----------------------------------------------------------------------------- atomic writes


def _tmp_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


def test_write_failing_inside_the_chunk_iterator_leaves_target_untouched(tmp_path):
    target = tmp_path / "t.safetensors"
    target.write_bytes(b"old bytes")
    ts = {"a": torch.zeros(3), "zzz": torch.zeros(2, dtype=torch.complex64)}  # unsupported dtype, placed last
    with pytest.raises(AdapterkitError) as info:
        write_file(target, ts, {"format": "pt"})
    assert info.value.code == "dtype-unsupported" and info.value.key == "zzz"
    assert target.read_bytes() == b"old bytes"
    assert _tmp_leftovers(tmp_path) == []


@pytest.mark.parametrize("form", ["file", "dir"])
def test_write_failing_midway_leaves_target_untouched(tmp_path, monkeypatch, form):
    old = ak.Adapter.from_tensors(cfg(), tensors(**{A: torch.ones(2, 3)}))
    target = ak.save(old, tmp_path / ("t.safetensors" if form == "file" else "t"), form=form)
    folder = target if form == "dir" else tmp_path
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = safetensors_file.tensor_bytes
    calls = []

    def failing(t):
        calls.append(1)
        if len(calls) == 2:  # the header and the first tensor are already written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(t)

    monkeypatch.setattr(safetensors_file, "tensor_bytes", failing)
    with pytest.raises(AdapterkitError) as info:
        ak.save(ak.Adapter.from_tensors(cfg(), tensors()), target, form=form, overwrite=True)
    exc = info.value
    assert exc.code == "write-failed" and "No space left" in exc.message
    want = target if form == "file" else target / "adapter_model.safetensors"
    assert Path(exc.path) == want
    assert len(calls) == 2
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert _tmp_leftovers(folder) == []


def test_interrupted_write_leaves_target_untouched(tmp_path):
    target = tmp_path / "t.safetensors"
    target.write_bytes(b"old")

    def chunks():
        yield b"partial"
        raise KeyboardInterrupt

    from adapterkit.io.atomic import write_atomic

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, chunks())
    assert target.read_bytes() == b"old"
    assert _tmp_leftovers(tmp_path) == []


def test_write_into_unwritable_location(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    with pytest.raises(AdapterkitError) as info:
        ak.save(ak.Adapter.from_tensors(cfg(), tensors()), blocker / "sub" / "a.safetensors", form="file")
    assert info.value.code == "write-failed" and info.value.path is not None


def test_new_directory_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    real = safetensors_file.tensor_bytes
    calls = []

    def failing(t):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(t)

    monkeypatch.setattr(safetensors_file, "tensor_bytes", failing)
    target = tmp_path / "new"
    with pytest.raises(AdapterkitError) as info:
        ak.save(ak.Adapter.from_tensors(cfg(), tensors()), target)
    assert info.value.code == "write-failed"
    assert Path(info.value.path) == target / "adapter_model.safetensors"
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(safetensors_file, "tensor_bytes", real)
    ak.save(ak.Adapter.from_tensors(cfg(), tensors()), target)
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert oct(target.stat().st_mode & 0o777) == "0o755"
