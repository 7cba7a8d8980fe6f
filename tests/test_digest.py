"""The content digest (spec §5.5, format 1.1): written by ``save`` in both forms, checked by
``load``/``validate`` (``digest-mismatch`` naming the config or the first differing tensor),
shown by ``info``.  (PEFT loading files that carry it: tests/test_peft_interop.py saves with
adapterkit and loads with PEFT.)

Oracles are independent of adapterkit's own code: the reference digest is a few lines of
hashlib over the spec's definition, reading the file with the ``safetensors`` library; which
tensor owns a byte comes from the header's offsets parsed here with struct and json.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open

import adapterkit
from adapterkit import Adapter, LoraConfig
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError
from adapterkit.testing import strategies as aks

P = "base_model.model.model.layers.0."


def _adapter() -> Adapter:
    """Mixed dtypes (F32 data before BF16 in the file, not the sorted key order) and a whole module."""
    g = torch.Generator().manual_seed(0)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj"), modules_to_save=("score",),
                     base_model_name_or_path="exämple/tïny-llama")  # non-ASCII: \uXXXX in the canonical JSON
    return Adapter.from_tensors(cfg, {
        P + "q_proj.lora_A.weight": torch.randn(2, 6, generator=g).bfloat16(),
        P + "q_proj.lora_B.weight": torch.randn(4, 2, generator=g).bfloat16(),
        P + "v_proj.lora_A.weight": torch.randn(2, 6, generator=g),
        P + "v_proj.lora_B.weight": torch.randn(4, 2, generator=g),
        "base_model.model.score.weight": torch.randn(3, 6, generator=g),
        "base_model.model.score.bias": torch.randn(3, generator=g),
    })


# ---------------------------------------------------------------------------- independent reference


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _field(b: bytes) -> bytes:
    return _u64(len(b)) + b


def _sorted_but_patterns(value):
    """Every object's members sorted, the values of rank_pattern/alpha_pattern/paca_indices_pattern
    kept as they are (spec §5.5 [R5.5-3] from format 1.2 on; PEFT 0.22.0's on-disk order)."""
    if isinstance(value, dict):
        return {k: v if k in ("rank_pattern", "alpha_pattern", "paca_indices_pattern") else _sorted_but_patterns(v)
                for k, v in sorted(value.items())}
    return [_sorted_but_patterns(v) for v in value] if isinstance(value, list) else value


def reference_digest(weights: Path, config_text: str, version: str = "1.1") -> tuple[str, str]:
    """(adapterkit.digest, adapterkit.digests) from the words of spec §5.5, over the file as the
    safetensors library reads it; ``version``: the file's format version, which picks the
    canonical JSON (1.1: every object sorted; 1.2: the pattern objects in stored order)."""
    config = json.loads(config_text)
    if version == "1.1":
        canon = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    else:
        canon = json.dumps(_sorted_but_patterns(config), separators=(",", ":")).encode()
    entries = [hashlib.sha256(_field(b"adapterkit.config/1") + _field(canon)).digest()]
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}
    with safe_open(str(weights), "pt") as f:
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            data = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
            head = _field(b"adapterkit.tensor/1") + _field(key.encode()) + _field(names[t.dtype].encode())
            head += _u64(t.dim()) + b"".join(_u64(d) for d in t.shape) + _u64(len(data))
            entries.append(hashlib.sha256(head + data).digest())
    whole = hashlib.sha256(_field(b"adapterkit.digest/1") + _u64(len(entries)) + b"".join(entries)).hexdigest()
    return "sha256:" + whole, b"".join(entries).hex()


