#!/usr/bin/env python
"""Mutation fuzzer for every adapterkit reader, with a differential check against the safetensors library.

Builds valid seeds: adapters (LoRA with rank_pattern / DoRA / lora_bias / embedding / conv,
IA3, prompt and prefix tuning; single-file, directory and legacy ``.bin`` forms), bare
safetensors containers (every dtype, empty tensors, ignored entry members) and model
checkpoints (one ``model.safetensors``; an index with two shards).  Each case damages a copy
of one seed: random bytes, bit flips and byte edits, truncation inside a chosen region (length
prefix, header, data), structured header edits (overlapping, out-of-range and negative
offsets, huge header lengths, dtype vs byte count, duplicate names, non-UTF-8 and surrogate
names, deep nesting, huge shapes, ``-0``), config edits (wrong types, NaN or enormous ``r``)
and index edits (shard names with ``..``, absolute paths, missing shards).  Then every reader
that can see the files runs on them: ``open_adapter``, ``validate``, ``load`` and a
save/reload round trip; ``open_checkpoint`` and a read of every tensor; ``read_header`` /
``read_all`` on each ``.safetensors`` file.

What a case must do:
  * end in success or an ``AdapterkitError`` with a code (``validate`` never raises);
  * finish within ``--case-seconds`` (an alarm stops a hang); the slowest case is reported;
  * allocate no more than about the size of its files: Python allocations are traced
    (tracemalloc peak), the one large buffer the safetensors reader makes is recorded, and
    the address space is capped (RLIMIT_AS, baseline + 1 GiB) so a huge native allocation
    fails, which counts as a failure even when converted into an AdapterkitError;
  * agree with the safetensors library on every ``.safetensors`` file (the differential):
    a file the library refuses is refused; a file both read yields identical tensors (keys,
    dtypes, shapes, bytes) and metadata; a file only the library reads must break one of the
    documented stricter rules in ``STRICTER`` (spec §5.2, "Stricter than the safetensors
    library").

    python scripts/fuzz.py --cases 100000 --seed 1
    python scripts/fuzz.py --seconds 60 --seed 7 --jobs 2
    python scripts/fuzz.py --case 1234 --seed 1      # replay one case, print its outcomes

Every case draws from its own generator, seeded by (seed, case number), so a case replays
alone.  Prints the cases run, failures by kind, the slowest case and a table of outcomes;
exits 1 if anything failed.  ``tests/test_fuzz.py`` runs a bounded sample in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import adapterkit as ak
from adapterkit.checkpoint import open_checkpoint
from adapterkit.dtypes import DTYPES
from adapterkit.errors import AdapterkitError
from adapterkit.io import safetensors_file
from adapterkit.io.safetensors_file import read_all, read_header

P = "base_model.model."

# ----------------------------------------------------------------------------- seeds


def _lora_tensors(dtype: torch.dtype, g: torch.Generator) -> dict[str, torch.Tensor]:
    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    return {
        P + "layers.0.q.lora_A.weight": rnd(2, 6),
        P + "layers.0.q.lora_B.weight": rnd(5, 2),
        P + "layers.0.k.lora_A.weight": rnd(3, 6),  # rank_pattern {"k": 3}
        P + "layers.0.k.lora_B.weight": rnd(4, 3),
    }


def make_seeds(root: Path) -> list[Path]:
    """Write the valid adapters the mutations start from; return their paths."""
    g = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    seeds: list[Path] = []

    cfg = ak.LoraConfig(r=2, lora_alpha=4, target_modules=("q", "k"), rank_pattern={"k": 3})
    adapter = ak.Adapter.from_tensors(cfg, _lora_tensors(torch.float32, g))
    seeds.append(ak.save(adapter, root / "lora.safetensors", form="file"))
    seeds.append(ak.save(adapter, root / "lora_dir"))
    # without a content digest (format 1.0), data edits reach the value checks instead of digest-mismatch
    seeds.append(ak.save(adapter, root / "lora_1_0.safetensors", form="file", digest=False))
    seeds.append(ak.save(adapter, root / "lora_1_0_dir", digest=False))

    dora = ak.LoraConfig(r=2, lora_alpha=4, target_modules=("q",), use_dora=True, lora_bias=True)
    tensors = {
        P + "q.lora_A.weight": torch.randn(2, 3, generator=g).bfloat16(),
        P + "q.lora_B.weight": torch.randn(4, 2, generator=g).bfloat16(),
        P + "q.lora_B.bias": torch.randn(4, generator=g).bfloat16(),
        P + "q.lora_magnitude_vector": torch.rand(4, generator=g).bfloat16(),
    }
    seeds.append(ak.save(ak.Adapter.from_tensors(dora, tensors), root / "dora_dir"))

    mixed = ak.LoraConfig(r=2, lora_alpha=2, target_modules=("emb", "conv"))
    tensors = {
        P + "emb.lora_embedding_A": torch.randn(2, 7, generator=g).half(),
        P + "emb.lora_embedding_B": torch.randn(3, 2, generator=g).half(),
        P + "conv.lora_A.weight": torch.randn(2, 3, 3, 3, generator=g).half(),
        P + "conv.lora_B.weight": torch.randn(4, 2, 1, 1, generator=g).half(),
    }
    seeds.append(ak.save(ak.Adapter.from_tensors(mixed, tensors), root / "mixed.safetensors", form="file", digest=False))

    ia3 = ak.IA3Config(target_modules=("k", "ff"), feedforward_modules=("ff",))
    tensors = {P + "k.ia3_l": torch.rand(4, 1, generator=g), P + "ff.ia3_l": torch.rand(1, 6, generator=g)}
    seeds.append(ak.save(ak.Adapter.from_tensors(ia3, tensors), root / "ia3.safetensors", form="file"))

    prompt = ak.PromptTuningConfig(num_virtual_tokens=3, token_dim=4)
    seeds.append(ak.save(ak.Adapter.from_tensors(prompt, {"prompt_embeddings": torch.randn(3, 4, generator=g).double()}), root / "prompt_dir"))

    prefix = ak.PrefixTuningConfig(num_virtual_tokens=2, token_dim=3, num_layers=2)
    seeds.append(ak.save(ak.Adapter.from_tensors(prefix, {"prompt_embeddings": torch.randn(2, 12, generator=g)}), root / "prefix.safetensors", form="file"))

    bin_dir = root / "bin_dir"
    bin_dir.mkdir()
    (bin_dir / "adapter_config.json").write_text(json.dumps(cfg.to_dict()))
    torch.save(_lora_tensors(torch.float32, g), bin_dir / "adapter_model.bin")
    seeds.append(bin_dir)
    return seeds



def _container(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def make_container_seeds(root: Path) -> list[Path]:
    """Bare safetensors files (not adapters) for the differential: every dtype, empty tensors,
    a 0-d tensor, unpadded and ignored members, data out of key order."""
    g = torch.Generator().manual_seed(1)
    out = []
    tensors = {}
    for name, dtype in DTYPES.items():
        tensors[f"t.{name.lower()}"] = (torch.randn(2, 3, generator=g) * 4).to(dtype)
    tensors["t.empty"] = torch.empty(0, 5)
    tensors["t.scalar"] = torch.tensor(1.5, dtype=torch.float64)
    path = root / "dtypes.safetensors"
    safetensors_file.write_file(path, tensors, {"format": "pt"})
    out.append(path)
    body = bytes(range(24))  # two F32 tensors stored in reverse key order, an ignored member, no metadata
    header = {"z": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "a": {"dtype": "I16", "shape": [4], "data_offsets": [16, 24], "note": {"x": [1, 2]}},
              "e": {"dtype": "BF16", "shape": [0, 3], "data_offsets": [24, 24]}}
    raw = json.dumps(header).encode()  # unpadded, with spaces
    path = root / "foreign.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    out.append(path)
    return out


def make_checkpoint_seeds(root: Path) -> list[Path]:
    """A single-file checkpoint directory and a sharded one (index + two shards)."""
    g = torch.Generator().manual_seed(2)
    single = root / "ckpt_single"
    single.mkdir()
    t = {"model.embed.weight": torch.randn(4, 3, generator=g), "model.norm.weight": torch.randn(3, generator=g).half()}
    safetensors_file.write_file(single / "model.safetensors", t, {"format": "pt"})
    (single / "config.json").write_text('{"model_type": "llama"}')
    sharded = root / "ckpt_sharded"
    sharded.mkdir()
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    parts = [{"model.layers.0.q.weight": torch.randn(3, 3, generator=g).bfloat16(), "model.embed.weight": torch.randn(4, 3, generator=g)},
             {"model.layers.1.q.weight": torch.randn(3, 3, generator=g).bfloat16(), "lm_head.weight": torch.randn(4, 3, generator=g)}]
    weight_map = {}
    for name, part in zip(names, parts):
        safetensors_file.write_file(sharded / name, part, {"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for p in parts for v in p.values())}, "weight_map": weight_map}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    return [single, sharded]


# ----------------------------------------------------------------------------- mutations

_JUNK_VALUES: list[object] = [
    0, -1, 1, 2, 3, 7, 2**31, 2**63, 2**64 + 1, 10**30, 1.5, -0.0, float("nan"), float("inf"),
    "", "8", "F32", "BF16", "I64", "BOOL", "F8_E4M3", "X", "2.0", "1.7", "1", "pt", "np", "LORA", "LOHA",
    True, False, None, [], [1], [0, 0], [2, 3], [[1]], {}, {"a": 1}, {"k": 0}, {"(": 2}, {"q": "x"},
]
_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "C64", "f32", 3, None]


def _split(data: bytes) -> tuple[dict | None, bytes]:
    """(header object, tensor data) of a safetensors file; None if the header does not parse."""
    if len(data) < 8:
        return None, b""
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        return None, b""
    try:
        obj = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError):
        return None, b""
    return (obj if isinstance(obj, dict) else None), data[8 + n :]


def _join(header: dict, body: bytes, pad: bool = True) -> bytes:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _edit_json_value(rng: random.Random, obj: dict) -> dict:
    """Set, delete or add one (possibly nested) field of a JSON object."""
    target = obj
    keys = list(target)
    while keys and rng.random() < 0.3 and isinstance(target[k := rng.choice(keys)], dict) and target[k]:
        target = target[k]
        keys = list(target)
    op = rng.random()
    if keys and op < 0.6:
        target[rng.choice(keys)] = rng.choice(_JUNK_VALUES)
    elif keys and op < 0.8:
        del target[rng.choice(keys)]
    else:
        target[rng.choice(["r", "peft_type", "use_dora", "lora_bias", "rank_pattern", "num_layers", "extra", "zzz"])] = rng.choice(_JUNK_VALUES)
    return obj


def _header_edit(rng: random.Random, data: bytes) -> bytes:
    header, body = _split(data)
    if header is None:
        return _bitflip(rng, data)
    tensor_keys = [k for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    choice = rng.randrange(9)
    if choice == 0 and tensor_keys:  # dtype
        header[rng.choice(tensor_keys)]["dtype"] = rng.choice(_DTYPES)
    elif choice == 1 and tensor_keys:  # shape
        entry = header[rng.choice(tensor_keys)]
        shape = entry.get("shape")
        shape = [d if isinstance(d, int) else 1 for d in shape] if isinstance(shape, list) else []
        op = rng.randrange(5)
        if op == 0 and shape:
            shape[rng.randrange(len(shape))] += rng.choice([-1, 1, 2**62, -(2**40)])
        elif op == 1:
            shape.append(rng.choice([0, 1, 2, 2**70]))
        elif op == 2 and shape:
            shape.pop()
        elif op == 3:
            shape = rng.choice(_JUNK_VALUES)  # type: ignore[assignment]
        else:
            shape = [0, 2**62, 2**62]
        entry["shape"] = shape
    elif choice == 2 and tensor_keys:  # offsets
        entry = header[rng.choice(tensor_keys)]
        off = entry.get("data_offsets")
        off = [o if isinstance(o, int) else 0 for o in off] if isinstance(off, list) else [0, 0]
        if off and rng.random() < 0.8:
            off[rng.randrange(len(off))] += rng.choice([-8, -4, -1, 1, 2, 4, 8, 10**6, 2**64])
        else:
            off = rng.choice(_JUNK_VALUES)  # type: ignore[assignment]
        entry["data_offsets"] = off
    elif choice == 3 and tensor_keys:  # delete or rename a tensor entry
        key = rng.choice(tensor_keys)
        entry = header.pop(key)
        if rng.random() < 0.5:
            header[key.replace("lora_A", "lora_B") if "lora_A" in key else key + ".x"] = entry
    elif choice == 4:  # metadata values
        meta = header.setdefault("__metadata__", {})
        if isinstance(meta, dict):
            field_name = rng.choice(["adapterkit.version", "format", "adapterkit.config", "other"])
            if rng.random() < 0.3:
                meta.pop(field_name, None)
            else:
                meta[field_name] = rng.choice(["2.0", "1.7", "1.0", "1", "01.0", "x", "", "pt", "np", "{", "[]", "null"])
    elif choice == 5:  # the embedded config
        meta = header.get("__metadata__")
        if isinstance(meta, dict) and "adapterkit.config" in meta:
            try:
                cfg = json.loads(meta["adapterkit.config"])
            except ValueError:
                cfg = {}
            if isinstance(cfg, dict):
                meta["adapterkit.config"] = json.dumps(_edit_json_value(rng, cfg))
    elif choice == 6:  # __metadata__ itself
        header["__metadata__"] = rng.choice(_JUNK_VALUES)
    elif choice == 7:  # whole-header shapes
        return _join(rng.choice([[], "x", 1, None, {"a": 1}, {"a": {"dtype": "F32"}}]), body)  # type: ignore[arg-type]
    else:  # unpadded header / extra trailing bytes
        return _join(header, body + rng.randbytes(rng.randrange(1, 9)), pad=rng.random() < 0.5)
    return _join(header, body, pad=rng.random() < 0.9)


def _bitflip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    buf = bytearray(data)
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else len(data)
    hot = min(len(buf), 8 + n)  # most flips land in the prefix + header
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(hot) if rng.random() < 0.7 else rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _poison_data(rng: random.Random, data: bytes) -> bytes:
    """Overwrite a few bytes of tensor data with all-ones bits (NaN/Inf for floats)."""
    header, body = _split(data)
    if header is None or len(body) < 2:
        return _bitflip(rng, data)
    start = len(data) - len(body)
    i = start + rng.randrange(len(body) - 1)
    width = min(rng.choice([2, 4, 8]), len(data) - i)
    return data[:i] + rng.choice([b"\xff", b"\x7f"]) * width + data[i + width :]


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def _splice(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    if rng.random() < 0.5:
        return data[:i] + data[i + rng.randint(1, 16) :]
    return data[:i] + rng.choice([b"\x00", b"\xff", b'"', b"{", b"[", b"9", b"-", b"\\", rng.randbytes(rng.randint(1, 16))]) + data[i:]


def _set_length(rng: random.Random, data: bytes) -> bytes:
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    new = rng.choice([0, 1, 2, n - 1, n + 1, n + 8, len(data), 2**63, 2**64 - 1, 100 * 2**20 + 1])
    return struct.pack("<Q", max(new, 0) % 2**64) + data[8:]


def _config_edit(rng: random.Random, data: bytes) -> bytes:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return _splice(rng, data)
    if not isinstance(obj, dict):
        return _splice(rng, data)
    return json.dumps(_edit_json_value(rng, obj)).encode()


def _random_bytes(rng: random.Random, data: bytes) -> bytes:
    """Noise, sometimes behind a plausible length prefix."""
    noise = rng.randbytes(rng.randrange(0, 2 * len(data) + 16))
    if rng.random() < 0.5:
        return struct.pack("<Q", rng.randrange(0, len(noise) + 1)) + noise
    return noise


def _truncate_region(rng: random.Random, data: bytes) -> bytes:
    """Cut inside the length prefix, the header or the data (each region equally likely)."""
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    regions = [(0, min(8, len(data)))]
    if 8 + n <= len(data):
        regions += [(8, 8 + n), (8 + n, len(data))]
    lo, hi = rng.choice(regions)
    return data[: rng.randrange(lo, hi)] if hi > lo else data[:lo]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth if depth % 2 else '{"k":' * depth + "1" + "}" * depth


def _raw_join(raw: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw + body


def _header_text(rng: random.Random, data: bytes) -> bytes:
    """Edits of the header as text, for what a JSON object cannot express: repeated names,
    non-UTF-8 and surrogate names, deep nesting, -0, over-long integers, floats for integers."""
    header, body = _split(data)
    if header is None:
        return _bitflip(rng, data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    keys = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
    key = rng.choice(keys) if keys else "x"
    qkey = json.dumps(key).encode()
    choice = rng.randrange(9)
    if choice == 0 and keys:  # the same member twice (same or another entry)
        entry = json.dumps(header[rng.choice(keys)], separators=(",", ":")).encode()
        raw = raw[:-1] + b"," + qkey + b":" + entry + b"}"
    elif choice == 1:  # a repeated field inside an entry
        raw = raw.replace(qkey + b':{', qkey + b':{"dtype":"F32",' if rng.random() < 0.5 else qkey + b':{"shape":[1],', 1)
    elif choice == 2 and keys:  # a name that is not UTF-8
        bad = rng.choice([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"])
        raw = raw.replace(qkey, qkey[:-1] + bad + b'"', 1)
    elif choice == 3 and keys:  # a surrogate escape in a name or a metadata value
        esc = rng.choice([b"\\ud800", b"\\udfff", b"\\ud83d\\ude00", b"\\ud83d", b"\\u0000", b"\\ude00\\ud83d"])
        raw = raw.replace(qkey, qkey[:-1] + esc + b'"', 1)
    elif choice == 4:  # deep nesting: an ignored member of an entry, the metadata, the whole header
        depth = rng.choice([3, 60, 124, 125, 126, 127, 300, 5000, 200_000])
        where = rng.randrange(3)
        if where == 0 and keys:
            raw = raw.replace(qkey + b":{", qkey + b':{"x":' + _nested(depth).encode() + b",", 1)
        elif where == 1:
            raw = b'{"__metadata__":{"k":' + _nested(depth).encode() + b"}" + (b"," + raw[1:] if len(raw) > 2 else b"}")
        else:
            raw = _nested(depth).encode()
    elif choice == 5 and keys:  # -0 where an integer belongs, or in an ignored member
        raw = raw.replace(b"[0,", b"[-0,", 1) if rng.random() < 0.5 else raw.replace(qkey + b":{", qkey + b':{"x":-0,', 1)
    elif choice == 6 and keys:  # an integer with hundreds of digits
        digits = rng.choice([300, 308, 309, 400, 4300, 5000])
        raw = raw.replace(qkey + b":{", qkey + b':{"x":1' + b"0" * digits + b",", 1) if rng.random() < 0.5 else raw.replace(b"[0,", b"[1" + b"0" * digits + b",", 1)
    elif choice == 7 and keys:  # an integer written as a float
        raw = raw.replace(b"[0,", rng.choice([b"[0.0,", b"[0e0,", b"[0E+0,", b"[-0.0,"]), 1)
    else:  # whitespace / BOM / NUL around the object
        raw = rng.choice([b" ", b"\n", b"\xef\xbb\xbf", b"\x00", b""]) + raw + rng.choice([b" " * rng.randrange(8), b"\x00", b"\t\r\n", b""])
    return _raw_join(raw, body)


_HUGE = [2**31, 2**32, 2**40, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]


def _header_structure(rng: random.Random, data: bytes) -> bytes:
    """Structured edits of the tensor entries: overlapping, out-of-range and negative offsets,
    dtype vs byte count, huge shapes (with offsets that agree, so only the file size refutes them)."""
    header, body = _split(data)
    if header is None:
        return _bitflip(rng, data)
    keys = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
    if not keys:
        return _set_length(rng, data)
    entry = header[rng.choice(keys)]
    other = header[rng.choice(keys)]
    choice = rng.randrange(8)
    if choice == 7:  # the entry as an array of its fields, in the library's field order or another
        fields = [entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")]
        if rng.random() < 0.3:
            rng.shuffle(fields)
        header[rng.choice(keys)] = fields[: rng.choice([3, 3, 2])] + ([1] if rng.random() < 0.1 else [])
    elif choice == 0:  # overlap another entry (same or shifted range)
        off = other.get("data_offsets")
        if isinstance(off, list) and len(off) == 2 and all(isinstance(o, int) for o in off):
            shift = rng.choice([0, 0, -1, 1, -4, 4])
            entry["data_offsets"] = [off[0] + shift, off[1] + shift]
    elif choice == 1:  # out of range
        off = entry.get("data_offsets")
        if isinstance(off, list) and len(off) == 2 and all(isinstance(o, int) for o in off):
            entry["data_offsets"] = [off[0] + rng.choice(_HUGE), off[1] + rng.choice(_HUGE)] if rng.random() < 0.5 else [off[0], off[1] + rng.choice(_HUGE)]
    elif choice == 2:  # negative
        entry["data_offsets"] = rng.choice([[-1, 0], [0, -4], [-(2**63), 0], [-8, -4]])
    elif choice == 3:  # dtype whose element size disagrees with the byte count
        entry["dtype"] = rng.choice(["F64", "F16", "U8", "BOOL", "I64", "F8_E5M2", "U16", "U32", "U64", "C64", "F8_E8M0", "F4", "F8_E4M3FNUZ"])
    elif choice == 4:  # a huge shape, offsets that agree with it: only the file size refutes it
        dims = rng.choice([[2**20, 2**20], [2**40], [2**31, 2**31], [2**62], [1 << 33, 3], [0, 2**40, 2**40], [2**64]])
        size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4}.get(entry.get("dtype"), 2)
        begin = 0
        entry["shape"], entry["data_offsets"] = dims, [begin, begin + size * _prod(dims)]
    elif choice == 5:  # a long shape
        entry["shape"] = [1] * rng.choice([8, 64, 1000, 100_000]) + [2]
    else:  # swap two entries' offsets (still tiles the buffer when sizes agree)
        a, b = entry.get("data_offsets"), other.get("data_offsets")
        entry["data_offsets"], other["data_offsets"] = b, a
    return _join(header, body, pad=rng.random() < 0.9)


def _prod(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _config_text(rng: random.Random, data: bytes) -> bytes:
    """Config edits only text can make: NaN / Infinity ranks, r out of a double's range, -0, deep nesting."""
    text = data.decode("utf-8", "replace")
    field_name = rng.choice(["r", "lora_alpha", "num_virtual_tokens", "token_dim", "rank_pattern", "lora_dropout"])
    value = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-0", "1" + "0" * 400, "1" + "0" * 5000, "1e18", "9223372036854775808",
                        "18446744073709551616", "2.0", "1e0", "true", "null", '"8"', _nested(rng.choice([50, 2000, 100_000]))])
    if rng.random() < 0.5 and f'"{field_name}"' in text:
        import re

        text = re.sub(rf'"{field_name}":\s*[^,}}]*', f'"{field_name}": {value}', text, count=1)
    else:
        text = text.rstrip().rstrip("}") + f', "{field_name}": {value}}}'
    return text.encode()


