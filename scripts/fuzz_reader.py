#!/usr/bin/env python
"""Mutation fuzzer for adapterkit's readers.

Builds a handful of valid adapters (LoRA with rank_pattern / DoRA / lora_bias /
embedding / conv, IA3, prompt and prefix tuning; single-file, directory and
legacy ``.bin`` forms), then repeatedly damages a copy of one of them (bit
flips, truncations, insertions, length-prefix edits, structured edits of the
safetensors header, the embedded config and ``adapter_config.json``) and runs
``open_adapter``, ``load``, ``validate`` and, when loading succeeded, a
``save``/``load`` round trip.

The rule checked: every outcome is a success or an ``AdapterkitError``; any other
exception (a bare traceback from torch, safetensors, json, zipfile ...) is a
failure.  ``validate`` must never raise at all: it reports problems.

    python scripts/fuzz_reader.py --iterations 5000
    python scripts/fuzz_reader.py --seconds 60 --seed 7

Prints a table of the outcome codes seen and exits 1 if anything failed.
``tests/test_errors.py`` runs the same loop briefly with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import adapterkit as ak
from adapterkit.errors import AdapterkitError

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


SAFETENSORS_MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [_bitflip, _truncate, _splice, _set_length, _poison_data, _header_edit, _header_edit, _header_edit]
BYTES_MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [_bitflip, _truncate, _splice]
CONFIG_MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [_config_edit, _config_edit, _splice, _truncate, _bitflip]


# ----------------------------------------------------------------------------- the loop


@dataclass
class Result:
    iterations: int = 0
    outcomes: Counter = field(default_factory=Counter)  # "<step>:<code>" -> count
    failures: list[str] = field(default_factory=list)  # descriptions with tracebacks


def _mutate_copy(rng: random.Random, seed: Path, dest: Path) -> tuple[Path, str]:
    """Copy ``seed`` to ``dest`` and damage one of its files; returns (adapter path, description)."""
    if seed.is_dir():
        shutil.copytree(seed, dest)
        files = sorted(p for p in dest.iterdir() if p.is_file())
        victim = rng.choice(files)
        target = dest
    else:
        dest.mkdir()
        victim = target = dest / seed.name
        shutil.copyfile(seed, victim)
    data = victim.read_bytes()
    if victim.suffix == ".json":
        mutators = CONFIG_MUTATORS
    elif victim.suffix == ".safetensors":
        mutators = SAFETENSORS_MUTATORS
    else:
        mutators = BYTES_MUTATORS
    steps = []
    for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
        mutator = rng.choice(mutators)
        data = mutator(rng, data)
        steps.append(mutator.__name__)
    if rng.random() < 0.05:  # sometimes the file vanishes entirely
        victim.unlink()
        steps.append("unlink")
    else:
        victim.write_bytes(data)
    return target, f"{seed.name}/{victim.name}: {'+'.join(steps)}"


def _attempt(result: Result, step: str, what: str, fn: Callable[[], object]) -> object | None:
    try:
        value = fn()
    except AdapterkitError as exc:
        if not isinstance(exc.code, str) or not exc.code:
            result.failures.append(f"{what} [{step}] AdapterkitError without a code: {exc!r}")
        result.outcomes[f"{step}:{exc.code}"] += 1
        return None
    except Exception:
        result.failures.append(f"{what} [{step}]\n{traceback.format_exc()}")
        result.outcomes[f"{step}:CRASH"] += 1
        return None
    result.outcomes[f"{step}:ok"] += 1
    return value


def check_one(result: Result, path: Path, what: str, out_dir: Path) -> None:
    """Run every reader on ``path``; record outcomes and failures in ``result``."""
    _attempt(result, "open", what, lambda: ak.open_adapter(path))
    try:
        problems = ak.validate(path)
    except Exception:
        result.failures.append(f"{what} [validate raised]\n{traceback.format_exc()}")
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
                    result.failures.append(f"{what} [reload-{form}] round trip changed the adapter")


def run(iterations: int | None = 1000, seconds: float | None = None, seed: int = 0, workdir: Path | None = None) -> Result:
    """Fuzz for ``iterations`` mutations or ``seconds`` (whichever ends first; None: no limit)."""
    if iterations is None and seconds is None:
        raise ValueError("give iterations or seconds")
    rng = random.Random(seed)
    result = Result()
    with tempfile.TemporaryDirectory(prefix="adapterkit-fuzz-", dir=workdir) as tmp:
        root = Path(tmp)
        seeds = make_seeds(root / "seeds")
        deadline = None if seconds is None else time.monotonic() + seconds
        i = 0
        while (iterations is None or i < iterations) and (deadline is None or time.monotonic() < deadline):
            case = root / f"case{i}"
            path, what = _mutate_copy(rng, rng.choice(seeds), case)
            check_one(result, path, f"#{i} {what}", case)
            shutil.rmtree(case, ignore_errors=True)
            i += 1
        result.iterations = i
    return result


def summary(result: Result) -> str:
    lines = [f"{result.iterations} mutations, {len(result.failures)} failures", f"{'step:outcome':<60} count"]
    lines += [f"{k:<60} {v}" for k, v in sorted(result.outcomes.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", "-n", type=int, default=None, help="number of mutations (default: 2000 unless --seconds)")
    parser.add_argument("--seconds", "-t", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=5, help="failures to print in full")
    args = parser.parse_args(argv)
    iterations = args.iterations if args.iterations is not None or args.seconds is not None else 2000
    result = run(iterations, args.seconds, args.seed)
    print(summary(result))
    for failure in result.failures[: args.show]:
        print("\n" + failure)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
