#!/usr/bin/env python
"""Benchmark the thread policy: every command that computes, with the default policy, with
``--threads 1`` and with all of torch's threads, in fresh processes as users run them.

Workload, generated here under a fixed seed (``--layers`` decoder layers of a small Llama shape:
hidden 512, MLP 1408, vocab 4096, bf16 base, about 3.2M parameters a layer; the default 2 with
the embeddings is about 11M; ``--layers 4 --hidden 768 --mlp 2048`` is a heavier run):

  * ``base`` and ``finetuned``: the checkpoint, and it plus a rank-32 change on every projection
    (``extract`` decomposes each difference by the exact SVD, as it does on a GPT-2-sized model
    (768 wide), where the issue measured 140 s with torch's threads against 37 s with one);
  * ``a`` and ``b``: two r=64 LoRA adapters (fp32) on all seven projections.

Commands: ``merge base a``, ``unmerge merged a``, ``extract base finetuned --rank 32``,
``combine a b --method M`` for each of the 11 methods (``--density 0.5`` where needed; the
``*_svd`` ones form each dense ΔW and take its SVD), ``resize a --rank 16``, ``rebalance a
--rank 16``, ``prune a --keep-fraction 0.5``, ``diff a b``, ``info a``.  Each runs as
``python -m adapterkit ...`` three ways: ``default`` (the policy: adapterkit/threads.py),
``1`` (``--threads 1``) and ``all`` (``--threads T`` with T torch's own default count, read from
a fresh ``import torch``: what the commands did before the policy).  The three are interleaved
(their order rotates each round) and each figure is the median of ``--repeat`` rounds of wall
time, torch's import and the writes included.  Printed: the machine (CPUs of the affinity mask,
cgroup CPU quota, the cores usable, the load average before and after, torch's count), then per
command the three medians and the ratios default / 1 and default / all, default / 1 of the
best runs, the spread of the
one-thread runs ((max − min) / median: the noise the machine adds), the counts the policy chose
for the whole command at each default run (``threads.decide`` on the machine as read just
before it; each job may take fewer by its size), and ``SLOWER`` where the default's median is
more than 5% above one thread's and even its fastest run is slower than one thread's median
(the goal: never; a higher median alone is marked as within the spread).

Measured on the development machine (2 vCPUs shared with other jobs, load average 1.4-5.5, mean
3.0; --repeat 3, 20 min): the policy chose 1 thread at every run, so the default is --threads 1
up to noise (default / 1 from 0.88 to 1.29, the one-thread runs themselves spreading 18-149%),
and against torch's 2 threads the default took 0.39-0.45x on the *_svd combines, 0.52 on diff,
0.59 on resize, 0.90-1.16 elsewhere (the import and the writes dominate small commands).
docs/benchmarks.md has the table.

Usage: python scripts/bench_threads.py [--repeat 3] [--layers 2] [--hidden 512] [--mlp 1408] [--only SUBSTRING]
                                       [--dir DIR] [--keep] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_all import record  # noqa: E402  (scripts/ is on sys.path when a script runs)

import adapterkit  # noqa: E402
from adapterkit import threads  # noqa: E402
from adapterkit.adapter import Adapter  # noqa: E402
from adapterkit.kinds.lora import PREFIX, LoraConfig  # noqa: E402

VOCAB, RANK, CHANGE = 4096, 64, 32
HIDDEN, INTER = 512, 1408
SHAPES: dict[str, tuple[int, int]] = {}


def shapes(hidden: int, inter: int) -> None:
    global HIDDEN, INTER
    HIDDEN, INTER = hidden, inter
    SHAPES.clear()
    SHAPES.update({"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden), "self_attn.v_proj": (hidden, hidden),
                   "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
                   "mlp.down_proj": (hidden, inter)})
    CONFIG.update(hidden_size=hidden, intermediate_size=inter, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64)

METHODS = ("svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
           "magnitude_prune", "magnitude_prune_svd")
DENSITY = {"ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"}
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB, "tie_word_embeddings": False}


def checkpoints(root: Path, layers: int) -> tuple[Path, Path]:
    """``root/base`` and ``root/finetuned`` (bf16, one shard each, config.json)."""
    g = torch.Generator().manual_seed(1)
    base, tuned = {}, {}

    def put(key: str, value: torch.Tensor, change: torch.Tensor | None = None) -> None:
        base[key] = value.to(torch.bfloat16)
        tuned[key] = (value if change is None else value + change).to(torch.bfloat16)

    put("model.embed_tokens.weight", torch.randn(VOCAB, HIDDEN, generator=g) * 0.05)
    for i in range(layers):
        for sub, (out_f, in_f) in SHAPES.items():
            change = (torch.randn(out_f, CHANGE, generator=g) @ torch.randn(CHANGE, in_f, generator=g)) * 2e-3
            put(f"model.layers.{i}.{sub}.weight", torch.randn(out_f, in_f, generator=g) * 0.05, change)
        put(f"model.layers.{i}.input_layernorm.weight", torch.ones(HIDDEN))
        put(f"model.layers.{i}.post_attention_layernorm.weight", torch.ones(HIDDEN))
    put("model.norm.weight", torch.ones(HIDDEN))
    put("lm_head.weight", torch.randn(VOCAB, HIDDEN, generator=g) * 0.05)
    out = []
    for name, tensors in (("base", base), ("finetuned", tuned)):
        (root / name).mkdir()
        save_file(tensors, root / name / "model.safetensors", metadata={"format": "pt"})
        (root / name / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
        out.append(root / name)
    return out[0], out[1]


def lora(path: Path, layers: int, seed: int) -> Path:
    """An r=64 LoRA (fp32) on every projection, B's columns decaying so that spectra differ."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(layers):
        for sub, (out_f, in_f) in SHAPES.items():
            decay = (0.6 + 0.4 * torch.rand(1, generator=g).item()) ** torch.arange(RANK, dtype=torch.float32)
            p = f"{PREFIX}model.layers.{i}.{sub}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(RANK, in_f, generator=g) / in_f**0.5
            tensors[f"{p}.lora_B.weight"] = torch.randn(out_f, RANK, generator=g) * 0.01 * decay
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=tuple(sorted(s.split(".")[1] for s in SHAPES)),
                        base_model_name_or_path="bench/tiny-llama", task_type="CAUSAL_LM")
    return adapterkit.save(Adapter.from_tensors(config, tensors), path)


