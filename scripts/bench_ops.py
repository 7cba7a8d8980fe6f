#!/usr/bin/env python
"""Benchmark the low-rank operations (combine, resize, rebalance) against the dense approaches.

Workload, generated here under a fixed seed: r=64 LoRA factors on all seven projections of 32
layers (q, k, v, o 4096×4096; gate, up 11008×4096; down 4096×11008: 224 modules, 160M factor
parameters), alpha 128, stored in ``--dtype`` (default fp32, PEFT's default for adapter weights).
Spectra differ per module: B's columns are scaled by decay^j with a module-specific decay in
[0.6, 1.0] and the module's ΔW by a factor in [0.1, 3] — flat and steep, large and small.

Sections (``--only``):

* combine: two r=16 LoRA adapters (alpha 32 and 16) on ``--combine-modules`` 4096×4096 linear
  modules, ``combine(..., "svd", rank=16)`` (factored SVD, never the dense ΔW) against PEFT's
  ``add_weighted_adapter(combination_type="svd", svd_rank=16)`` on the same adapters in the same
  process (dense ΔW, full SVD, on the same device); the rank-16 ΔW of both compared (relative
  Frobenius difference per module; the random factors give a clear spectral gap at 16).
* resize: ``adapterkit.resize(adapter, rank=16)`` in-process on the in-memory adapter (factored
  SVD per module, no dense ΔW), against the dense approach of kohya's ``resize_lora.py`` and
  PEFT's ``add_weighted_adapter(svd)``: form ΔW = scaling·B·A, ``torch.linalg.svd`` (thin),
  keep 16.  The dense SVDs of all 224 modules would take hours on 2 cores, so the dense side is
  measured on one module of each shape (4096×4096, 11008×4096, 4096×11008) and extrapolated to
  the 224 (128, 64 and 32 of them); the printout says so.  Ours is measured in full.  The kept
  ΔW of both is compared on the measured modules (same best rank-16 approximation).
* rebalance: ``rebalance(adapter, rank=16)`` (the budget of a uniform rank-16 resize) against
  the uniform resize: energy kept by each (Σ kept σ² / Σ σ²) and parameters spent.

Prints a table (workload, ours, anchor, ratio) and the targets with PASS/MISS: resize < 5 s
(on the 2-core development machine), faster than dense; rebalance energy >= uniform's, within
the same parameter count.

Measured on the development machine (2 vCPUs AMD EPYC, 23 GB; fp32, best of 3, 2026-11-27):
combine svd 5.0 ms vs PEFT 21.71 s for 2 modules (4306x; the first call, with torch's one-time
set-up, 48.9 ms: 444x), ΔW 2.7e-7 from the exact truncation (PEFT's 1.7e-6); resize 1.92 s on a
quiet machine (2.62 s with other jobs running) vs the dense approach extrapolated to 3940-4487 s
(1715-2053x), ΔW 3.1e-7 from exact (dense 2.1e-6); rebalance keeps 99.59% of the energy vs
75.14% for the uniform resize (1.325x) with 39.97M vs 39.98M parameters.  With another process
busy on one of the 2 cores, torch's two OpenMP threads stall and resize took 9.1 s: compare
figures only from a quiet machine.  End to end through the CLI (import, load with value checks,
write with fsync): resize 5.9 s, rebalance 5.2 s (peak RSS 1.1 / 1.7 GB).

On a lent H100 (16 CPU cores; scripts/gpu_checks.sh): combine 3.2 ms vs PEFT on cuda 6.93 s
(2165x), ours 2.6e-7 from exact, PEFT's cuda SVD 6.0e-5; resize 0.79 s vs dense cuda SVD
extrapolated to 699 s (883x), ours 3.2e-7 from exact, the dense cuda SVD 2.3e-3 (cuSOLVER's fp32
SVD is far less accurate here); the same machine's CPU: resize 1.71 s vs 984 s (574x).

Usage: python scripts/bench_ops.py [--only combine|resize|rebalance] [--device cpu|cuda] [--dtype fp32|bf16]
                                   [--repeat 3] [--combine-modules 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from bench_all import record

import adapterkit
from adapterkit import Adapter, LoraConfig

LAYERS, RANK, ALPHA, NEW_RANK = 32, 64, 128, 16
H, MLP = 4096, 11008
PROJ = {"self_attn.q_proj": (H, H), "self_attn.k_proj": (H, H), "self_attn.v_proj": (H, H), "self_attn.o_proj": (H, H),
        "mlp.gate_proj": (MLP, H), "mlp.up_proj": (MLP, H), "mlp.down_proj": (H, MLP)}
SAMPLES = {"4096x4096": "self_attn.q_proj", "11008x4096": "mlp.gate_proj", "4096x11008": "mlp.down_proj"}
PREFIX = "base_model.model.model.layers"


def llama7b_lora(dtype: torch.dtype) -> Adapter:
    """The workload described in the module doc."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(LAYERS):
        for name, (out_f, in_f) in PROJ.items():
            decay = 0.6 + 0.4 * torch.rand(1, generator=g).item()
            size = 0.1 + 2.9 * torch.rand(1, generator=g).item()
            profile = decay ** torch.arange(RANK, dtype=torch.float32) * size
            p = f"{PREFIX}.{i}.{name}"
            tensors[f"{p}.lora_A.weight"] = (torch.randn(RANK, in_f, generator=g) * 0.01).to(dtype)
            tensors[f"{p}.lora_B.weight"] = (torch.randn(out_f, RANK, generator=g) * 0.01 * profile).to(dtype)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=tuple(sorted(n.split(".")[1] for n in PROJ)))
    return Adapter.from_tensors(config, tensors)


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def dense_resize(adapter: Adapter, module: str, k: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """kohya / PEFT svd style: the dense ΔW, a full SVD, the top k (B = U·S, A = Vh)."""
    view = adapter.module(module)
    delta = (view.lora_B.to(device, torch.float32) @ view.lora_A.to(device, torch.float32)) * view.scaling
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    B, A = U[:, :k] * S[:k], Vh[:k]
    sync(device)
    return B, A


def exact_truncation(terms: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> torch.Tensor:
    """The best rank-k approximation of Σ Bᵢ·Aᵢ in fp64 on the CPU, written out here (QR of the
    stacked factors, SVD of the small core) as the reference both methods are measured against."""
    B = torch.cat([b.detach().double().cpu() for b, _ in terms], dim=1)
    A = torch.cat([a.detach().double().cpu() for _, a in terms], dim=0)
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T)
    return (Qb @ (U[:, :k] * S[:k])) @ (Vh[:k] @ Qa.T)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(x.double().cpu() - ref) / torch.linalg.matrix_norm(ref))