def _shard_names_in(weight_map: dict) -> list[str]:
    """The shard names a (possibly already damaged) weight_map uses; its values may be anything."""
    return sorted({v for v in weight_map.values() if isinstance(v, str)}) or ["model-00001-of-00002.safetensors"]


_SHARD_NAMES = [
    "../model-00001-of-00002.safetensors", "..", "/tmp/model-00001-of-00002.safetensors", "/etc/passwd", "sub/model-00001-of-00002.safetensors",
    "..\\model-00001-of-00002.safetensors", ".hidden.safetensors", "model-00003-of-00002.safetensors", "model.safetensors", "",
    "model-00001-of-00002.bin", "./model-00001-of-00002.safetensors", "model-00001-of-00002.safetensors\x00.txt",
]


def _index_edit(rng: random.Random, data: bytes) -> bytes:
    """Edits of model.safetensors.index.json: shard names that leave the folder, missing or
    wrong shards, junk weight_map and metadata."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return _splice(rng, data)
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict) or not obj["weight_map"]:
        return _splice(rng, data)
    wm = obj["weight_map"]
    keys = sorted(wm)
    choice = rng.randrange(6)
    if choice == 0:  # one or all shard names replaced
        name = rng.choice(_SHARD_NAMES)
        for k in (keys if rng.random() < 0.3 else [rng.choice(keys)]):
            wm[k] = name
    elif choice == 1:  # a key moved to the other shard
        k = rng.choice(keys)
        wm[k] = rng.choice(_shard_names_in(wm))
    elif choice == 2:  # a key dropped or invented
        if rng.random() < 0.5:
            del wm[rng.choice(keys)]
        else:
            wm["model.extra.weight"] = rng.choice(_shard_names_in(wm))
    elif choice == 3:
        wm[rng.choice(keys)] = rng.choice(_JUNK_VALUES)
    elif choice == 4:
        obj["weight_map"] = rng.choice(_JUNK_VALUES)
    else:
        obj["metadata"] = rng.choice(_JUNK_VALUES)
    return json.dumps(obj).encode()


SAFETENSORS_MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    _bitflip, _truncate, _truncate_region, _splice, _set_length, _poison_data, _random_bytes,
    _header_edit, _header_edit, _header_text, _header_text, _header_structure, _header_structure,
]
BYTES_MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [_bitflip, _truncate, _splice, _random_bytes]
CONFIG_MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [_config_edit, _config_edit, _config_text, _splice, _truncate, _bitflip]
INDEX_MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [_index_edit, _index_edit, _index_edit, _config_text, _splice, _truncate]


# ----------------------------------------------------------------------------- the differential

# Files adapterkit refuses and the safetensors library reads: each a rule of the spec that is
# stricter than the library (spec §5.2, "Stricter than the safetensors library").  A refusal
# that matches none of these is a failure of the differential.
STRICTER: list[tuple[str, str, Callable[[AdapterkitError], bool]]] = [
    ("R1-1", "an object repeats a member name (the library keeps one of them)",
     lambda e: e.code == "header-invalid" and "duplicate member name" in e.message),
    ("R5.2-6", "adapterkit.version in __metadata__ is not MAJOR.MINOR",
     lambda e: e.code == "metadata-invalid" and e.key == "__metadata__.adapterkit.version"),
    ("R5.2-7", "adapterkit.version has a major version other than 1",
     lambda e: e.code == "version-unsupported"),
    ("R5.2-8", "a tensor entry written as the array [dtype, shape, data_offsets] (serde reads a struct from a sequence)",
     lambda e: e.code == "header-invalid" and e.message == "tensor entry must be an object"),
    ("R5.2-8", "a dtype outside the twelve (the library also reads U16, U32, U64, C64, F8_E4M3FNUZ, F8_E5M2FNUZ, F8_E8M0, ...)",
     lambda e: e.code == "header-invalid" and e.message == "unknown dtype"),
    ("R5.2-8", "a shape whose non-zero dimensions multiply to 2^63 or more, even when a zero dimension makes it empty",
     lambda e: e.code == "header-invalid" and e.message == "shape is too large to address"),
]


def stricter_rule(exc: AdapterkitError) -> str | None:
    """The id of the documented stricter rule that explains ``exc``, or None."""
    return next((rule for rule, _, matches in STRICTER if matches(exc)), None)


def _library_read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        return {k: f.get_tensor(k) for k in f.keys()}, metadata


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def differential(path: Path) -> tuple[str, str | None]:
    """Read ``path`` with adapterkit's container reader and with the safetensors library;
    returns (outcome, failure description or None)."""
    try:
        header = read_header(path)
        ours = read_all(header)
    except AdapterkitError as exc:
        ours, mine = None, exc
    try:
        theirs, their_meta = _library_read(path)
    except Exception as exc:  # any refusal of the library counts
        if ours is None:
            return "both-refuse", None
        return "CRASH", f"the safetensors library refuses ({type(exc).__name__}: {str(exc)[:160]}) and adapterkit reads it"
    if ours is None:
        rule = stricter_rule(mine)
        if rule is None:
            return "CRASH", f"adapterkit refuses ({mine}) what the library reads, and no documented stricter rule explains it"
        return f"stricter:{rule}", None
    if sorted(ours) != sorted(theirs):
        return "CRASH", f"different keys: {sorted(ours)[:5]} vs {sorted(theirs)[:5]}"
    for key, t in ours.items():
        u = theirs[key]
        if t.dtype != u.dtype or tuple(t.shape) != tuple(u.shape) or _raw(t) != _raw(u):
            return "CRASH", f"tensor {key!r} differs: {t.dtype}{tuple(t.shape)} vs {u.dtype}{tuple(u.shape)}"
    if header.metadata != their_meta:
        return "CRASH", f"metadata differs: {header.metadata} vs {their_meta}"
    return "both-read", None


# ----------------------------------------------------------------------------- bounds


class CaseTimeout(BaseException):
    """Raised by the alarm in a case that ran past its time bound (a BaseException, so no
    reader's ``except Exception`` can swallow it)."""


def _alarm(signum, frame):
    raise CaseTimeout


_largest_buffer = [0]  # the largest buffer safetensors_file._private_buffer was asked for in this case
_real_private_buffer = safetensors_file._private_buffer


def _recording_private_buffer(size: int) -> torch.Tensor:
    _largest_buffer[0] = max(_largest_buffer[0], size)
    return _real_private_buffer(size)


def _allocation_failure(exc: BaseException | None) -> bool:
    """Whether an allocation failed somewhere in the chain of ``exc`` (the address-space cap hit)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "allocate" in str(exc)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def cap_address_space(extra: int = 1 << 30) -> None:
    """Cap this process's address space at what it maps now plus ``extra``: a reader that tries
    a huge allocation then fails instead of swapping the machine to death."""
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))


# ----------------------------------------------------------------------------- the loop


@dataclass
class Result:
    iterations: int = 0
    outcomes: Counter = field(default_factory=Counter)  # "<step>:<code>" -> count
    failures: list[str] = field(default_factory=list)  # descriptions with tracebacks
    kinds: Counter = field(default_factory=Counter)  # failure kind -> count
    slowest: tuple[float, str] = (0.0, "")
    most_allocated: tuple[int, str] = (0, "")  # (bytes allocated beyond the budget-free 8 x files, case)

    def fail(self, kind: str, text: str) -> None:
        self.kinds[kind] += 1
        if len(self.failures) < 200:
            self.failures.append(text)

    def merge(self, other: Result) -> None:
        self.iterations += other.iterations
        self.outcomes.update(other.outcomes)
        self.kinds.update(other.kinds)
        self.failures += other.failures[: max(0, 200 - len(self.failures))]
        self.slowest = max(self.slowest, other.slowest)
        self.most_allocated = max(self.most_allocated, other.most_allocated)


def _victim(rng: random.Random, dest: Path) -> Path:
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    return rng.choice(files)


def _mutate_copy(rng: random.Random, seed: Path, dest: Path) -> tuple[Path, str]:
    """Copy ``seed`` to ``dest`` and damage one of its files; returns (path to read, description)."""
    if seed.is_dir():
        shutil.copytree(seed, dest)
        victim = _victim(rng, dest)
        target = dest
    else:
        dest.mkdir()
        victim = target = dest / seed.name
        shutil.copyfile(seed, victim)
    data = victim.read_bytes()
    if victim.name == "model.safetensors.index.json":
        mutators = INDEX_MUTATORS
    elif victim.suffix == ".json":
        mutators = CONFIG_MUTATORS
    elif victim.suffix == ".safetensors":
        mutators = SAFETENSORS_MUTATORS
    else:
        mutators = BYTES_MUTATORS
    steps = []
    for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
        mutator = rng.choice(mutators)
        try:
            data = mutator(rng, data)
        except Exception:  # a mutator's own bug must not end a long campaign; the case goes on as a bit flip
            mutator = _bitflip
            data = _bitflip(rng, data)
        steps.append(mutator.__name__)
    if rng.random() < 0.03:  # sometimes the file vanishes entirely
        victim.unlink()
        steps.append("unlink")
    else:
        victim.write_bytes(data)
    return target, f"{seed.name}/{victim.name}: {'+'.join(steps)}"


def _attempt(result: Result, step: str, what: str, fn: Callable[[], object]) -> object | None:
    try:
        value = fn()
    except AdapterkitError as exc:
        if _allocation_failure(exc):
            result.fail("allocation", f"{what} [{step}] an allocation failed under the address-space cap: {exc!r}")
        elif not isinstance(exc.code, str) or not exc.code:
            result.fail("no-code", f"{what} [{step}] AdapterkitError without a code: {exc!r}")
        result.outcomes[f"{step}:{exc.code}"] += 1
        return None
    except Exception as exc:
        result.fail("allocation" if _allocation_failure(exc) else "crash", f"{what} [{step}]\n{traceback.format_exc()}")
        result.outcomes[f"{step}:CRASH"] += 1
        return None
    result.outcomes[f"{step}:ok"] += 1
    return value


def check_one(result: Result, path: Path, what: str, out_dir: Path) -> None:
    """Run the adapter readers on ``path``; record outcomes and failures in ``result``."""
    _attempt(result, "open", what, lambda: ak.open_adapter(path))
    try:
        problems = ak.validate(path)
    except Exception:
        result.fail("crash", f"{what} [validate raised]\n{traceback.format_exc()}")
        result.outcomes["validate:CRASH"] += 1
    else:
        errors = sorted({p.code for p in problems if p.severity == "error"})
        result.outcomes["validate:" + (",".join(errors) or "clean")] += 1
    loaded = _attempt(result, "load", what, lambda: ak.load(path))
    if isinstance(loaded, ak.Adapter):
        for form, dest in (("dir", out_dir / "rt_dir"), ("file", out_dir / "rt.safetensors")):
            saved = _attempt(result, f"save-{form}", what, lambda form=form, dest=dest: ak.save(loaded, dest, form=form))
            if saved is not None:
                again = _attempt(result, f"reload-{form}", what, lambda saved=saved: ak.load(saved))
                if again is not None and again != loaded:
                    result.fail("round-trip", f"{what} [reload-{form}] round trip changed the adapter")


def check_checkpoint(result: Result, path: Path, what: str) -> None:
    """Open a (damaged) checkpoint by its folder and by its index, and read every tensor."""
    targets = [path] + ([path / "model.safetensors.index.json"] if (path / "model.safetensors.index.json").is_file() else [])
    for target in targets:
        step = "ckpt-index" if target.is_file() else "ckpt"
        ckpt = _attempt(result, step, what, lambda target=target: open_checkpoint(target))
        if ckpt is None:
            continue
        folder = path.resolve()
        for shard in ckpt.shards:
            if shard.resolve().parent != folder:
                result.fail("escape", f"{what} [{step}] a shard outside the checkpoint folder: {shard}")
        _attempt(result, f"{step}-read", what, lambda ckpt=ckpt: [ckpt.read(k) for k in ckpt.keys()])


def check_differential(result: Result, case: Path, what: str) -> None:
    for file in sorted(case.rglob("*.safetensors")):
        if file.name.startswith("rt"):
            continue
        outcome, failure = differential(file)
        result.outcomes[f"diff:{outcome}"] += 1
        if failure:
            result.fail("differential", f"{what} [differential {file.name}] {failure}")


def run_case(result: Result, rng: random.Random, seeds: list[Path], case: Path, label: str, case_seconds: float, trace: bool) -> None:
    """One case: mutate a seed into ``case``, run every reader, check the bounds."""
    seed = rng.choice(seeds)
    path, what = _mutate_copy(rng, seed, case)
    what = f"{label} {what}"
    size = sum(p.stat().st_size for p in case.rglob("*") if p.is_file())
    _largest_buffer[0] = 0
    if trace:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, case_seconds)
    try:
        if seed.name.startswith("ckpt"):
            check_checkpoint(result, path, what)
            _attempt(result, "open", what, lambda: ak.open_adapter(path))
        elif seed.parent.name == "containers":
            _attempt(result, "open", what, lambda: ak.open_adapter(path))
        else:
            check_one(result, path, what, case)
        check_differential(result, case, what)
    except CaseTimeout:
        result.fail("timeout", f"{what} ran past {case_seconds} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    elapsed = time.perf_counter() - start
    if elapsed > result.slowest[0]:
        result.slowest = (elapsed, what)
    allocated = _largest_buffer[0]
    if trace:
        allocated = max(allocated, tracemalloc.get_traced_memory()[1] - before)
    # Python objects of a parsed header or config take a few times its bytes; the round trip
    # holds the tensors twice.  Anything beyond 8 x the files + 8 MiB is a claim believed.
    budget = 8 * size + (8 << 20)
    if allocated - 8 * size > result.most_allocated[0]:
        result.most_allocated = (allocated - 8 * size, f"{what}: {allocated} bytes for {size} bytes of files")
    if allocated > budget:
        result.fail("allocation", f"{what} allocated {allocated} bytes for {size} bytes of files (budget {budget})")


def make_all_seeds(root: Path) -> list[Path]:
    (root / "containers").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    return make_seeds(root / "adapters") + make_container_seeds(root / "containers") + make_checkpoint_seeds(root / "checkpoints")


def run(iterations: int | None = 1000, seconds: float | None = None, seed: int = 0, workdir: Path | None = None, *,
        first: int = 0, step: int = 1, case_seconds: float = 60.0, trace: bool = True, progress: int = 0) -> Result:
    """Fuzz cases ``first``, ``first + step``, ... below ``iterations`` (or for ``seconds``;
    whichever ends first; None: no limit).  Case ``i`` draws from ``Random(f"{seed}:{i}")``."""
    if iterations is None and seconds is None:
        raise ValueError("give iterations or seconds")
    result = Result()
    old_handler = signal.signal(signal.SIGALRM, _alarm)
    safetensors_file._private_buffer = _recording_private_buffer
    tracing = trace and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="adapterkit-fuzz-", dir=workdir) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = Path(tmp)
            seeds = make_all_seeds(root / "seeds")
            deadline = None if seconds is None else t0 + seconds
            i = first
            while (iterations is None or i < iterations) and (deadline is None or time.monotonic() < deadline):
                case = root / f"case{i}"
                failed = sum(result.kinds.values())
                run_case(result, random.Random(f"{seed}:{i}"), seeds, case, f"#{i}", case_seconds, trace)
                if progress and sum(result.kinds.values()) > failed:  # a long run names each failing case at once
                    print(f"[{os.getpid()}] case {i} failed (replay: --case {i} --seed {seed}): {result.failures[-1][:300]}", flush=True)
                shutil.rmtree(case, ignore_errors=True)
                result.iterations += 1
                if progress and result.iterations % progress == 0:
                    rate = result.iterations / (time.monotonic() - t0)
                    print(f"[{os.getpid()}] {result.iterations} cases, {sum(result.kinds.values())} failures, {rate:.1f} cases/s, "
                          f"slowest {result.slowest[0]:.2f} s", flush=True)
                i += step
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        safetensors_file._private_buffer = _real_private_buffer
        if tracing:
            tracemalloc.stop()
    return result


def summary(result: Result) -> str:
    lines = [
        f"{result.iterations} cases, {sum(result.kinds.values())} failures"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(result.kinds.items())) + ")" if result.kinds else ""),
        f"slowest case: {result.slowest[0]:.3f} s ({result.slowest[1]})",
        f"largest allocation beyond 8 x the files: {result.most_allocated[0]} bytes of {8 << 20} allowed ({result.most_allocated[1]})",
        f"{'step:outcome':<60} count",
    ]
    lines += [f"{k:<60} {v}" for k, v in sorted(result.outcomes.items())]
    return "\n".join(lines)


def _worker(args: tuple) -> Result:
    iterations, seconds, seed, first, step, case_seconds, trace, progress = args
    cap_address_space()
    return run(iterations, seconds, seed, first=first, step=step, case_seconds=case_seconds, trace=trace, progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", "--iterations", "-n", dest="cases", type=int, default=None, help="number of cases (default: 2000 unless --seconds)")
    parser.add_argument("--seconds", "-t", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case number (resume a campaign: cases --start .. --cases - 1)")
    parser.add_argument("--case", type=int, default=None, help="replay this one case and print its outcomes")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="worker processes (cases are split between them)")
    parser.add_argument("--case-seconds", type=float, default=60.0, help="time bound of one case (default 60)")
    parser.add_argument("--no-trace", action="store_true", help="skip tracemalloc (faster; the buffer record and the address-space cap remain)")
    parser.add_argument("--progress", type=int, default=0, metavar="N", help="print a line every N cases per worker")
    parser.add_argument("--show", type=int, default=5, help="failures to print in full")
    args = parser.parse_args(argv)
    trace = not args.no_trace
    if args.case is not None:
        cap_address_space()
        result = run(args.case + 1, None, args.seed, first=args.case, case_seconds=args.case_seconds, trace=trace)
    else:
        cases = args.cases if args.cases is not None or args.seconds is not None else 2000
        jobs = max(1, args.jobs)
        work = [(cases, args.seconds, args.seed, args.start + j, jobs, args.case_seconds, trace, args.progress) for j in range(jobs)]
        start = time.monotonic()
        if jobs == 1:
            result = _worker(work[0])
        else:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                result = Result()
                for part in pool.map(_worker, work):
                    result.merge(part)
        print(f"wall time {time.monotonic() - start:.0f} s, {result.iterations / max(time.monotonic() - start, 1e-9):.1f} cases/s")
    print(summary(result))
    for failure in result.failures[: args.show]:
        print("\n" + failure)
    return 1 if result.kinds else 0


if __name__ == "__main__":
    sys.exit(main())
