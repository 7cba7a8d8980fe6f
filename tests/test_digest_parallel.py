"""The content digest's entries (spec §5.5) hashed in parallel: while ``load`` reads the data
region in pieces (``digest.RegionHasher``), while ``save`` writes (``digest.PartsHasher``), and
from a region in memory (``digest.region_entries``, needing no torch).

Whatever the number of threads, the size of the tasks, the pieces the region arrives in and
the order in which the threads finish, every entry digest equals the one the spec defines
(computed here with hashlib from the words of §5.5, never with adapterkit's own helpers), a
changed byte is named as the first differing key in sorted order, an error in a hashing
thread reaches the caller as the AdapterkitError it was, and nothing is left behind: no
hashing thread, no open file, one private buffer for every loaded tensor.  No timings here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

import adapterkit
from adapterkit import Adapter, LoraConfig
from adapterkit.errors import AdapterkitError, FormatError
from adapterkit.io import digest, safetensors_file, writer
from adapterkit.testing import strategies as aks

P = "base_model.model.model.layers.0."
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1}


# ---------------------------------------------------------------------------- the oracle: §5.5 in hashlib


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _field(b: bytes) -> bytes:
    return _u64(len(b)) + b


def reference_entry(key: str, dtype: str, shape: tuple[int, ...], data: bytes) -> bytes:
    """SHA-256(field(tag), field(key), field(dtype), rank, dims, byte count, data) ([R5.5-2])."""
    head = _field(b"adapterkit.tensor/1") + _field(key.encode()) + _field(dtype.encode())
    head += _u64(len(shape)) + b"".join(_u64(d) for d in shape) + _u64(len(data))
    return hashlib.sha256(head + data).digest()


def reference_metadata(config: dict, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> dict[str, str]:
    """``adapterkit.digest`` and ``adapterkit.digests`` of a format 1.1 file (every config object sorted)."""
    canon = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    entries = [hashlib.sha256(_field(b"adapterkit.config/1") + _field(canon)).digest()]
    entries += [reference_entry(k, *tensors[k]) for k in sorted(tensors)]
    whole = hashlib.sha256(_field(b"adapterkit.digest/1") + _u64(len(entries)) + b"".join(entries)).hexdigest()
    return {"adapterkit.digest": "sha256:" + whole, "adapterkit.digests": b"".join(entries).hex()}


# ---------------------------------------------------------------------------- helpers


@pytest.fixture
def threads(monkeypatch):
    """``threads(n, run_bytes, piece)``: hash on n threads (the caller's included), in tasks of
    about ``run_bytes``, with ``load`` reading ``piece`` bytes at a time."""
    def setup(n: int, run_bytes: int | None = None, piece: int | None = None) -> None:
        monkeypatch.setattr(digest, "hash_threads", lambda nbytes: n)
        if run_bytes is not None:
            monkeypatch.setattr(digest, "_RUN_BYTES", run_bytes)
        if piece is not None:
            monkeypatch.setattr(safetensors_file, "_READ_PIECE", piece)
    return setup


def hashing_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("adapterkit-digest")]


def open_files_to(path: Path) -> list[str]:
    if not Path("/proc/self/fd").is_dir():
        return []
    target = str(path.resolve())
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.path.realpath(f"/proc/self/fd/{fd}") == target:
                found.append(fd)
        except OSError:
            pass
    return found


def split(path: Path) -> tuple[dict, int]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), 8 + n


def owner(header: dict, offset: int) -> str | None:
    """The tensor whose bytes hold data-region offset ``offset``."""
    for key, entry in header.items():
        if key != "__metadata__" and entry["data_offsets"][0] <= offset < entry["data_offsets"][1]:
            return key
    return None


def delayed(monkeypatch, seed: int) -> None:
    """Make every entry's hashing start after a random pause, so the threads finish in a random order."""
    real = digest.tensor_prefix
    rng = random.Random(seed)
    pauses = [rng.random() * 0.002 for _ in range(64)]

    def slow(key, dtype, shape, nbytes):
        time.sleep(pauses[hash(key) % len(pauses)])
        return real(key, dtype, shape, nbytes)

    monkeypatch.setattr(digest, "tensor_prefix", slow)


@st.composite
def layouts(draw, max_entries: int = 24):
    """Entries laid out back to back as a safetensors data region: (key, dtype, shape, begin, end),
    every dtype, empty tensors, odd sizes (so most offsets are unaligned), and the region's bytes."""
    n = draw(st.integers(0, max_entries))
    entries, cursor = [], 0
    for i in range(n):
        dtype = draw(st.sampled_from(sorted(ITEMSIZE)))
        shape = tuple(draw(st.lists(st.integers(0, 9), max_size=3)))
        if draw(st.booleans()) and shape:  # now and then a larger one, spanning many pieces and tasks
            shape = (*shape[:-1], draw(st.integers(0, 700)))
        nbytes = ITEMSIZE[dtype]
        for d in shape:
            nbytes *= d
        entries.append((f"t{draw(st.integers(0, 10**6))}.{i}", dtype, shape, cursor, cursor + nbytes))
        cursor += nbytes
    seed = draw(st.integers(0, 2**32 - 1))
    return entries, random.Random(seed).randbytes(cursor)


def reference_of(entries, data: bytes) -> dict[str, bytes]:
    return {k: reference_entry(k, dt, sh, data[b:e]) for k, dt, sh, b, e in entries}


# ---------------------------------------------------------------------------- the same digests, however hashed


@given(layouts(), st.sampled_from([1, 2, 3, 8]), st.sampled_from([1, 97, 1 << 20]), st.integers(1, 4096), st.integers(0, 2**32 - 1))
def test_region_hasher_gives_the_spec_digests_while_the_region_fills(threads, layout, n, run_bytes, piece, seed):
    entries, data = layout
    threads(n, run_bytes)
    rng = random.Random(seed)
    region = bytearray(len(data))  # zeros until filled: a byte hashed too early gives another digest
    with digest.RegionHasher(entries) as hasher:
        filled = 0
        while filled < len(data):
            stop = min(len(data), filled + rng.randint(1, piece))
            region[filled:stop] = data[filled:stop]
            filled = stop
            hasher.filled(region, filled)
            if rng.random() < 0.05:
                time.sleep(0.001)  # let the workers catch up, and wait
        got = hasher.entries()
    assert got == reference_of(entries, data)
    assert hashing_threads() == []


@given(layouts(), st.sampled_from([1, 2, 5]), st.sampled_from([1, 1 << 20]))
def test_region_entries_and_tensor_entries_give_the_spec_digests(threads, layout, n, run_bytes):
    entries, data = layout
    threads(n, run_bytes)
    want = reference_of(entries, data)
    assert digest.region_entries(data, entries) == want
    assert digest.region_entries(memoryview(bytearray(data)), entries) == want
    assert digest.tensor_entries((k, dt, sh, memoryview(data)[b:e]) for k, dt, sh, b, e in entries) == want
    assert hashing_threads() == []


def test_bytes_are_hashed_only_once_they_are_filled(threads):
    # one large entry and many small ones behind it, filled slowly: workers reach bytes not yet there
    entries = [("big", "F32", (4096,), 0, 16384)] + [(f"s{i}", "U8", (3,), 16384 + 3 * i, 16387 + 3 * i) for i in range(50)]
    data = random.Random(1).randbytes(16384 + 150)
    for n, run_bytes in [(4, 1), (2, 1 << 20)]:
        threads(n, run_bytes)
        region = bytearray(len(data))
        with digest.RegionHasher(entries) as hasher:
            filled = 0
            while filled < len(data):
                stop = min(len(data), filled + 1000)
                region[filled:stop] = data[filled:stop]
                filled = stop
                hasher.filled(region, filled)
                time.sleep(0.002)
            assert hasher.entries() == reference_of(entries, data)


def test_thousands_of_tiny_tensors_and_one_alone(threads):
    rng = random.Random(7)
    entries, cursor = [], 0
    for i in range(3000):
        size = rng.choice([0, 1, 2, 4, 8])
        entries.append((f"k{i:04d}", {0: "F32", 1: "U8", 2: "F16", 4: "F32", 8: "F64"}[size], (1,) if size else (0,), cursor, cursor + size))
        cursor += size
    data = rng.randbytes(cursor)
    threads(4)
    assert digest.region_entries(data, entries) == reference_of(entries, data)
    one = [("only", "BF16", (3, 5), 0, 30)]
    assert digest.region_entries(data[:30], one) == reference_of(one, data[:30])
    assert digest.region_entries(b"", []) == {}
    with pytest.raises(ValueError, match="not inside the region"):
        digest.region_entries(data[:30], [("past", "U8", (31,), 0, 31)])


def test_entries_asked_for_before_the_region_is_filled_is_a_programming_error(threads):
    threads(3)
    with digest.RegionHasher([("a", "U8", (4,), 0, 4)]) as hasher:
        hasher.filled(bytearray(4), 2)
        with pytest.raises(RuntimeError):
            hasher.entries()
    assert hashing_threads() == []


@pytest.mark.parametrize(("cores", "load", "nbytes", "want"), [
    (1, 0.0, 10**9, 1),
    (3, 0.0, 10**9, 3),
    (64, 0.0, 10**9, 8),  # HASH_THREADS at most
    (3, 0.0, 4 * 1024 * 1024, 1),  # one per 4 MiB of data
    (3, 0.0, 8 * 1024 * 1024, 2),
    (3, 0.0, 0, 1),
    (4, 3.0, 10**9, 1),  # three of four cores busy: the thread policy's idle cores
])
def test_hash_threads_follow_the_thread_policy(monkeypatch, cores, load, nbytes, want):
    from adapterkit import threads

    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "machine", lambda: threads.Machine(cores, cores, load))
    assert digest.hash_threads(nbytes) == want
    with threads.override(5):  # --threads / ADAPTERKIT_THREADS: every pool too
        assert digest.hash_threads(nbytes) == 5