def split(path: Path) -> tuple[dict, int]:
    """The raw header object of a safetensors file and where its data starts."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), 8 + n


def metadata(path: Path) -> dict[str, str]:
    return split(path)[0]["__metadata__"]


def errors(path: Path) -> list:
    return [p for p in adapterkit.validate(path) if p.severity == "error"]


# ---------------------------------------------------------------------------- writing


def test_save_then_validate_passes_in_both_forms(tmp_path):
    a = _adapter()
    for out in (tmp_path / "a.safetensors", tmp_path / "dir"):
        adapterkit.save(a, out)
        assert adapterkit.validate(out) == []
        loaded = adapterkit.load(out)
        assert loaded.format_version == "1.3"
        assert all(torch.equal(loaded.tensors[k], a.tensors[k]) for k in a.tensors)


def test_digest_equals_the_reference_implementation(tmp_path):
    a = _adapter()
    file, folder = adapterkit.save(a, tmp_path / "a.safetensors"), adapterkit.save(a, tmp_path / "dir")
    meta = metadata(file)
    assert (meta["adapterkit.digest"], meta["adapterkit.digests"]) == reference_digest(file, meta["adapterkit.config"], "1.3")
    weights = folder / "adapter_model.safetensors"
    dmeta = metadata(weights)
    assert (dmeta["adapterkit.digest"], dmeta["adapterkit.digests"]) == reference_digest(weights, (folder / "adapter_config.json").read_text(), "1.3")
    assert len(meta["adapterkit.digests"]) == 64 * (1 + len(a.tensors))


def test_directory_and_single_file_forms_record_identical_digests(tmp_path):
    a = _adapter()
    file, folder = adapterkit.save(a, tmp_path / "a.safetensors"), adapterkit.save(a, tmp_path / "dir")
    m_file, m_dir = metadata(file), metadata(folder / "adapter_model.safetensors")
    assert m_file["adapterkit.digest"] == m_dir["adapterkit.digest"]
    assert m_file["adapterkit.digests"] == m_dir["adapterkit.digests"]
    assert "adapterkit.config" not in m_dir  # the directory form still keeps its config in adapter_config.json only


@given(aks.adapters(max_modules=3), st.sampled_from(["file", "dir"]))
def test_any_adapter_matches_the_reference(tmp_path_factory, adapter, form):
    tmp = tmp_path_factory.mktemp("ref")
    out = adapterkit.save(adapter, tmp / ("a.safetensors" if form == "file" else "a"))
    weights = out if form == "file" else out / "adapter_model.safetensors"
    meta = metadata(weights)
    config = meta["adapterkit.config"] if form == "file" else (out / "adapter_config.json").read_text()
    assert (meta["adapterkit.digest"], meta["adapterkit.digests"]) == reference_digest(weights, config, "1.3")
    assert adapterkit.validate(out) == []


def test_digest_ignores_tensor_insertion_order_and_durability(tmp_path):
    a = _adapter()
    reversed_a = Adapter.from_tensors(a.config, dict(reversed(list(a.tensors.items()))))
    one = adapterkit.save(a, tmp_path / "one.safetensors")
    two = adapterkit.save(reversed_a, tmp_path / "two.safetensors", durable=False)
    assert one.read_bytes() == two.read_bytes()


def test_without_digest_writes_a_version_1_0_file(tmp_path):
    out = adapterkit.save(_adapter(), tmp_path / "old.safetensors", digest=False)
    meta = metadata(out)
    assert meta["adapterkit.version"] == "1.0" and "adapterkit.digest" not in meta and "adapterkit.digests" not in meta
    assert adapterkit.validate(out) == []  # no digest: no problem, no warning
    assert adapterkit.load(out).format_version == "1.0"


def test_safetensors_and_peft_style_readers_see_the_metadata(tmp_path):
    folder = adapterkit.save(_adapter(), tmp_path / "dir")
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["adapterkit.version"] == "1.3"
    assert meta["adapterkit.digest"].startswith("sha256:")


# ---------------------------------------------------------------------------- checking


def _owner(path: Path, position: int) -> str | None:
    """The tensor whose data holds the file byte at ``position``, from the header's offsets."""
    header, start = split(path)
    for key, entry in header.items():
        if key != "__metadata__":
            begin, end = entry["data_offsets"]
            if start + begin <= position < start + end:
                return key
    return None


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=7))
def test_any_flipped_data_byte_is_named(tmp_path_factory, where, bit):
    out = adapterkit.save(_adapter(), tmp_path_factory.mktemp("flip") / "a.safetensors")
    raw = bytearray(out.read_bytes())
    _, start = split(out)
    position = start + where % (len(raw) - start)
    raw[position] ^= 1 << bit
    out.write_bytes(bytes(raw))
    owner = _owner(out, position)
    assert owner is not None
    found = [p for p in adapterkit.validate(out) if p.code == "digest-mismatch"]
    assert [p.key for p in found] == [owner]
    assert found[0].severity == "error"
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert info.value.code == "digest-mismatch" and info.value.key == owner  # checked before the values (a flip may make a NaN)