def row(workload: str, ours: str, anchor: str, ratio: str, verdict: str = "") -> None:
    print(f"{workload:<46} {ours:>14} {anchor:>16} {ratio:>10}  {verdict}")


def section_resize(adapter: Adapter, args: argparse.Namespace) -> None:
    print(f"\n== resize r={RANK} -> {NEW_RANK}, {len(adapter.modules)} modules, {args.dtype}, device {args.device}")

    def ours():
        out = adapterkit.resize(adapter, rank=NEW_RANK, device=args.device)
        sync(args.device)
        return out

    t_ours, (out, report) = best_of(args.repeat, ours)
    counts = {shape: LAYERS * sum(1 for dims in PROJ.values() if f"{dims[0]}x{dims[1]}" == shape) for shape in SAMPLES}
    t_dense, worst, ours_err, dense_err = 0.0, 0.0, 0.0, 0.0
    per_shape = []
    for shape, name in SAMPLES.items():
        module = f"model.layers.0.{name}"
        t, (B, A) = best_of(1, lambda module=module: dense_resize(adapter, module, NEW_RANK, args.device))
        t_dense += t * counts[shape]
        per_shape.append(f"{shape}: {t:.2f} s x {counts[shape]}")
        ref = (B @ A).double().cpu()
        mine = out.delta_weight(module, dtype=torch.float64)
        worst = max(worst, rel(mine, ref))
        view = adapter.module(module)
        exact = exact_truncation([(view.lora_B * view.scaling, view.lora_A)], NEW_RANK)
        ours_err, dense_err = max(ours_err, rel(mine, exact)), max(dense_err, rel(ref, exact))
    print(f"dense SVD measured on one module per shape, extrapolated to {sum(counts.values())} modules: {'; '.join(per_shape)}")
    row("workload", "ours", "anchor", "ratio")
    row("resize 224 modules (anchor: dense SVD, extrap.)", f"{t_ours:.2f} s", f"{t_dense:.1f} s", f"{t_dense / t_ours:.0f}x")
    print(f"  energy kept {100 * report.energy_kept:.2f}%, params {report.params_before / 1e6:.1f}M -> {report.params_after / 1e6:.1f}M; "
          f"ours vs dense rank-{NEW_RANK} ΔW on the measured modules: max relative difference {worst:.1e}")
    print(f"  against the exact rank-{NEW_RANK} truncation (fp64): ours {ours_err:.1e}, dense SVD on {args.device} {dense_err:.1e}")
    print(f"  target resize < 5 s: {t_ours:.2f} s  {'PASS' if t_ours < 5 else 'MISS'}")
    record(f"resize 224 modules r={RANK}->{NEW_RANK} ({args.device})", t_ours, t_dense, anchor_label="dense SVD, extrapolated", target="< 5 s")
    print(f"  target faster than dense: {t_dense / t_ours:.0f}x  {'PASS' if t_dense > t_ours else 'MISS'}")


