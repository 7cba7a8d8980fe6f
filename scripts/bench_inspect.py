#!/usr/bin/env python
"""Benchmark looking inside adapters (issue 12), in sections (``--only``):

* diff: ``adapterkit.diff(a, b, conflict="off")`` on two 7B-shaped r=16 LoRA adapters (all
  seven projections of 32 layers: q, k, v, o 4096×4096; gate, up 11008×4096; down 4096×11008:
  224 modules; alpha 32 and 16, fp32 factors generated here under fixed seeds; b shares part of
  a's column spaces so that the angles are not all near 90°): cosine, norms, principal angles
  (column and row spaces) and subspace energies for all 224 modules from the factors, against
  the dense route: form ΔW_a and ΔW_b (fp32), cosine from their entries, orthonormal bases of
  their column and row spaces from a thin dense SVD of each (what ``scipy.linalg.subspace_angles``
  does), angles from the SVD of Q_aᵀQ_b.  The dense route's SVDs would take hours for all 224 on
  2 cores, so it is measured on ``--dense-modules`` modules of each shape and extrapolated to
  the 224 (128, 64 and 32 of them); the printout says so.  The factor route is measured in full
  (best of ``--repeat``).  Both routes' cosines and angles are compared on the measured modules.
  Also the dense cosine alone (form both ΔW, one dot product: no angles), measured the same way.
* conflict: the sign-conflict fraction for all 224 modules, exact in row blocks
  (``conflict="block"``) and sampled (``conflict="sample"``, 256 rows per module), once each.
* digest: ``scripts/bench_digest.py`` in a fresh process: ``save`` of a 7B-shaped r=16 LoRA
  (224 modules, fp32) with the content digest against ``save(digest=False)``, interleaved,
  median of ``--repeat``; also ``load`` with and without the digest check.  Target ≤ 1.1×.

Prints a table (workload, ours, anchor, ratio) and the targets with PASS/MISS: diff ≥ 500×
faster than the dense route and under 1 s (on the 2-core development machine).

Measured on the development machine (2 vCPUs, fp32 factors, ``--threads 1``, 2026-11-27), while
other engineers' jobs kept the load average at 9-30 on its 2 cores, so every figure is slower
than a quiet machine's: diff (cosine, norms, angles, subspace energies) of all 224 modules
1.33 s (best of 3; 1.26 s in a rerun at load ~10; 0.84 s in an earlier one) against the dense
route extrapolated to 41,199 s (111.9 s per 4096×4096 module, 210.3 s per 11008×4096, 419.4 s
per 4096×11008): 31,036×; against the dense cosine alone (no angles) 280.9 s: 212×.  The two
routes agree to |Δcos| ≤ 5.9e-6 and |Δangle| ≤ 7.7e-4 rad, the dense fp32 route's own error
(its arccos near the 8 shared directions).  Target ≥ 500×: met; < 1 s: missed on this loaded
machine (not measured quiet).  With torch's default 2 threads on the oversubscribed machine
the same diff took 16-26 s (OpenMP threads stall when the cores are taken): use --threads 1
on a shared machine.  Sign conflicts of all 224 modules (same machine, load ~8-14): exact in row
blocks 168.0 s, sampled (256 rows per module) 2.52 s, the estimates within 0.0013 of the exact
fractions (every one inside its printed 95% bound, at most ±0.084).

Usage: python scripts/bench_inspect.py [--only diff|conflict|digest] [--device cpu|cuda] [--repeat 3] [--dense-modules 1] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import adapterkit
from adapterkit import Adapter, LoraConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_all import record
from bench_ops import best_of, sync

LAYERS, RANK = 32, 16
H, MLP = 4096, 11008
PROJ = {"self_attn.q_proj": (H, H), "self_attn.k_proj": (H, H), "self_attn.v_proj": (H, H), "self_attn.o_proj": (H, H),
        "mlp.gate_proj": (MLP, H), "mlp.up_proj": (MLP, H), "mlp.down_proj": (H, MLP)}
SHAPES = {"4096x4096": ("self_attn.q_proj", 128), "11008x4096": ("mlp.gate_proj", 64), "4096x11008": ("mlp.down_proj", 32)}
PREFIX = "base_model.model.model.layers"


def pair() -> tuple[Adapter, Adapter]:
    """The two adapters of the module doc (b's B is half a's B mixed, half new)."""
    g = torch.Generator().manual_seed(0)
    ta, tb = {}, {}
    for i in range(LAYERS):
        for name, (out_f, in_f) in PROJ.items():
            p = f"{PREFIX}.{i}.{name}"
            Ba, Aa = torch.randn(out_f, RANK, generator=g) * 0.01, torch.randn(RANK, in_f, generator=g) * 0.01
            mix = torch.randn(RANK, RANK // 2, generator=g)
            Bb = torch.cat([Ba @ mix / RANK**0.5, torch.randn(out_f, RANK // 2, generator=g) * 0.01], dim=1)
            ta[f"{p}.lora_A.weight"], ta[f"{p}.lora_B.weight"] = Aa, Ba
            tb[f"{p}.lora_A.weight"], tb[f"{p}.lora_B.weight"] = torch.randn(RANK, in_f, generator=g) * 0.01, Bb
    targets = tuple(sorted(n.split(".")[1] for n in PROJ))
    return (Adapter.from_tensors(LoraConfig(r=RANK, lora_alpha=32, target_modules=targets), ta),
            Adapter.from_tensors(LoraConfig(r=RANK, lora_alpha=16, target_modules=targets), tb))




def dense_delta(adapter: Adapter, module: str, device: str) -> torch.Tensor:
    view = adapter.module(module)
    return (view.lora_B.to(device, torch.float32) @ view.lora_A.to(device, torch.float32)) * view.scaling


def dense_route(a: Adapter, b: Adapter, module: str, device: str, angles: bool) -> tuple[float, list[float], list[float]]:
    """Cosine (and the principal angles) from the dense ΔW's."""
    Da, Db = dense_delta(a, module, device), dense_delta(b, module, device)
    cosine = float((Da * Db).sum() / (Da.norm() * Db.norm()))
    if not angles:
        sync(device)
        return cosine, [], []
    found = []
    for M in (Da, Db):
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        k = int((S > S[0] * max(M.shape) * torch.finfo(S.dtype).eps).sum())
        found.append((U[:, :k], Vh[:k].T))
    (Ua, Va), (Ub, Vb) = found
    col = torch.arccos(torch.linalg.svdvals(Ua.T @ Ub).clamp(0, 1)).sort().values.tolist()
    row = torch.arccos(torch.linalg.svdvals(Va.T @ Vb).clamp(0, 1)).sort().values.tolist()
    sync(device)
    return cosine, col, row