def test_load_can_skip_the_digest_check(tmp_path):
    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    header, start = split(out)
    raw = bytearray(out.read_bytes())
    key = "base_model.model.score.bias"
    raw[start + header[key]["data_offsets"][0]] ^= 1
    out.write_bytes(bytes(raw))
    with pytest.raises(AdapterkitError, match=r"score\.bias: the tensor differs"):
        adapterkit.load(out)
    loaded = adapterkit.load(out, verify_digest=False)
    assert not torch.equal(loaded.tensors[key], _adapter().tensors[key])


def test_first_differing_tensor_in_sorted_order_is_named(tmp_path):
    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    header, start = split(out)
    raw = bytearray(out.read_bytes())
    keys = [P + "v_proj.lora_B.weight", P + "q_proj.lora_B.weight", "base_model.model.score.bias"]
    for key in keys:
        raw[start + header[key]["data_offsets"][0]] ^= 1
    out.write_bytes(bytes(raw))
    found = [p for p in errors(out) if p.code == "digest-mismatch"]
    assert [p.key for p in found] == [sorted(keys)[0]]


def test_a_change_that_makes_a_nan_is_a_digest_mismatch_first(tmp_path):
    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    header, start = split(out)
    key = P + "v_proj.lora_A.weight"  # F32, little-endian: bytes 2 and 3 hold the exponent
    raw = bytearray(out.read_bytes())
    at = start + header[key]["data_offsets"][0]
    raw[at + 2], raw[at + 3] = 0xC0, 0x7F
    out.write_bytes(bytes(raw))
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert (info.value.code, info.value.key) == ("digest-mismatch", key)
    assert sorted((p.code, p.key) for p in errors(out)) == [("digest-mismatch", key), ("non-finite", key)]


def test_the_config_is_hashed_as_stored_without_defaults(tmp_path):
    from safetensors.torch import save_file

    a = _adapter()
    tensors = {k: a.tensors[k].contiguous() for k in a.tensors}
    minimal = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["score"]})
    meta = {"format": "pt", "adapterkit.version": "1.1", "adapterkit.config": minimal}
    out = tmp_path / "minimal.safetensors"
    save_file(tensors, str(out), metadata=meta)
    digest, digests = reference_digest(out, minimal)
    save_file(tensors, str(out), metadata={**meta, "adapterkit.digest": digest, "adapterkit.digests": digests})
    assert adapterkit.validate(out) == []
    assert adapterkit.load(out).config.use_rslora is False  # the defaults are filled in when read, not when hashed


def test_reordered_file_keeps_the_digest(tmp_path):
    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    header, start = split(out)
    data = out.read_bytes()[start:]
    new_header, chunks, cursor = {"__metadata__": header["__metadata__"]}, [], 0
    for key in sorted((k for k in header if k != "__metadata__"), reverse=True):
        begin, end = header[key]["data_offsets"]
        new_header[key] = {**header[key], "data_offsets": [cursor, cursor + end - begin]}
        chunks.append(data[begin:end])
        cursor += end - begin
    text = json.dumps(new_header).encode()
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    assert moved.read_bytes() != out.read_bytes()
    assert adapterkit.validate(moved) == []
    assert reference_digest(moved, header["__metadata__"]["adapterkit.config"], "1.3")[0] == header["__metadata__"]["adapterkit.digest"]
    again = adapterkit.save(adapterkit.load(moved), tmp_path / "again.safetensors")
    assert again.read_bytes() == out.read_bytes()


def test_changed_config_names_config(tmp_path):
    folder = adapterkit.save(_adapter(), tmp_path / "dir")
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg, separators=(",", ":")))  # another layout, same value: still fine
    assert adapterkit.validate(folder) == []
    cfg_path.write_text(json.dumps({**cfg, "lora_alpha": 8}))
    found = errors(folder)
    assert [(p.code, p.key) for p in found] == [("digest-mismatch", "config")]
    cfg_path.write_text(json.dumps({**cfg, "lora_alpha": 4.0}))  # 4.0 is not 4 in canonical JSON
    assert [(p.code, p.key) for p in errors(folder)] == [("digest-mismatch", "config")]


