"""Startup time of every adapterkit command, side by side with ``python -c pass``, and the
torch-free inspection commands on a 7B-shaped adapter against the torch path.

Usage: python scripts/bench_startup.py [--repeat N] [--only small|7b]

Each command runs as a fresh process (as a user runs it), best of N wall-clock times.
``--help``, ``--version`` and usage errors must not import torch.  ``info``, ``validate``,
``check --for`` and ``diff --conflict off`` read tensors on numpy alone (issue 19, target
≤ 0.3 s each on the 7B-shaped r16 adapter: 32 layers × q, k, v, o 4096×4096, gate, up
11008×4096, down 4096×11008, bf16, 80 MB).  Their anchors, run beside them: the same command
on the torch path (``--device cpu``), or for ``validate`` and ``check``, which have no torch
path any more, ``adapterkit.load`` of the adapter (the same checks, on torch) and that plus
the check; and the floor, ``python -c "import numpy"``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_all import record

HERE = Path(__file__).resolve().parent


def best_of(cmd: list[str], repeat: int) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        code = subprocess.run(cmd, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return min(times), code


def _save_7b(path: Path, seed: int) -> Path:
    """A 7B-shaped r16 LoRA in bf16 (all seven projections of 32 layers), saved at ``path``."""
    import torch

    import adapterkit

    g = torch.Generator().manual_seed(seed)
    h, m, r = 4096, 11008, 16
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h), "self_attn.o_proj": (h, h),
              "mlp.gate_proj": (m, h), "mlp.up_proj": (m, h), "mlp.down_proj": (h, m)}
    tensors = {}
    for i in range(32):
        for name, (out_f, in_f) in shapes.items():
            p = f"base_model.model.model.layers.{i}.{name}"
            tensors[f"{p}.lora_A.weight"] = (torch.randn(r, in_f, generator=g) * 0.01).bfloat16()
            tensors[f"{p}.lora_B.weight"] = (torch.randn(out_f, r, generator=g) * 0.01).bfloat16()
    cfg = adapterkit.LoraConfig(r=r, lora_alpha=2 * r, target_modules=tuple(n.split(".")[-1] for n in shapes))
    return adapterkit.save(adapterkit.Adapter.from_tensors(cfg, tensors), path)


def seven_b(tmp: Path, repeat: int) -> None:
    """The four torch-free commands on two 7B-shaped r16 bf16 adapters, against the torch path."""
    py = sys.executable
    a, b = _save_7b(tmp / "a7b", seed=0), _save_7b(tmp / "b7b", seed=1)
    ak = [py, "-m", "adapterkit"]
    rows = [
        ("info A", [*ak, "info", str(a)], [*ak, "info", str(a), "--device", "cpu"], "info A --device cpu"),
        ("validate A", [*ak, "validate", str(a)], [py, "-c", f"import adapterkit; adapterkit.load({str(a)!r})"], "load(A) (torch)"),
        ("check A --for vllm", [*ak, "check", str(a), "--for", "vllm"],
         [py, "-c", f"import adapterkit; from adapterkit.ops.export import check; check(adapterkit.load({str(a)!r}), 'vllm')"],
         "check(load(A)) (torch)"),
        ("diff A B --conflict off", [*ak, "diff", str(a), str(b), "--conflict", "off"],
         [*ak, "diff", str(a), str(b), "--conflict", "off", "--device", "cpu"], "... --device cpu"),
    ]
    floor, _ = best_of([py, "-c", "import numpy"], repeat)
    print(f"\n7B-shaped r16 bf16 adapters (80 MB each), best of {repeat}; floor: python -c 'import numpy' {floor:.3f} s")
    print(f"{'command (numpy)':<26} {'s':>7} {'target':>7}  {'anchor (torch)':<26} {'s':>7} {'ratio':>6}")
    for label, ours, anchor, anchor_label in rows:
        t, code = best_of(ours, repeat)
        u, code2 = best_of(anchor, repeat)
        mark = "PASS" if t <= 0.3 else "MISS"
        record(f"`{label}` (7B-shaped r16, numpy path)", t, u, anchor_label=anchor_label, target="<= 0.3 s")
        print(f"{label:<26} {t:>7.3f} {'0.3 ' + mark:>7}  {anchor_label:<26} {u:>7.3f} {u / t:>5.1f}x  (exit {code}/{code2})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["small", "7b"])
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ak-startup-"))
    try:
        if args.only != "small":
            seven_b(tmp, args.repeat)
        if args.only == "7b":
            return
        subprocess.run([sys.executable, str(HERE / "make_example.py"), str(tmp / "lora")], check=True, capture_output=True)
        ak = [sys.executable, "-m", "adapterkit"]
        rows = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
            ("adapterkit --help", [*ak, "--help"]),
            ("adapterkit --version", [*ak, "--version"]),
            ("adapterkit info --help", [*ak, "info", "--help"]),
            ("adapterkit validate --help", [*ak, "validate", "--help"]),
            ("adapterkit convert --help", [*ak, "convert", "--help"]),
            ("adapterkit info --bogus (usage error)", [*ak, "info", "--bogus"]),
            ("adapterkit info MISSING (no such path)", [*ak, "info", str(tmp / "missing")]),
            ("adapterkit info LORA", [*ak, "info", str(tmp / "lora")]),
            ("adapterkit info LORA --no-modules", [*ak, "info", str(tmp / "lora"), "--no-modules"]),
            ("adapterkit validate LORA", [*ak, "validate", str(tmp / "lora")]),
            ("adapterkit convert LORA OUT.safetensors --overwrite", [*ak, "convert", str(tmp / "lora"), str(tmp / "o.safetensors"), "--overwrite"]),
        ]
        base, _ = best_of(rows[0][1], args.repeat)
        print(f"{'command':<52} {'best (s)':>9} {'- python':>9}  exit")
        for label, cmd in rows:
            t, code = best_of(cmd, args.repeat)
            print(f"{label:<52} {t:>9.3f} {t - base:>9.3f}  {code}")
            if label.endswith("--help") or label == "adapterkit info LORA":
                record(f"`{label}` start-up", t, base, anchor_label="python -c pass")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
