"""Benchmark adapterkit's I/O and per-module norms against their anchors, side by side.

Workload (default): a LoRA adapter shaped like a 7B decoder (32 layers x q/k/v/o/gate/up/down,
hidden 4096, MLP 11008) at rank 16, stored in fp16 (~80 MB).  Anchors: the safetensors library
(load_file / save_file / safe_open), `cp`, and a dense ΔW = B·A norm.

Every timing is the best of --repeat runs, ours and its anchor interleaved (so both see the same
machine state), on a warm page cache.  The table prints ours/anchor as a time ratio beside the
target (PASS/MISS), then reference rows that explain the floor:

  * safetensors' ``load_file`` maps the file (MAP_PRIVATE) and reads nothing: its tensors fault
    the page cache in when first touched, and share it, so a later in-place write to the file
    shows through (or SIGBUSes).  ``load`` reads into memory of its own and checks every value,
    so its floor is one read into fresh memory plus one pass, printed as "floor".
  * the fsync that makes ``save`` durable is timed separately: save (default, durable) minus
    save(durable=False).  On ext4, replacing an existing file by rename (ours) or truncating it
    (save_file) both start writeback of the new data (auto_da_alloc), which makes
    save timings noisy; ``--dir /dev/shm`` shows the CPU cost alone.  Each save writes a new
    output (the previous one is removed untimed), as a user's save does.

Usage: python scripts/bench_io.py [--layers 32] [--rank 16] [--hidden 4096] [--mlp 11008]
                                  [--dtype fp16|bf16|fp32] [--repeat 15] [--device cpu] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_all import record
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import adapterkit
from adapterkit import Adapter, LoraConfig
from adapterkit.io import safetensors_file
from adapterkit.io.safetensors_file import read_header
from adapterkit.kinds.lora import factor_norm

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def build(layers: int, rank: int, hidden: int = 4096, mlp: int = 11008, dtype: torch.dtype = torch.float16) -> Adapter:
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
    return Adapter.from_tensors(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=tuple(sorted(n.split(".")[1] for n in shapes))), tensors)


def samples(fns: list[Callable[[], object]], repeat: int, before: Callable[[], None] | None = None) -> list[list[float]]:
    """Sorted seconds of ``repeat`` runs of each function, run interleaved; ``before`` runs untimed first."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            if before:
                before()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [sorted(ts) for ts in times]


def best(fns: list[Callable[[], object]], repeat: int, before: Callable[[], None] | None = None) -> list[float]:
    """Best-of-``repeat`` seconds of each function (see ``samples``)."""
    return [ts[0] for ts in samples(fns, repeat, before)]


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache (this file only; nothing else on the machine)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def touch(tensors: dict[str, torch.Tensor]) -> None:
    """One pass over every value (what any consumer of the tensors does at least once)."""
    for t in tensors.values():
        t.sum()  # the cheapest full pass (aminmax, which load uses, is as fast on fp16 and far slower on mmapped bf16)


def save_no_fsync(adapter: Adapter, path: Path) -> None:
    adapterkit.save(adapter, path, durable=False)