def test_changed_embedded_config_names_config(tmp_path):
    from safetensors.torch import save_file

    a = _adapter()
    out = adapterkit.save(a, tmp_path / "a.safetensors")
    meta = metadata(out)
    cfg = json.loads(meta["adapterkit.config"])
    edited = tmp_path / "edited.safetensors"
    save_file({k: a.tensors[k].contiguous() for k in a.tensors}, str(edited), metadata={**meta, "adapterkit.config": json.dumps({**cfg, "r": 2, "lora_alpha": 2})})
    assert [(p.code, p.key) for p in errors(edited)] == [("digest-mismatch", "config")]


def test_removed_and_added_tensors(tmp_path):
    from safetensors.torch import save_file

    a = _adapter()
    meta = metadata(adapterkit.save(a, tmp_path / "a.safetensors"))
    tensors = {k: a.tensors[k].contiguous() for k in a.tensors}
    fewer = tmp_path / "fewer.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "base_model.model.score.bias"}, str(fewer), metadata=meta)
    found = errors(fewer)
    assert [(p.code, p.key) for p in found] == [("digest-mismatch", None)]
    assert "6 tensors" in str(found[0]) and "5 tensors" in str(found[0])
    more = tmp_path / "more.safetensors"
    save_file({**tensors, "base_model.model.score.extra": torch.ones(2)}, str(more), metadata=meta)
    assert [(p.code, p.key) for p in errors(more)] == [("digest-mismatch", "base_model.model.score.extra")]


def test_a_changed_dtype_or_shape_with_the_same_bytes_is_named(tmp_path):
    from safetensors.torch import save_file

    a = _adapter()
    meta = metadata(adapterkit.save(a, tmp_path / "a.safetensors"))
    tensors = {k: a.tensors[k].contiguous() for k in a.tensors}
    score, q = "base_model.model.score.weight", P + "q_proj.lora_A.weight"
    for name, key, t in (("shape", score, tensors[score].reshape(6, 3)), ("dtype", q, tensors[q].view(torch.float16))):
        out = tmp_path / f"{name}.safetensors"
        save_file({**tensors, key: t}, str(out), metadata=meta)
        assert [(p.code, p.key) for p in errors(out) if p.code == "digest-mismatch"] == [("digest-mismatch", key)], name


@pytest.mark.parametrize(("edit", "key"), [
    (lambda m: {**m, "adapterkit.digest": m["adapterkit.digest"].upper()}, "__metadata__.adapterkit.digest"),
    (lambda m: {**m, "adapterkit.digest": m["adapterkit.digest"] + "\n"}, "__metadata__.adapterkit.digest"),
    (lambda m: {**m, "adapterkit.digests": m["adapterkit.digests"].upper()}, "__metadata__.adapterkit.digests"),
    (lambda m: {**m, "adapterkit.digests": m["adapterkit.digests"][:-1]}, "__metadata__.adapterkit.digests"),
    (lambda m: {**m, "adapterkit.digests": ""}, "__metadata__.adapterkit.digests"),
    (lambda m: {k: v for k, v in m.items() if k != "adapterkit.digests"}, "__metadata__.adapterkit.digests"),
    (lambda m: {k: v for k, v in m.items() if k != "adapterkit.digest"}, "__metadata__.adapterkit.digest"),
    (lambda m: {**m, "adapterkit.digests": m["adapterkit.digests"][64:] + m["adapterkit.digests"][:64]}, "__metadata__.adapterkit.digests"),
])
def test_a_malformed_or_inconsistent_record_is_refused_from_the_header(tmp_path, edit, key):
    from safetensors.torch import save_file

    a = _adapter()
    meta = metadata(adapterkit.save(a, tmp_path / "a.safetensors"))
    out = tmp_path / "bad.safetensors"
    save_file({k: a.tensors[k].contiguous() for k in a.tensors}, str(out), metadata=edit(meta))
    with pytest.raises(AdapterkitError) as info:
        adapterkit.open_adapter(out)  # no tensor data is read for this
    assert (info.value.code, info.value.key) == ("metadata-invalid", key)
    assert [(p.code, p.key) for p in errors(out)] == [("metadata-invalid", key)]