# ---------------------------------------------------------------------------- load


def _adapter(n_modules: int = 3, dtype: torch.dtype = torch.float32, rank: int = 2, features: int = 6) -> Adapter:
    g = torch.Generator().manual_seed(0)
    names = ["q_proj", "k_proj", "v_proj", "o_proj"][:n_modules]
    tensors = {}
    for name in names:
        tensors[f"{P}{name}.lora_A.weight"] = torch.randn(rank, features, generator=g).to(dtype)
        tensors[f"{P}{name}.lora_B.weight"] = torch.randn(features, rank, generator=g).to(dtype)
    return Adapter.from_tensors(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=tuple(names)), tensors)


@given(aks.adapters(), st.lists(st.integers(0, 10**9), min_size=1, max_size=4), st.integers(0, 2**32 - 1),
       st.sampled_from([(1, 1 << 20, 8 << 20), (2, 1, 64), (3, 97, 1000), (8, 1, 7)]))
def test_load_checks_every_entry_and_names_the_first_changed_key(tmp_path_factory, monkeypatch, threads, adapter, flips, seed, setup):
    threads(*setup)
    out = adapterkit.save(adapter, tmp_path_factory.mktemp("p") / "a.safetensors")
    loaded = adapterkit.load(out)
    reference = load_file(out)
    assert set(loaded.tensors) == set(reference)
    for k, t in reference.items():
        assert loaded.tensors[k].dtype == t.dtype and torch.equal(loaded.tensors[k].view(torch.uint8), t.view(torch.uint8))
    header, start = split(out)
    raw = bytearray(out.read_bytes())
    size = len(raw) - start
    if size == 0:
        return
    changed = set()
    for where in {w % size: w for w in flips}.values():  # one flip per byte: two would undo each other
        raw[start + where % size] ^= 1 << (where % 8)
        changed.add(owner(header, where % size))
    out.write_bytes(bytes(raw))
    delayed(monkeypatch, seed)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert (info.value.code, info.value.key) == ("digest-mismatch", min(changed))
    assert hashing_threads() == [] and open_files_to(out) == []


