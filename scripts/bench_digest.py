"""Benchmark the cost of the content digest (spec §5.5) against its anchors, side by side in one run.

Workload (default): a LoRA adapter shaped like a 7B decoder (32 layers x q/k/v/o/gate/up/down =
224 modules, hidden 4096, MLP 11008) at rank 16, in fp32 (~160 MB; --dtype fp16 for ~80 MB).

Rows (each the median of --repeat runs, the variants of a row interleaved run by run so that all
see the same machine state; best of the runs beside it):

  * ``load`` checking the digest, against ``load(verify_digest=False)`` of the same file and against
    the anchor: safetensors' ``load_file`` plus one pass over the values, the NaN/Inf check our
    ``load`` also makes (``torch.aminmax`` of each tensor, NaN propagating, ±Inf at an end).
    Target: load with the check <= 1.5x the anchor.  ``load`` reads the data region in pieces in
    file order into one private buffer and hashes each tensor on worker threads as its bytes
    arrive (``adapterkit.io.digest.RegionHasher``), so on a machine with cores to spare the
    hashing hides behind the read.
  * ``save`` with the digest, against ``save(digest=False)`` (a format 1.0 file).  Target: <= 1.1x.
    Each save writes a new output (the previous one removed untimed); ``--no-fsync`` saves with
    ``durable=False``.

Also printed: CPU time of all threads per variant, SHA-256 of the whole file alone on one
thread, the hashing threads used, and the floor on this machine: the CPU time the work needs
(read + hash + check) spread over the cores this process may use, which is what load with the
check cannot beat wherever there are fewer cores than hashing wants.

Figures (issue 19, the shared 2-CPU machine at load average 3-4, --torch-threads 1, 15 runs; the
full set in docs/benchmarks.md): fp32 save with/without digest 1.07-1.12x (1.48-1.57x before the
save hashed during its fsync); load with the check 1.9-2.9x the anchor, CPU-bound here (about one
core free): its CPU time is the unchecked load's plus SHA-256's, which only free cores hide.

Usage: python scripts/bench_digest.py [--layers 32] [--rank 16] [--dtype fp32|fp16|bf16]
                                      [--repeat 15] [--dir DIR] [--no-fsync] [--torch-threads N]
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
from bench_all import record

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


def finite_pass(tensors: dict[str, torch.Tensor]) -> bool:
    """The anchor's one pass over the values: the NaN/Inf check ``load`` makes (aminmax propagates
    NaN, and ±Inf shows as the min or the max), tensor by tensor as ``load_file`` returns them."""
    ok = True
    for t in tensors.values():
        if t.numel():
            lo, hi = torch.aminmax(t.reshape(-1))
            ok &= bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))
    return ok


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def row(name: str, ours: list[float], anchor: list[float], anchor_name: str, target: float | None) -> None:
    ma, mb = statistics.median(ours), statistics.median(anchor)
    verdict = "" if target is None else f"<= {target:g}x {'PASS' if ma / mb <= target else 'MISS'}"
    print(f"{name:<34} {ma * 1e3:>9.1f} {anchor_name:<34} {mb * 1e3:>9.1f} {ma / mb:>6.2f}x  {verdict}")
    record(name, ma * 1e3, mb * 1e3, anchor_label=anchor_name, target="" if target is None else f"<= {target:g}x", unit="ms")
    print(f"{'  best of the runs':<34} {min(ours) * 1e3:>9.1f} {'':<34} {min(anchor) * 1e3:>9.1f} {min(ours) / min(anchor):>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--no-fsync", action="store_true", help="save(durable=False): the CPU cost without the fsync")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads for every variant (the NaN/Inf passes); default: torch's own choice")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from safetensors.torch import load_file

    from adapterkit.io import digest

    adapter = build(args.layers, args.rank, DTYPES[args.dtype])
    nbytes = adapter.nbytes()
    durable = not args.no_fsync
    load_before = os.getloadavg()
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
        adapterkit.save(adapter, with_d)
        weights = with_d / "adapter_model.safetensors"
        loaded = adapterkit.load(with_d)
        reference = load_file(weights)
        assert set(reference) == set(loaded.tensors) and all(torch.equal(reference[k], loaded.tensors[k]) for k in reference)
        del loaded, reference
        load_cpu: list[list[float]] = [[], [], []]
        loads = interleaved([lambda: adapterkit.load(with_d), lambda: adapterkit.load(with_d, verify_digest=False),
                             lambda: finite_pass(load_file(weights))], args.repeat, cpu=load_cpu)
        data = weights.read_bytes()
        sha = interleaved([lambda: hashlib.sha256(data).digest()], 3)[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cores = usable_cores()
    how_many = getattr(digest, "hash_threads", None)
    threads = how_many(nbytes) if how_many else f"{digest.HASH_THREADS} (HASH_THREADS)"
    print(f"adapter: {len(adapter.tensors)} tensors, {len(adapter.modules)} modules, {nbytes / 1e6:.1f} MB {args.dtype}, "
          f"rank {args.rank}; {cores} usable cores of {os.cpu_count()}; hashing threads {threads}; torch threads "
          f"{torch.get_num_threads()}; save durable={durable}; "
          f"{args.repeat} runs each, interleaved; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'ours, median ms':<34} {'':>9} {'anchor, median ms':<34} {'':>9} {'ratio':>7}  target")
    row("load (digest checked)", loads[0], loads[2], "load_file + NaN/Inf pass", 1.5)
    row("load (digest checked)", loads[0], loads[1], "load(verify_digest=False)", None)
    row("save (digest)", saves[0], saves[1], "save(digest=False)", 1.1)
    print("CPU time, all threads, median ms: " + ", ".join(
        f"{name} {statistics.median(c) * 1e3:.1f}" for name, c in (
            ("load checked", load_cpu[0]), ("load unchecked", load_cpu[1]), ("load_file + pass", load_cpu[2]),
            ("save digest", save_cpu[0]), ("save no digest", save_cpu[1]))))
    best_sha = min(sha)
    floor = (statistics.median(load_cpu[1]) + best_sha) / cores
    print(f"SHA-256 of the whole file on one thread: {best_sha * 1e3:.1f} ms ({len(data) / best_sha / 1e9:.2f} GB/s); "
          f"floor of a checked load here (unchecked load's CPU + that hash, over {cores} cores): {floor * 1e3:.1f} ms "
          f"= {floor / statistics.median(loads[2]):.2f}x the anchor")


if __name__ == "__main__":
    main()