def commands(root: Path, base: Path, tuned: Path, a: Path, b: Path, merged: Path) -> dict[str, list[str]]:
    out = root / "out"
    table = {
        "merge": ["merge", str(base), str(a), str(out / "merged")],
        "unmerge": ["unmerge", str(merged), str(a), str(out / "unmerged")],
        "extract": ["extract", str(base), str(tuned), str(out / "extracted"), "--rank", str(CHANGE)],
    }
    for method in METHODS:
        table[f"combine {method}"] = ["combine", str(a), str(b), "--weights", "0.6,0.4", "--method", method,
                                      *(["--density", "0.5"] if method in DENSITY else []), "-o", str(out / f"c-{method}")]
    table.update({
        "resize": ["resize", str(a), str(out / "resized"), "--rank", "16"],
        "rebalance": ["rebalance", str(a), str(out / "rebalanced"), "--rank", "16"],
        "prune": ["prune", str(a), str(out / "pruned"), "--keep-fraction", "0.5"],
        "diff": ["diff", str(a), str(b)],
        "info": ["info", str(a)],
    })
    return table


def torch_default() -> int:
    """torch's own intra-op count in a fresh process (without OMP_NUM_THREADS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", threads.ENV)}
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True,
                          env=env, check=True)
    return int(proc.stdout)


def run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "adapterkit", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # info exits 1 on an error-level problem; none is expected
        raise SystemExit(f"adapterkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return seconds


def machine_line(total: int) -> str:
    seen = threads.machine()
    quota = "none" if seen.quota is None else f"{seen.quota:g} cores"
    return (f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPUs in the affinity mask "
            f"of {os.cpu_count()}; cgroup CPU quota {quota}; cores usable {seen.cores}; torch's default {total} threads")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the median (default 3)")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the workload (default 2)")
    ap.add_argument("--hidden", type=int, default=512, help="hidden size (default 512)")
    ap.add_argument("--mlp", type=int, default=1408, help="MLP size (default 1408)")
    ap.add_argument("--only", default=None, metavar="SUBSTRING", help="only the commands whose name contains it")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()

    shapes(args.hidden, args.mlp)
    total = torch_default()
    scratch = Path(tempfile.mkdtemp(prefix="bench-threads-", dir=args.dir))
    started = time.perf_counter()
    base, tuned = checkpoints(scratch, args.layers)
    a, b = lora(scratch / "a", args.layers, 0), lora(scratch / "b", args.layers, 1)
    merged = adapterkit.merge(base, [a], scratch / "merged").out
    (scratch / "out").mkdir()
    table = {k: v for k, v in commands(scratch, base, tuned, a, b, merged).items() if args.only is None or args.only in k}
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", threads.ENV)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    variants = {"default": [], "1": ["--threads", "1"], "all": ["--threads", str(total)]}
    print(f"adapterkit thread policy benchmark: {machine_line(total)}")
    print(f"workload: {args.layers} layers (hidden {HIDDEN}, MLP {INTER}), adapters r={RANK}; median of {args.repeat}, "
          f"fresh processes, interleaved; load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    times: dict[str, dict[str, list[float]]] = {name: {v: [] for v in variants} for name in table}
    chose: dict[str, list[int]] = {name: [] for name in table}
    loads: list[float] = []
    for round_ in range(args.repeat):
        for i, (name, argv) in enumerate(table.items()):
            order = list(variants)
            shift = (round_ + i) % len(order)
            for variant in order[shift:] + order[:shift]:
                loads.append(os.getloadavg()[0])
                if variant == "default":
                    chose[name].append(threads.decide(math.inf, threads.machine()))
                times[name][variant].append(run([*argv, *variants[variant], *(["--overwrite"] if name not in ("diff", "info") else [])], env))
    rows = []
    print(f"\n{'command':<22} {'default s':>9} {'1 thread s':>10} {f'{total} threads s':>12} {'default/1':>9} "
          f"{'default/all':>11} {'best d/1':>8} {'1-thr spread':>12}  policy chose")
    for name in table:
        med = {v: statistics.median(times[name][v]) for v in variants}
        ratio_one, ratio_all = med["default"] / med["1"], med["default"] / med["all"]
        spread = (max(times[name]["1"]) - min(times[name]["1"])) / med["1"]
        picked = " ".join(f"{n}x{chose[name].count(n)}" for n in sorted(set(chose[name])))
        clearly = ratio_one > 1.05 and min(times[name]["default"]) > med["1"]
        flag = "  SLOWER than 1 thread" if clearly else "  (slower by the medians, within the spread)" if ratio_one > 1.05 else ""
        best = min(times[name]["default"]) / min(times[name]["1"])
        record(f"{name}, default threads", med["default"], med["1"], anchor_label="--threads 1", target="<= 1x (never slower)")
        print(f"{name:<22} {med['default']:>9.2f} {med['1']:>10.2f} {med['all']:>12.2f} {ratio_one:>9.2f} {ratio_all:>11.2f} "
              f"{best:>8.2f} {100 * spread:>11.0f}%  {picked}{flag}")
        rows.append({"command": name, **{f"{v}_s": med[v] for v in variants}, "default_over_1": ratio_one, "default_over_all": ratio_all,
                     "policy_chose": chose[name], "runs": times[name]})
    after = os.getloadavg()
    slower = [r["command"] for r in rows if r["default_over_1"] > 1.05 and min(r["runs"]["default"]) > r["1_s"]]
    within = [r["command"] for r in rows if r["default_over_1"] > 1.05 and r["command"] not in slower]
    print(f"\nload average (1 min) during the runs: mean {statistics.mean(loads):.2f}, min {min(loads):.2f}, max {max(loads):.2f}; "
          f"after {' '.join(f'{x:.2f}' for x in after)}; {time.perf_counter() - started:.0f} s in all")
    print("default slower than --threads 1 (median by more than 5%, and every default run slower than the one-thread "
          "median): " + (", ".join(slower) if slower else "none")
          + (f"; by the medians alone, within the spread: {', '.join(within)}" if within else ""))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine_line(total), "repeat": args.repeat, "layers": args.layers,
                                         "load_mean": statistics.mean(loads), "rows": rows}, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