def bench_diff(a: Adapter, b: Adapter, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    names = list(a.modules)
    adapterkit.diff(a, b, device=args.device, conflict="off")  # warm-up: torch's one-time set-up
    ours, report = best_of(args.repeat, lambda: (adapterkit.diff(a, b, device=args.device, conflict="off"), sync(args.device))[0])
    by_name = {m.name: m for m in report.modules}
    print(f"diff, factor route: {len(names)} modules in {ours:.3f} s (best of {args.repeat}); {report.summary(3)}")
    if args.dense_modules == 0:  # the dense route takes minutes per module: not measured (bench_all's quick run)
        record("diff 224 modules (cosine, angles), factor route", ours, None, target="< 1 s")
        return [("diff 224 modules: cosine + angles", f"{ours:.3f} s", "dense route not measured (--dense-modules 0)", ""),
                ("target: diff < 1 s", f"{ours:.3f} s", "", "PASS" if ours < 1 else "MISS")]
    dense_total = cos_total = 0.0
    worst_cos = worst_angle = 0.0
    for label, (sub, count) in SHAPES.items():
        picked = [n for n in names if n.endswith(sub)][: args.dense_modules]
        spent = cos_spent = 0.0
        for name in picked:
            start = time.perf_counter()
            cosine, col, row = dense_route(a, b, name, args.device, angles=True)
            spent += time.perf_counter() - start
            start = time.perf_counter()
            dense_route(a, b, name, args.device, angles=False)
            cos_spent += time.perf_counter() - start
            m = by_name[name]
            worst_cos = max(worst_cos, abs(cosine - m.cosine))
            worst_angle = max(worst_angle, max(abs(x - y) for x, y in zip(col + row, m.col_angles + m.row_angles)))
        per, cos_per = spent / len(picked), cos_spent / len(picked)
        print(f"  dense route, {label}: {per:.2f} s per module with angles, {cos_per:.3f} s cosine only "
              f"(measured on {len(picked)}, extrapolated to {count})", flush=True)
        dense_total += per * count
        cos_total += cos_per * count
    print(f"  factor vs dense on the measured modules: |Δcos| ≤ {worst_cos:.2e}, |Δangle| ≤ {worst_angle:.2e} rad "
          "(the dense fp32 SVD's own error)")
    record("diff 224 modules (cosine, angles), factor route", ours, dense_total, anchor_label="dense route, extrapolated",
           target=">= 500x faster; < 1 s")
    return [
        ("diff 224 modules: cosine + angles", f"{ours:.3f} s", f"{dense_total:.0f} s dense (extrapolated)", f"{dense_total / ours:.0f}x"),
        ("diff 224 modules: vs dense cosine only", f"{ours:.3f} s", f"{cos_total:.1f} s dense (extrapolated)", f"{cos_total / ours:.0f}x"),
        ("target: diff >= 500x dense", "", "", "PASS" if dense_total / ours >= 500 else "MISS"),
        ("target: diff < 1 s", f"{ours:.3f} s", "", "PASS" if ours < 1 else "MISS"),
    ]


def bench_conflict(a: Adapter, b: Adapter, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    start = time.perf_counter()
    block = adapterkit.diff(a, b, device=args.device, conflict="block")
    sync(args.device)
    exact = time.perf_counter() - start
    start = time.perf_counter()
    sample = adapterkit.diff(a, b, device=args.device, conflict="sample", sample_rows=256)
    sync(args.device)
    sampled = time.perf_counter() - start
    worst = max(abs(x.conflict - y.conflict) for x, y in zip(block.modules, sample.modules))
    bound = max(m.conflict_bound for m in sample.modules)
    inside = all(abs(x.conflict - y.conflict) <= y.conflict_bound for x, y in zip(block.modules, sample.modules))
    print(f"conflict: block {exact:.1f} s, sample {sampled:.2f} s; sampled vs exact |Δ| ≤ {worst:.4f} (bound {bound:.4f}, "
          f"{'all inside' if inside else 'NOT all inside'})")
    return [("sign conflicts, 224 modules, sample 256 rows", f"{sampled:.2f} s", f"{exact:.1f} s exact (block)", f"{exact / sampled:.0f}x")]


def bench_digest(a: Adapter, b: Adapter, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    import subprocess

    script = Path(__file__).resolve().parent / "bench_digest.py"
    out = subprocess.run([sys.executable, str(script), "--repeat", str(max(args.repeat, 5))], check=True,
                         capture_output=True, text=True).stdout
    print(out.rstrip())
    return [("save with digest (bench_digest.py)", "see above", "save(digest=False)", "see above")]


SECTIONS = {"diff": bench_diff, "conflict": bench_conflict, "digest": bench_digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--only", choices=sorted(SECTIONS), default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dense-modules", type=int, default=1, help="dense-route modules measured per shape (0: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    a, b = pair()
    rows = [("workload", "ours", "anchor", "ratio")]
    for name, section in SECTIONS.items():
        if args.only in (None, name):
            rows += section(a, b, args)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