def test_files_without_a_digest_stay_valid(tmp_path):
    from safetensors.torch import save_file

    a = _adapter()
    meta = {k: v for k, v in metadata(adapterkit.save(a, tmp_path / "a.safetensors")).items() if not k.startswith("adapterkit.digest")}
    out = tmp_path / "plain.safetensors"
    save_file({k: a.tensors[k].contiguous() for k in a.tensors}, str(out), metadata=meta)  # says 1.3, records no digest
    assert adapterkit.validate(out) == []
    assert adapterkit.load(out).format_version == "1.3"


# ---------------------------------------------------------------------------- command line


def test_info_shows_the_digest(tmp_path):
    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    digest = metadata(out)["adapterkit.digest"]
    runner = CliRunner()
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0 and f"digest:          {digest}" in res.output
    res = runner.invoke(main, ["info", str(out), "--json", "--no-modules"])
    assert json.loads(res.output)["digest"] == digest
    old = adapterkit.save(_adapter(), tmp_path / "old.safetensors", digest=False)
    res = runner.invoke(main, ["info", str(old), "--json"])
    assert json.loads(res.output)["digest"] is None
    assert "digest:          none recorded" in runner.invoke(main, ["info", str(old)]).output


def test_validate_command_reports_the_mismatch(tmp_path):
    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    header, start = split(out)
    raw = bytearray(out.read_bytes())
    key = "base_model.model.score.weight"
    raw[start + header[key]["data_offsets"][0]] ^= 2
    out.write_bytes(bytes(raw))
    runner = CliRunner()
    res = runner.invoke(main, ["validate", str(out)])
    assert res.exit_code == 1
    assert f"{key}: the tensor differs" in res.output and "[digest-mismatch]" in res.output
    res = runner.invoke(main, ["validate", str(out), "--json"])
    problems = json.loads(res.output)["problems"]
    assert [(p["code"], p["key"]) for p in problems] == [("digest-mismatch", key)]


# ---------------------------------------------------------------------------- exact texts of digest-mismatch


def _entry_hex(key: str, t: torch.Tensor) -> str:
    """A tensor's entry digest in hex, from the words of spec §5.5 [R5.5-2]."""
    names = {torch.float32: "F32", torch.bfloat16: "BF16"}
    data = t.contiguous().view(torch.uint8).numpy().tobytes()
    head = _field(b"adapterkit.tensor/1") + _field(key.encode()) + _field(names[t.dtype].encode())
    head += _u64(t.dim()) + b"".join(_u64(d) for d in t.shape) + _u64(len(data))
    return hashlib.sha256(head + data).hexdigest()


def _flip_first_byte(path: Path, key: str) -> None:
    header, start = split(path)
    raw = bytearray(path.read_bytes())
    raw[start + header[key]["data_offsets"][0]] ^= 1
    path.write_bytes(bytes(raw))


def test_digest_mismatch_names_the_tensor_in_these_words(tmp_path):
    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    key = P + "v_proj.lora_B.weight"
    recorded = metadata(out)["adapterkit.digests"]
    keys = sorted(_adapter().tensors)
    was = recorded[64 * (1 + keys.index(key)) :][:16]
    _flip_first_byte(out, key)
    with safe_open(str(out), "pt") as f:
        now = _entry_hex(key, f.get_tensor(key))[:16]
    want = (f"{out}: {key}: the tensor differs from the one the content digest records (bytes, dtype or shape) "
            f"(expected entry {was}..., got entry {now}...) [digest-mismatch]")
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert str(info.value) == want
    assert [str(p) for p in adapterkit.validate(out)] == ["error: " + want]