def section_rebalance(adapter: Adapter, args: argparse.Namespace) -> None:
    print(f"\n== rebalance at the budget of a uniform rank-{NEW_RANK} resize, device {args.device}")
    t_uni, (_, uniform) = best_of(1, lambda: adapterkit.resize(adapter, rank=NEW_RANK, device=args.device))
    t_reb, (_, rebalanced) = best_of(args.repeat, lambda: adapterkit.rebalance(adapter, rank=NEW_RANK, device=args.device))
    ranks = [m.rank_after for m in rebalanced.modules]
    row("workload", "rebalance", "uniform resize", "ratio")
    row("energy kept (Σ kept σ² / Σ σ²)", f"{100 * rebalanced.energy_kept:.2f}%", f"{100 * uniform.energy_kept:.2f}%",
        f"{rebalanced.energy_kept / uniform.energy_kept:.3f}x")
    row("factor parameters", f"{rebalanced.params_after / 1e6:.2f}M", f"{uniform.params_after / 1e6:.2f}M",
        f"{rebalanced.params_after / uniform.params_after:.3f}x")
    row("‖ΔW - ΔW'‖_F (all modules)", f"{rebalanced.error:.3g}", f"{uniform.error:.3g}", f"{rebalanced.error / uniform.error:.3f}x")
    row("wall time", f"{t_reb:.2f} s", f"{t_uni:.2f} s", f"{t_reb / t_uni:.2f}x")
    print(f"  rebalance: {rebalanced.rule}; ranks {min(ranks)}-{max(ranks)} (mean {sum(ranks) / len(ranks):.1f})")
    ok = rebalanced.energy_kept >= uniform.energy_kept
    print(f"  target energy >= uniform: {rebalanced.energy_kept:.4f} vs {uniform.energy_kept:.4f}  {'PASS' if ok else 'MISS'}")
    within = rebalanced.params_after <= uniform.params_after
    print(f"  target within the uniform budget: {rebalanced.params_after} <= {uniform.params_after}  {'PASS' if within else 'MISS'}")


