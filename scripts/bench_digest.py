"""Benchmark the cost of the content digest (spec §5.5): ``save`` with the digest versus without,
side by side in one run, and what checking it adds to ``load``.

Workload (default): a LoRA adapter shaped like a 7B decoder (32 layers x q/k/v/o/gate/up/down =
224 modules, hidden 4096, MLP 11008) at rank 16, in fp32 (~160 MB; --dtype fp16 for ~80 MB).

``save`` hashes each tensor on a second thread while the main thread writes it (the header is
written with a placeholder of the same length and rewritten at the end), so the hashing overlaps
the writing; the target is save with the digest <= 1.1x save without (``digest=False``, which
writes a format 1.0 file).  Timings are the median and the best of --repeat runs, the two
variants interleaved so both see the same machine state; each save writes a new output (the
previous one removed untimed).  ``load`` rows compare loading the file with a digest (verified)
and without one: the cost of checking it.  Also printed: SHA-256 throughput alone on this
machine, which bounds what hashing can cost when it does not overlap.

(Standalone for now; it is meant to become the digest section of scripts/bench_inspect.py.)

Figures (2026-11-27, the shared 2-CPU machine at load average ~20, fp32 160 MB, 9 runs): save
with/without digest, median 469 / 227 ms (2.07x, MISS), best 379 / 195 ms; durable=False 392 / 139
ms; load 343 / 88 ms.  CPU time (all threads) of save 172 / 67 ms: the digest costs ~105 ms of CPU
(SHA-256 at ~1.5 GB/s per core), which overlaps the writing only where a core is free; here the
process got ~0.4 of a core, so the hashing added its full time.  Not measured on a quiet machine.

Usage: python scripts/bench_digest.py [--layers 32] [--rank 16] [--dtype fp32|fp16|bf16]
                                      [--repeat 9] [--dir DIR] [--no-fsync]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import adapterkit
from adapterkit import Adapter, LoraConfig

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def build(layers: int, rank: int, dtype: torch.dtype, hidden: int = 4096, mlp: int = 11008) -> Adapter:
    """A 7B-shaped LoRA: 7 modules per layer (q/k/v/o hidden x hidden, gate/up mlp x hidden, down hidden x mlp)."""
    g = torch.Generator().manual_seed(0)
    h, m = hidden, mlp
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (m, h), "mlp.up_proj": (m, h), "mlp.down_proj": (h, m)}
    tensors = {}
    for i in range(layers):
        for name, (out_f, in_f) in shapes.items():
            p = f"base_model.model.model.layers.{i}.{name}"
            tensors[f"{p}.lora_A.weight"] = (torch.randn(rank, in_f, generator=g) * 0.01).to(dtype)
            tensors[f"{p}.lora_B.weight"] = (torch.randn(out_f, rank, generator=g) * 0.01).to(dtype)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=tuple(n.split(".")[-1] for n in shapes))
    return Adapter.from_tensors(cfg, tensors)


def interleaved(fns: list[Callable[[], object]], repeat: int, before: Callable[[], None] | None = None,
                cpu: list[list[float]] | None = None) -> list[list[float]]:
    """``repeat`` wall-clock timings of each function, run in turn (a, b, a, b, ...) after one untimed
    warm-up each; ``cpu``, if given, collects the CPU seconds of this process (all threads) per run."""
    out: list[list[float]] = [[] for _ in fns]
    for r in range(repeat + 1):
        for i, fn in enumerate(fns):
            if before:
                before()
            c, t = time.process_time(), time.perf_counter()
            fn()
            wall, used = time.perf_counter() - t, time.process_time() - c
            if r:
                out[i].append(wall)
                if cpu is not None:
                    cpu[i].append(used)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--no-fsync", action="store_true", help="save(durable=False): the CPU cost without the fsync")
    args = parser.parse_args()

    adapter = build(args.layers, args.rank, DTYPES[args.dtype])
    nbytes = adapter.nbytes()
    durable = not args.no_fsync
    root = Path(tempfile.mkdtemp(prefix="bench-digest-", dir=args.dir))
    try:
        with_d, without_d = root / "with", root / "without"

        def fresh() -> None:
            for p in (with_d, without_d):
                shutil.rmtree(p, ignore_errors=True)

        save_cpu: list[list[float]] = [[], []]
        saves = interleaved([lambda: adapterkit.save(adapter, with_d, durable=durable),
                             lambda: adapterkit.save(adapter, without_d, durable=durable, digest=False)], args.repeat, before=fresh,
                            cpu=save_cpu)
        fresh()
        adapterkit.save(adapter, with_d, durable=durable)
        adapterkit.save(adapter, without_d, durable=durable, digest=False)
        load_cpu: list[list[float]] = [[], []]
        loads = interleaved([lambda: adapterkit.load(with_d), lambda: adapterkit.load(without_d)], args.repeat, cpu=load_cpu)

        data = (with_d / "adapter_model.safetensors").read_bytes()
        sha = interleaved([lambda: hashlib.sha256(data).digest()], 3)[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"adapter: {len(adapter.tensors)} tensors, {len(adapter.modules)} modules, {nbytes / 1e6:.1f} MB {args.dtype}, "
          f"rank {args.rank}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; save durable={durable}; "
          f"{args.repeat} runs each, interleaved")
    print(f"{'workload':<44} {'with digest':>12} {'without':>10} {'ratio':>7}  target")
    for name, (a, b), target in (("save (dir form), median ms", saves, 1.1), ("load (all checks), median ms", loads, None)):
        ma, mb = statistics.median(a), statistics.median(b)
        verdict = "" if target is None else f"<= {target:g}x {'PASS' if ma / mb <= target else 'MISS'}"
        print(f"{name:<44} {ma * 1e3:>12.1f} {mb * 1e3:>10.1f} {ma / mb:>6.2f}x  {verdict}")
        print(f"{name.replace('median', 'best'):<44} {min(a) * 1e3:>12.1f} {min(b) * 1e3:>10.1f} {min(a) / min(b):>6.2f}x")
    for name, (a, b) in (("save CPU time (all threads), median ms", save_cpu), ("load CPU time (all threads), median ms", load_cpu)):
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:<44} {ma * 1e3:>12.1f} {mb * 1e3:>10.1f} {ma / mb:>6.2f}x")
    best_sha = min(sha)
    print(f"SHA-256 of the whole file alone: {best_sha * 1e3:.1f} ms ({len(data) / best_sha / 1e9:.2f} GB/s): what the digest "
          f"would add to save if it did not overlap the writing")


if __name__ == "__main__":
    main()
