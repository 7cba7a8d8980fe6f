"""Benchmark adapterkit's I/O and per-module norms against their anchors, side by side.

Workload: a LoRA adapter shaped like a 7B decoder (32 layers x q/k/v/o/gate/up/down, hidden
4096, MLP 11008) at rank 16, stored in fp16 (~80 MB).  Anchors: the safetensors library
(load_file / save_file / safe_open), `cp`, and a dense ΔW = B·A norm.

Usage: python scripts/bench_io.py [--layers 32] [--rank 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import adapterkit
from adapterkit import Adapter, LoraConfig
from adapterkit.kinds.lora import factor_norm


def build(layers: int, rank: int) -> Adapter:
    g = torch.Generator().manual_seed(0)
    h, m = 4096, 11008
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (m, h), "mlp.up_proj": (m, h), "mlp.down_proj": (h, m)}
    tensors = {}
    for i in range(layers):
        for name, (out_f, in_f) in shapes.items():
            p = f"base_model.model.model.layers.{i}.{name}"
            tensors[f"{p}.lora_A.weight"] = (torch.randn(rank, in_f, generator=g) * 0.01).half()
            tensors[f"{p}.lora_B.weight"] = (torch.randn(out_f, rank, generator=g) * 0.01).half()
    return Adapter.from_tensors(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=tuple(sorted(n.split(".")[1] for n in shapes))), tensors)


def timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    adapter = build(args.layers, args.rank)
    tensors = dict(adapter.tensors)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours_dir, ref_file = tmp / "ours", tmp / "ref.safetensors"
        t_ours = timed(lambda: adapterkit.save(adapter, ours_dir))
        t_ref = timed(lambda: save_file(tensors, ref_file, metadata={"format": "pt"}))
        rows.append(("save (dir form) vs safetensors.save_file", t_ours, t_ref))
        weights = ours_dir / "adapter_model.safetensors"
        t_cp = timed(lambda: shutil.copyfile(weights, tmp / "copy.safetensors"))
        rows.append(("save (dir form) vs cp of the same bytes", t_ours, t_cp))
        t_ours = timed(lambda: adapterkit.load(ours_dir))
        t_ref = timed(lambda: load_file(weights))
        rows.append(("load (strict, NaN check) vs safetensors.load_file", t_ours, t_ref))

        def keys_ref():
            with safe_open(weights, "pt") as f:
                return list(f.keys())

        t_ours = timed(lambda: adapterkit.open_adapter(ours_dir), repeat=5)
        t_ref = timed(keys_ref, repeat=5)
        rows.append(("open_adapter (header+checks) vs safe_open keys", t_ours, t_ref))
        views = list(adapter.modules.values())
        dev = args.device

        def norms_factor():
            for v in views:
                factor_norm(v.lora_A.to(dev), v.lora_B.to(dev))

        def norms_dense():
            for v in views:
                (v.lora_B.to(dev).float() @ v.lora_A.to(dev).float()).norm().item()

        rows.append((f"‖ΔW‖ all modules: factors vs dense B·A ({dev})", timed(norms_factor, 1), timed(norms_dense, 1)))
    print(f"adapter: {len(tensors)} tensors, {adapter.nbytes() / 1e6:.1f} MB, torch {torch.__version__}")
    print(f"{'workload':<55} {'ours (s)':>10} {'anchor (s)':>11} {'anchor/ours':>12}")
    for name, ours, anchor in rows:
        print(f"{name:<55} {ours:>10.4f} {anchor:>11.4f} {anchor / ours:>11.2f}x")


if __name__ == "__main__":
    main()