def fresh(*paths: Path) -> None:
    """Remove earlier outputs (untimed) so that every save writes a new output, as users do,
    then flush earlier writes so that writeback throttling hits neither side."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--mlp", type=int, default=11008)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    adapter = build(args.layers, args.rank, args.hidden, args.mlp, DTYPES[args.dtype])
    tensors = dict(adapter.tensors)
    n = args.repeat
    rows: list[tuple[str, float, float, float | None]] = []  # workload, ours, anchor, target (max ours/anchor)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        ours_dir, ref_file = tmp / "ours", tmp / "ref.safetensors"
        weights = ours_dir / "adapter_model.safetensors"
        config_file = ours_dir / "adapter_config.json"

        fast, durable, ref = samples([
            lambda: save_no_fsync(adapter, ours_dir),
            lambda: adapterkit.save(adapter, ours_dir),
            lambda: save_file(tensors, ref_file, metadata={"format": "pt"}),
        ], n, before=lambda: fresh(ours_dir, ref_file))
        adapterkit.save(adapter, ours_dir)  # the output the read rows below use
        t_fast, t_durable, t_ref = fast[0], durable[0], ref[0]
        rows.append(("save (dir form, no fsync) vs safetensors.save_file", t_fast, t_ref, 1.2))
        rows.append(("save (dir form, fsync: the default) vs save_file", t_durable, t_ref, None))
        notes.append(f"fsync cost = save (default, durable) - save durable=False: best {(t_durable - t_fast) * 1e3:.1f} ms, "
                     f"median {(durable[n // 2] - fast[n // 2]) * 1e3:.1f} ms; save medians: no fsync {fast[n // 2] * 1e3:.1f} ms, "
                     f"save_file {ref[n // 2] * 1e3:.1f} ms")
        (t_cp,) = best([lambda: shutil.copyfile(weights, tmp / "copy.safetensors")], n, before=os.sync)
        rows.append(("save (dir form, no fsync) vs cp of the same bytes", t_fast, t_cp, None))

        header = read_header(weights)
        size = max(i.end for i in header.tensors.values())

        def floor():  # one read into fresh private memory, then one pass: no checks, no tensors
            if hasattr(mmap, "MADV_HUGEPAGE"):  # the cheapest fresh memory there is (see _private_buffer)
                m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                m.madvise(mmap.MADV_HUGEPAGE)
                buf = torch.frombuffer(m, dtype=torch.uint8)
            else:
                buf = torch.empty(size, dtype=torch.uint8)
            with open(weights, "rb", buffering=0) as f:
                f.seek(header.data_start)
                f.readinto(memoryview(buf.numpy()))
            itemsize = DTYPES[args.dtype].itemsize
            buf[: size - size % itemsize].view(DTYPES[args.dtype]).sum()

        t_ours, t_ref, t_touch, t_floor = best([
            lambda: adapterkit.load(ours_dir), lambda: load_file(weights), lambda: touch(load_file(weights)), floor,
        ], n)
        rows.append(("load (all checks) vs safetensors.load_file", t_ours, t_ref, 1.5))
        rows.append(("load (all checks) vs load_file + one pass (sum)", t_ours, t_touch, None))
        rows.append(("load (all checks) vs floor: read + one pass (sum)", t_ours, t_floor, None))

        def keys_ref():
            with safe_open(weights, "pt") as f:
                keys = list(f.keys())
            with open(config_file, "rb") as f:
                json.load(f)
            return keys

        t_ours, t_ref = best([lambda: adapterkit.open_adapter(ours_dir), keys_ref], 5 * n)
        rows.append(("open_adapter (header seen before) vs safe_open + config", t_ours, t_ref, 2.0))
        memo = getattr(safetensors_file, "_parse_header_memo", None)
        t_ours, t_ref = best([lambda: adapterkit.open_adapter(ours_dir), keys_ref], 5 * n, before=memo and memo.cache_clear)
        rows.append(("open_adapter (first open) vs safe_open + config", t_ours, t_ref, 2.0))
        with open(weights, "rb") as f:
            raw_header = f.read(header.data_start)[8:]
        t_parse, t_json = best([lambda: read_header(weights), lambda: json.loads(raw_header)], 5 * n, before=memo and memo.cache_clear)
        notes.append(f"first open: read_header {t_parse * 1e3:.2f} ms, of which json.loads of the header alone {t_json * 1e3:.2f} ms")

        if hasattr(os, "posix_fadvise"):
            t_cold, t_cold_ref = best([lambda: adapterkit.load(ours_dir), lambda: touch(load_file(weights))], 3, before=lambda: evict(weights))
            notes.append(
                f"cold-ish (file evicted from the page cache first; the host may still cache it): "
                f"load {t_cold * 1e3:.1f} ms, load_file + one pass {t_cold_ref * 1e3:.1f} ms ({t_cold / t_cold_ref:.2f}x)"
            )

        views = list(adapter.modules.values())
        dev = args.device

        def norms_factor():
            for v in views:
                factor_norm(v.lora_A.to(dev), v.lora_B.to(dev))

        def norms_dense():
            for v in views:
                (v.lora_B.to(dev).float() @ v.lora_A.to(dev).float()).norm().item()

        t_ours, t_ref = best([norms_factor, norms_dense], 1)
        rows.append((f"‖ΔW‖ all modules: factors vs dense B·A ({dev})", t_ours, t_ref, None))
    print(f"adapter: {len(tensors)} tensors, {adapter.nbytes() / 1e6:.1f} MB {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {n} (open_adapter: {5 * n}), warm page cache")
    print(f"{'workload':<56} {'ours (ms)':>10} {'anchor (ms)':>12} {'ours/anchor':>12} {'target':>8}")
    for name, ours, anchor, target in rows:
        verdict = "" if target is None else f"<= {target:g}x {'PASS' if ours / anchor <= target else 'MISS'}"
        print(f"{name:<56} {ours * 1e3:>10.2f} {anchor * 1e3:>12.2f} {ours / anchor:>11.2f}x  {verdict}")
        record(name, ours * 1e3, anchor * 1e3, target="" if target is None else f"<= {target:g}x", unit="ms")
    for note in notes:
        print("  " + note)


if __name__ == "__main__":
    main()