@pytest.mark.parametrize("n", [1, 3])
def test_one_large_tensor_read_in_many_pieces(tmp_path, threads, n):
    threads(n, piece=4096)
    g = torch.Generator().manual_seed(3)
    adapter = _adapter(1, features=6)
    tensors = {**{k: adapter.tensors[k] for k in adapter.tensors}, "base_model.model.score.weight": torch.randn(64, 1024, generator=g)}
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj",), modules_to_save=("score",))
    out = adapterkit.save(Adapter.from_tensors(cfg, tensors), tmp_path / "a.safetensors")
    loaded = adapterkit.load(out)
    assert torch.equal(loaded.tensors["base_model.model.score.weight"], tensors["base_model.model.score.weight"])
    header, start = split(out)
    raw = bytearray(out.read_bytes())
    end = header["base_model.model.score.weight"]["data_offsets"][1]
    raw[start + end - 1] ^= 0x10  # its very last byte, in the last piece
    out.write_bytes(bytes(raw))
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert (info.value.code, info.value.key) == ("digest-mismatch", "base_model.model.score.weight")


def _foreign_file(folder: Path, nan: bool = False) -> tuple[Path, dict[str, str]]:
    """A directory adapter whose weights another writer laid out: an F32 tensor at an odd offset,
    and a content digest recorded from the spec's words."""
    folder.mkdir()
    config = LoraConfig(r=1, lora_alpha=2, target_modules=("q", "k")).to_dict()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    k = {name: f"base_model.model.layers.0.{m}.lora_{p}.weight" for name, m, p in [("qa", "q", "A"), ("qb", "q", "B"), ("ka", "k", "A"), ("kb", "k", "B")]}
    parts = [
        (k["qb"], torch.tensor([[1.5]], dtype=torch.float16)),  # 2 bytes: the next begins at 2
        (k["qa"], torch.tensor([[2.5, float("nan") if nan else -1.0, 3.0]])),  # F32 at offset 2
        (k["kb"], torch.tensor([[0.5]], dtype=torch.float16)),
        (k["ka"], torch.tensor([[1.0, 2.0, 4.0]])),
    ]
    header, body, stored = {}, b"", {}
    for name, t in parts:
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        dtype = {torch.float16: "F16", torch.float32: "F32"}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [len(body), len(body) + len(raw)]}
        stored[name] = (dtype, tuple(t.shape), raw)
        body += raw
    header["__metadata__"] = {"format": "pt", "adapterkit.version": "1.1", **reference_metadata(config, stored)}
    raw_header = json.dumps(header).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + body)
    return weights, k