def section_combine(_adapter: Adapter | None, args: argparse.Namespace) -> None:
    import warnings

    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict

    n, dim, r, weights = args.combine_modules, H, 16, [0.7, 0.3]
    print(f"\n== combine svd: 2 adapters r={r}, {n} modules {dim}x{dim}, rank {r}, device {args.device}")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(dim, dim, bias=False) for _ in range(n))

    torch.manual_seed(0)
    targets = [f"layers.{i}" for i in range(n)]
    alphas = {"one": 2 * r, "two": r}
    model = get_peft_model(Net(), PeftLoraConfig(r=r, lora_alpha=alphas["one"], target_modules=targets), adapter_name="one")
    model.add_adapter("two", PeftLoraConfig(r=r, lora_alpha=alphas["two"], target_modules=targets))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.to(args.device)
    adapters = [
        Adapter.from_tensors(LoraConfig(r=r, lora_alpha=alphas[k], target_modules=targets),
                             {key: t.detach().cpu().clone() for key, t in get_peft_model_state_dict(model, adapter_name=k).items()})
        for k in ("one", "two")
    ]

    def peft_svd():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.add_weighted_adapter(["one", "two"], weights, "mix", combination_type="svd", svd_rank=r)
        sync(args.device)

    start = time.perf_counter()
    peft_svd()
    t_peft = time.perf_counter() - start

    def ours():
        out = adapterkit.combine(adapters, weights, "svd", rank=r, device=args.device)
        sync(args.device)
        return out

    start = time.perf_counter()
    ours()
    t_cold = time.perf_counter() - start  # the first call pays torch's one-time set-up (LAPACK, threads)
    t_ours, mixed = best_of(max(3, args.repeat), ours)
    worst, ours_err, peft_err = 0.0, 0.0, 0.0
    for i in range(n):
        theirs = model.base_model.model.layers[i].get_delta_weight("mix").double().cpu()
        mine = mixed.delta_weight(f"layers.{i}", dtype=torch.float64)
        worst = max(worst, rel(mine, theirs))
        views = [a.module(f"layers.{i}") for a in adapters]
        exact = exact_truncation([(v.lora_B * (w * v.scaling), v.lora_A) for v, w in zip(views, weights)], r)
        ours_err, peft_err = max(ours_err, rel(mine, exact)), max(peft_err, rel(theirs, exact))
    row("workload", "ours", "PEFT", "ratio")
    row(f"combine svd, {n} modules (PEFT add_weighted_adapter)", f"{1000 * t_ours:.1f} ms", f"{t_peft:.2f} s", f"{t_peft / t_ours:.0f}x")
    print(f"  PEFT {t_peft / n:.2f} s per module (one run); ours best of {max(3, args.repeat)} after a first call of "
          f"{1000 * t_cold:.1f} ms ({t_peft / t_cold:.0f}x)")
    print(f"  target >= 1000x faster than PEFT: {t_peft / t_ours:.0f}x  {'PASS' if t_peft / t_ours >= 1000 else 'MISS'}")
    record(f"combine svd, {n} modules ({args.device})", t_ours, t_peft, anchor_label="PEFT add_weighted_adapter", target=">= 1000x faster")
    print(f"  ΔW relative difference, ours vs PEFT: {worst:.1e}; against the exact rank-{r} truncation (fp64): "
          f"ours {ours_err:.1e}, PEFT {peft_err:.1e}")
    print(f"  target ΔW relative difference <= 1e-5 (ours vs exact): {ours_err:.1e}  {'PASS' if ours_err <= 1e-5 else 'MISS'}")


SECTIONS = {"combine": section_combine, "resize": section_resize, "rebalance": section_rebalance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SECTIONS), default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--combine-modules", type=int, default=2, help="4096x4096 modules in the combine section (PEFT: ~7 s each on 2 cores)")
    args = parser.parse_args()
    if args.only == "combine":
        section_combine(None, args)
        return
    start = time.perf_counter()
    adapter = llama7b_lora({"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype])
    print(f"workload: Llama-7B-shaped LoRA, {LAYERS} layers x {len(PROJ)} projections, r={RANK}, "
          f"{adapter.parameter_count() / 1e6:.0f}M parameters ({adapter.nbytes() / 1e6:.0f} MB), generated in "
          f"{time.perf_counter() - start:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, section in SECTIONS.items():
        if args.only in (None, name):
            section(adapter, args)


if __name__ == "__main__":
    main()
