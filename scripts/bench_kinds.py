#!/usr/bin/env python
"""Benchmark converting LoHa and LoKr adapters to LoRA from the factors against merge-then-extract.

Workload, generated under a fixed seed: a LoHa (r=16, alpha 16) and a LoKr (r=16, decompose_both,
alpha 16) adapter on all seven projections of ``--layers`` Llama-7B-shaped layers (q, k, v, o
4096×4096; gate, up 11008×4096; down 4096×11008), fp32 factors of random scale.

* ours: ``adapterkit.to_lora(adapter, rank=64)`` and ``to_lora(adapter, energy=0.99)`` in
  process: the exact LoRA form (LoHa rank 256, LoKr rank rank(W1)·rank(W2)) from the factors,
  then resize's factored SVD; no dense ΔW is ever formed.  Measured in full.
* anchor: the route LyCORIS recommends for anything that is not plain LoRA, merge then extract:
  form each module's dense ΔW (the kind's own ``delta_weight``) and take its thin SVD
  (``torch.linalg.svd``), keeping 64 singular triples (and, from the same SVD, the rank keeping
  99% of ‖ΔW‖²).  A dense SVD of every module would take an hour on 2 cores, so the anchor is
  measured on one module of each of the three shapes and extrapolated to all of them (the printout says so).

Error: per measured module, ‖ΔW − ΔW_k‖_F of ours (resize's report) against the dense route's
(the dropped singular values); both are the best rank-k approximation, so they agree to rounding.

Target (issue 21): ours >= 500x faster than the dense route, at an error no worse.

Usage: python scripts/bench_kinds.py [--layers 32] [--device cpu] [--hidden 4096] [--mlp 11008]
"""

from __future__ import annotations

import argparse
import time

import bench_all
import torch
from bench_all import record

import adapterkit
from adapterkit import Adapter
from adapterkit.kinds.loha import LoHaConfig
from adapterkit.kinds.lokr import LoKrConfig, factorization

SHAPES: dict[str, tuple[int, int]] = {}
R = 16


def shapes(hidden: int, mlp: int) -> dict[str, tuple[int, int]]:
    return {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden), "o_proj": (hidden, hidden),
            "gate_proj": (mlp, hidden), "up_proj": (mlp, hidden), "down_proj": (hidden, mlp)}


def _module(layer: int, proj: str) -> str:
    return f"model.layers.{layer}.{'self_attn' if proj[0] in 'qkvo' else 'mlp'}.{proj}"


def loha(layers: int) -> Adapter:
    g = torch.Generator().manual_seed(0)
    t = {}
    for i in range(layers):
        for proj, (out, inp) in SHAPES.items():
            p = f"base_model.model.{_module(i, proj)}"
            t |= {f"{p}.hada_w1_a": torch.randn(out, R, generator=g) * 0.05, f"{p}.hada_w1_b": torch.randn(R, inp, generator=g) * 0.05,
                  f"{p}.hada_w2_a": torch.randn(out, R, generator=g) * 0.05, f"{p}.hada_w2_b": torch.randn(R, inp, generator=g) * 0.05}
    return Adapter.from_tensors(LoHaConfig(r=R, alpha=R, target_modules=tuple(SHAPES)), t)


def lokr(layers: int) -> Adapter:
    g = torch.Generator().manual_seed(1)
    t = {}
    for i in range(layers):
        for proj, (out, inp) in SHAPES.items():
            (a, b), (c, d) = factorization(out), factorization(inp)
            p = f"base_model.model.{_module(i, proj)}"
            t |= {f"{p}.lokr_w1_a": torch.randn(a, R, generator=g) * 0.1, f"{p}.lokr_w1_b": torch.randn(R, c, generator=g) * 0.1,
                  f"{p}.lokr_w2_a": torch.randn(b, R, generator=g) * 0.1, f"{p}.lokr_w2_b": torch.randn(R, d, generator=g) * 0.1}
    return Adapter.from_tensors(LoKrConfig(r=R, alpha=R, decompose_both=True, target_modules=tuple(SHAPES)), t)


def dense_route(adapter: Adapter, module: str, device: torch.device) -> tuple[float, float, float, int]:
    """(seconds, error at rank 64, error at energy 0.99, that rank) of merge-then-extract."""
    start = time.perf_counter()
    delta = adapter.kind.delta(adapter, module, device=device, dtype=torch.float32)
    s = torch.linalg.svd(delta, full_matrices=False)[1].double()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    sq = s ** 2
    k = int(torch.searchsorted(torch.cumsum(sq, 0) / sq.sum(), torch.tensor(0.99, dtype=torch.float64)).item()) + 1
    return seconds, float(sq[64:].sum().sqrt()), float(sq[k:].sum().sqrt()), k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--mlp", type=int, default=11008)
    args = parser.parse_args()
    SHAPES.update(shapes(args.hidden, args.mlp))
    device = torch.device(args.device)
    print(bench_all.machine(), flush=True)
    for kind, build in (("LoHa", loha), ("LoKr", lokr)):
        adapter = build(args.layers)
        modules = sorted(adapter.modules)
        print(f"== {kind}: {len(modules)} modules ({args.layers} layers × 7), r={R}", flush=True)
        ours = {}
        for rule, kw in (("rank 64", {"rank": 64}), ("energy 0.99", {"energy": 0.99})):
            start = time.perf_counter()
            _, report = adapterkit.to_lora(adapter, device=device, **kw)
            ours[rule] = (time.perf_counter() - start, {m.name: m for m in report.truncated.modules})
            exact_ranks = sorted({m.rank_before for m in report.truncated.modules})
            print(f"  ours {rule}: {ours[rule][0]:.2f} s for {len(modules)} modules (exact LoRA ranks {exact_ranks})", flush=True)
        dense_total, worse = 0.0, 0
        for proj in ("q_proj", "gate_proj", "down_proj"):  # one module of each shape
            module, shape = _module(0, proj), SHAPES[proj]
            count = sum(1 for m in modules if SHAPES[m.rsplit(".", 1)[1]] == shape)
            seconds, err64, err99, k99 = dense_route(adapter, module, device)
            dense_total += seconds * count
            o64, o99 = ours["rank 64"][1][module], ours["energy 0.99"][1][module]
            worse += (o64.error > err64 * (1 + 1e-3) + 1e-12) + (o99.error > err99 * (1 + 1e-3) + 1e-12)
            print(f"  dense {proj} {shape}: {seconds:.2f} s × {count}; error rank 64 ours {o64.error:.4g} dense {err64:.4g}; "
                  f"energy 0.99 rank ours {o99.rank_after} dense {k99}, error ours {o99.error:.4g} dense {err99:.4g}", flush=True)
        print(f"  dense route, extrapolated from one module per shape to all {len(modules)}: {dense_total:.0f} s", flush=True)
        for rule, (seconds, _) in ours.items():
            ratio = dense_total / seconds
            print(f"  {kind} {rule}: ours {seconds:.2f} s vs dense {dense_total:.0f} s: {ratio:.0f}x "
                  f"({'PASS' if ratio >= 500 else 'MISS'} >= 500x); modules where ours is worse: {worse}", flush=True)
            record(f"{kind} to LoRA, {rule} ({len(modules)} modules)", seconds, dense_total,
                   anchor_label="dense ΔW + SVD per module (extrapolated)", target=">= 500x faster")


if __name__ == "__main__":
    main()