@pytest.mark.parametrize("n", [1, 2, 4])
def test_unaligned_foreign_file_verifies_and_a_change_is_named(tmp_path, threads, n):
    threads(n, run_bytes=1, piece=3)
    weights, k = _foreign_file(tmp_path / "d")
    loaded = adapterkit.load(weights.parent)
    assert torch.equal(loaded.tensors[k["qa"]], torch.tensor([[2.5, -1.0, 3.0]]))
    assert loaded.tensors[k["qa"]].data_ptr() % 4 == 0  # its own aligned copy
    header, start = split(weights)
    raw = bytearray(weights.read_bytes())
    raw[start + header[k["qa"]]["data_offsets"][0] + 5] ^= 1  # inside the unaligned tensor
    weights.write_bytes(bytes(raw))
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(weights.parent)
    assert (info.value.code, info.value.key) == ("digest-mismatch", k["qa"])


def test_a_digest_mismatch_comes_before_the_nan_it_made(tmp_path, threads):
    threads(3, run_bytes=1, piece=5)
    weights, k = _foreign_file(tmp_path / "d", nan=True)  # recorded with the NaN: the record matches
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(weights.parent)
    assert (info.value.code, info.value.key) == ("non-finite", k["qa"])
    header, start = split(weights)
    raw = bytearray(weights.read_bytes())
    raw[start + header[k["kb"]]["data_offsets"][0]] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(weights.parent)
    assert (info.value.code, info.value.key) == ("digest-mismatch", k["kb"])