def test_digest_mismatch_names_the_config_in_these_words(tmp_path):
    folder = adapterkit.save(_adapter(), tmp_path / "dir")
    weights = folder / "adapter_model.safetensors"
    was = metadata(weights)["adapterkit.digests"][:16]
    config = json.loads((folder / "adapter_config.json").read_text())
    config["lora_alpha"] = 8
    text = json.dumps(config, indent=2)
    (folder / "adapter_config.json").write_text(text)
    canon = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")).encode()  # no pattern objects: sorted throughout
    now = hashlib.sha256(_field(b"adapterkit.config/1") + _field(canon)).hexdigest()[:16]
    want = (f"{weights}: config: the config differs from the one the content digest records "
            f"(expected entry {was}..., got entry {now}...) [digest-mismatch]")
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(folder)
    assert str(info.value) == want


def test_digest_mismatch_for_a_removed_tensor_in_these_words(tmp_path):
    from safetensors.torch import save_file

    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    meta = metadata(out)
    with safe_open(str(out), "pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if k != "base_model.model.score.bias"}
    save_file(kept, str(out), metadata=meta)
    want = f"{out}: tensors the content digest records are missing (expected 6 tensors, got 5 tensors) [digest-mismatch]"
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert str(info.value) == want


def test_entries_recorded_out_of_order_are_a_mismatch_naming_the_first_misplaced_key(tmp_path):
    """[R5.5-1] fixes the entries' order (code points of the keys); a record that holds every entry but
    in another order combines to another digest than the content's, so it does not identify it."""
    from safetensors.torch import save_file

    out = adapterkit.save(_adapter(), tmp_path / "a.safetensors")
    meta = metadata(out)
    hexes = [meta["adapterkit.digests"][i : i + 64] for i in range(0, len(meta["adapterkit.digests"]), 64)]
    hexes[2], hexes[3] = hexes[3], hexes[2]
    whole = hashlib.sha256(_field(b"adapterkit.digest/1") + _u64(len(hexes)) + bytes.fromhex("".join(hexes))).hexdigest()
    with safe_open(str(out), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(out), metadata={**meta, "adapterkit.digests": "".join(hexes), "adapterkit.digest": "sha256:" + whole})
    second = sorted(tensors)[1]
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert (info.value.code, info.value.key) == ("digest-mismatch", second)
    assert str(info.value) == (f"{out}: {second}: the content digest records this tensor's entry out of code-point order of the keys "
                               f"(expected entry {hexes[3][:16]}... at place 2, got entry {hexes[2][:16]}...) [digest-mismatch]")


# ---------------------------------------------------------------------------- pattern order (format 1.2)


def _patterned(alpha_pattern: dict) -> Adapter:
    """Two rank-2 modules; ``alpha_pattern``'s order decides v_proj's alpha (12 first, else 8)."""
    g = torch.Generator().manual_seed(5)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj"), alpha_pattern=alpha_pattern)
    return Adapter.from_tensors(cfg, {P + f"{m}_proj.lora_{ab}.weight": torch.randn(*shape, generator=g)
                                      for m in "qv" for ab, shape in (("A", (2, 6)), ("B", (4, 2)))})


@pytest.mark.parametrize("form", ["file", "dir"])
def test_pattern_order_is_kept_on_disk_and_is_part_of_the_digest(tmp_path, form):
    """PEFT 0.22.0 applies the first matching pattern key in stored order and keeps that order on disk;
    two adapters whose alpha_pattern differs only in order are different adapters, so they are written
    as such and get different digests (spec §5.5, format 1.2)."""
    first, second = _patterned({"v_proj": 12, ".*": 8}), _patterned({".*": 8, "v_proj": 12})
    name = "a.safetensors" if form == "file" else "a"
    a, b = adapterkit.save(first, tmp_path / "1" / name), adapterkit.save(second, tmp_path / "2" / name)
    weights = [p if form == "file" else p / "adapter_model.safetensors" for p in (a, b)]
    texts = [metadata(w)["adapterkit.config"] if form == "file" else (p / "adapter_config.json").read_text() for w, p in zip(weights, (a, b))]
    assert [list(json.loads(t)["alpha_pattern"]) for t in texts] == [["v_proj", ".*"], [".*", "v_proj"]]
    digests = [(metadata(w)["adapterkit.digest"], metadata(w)["adapterkit.digests"]) for w in weights]
    assert digests == [reference_digest(w, t, "1.3") for w, t in zip(weights, texts)]
    assert digests[0][0] != digests[1][0]
    v = "model.layers.0.v_proj"
    assert [adapterkit.load(p).module(v).scaling for p in (a, b)] == [12 / 2, 8 / 2]
    assert [metadata(w)["adapterkit.version"] for w in weights] == ["1.3", "1.3"]


def test_the_two_forms_of_a_patterned_adapter_have_one_digest(tmp_path):
    adapter = _patterned({"v_proj": 12, ".*": 8})
    file = adapterkit.save(adapter, tmp_path / "a.safetensors")
    folder = adapterkit.save(adapter, tmp_path / "dir")
    assert metadata(file)["adapterkit.digest"] == metadata(folder / "adapter_model.safetensors")["adapterkit.digest"]


def _legacy_dir(tmp_path: Path, version: str) -> Path:
    """A directory whose adapter_config.json keeps the pattern order (as PEFT 0.22.0 writes it) and whose
    weights record the digest as format 1.1 defined it: the config hashed with every object sorted."""
    from safetensors.torch import save_file

    adapter = _patterned({"v_proj": 12, ".*": 8})
    folder = tmp_path / version
    folder.mkdir()
    text = json.dumps({**adapter.config.to_dict(), "alpha_pattern": {"v_proj": 12, ".*": 8}}, indent=2)
    (folder / "adapter_config.json").write_text(text)
    tensors = {k: adapter.tensors[k].contiguous() for k in adapter.tensors}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt", "adapterkit.version": version})
    digest, digests = reference_digest(folder / "adapter_model.safetensors", text, "1.1")
    save_file(tensors, str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt", "adapterkit.version": version, "adapterkit.digest": digest, "adapterkit.digests": digests})
    return folder


def test_a_1_1_digest_still_verifies_and_the_same_record_in_a_1_2_file_does_not(tmp_path):
    old = _legacy_dir(tmp_path, "1.1")
    assert [p.code for p in adapterkit.validate(old) if p.severity == "error"] == []
    assert adapterkit.load(old).module("model.layers.0.v_proj").scaling == 12 / 2  # the stored order applies
    new = _legacy_dir(tmp_path, "1.2")  # 1.2 hashes the stored order: the sorted-order record is not this content's
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(new)
    assert (info.value.code, info.value.key) == ("digest-mismatch", "config")


@pytest.mark.parametrize(("version", "kept"), [(None, False), ("1.0", False), ("1.1", False), ("1.2", True), ("1.3", True), ("1.7", True),
                                                ("1.10", True), ("1." + "9" * 5000, True)])
def test_which_files_hash_the_pattern_order(version, kept):
    """[R5.5-3]: 1.2 and every later minor of major 1 hash the stored order; 1.0, 1.1 and PEFT-profile files sort."""
    from adapterkit.io.version import digest_keeps_pattern_order

    assert digest_keeps_pattern_order(version) is kept


def test_rewriting_a_1_1_file_keeps_the_order_and_records_a_1_2_digest(tmp_path):
    """convert of a 1.1 adapter whose config keeps the pattern order (PEFT 0.22.0's layout): the 1.2 output keeps
    the order (1.1 writers sorted it, changing v_proj's scaling) and its digest hashes it."""
    old = adapterkit.load(_legacy_dir(tmp_path, "1.1"))
    for out in (tmp_path / "new", tmp_path / "new.safetensors", tmp_path / "plain"):
        adapterkit.save(old, out, digest=out.name != "plain")
        text = metadata(out)["adapterkit.config"] if out.suffix else (out / "adapter_config.json").read_text()
        assert list(json.loads(text)["alpha_pattern"]) == ["v_proj", ".*"]
        assert adapterkit.load(out).module("model.layers.0.v_proj").scaling == 12 / 2
    weights = tmp_path / "new" / "adapter_model.safetensors"
    meta = metadata(weights)
    assert meta["adapterkit.version"] == "1.3"
    assert (meta["adapterkit.digest"], meta["adapterkit.digests"]) == reference_digest(weights, (tmp_path / "new" / "adapter_config.json").read_text(), "1.3")
    assert metadata(tmp_path / "plain" / "adapter_model.safetensors")["adapterkit.version"] == "1.0"