@pytest.mark.parametrize("n", [1, 3])
def test_loaded_tensors_are_views_of_one_private_buffer(tmp_path, threads, n):
    threads(n, run_bytes=1, piece=4096)
    adapter = _adapter(4, features=64)
    out = adapterkit.save(adapter, tmp_path / "a")
    weights = out / "adapter_model.safetensors"
    loaded = adapterkit.load(out)
    storages = {t.untyped_storage().data_ptr() for t in loaded.tensors.values()}
    assert len(storages) == 1
    (storage,) = {t.untyped_storage().nbytes() for t in loaded.tensors.values()}
    assert storage == sum(t.numel() * t.element_size() for t in adapter.tensors.values())
    assert open_files_to(weights) == [] and hashing_threads() == []
    with open(weights, "r+b") as f:  # the file truncated in place: the tensors are not a mapping of it
        f.truncate(0)
    for key in adapter.tensors:
        assert torch.equal(loaded.tensors[key], adapter.tensors[key])


def test_a_slow_reader_is_waited_for(tmp_path, monkeypatch, threads):
    threads(3, run_bytes=1, piece=64)
    adapter = _adapter(4, features=32)
    out = adapterkit.save(adapter, tmp_path / "a.safetensors")
    real = safetensors_file._read_into

    def slow(f, view):  # a slow disk: the workers are ahead of the bytes, and must wait for them
        time.sleep(0.001)
        return real(f, view)

    monkeypatch.setattr(safetensors_file, "_read_into", slow)
    loaded = adapterkit.load(out)  # a byte hashed before it was read would be a zero: digest-mismatch
    for key in adapter.tensors:
        assert torch.equal(loaded.tensors[key], adapter.tensors[key])


# ---------------------------------------------------------------------------- errors leave nothing behind


@pytest.mark.parametrize("where", ["first", "last"])
def test_an_error_in_a_hashing_thread_reaches_the_caller(tmp_path, monkeypatch, threads, where):
    threads(3, run_bytes=1, piece=64)
    adapter = _adapter(4, features=32)
    out = adapterkit.save(adapter, tmp_path / "a.safetensors")
    header, _ = split(out)
    order = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    victim = order[0] if where == "first" else order[-1]  # the first task goes to a worker, the last to the caller
    real = digest.tensor_prefix
    seen = []

    def failing(key, dtype, shape, nbytes):
        if key == victim:
            seen.append(threading.current_thread().name)
            raise FormatError("cannot hash", code="header-invalid", key=key)
        return real(key, dtype, shape, nbytes)

    monkeypatch.setattr(digest, "tensor_prefix", failing)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert (info.value.code, info.value.key, info.value.message) == ("header-invalid", victim, "cannot hash")
    assert len(seen) == 1
    if where == "first":
        assert seen[0].startswith("adapterkit-digest")
    assert hashing_threads() == [] and open_files_to(out) == []


@pytest.mark.parametrize("how", ["eio", "short"])
def test_a_read_failing_midway_stops_the_hashing(tmp_path, monkeypatch, threads, how):
    threads(3, run_bytes=1, piece=64)
    out = adapterkit.save(_adapter(4, features=32), tmp_path / "a.safetensors")
    real = safetensors_file._read_into
    calls = []

    def failing(f, view):
        calls.append(1)
        if len(calls) == 3:  # workers are waiting for the bytes after this piece
            if how == "eio":
                raise OSError(errno.EIO, "Input/output error")
            return 0
        return real(f, view)

    monkeypatch.setattr(safetensors_file, "_read_into", failing)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(out)
    assert info.value.code == ("header-invalid" if how == "eio" else "truncated-file")
    assert ("Input/output error" if how == "eio" else "changed while reading") in info.value.message
    assert hashing_threads() == [] and open_files_to(out) == []


# ---------------------------------------------------------------------------- save


@pytest.mark.parametrize("durable", [True, False])
@pytest.mark.parametrize("n", [1, 3])
def test_save_records_the_spec_digest_however_it_hashes(tmp_path, threads, durable, n):
    threads(n, run_bytes=1)
    adapter = _adapter(4, features=16)
    out = adapterkit.save(adapter, tmp_path / "a.safetensors", durable=durable)
    header, start = split(out)
    raw = out.read_bytes()
    stored = {k: (e["dtype"], tuple(e["shape"]), raw[start + e["data_offsets"][0] : start + e["data_offsets"][1]])
              for k, e in header.items() if k != "__metadata__"}
    config = json.loads(header["__metadata__"]["adapterkit.config"])
    want = reference_metadata(config, stored)
    assert {k: header["__metadata__"][k] for k in want} == want
    assert hashing_threads() == []


@pytest.mark.parametrize("durable", [True, False])
def test_non_contiguous_tensors_are_hashed_as_written(tmp_path, threads, durable):
    threads(3, run_bytes=1)
    g = torch.Generator().manual_seed(5)
    a = torch.randn(6, 2, generator=g).T  # (2, 6), not contiguous: written from a copy
    b = torch.randn(6, 2, generator=g)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj",))
    adapter = Adapter.from_tensors(cfg, {P + "q_proj.lora_A.weight": a, P + "q_proj.lora_B.weight": b})
    out = adapterkit.save(adapter, tmp_path / "a", durable=durable)
    assert adapterkit.validate(out) == []
    assert torch.equal(adapterkit.load(out).tensors[P + "q_proj.lora_A.weight"], a)


def test_a_durable_save_hashes_copies_at_once_and_the_rest_during_the_fsync(tmp_path, monkeypatch, threads):
    threads(3, run_bytes=1)
    added, patched = [], []
    real_add, real_final = digest.PartsHasher.add, writer.DigestingEncoder.final_metadata
    monkeypatch.setattr(digest.PartsHasher, "add", lambda self, key, *rest: added.append((key, bool(patched))) or real_add(self, key, *rest))
    monkeypatch.setattr(writer.DigestingEncoder, "final_metadata", lambda self: patched.append(1) or real_final(self))
    g = torch.Generator().manual_seed(6)
    a, b = P + "q_proj.lora_A.weight", P + "q_proj.lora_B.weight"
    tensors = {a: torch.randn(6, 2, generator=g).T, b: torch.randn(6, 2, generator=g)}  # A is written from a copy
    adapter = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj",)), tensors)
    adapterkit.save(adapter, tmp_path / "durable")  # hashed once the data is written, while it is synced; the copy at once
    assert dict(added) == {a: False, b: True}
    added.clear()
    patched.clear()
    adapterkit.save(adapter, tmp_path / "scratch", durable=False)  # no fsync to wait for: hashed while written
    assert dict(added) == {a: False, b: False}
    assert adapterkit.validate(tmp_path / "durable") == [] and adapterkit.validate(tmp_path / "scratch") == []


@pytest.mark.parametrize("durable", [True, False])
def test_an_error_in_a_hashing_thread_fails_the_save_cleanly(tmp_path, monkeypatch, threads, durable):
    threads(3, run_bytes=1)
    adapter = _adapter(4, features=32)
    victim = sorted(adapter.tensors)[2]
    real = digest.tensor_prefix

    def failing(key, dtype, shape, nbytes):
        if key == victim:
            raise FormatError("cannot hash", code="header-invalid", key=key)
        return real(key, dtype, shape, nbytes)

    monkeypatch.setattr(digest, "tensor_prefix", failing)
    target = tmp_path / "out"
    with pytest.raises(AdapterkitError) as info:
        adapterkit.save(adapter, target, durable=durable)
    assert (info.value.code, info.value.key, info.value.message) == ("header-invalid", victim, "cannot hash")
    assert list(tmp_path.iterdir()) == [] and hashing_threads() == []


def test_a_write_failing_midway_leaves_no_hashing_thread(tmp_path, monkeypatch, threads):
    threads(3, run_bytes=1)
    real = safetensors_file.tensor_bytes
    calls = []

    def failing(t):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(t)

    monkeypatch.setattr(safetensors_file, "tensor_bytes", failing)
    for durable in (False, True):
        calls.clear()
        with pytest.raises(AdapterkitError) as info:
            adapterkit.save(_adapter(4, features=32), tmp_path / "out", durable=durable)
        assert info.value.code == "write-failed"
        assert list(tmp_path.iterdir()) == [] and hashing_threads() == []
