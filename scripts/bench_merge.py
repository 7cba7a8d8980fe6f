#!/usr/bin/env python
"""Benchmark ``adapterkit merge`` against transformers + PEFT, a naive merge and ``cp``, side by side.

Workloads: two bf16 Llama-style checkpoints generated here (random weights, fixed seed), 4
shards each, with ``config.json`` so transformers loads them, and an r=16 LoRA on all seven
projections of every layer:

  * small: hidden 2048, MLP 5632, 8 layers, vocab 32000 (~1.1 GB);
  * 7b-dims: hidden 4096, MLP 11008, 8 layers, vocab 32000 (~3.7 GB; Llama-7B's dimensions).

Each method runs in a fresh process, started and reaped here with ``wait4`` so that its peak
RSS (``ru_maxrss``) is its own; wall time is from start to exit, interpreter and imports included:

  * ``cp -r --reflink=never`` of the base (the floor for reading and writing every byte), and
    the same followed by ``sync`` (a reference: ours fsyncs every shard, ``cp`` does not);
  * transformers + PEFT: ``from_pretrained`` (bf16) -> ``PeftModel.from_pretrained`` ->
    ``merge_and_unload`` -> ``save_pretrained`` with the base's shard size;
  * naive: a shard at a time, ``load_file`` -> ΔW added in fp32 -> ``save_file``;
  * ``python -m adapterkit merge BASE ADAPTER OUT`` (the CLI, durable: every shard fsynced).

Before each timed run the previous output is removed, ``sync`` flushes earlier writes, and the
base's files are put in the same page-cache state for every method: read once (``--cache warm``,
the default; the machine holds them in memory, as after a download) or evicted with
``posix_fadvise(DONTNEED)`` (``--cache cold``; the host may still cache the disk).  Methods are
interleaved within each round; each figure is the best of ``--repeat`` rounds (peak RSS: the
smallest of the rounds' peaks).

Accuracy: every merged tensor of ours, PEFT's and the naive merge is compared with the exact
result (W + B·A·scaling in fp64, as the base's bf16 values and the adapter's stored values
give it): the largest absolute error per tensor, ours <= PEFT's for every tensor is the target.

Prints, per size, each method's wall time and peak RSS, then the targets of issue 6 as
ratios with PASS/MISS and the absolute figures behind them.

Measured on the development machine (2 vCPUs AMD EPYC, 23 GB, ext4 on virtio; best of 3, warm
cache; 2026-11-27), 7b-dims: ours 4.75 s vs cp 2.05 s (2.32x: MISS of the 2x target), vs
`cp; sync` 2.38 s 1.99x (both durable), without fsync 4.65 s, of which 1.78 s is importing
python + torch (1.40x cp without it); peak RSS 284 MB vs PEFT's 4184 MB (0.07x), 284 MB vs
271 MB on the small one (1.04x); all 56 merged tensors bit-identical to PEFT's.  Timings on
that machine vary 2-4x from run to run (cp 2.05-4.17 s, cp; sync 2.38-10.40 s in one run).

Usage: python scripts/bench_merge.py [--small-only] [--repeat 3] [--cache warm|cold]
                                     [--adapter-dtype bf16|fp32] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_all import record

MB = 1e6
SIZES = {  # name -> (hidden, mlp, layers, vocab)
    "small": (2048, 5632, 8, 32000),
    "7b-dims": (4096, 11008, 8, 32000),
}
SHARDS = 4
RANK, ALPHA = 16, 32
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
METHODS = ("cp", "cp_sync", "peft", "naive", "ours", "ours_nosync")
LABELS = {"cp": "cp -r --reflink=never", "cp_sync": "cp -r --reflink=never; sync (durable, reference)", "peft": "transformers + PEFT merge_and_unload",
          "naive": "naive: shard at a time, load_file/save_file", "ours": "adapterkit merge (CLI)",
          "ours_nosync": "merge_checkpoint(durable=False): no fsync, as cp"}
REPO = Path(__file__).resolve().parent.parent


# -- generating the workload (in a child process) ---------------------------------------------

def shapes(hidden: int, mlp: int, layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """The checkpoint's tensors, in transformers' state-dict order."""
    h, m = hidden, mlp
    proj = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (m, h), "mlp.up_proj": (m, h), "mlp.down_proj": (h, m)}
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(layers):
        out.update({f"model.layers.{i}.{name}.weight": s for name, s in proj.items()})
        out[f"model.layers.{i}.input_layernorm.weight"] = (h,)
        out[f"model.layers.{i}.post_attention_layernorm.weight"] = (h,)
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (vocab, h)
    return out


def generate(root: Path, size: str, adapter_dtype: str) -> None:
    """``root/base`` (4 bf16 shards, index, config.json), ``root/adapter`` (PEFT layout) and
    ``root/meta.json`` (the shard size, for the methods that reshard)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    import adapterkit
    from adapterkit.checkpoint.layout import shard_names, split_greedy

    hidden, mlp, layers, vocab = SIZES[size]
    plan = shapes(hidden, mlp, layers, vocab)
    sizes = [(k, 2 * _numel(s)) for k, s in plan.items()]
    total = sum(n for _, n in sizes)
    limit = -(-total // SHARDS)
    while len(split_greedy(sizes, limit)) > SHARDS:
        limit = int(limit * 1.02)
    groups = split_greedy(sizes, limit)
    base = root / "base"
    base.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for name, keys in zip(shard_names(len(groups)), groups):
        tensors = {}
        for k in keys:
            t = torch.empty(plan[k]).normal_(0, 0.02, generator=g) if len(plan[k]) > 1 else 1 + 0.1 * torch.randn(plan[k], generator=g)
            tensors[k] = t.to(torch.bfloat16)
            del t
        save_file(tensors, base / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (base / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128, tie_word_embeddings=False,
                dtype="bfloat16", architectures=["LlamaForCausalLM"]).save_pretrained(base)  # mergekit needs architectures
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[adapter_dtype]
    tensors = {}
    for i in range(layers):
        for name in PROJ:
            out_f, in_f = plan[f"model.layers.{i}.{name}.weight"]
            p = f"base_model.model.model.layers.{i}.{name}"
            tensors[f"{p}.lora_A.weight"] = (torch.randn(RANK, in_f, generator=g) * 0.02).to(dt)
            tensors[f"{p}.lora_B.weight"] = (torch.randn(out_f, RANK, generator=g) * 0.02).to(dt)
    config = adapterkit.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=tuple(sorted(n.split(".")[1] for n in PROJ)))
    adapterkit.save(adapterkit.Adapter.from_tensors(config, tensors), root / "adapter")
    (root / "meta.json").write_text(json.dumps({"max_shard_size": limit, "total": total, "shards": len(groups)}))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- the methods (each in a child process) -----------------------------------------------------

def method_peft(root: Path, out: Path) -> None:
    import warnings

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    warnings.simplefilter("ignore")
    limit = json.loads((root / "meta.json").read_text())["max_shard_size"]
    model = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, root / "adapter").merge_and_unload()
    model.save_pretrained(out, max_shard_size=limit)


def method_naive(root: Path, out: Path) -> None:
    """The anchor the issue names: a shard at a time, ΔW = B·A·scaling added in fp32, one cast."""
    from safetensors.torch import load_file, save_file

    adapter = load_file(root / "adapter" / "adapter_model.safetensors")
    scaling = ALPHA / RANK
    out.mkdir()
    base = root / "base"
    for src in sorted(base.iterdir()):
        if src.suffix != ".safetensors":
            shutil.copyfile(src, out / src.name)
            continue
        sd = load_file(src)
        for key, value in sd.items():
            prefix = "base_model.model." + key.removesuffix(".weight")
            if f"{prefix}.lora_A.weight" in adapter:
                A, B = adapter[f"{prefix}.lora_A.weight"].float(), adapter[f"{prefix}.lora_B.weight"].float()
                sd[key] = (value.float() + (B @ A) * scaling).to(value.dtype)
        save_file(sd, out / src.name, metadata={"format": "pt"})
        del sd


def accuracy(root: Path) -> None:
    """Per merged tensor: the largest |merged - exact| of ours, PEFT's and the naive merge (JSON on stdout)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    adapter = load_file(root / "adapter" / "adapter_model.safetensors")
    scaling = ALPHA / RANK

    def opener(folder: Path):
        index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        return lambda key: _get(folder / index[key], key)

    def _get(path: Path, key: str):
        with safe_open(path, "pt") as f:
            return f.get_tensor(key)

    base, outs = opener(root / "base"), {m: opener(root / f"out_{m}") for m in ("ours", "peft", "naive")}
    rows = []
    for akey in sorted(k for k in adapter if ".lora_A." in k):
        prefix = akey.split(".lora_A.")[0]
        key = prefix.removeprefix("base_model.model.") + ".weight"
        A, B = adapter[akey].double(), adapter[f"{prefix}.lora_B.weight"].double()
        exact = base(key).double() + (B @ A) * scaling
        row = {"key": key}
        for m, get in outs.items():
            got = get(key)
            row[m] = float((got.double() - exact).abs().max())
            if m != "ours":
                row[f"ours_equals_{m}"] = bool(torch.equal(got, outs["ours"](key)))
        rows.append(row)
    print(json.dumps(rows))


# -- the driver --------------------------------------------------------------------------------

def child(args: list[str], log: Path) -> tuple[float, int]:
    """Run ``args`` in a fresh process: (seconds from start to exit, its peak RSS in bytes)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "wb") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}):\n{log.read_text()[-3000:]}")
    return elapsed, usage.ru_maxrss * 1024


def command(method: str, root: Path, out: Path) -> list[str]:
    if method == "cp":
        return ["cp", "-r", "--reflink=never", str(root / "base"), str(out)]
    if method == "cp_sync":
        return ["sh", "-c", 'cp -r --reflink=never "$0" "$1" && sync', str(root / "base"), str(out)]
    if method == "ours":
        return [sys.executable, "-m", "adapterkit", "merge", str(root / "base"), str(root / "adapter"), str(out)]
    if method == "ours_nosync":
        return [sys.executable, "-c", "import sys; from adapterkit.ops.merging import merge_checkpoint; "
                "merge_checkpoint(sys.argv[1], [sys.argv[2]], sys.argv[3], durable=False)", str(root / "base"), str(root / "adapter"), str(out)]
    return [sys.executable, __file__, "--child", method, str(root), str(out)]


def set_cache(folder: Path, state: str) -> None:
    """Put every file of ``folder`` in the page-cache ``state``: ``warm`` (read once) or ``cold`` (evicted)."""
    for p in sorted(folder.iterdir()):
        fd = os.open(p, os.O_RDONLY)
        try:
            if state == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 1 << 24):
                    pass
        finally:
            os.close(fd)


def reset(out: Path, root: Path, cache: str) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.sync()  # earlier outputs' writeback must not land in the next timing
    set_cache(root / "base", cache)
    set_cache(root / "adapter", cache)


def run_size(size: str, scratch: Path, args: argparse.Namespace) -> dict:
    root = scratch / size
    t0 = time.perf_counter()
    child([sys.executable, __file__, "--child", "generate", str(root), size, args.adapter_dtype], scratch / "generate.log")
    meta = json.loads((root / "meta.json").read_text())
    meta["generate_s"] = time.perf_counter() - t0
    meta["bytes"] = sum(p.stat().st_size for p in (root / "base").iterdir())
    print(f"[{size}] generated {meta['bytes'] / MB:.0f} MB in {meta['shards']} shards ({meta['generate_s']:.0f} s)", file=sys.stderr)
    runs: dict[str, list[tuple[float, int]]] = {m: [] for m in METHODS}
    for r in range(args.repeat):
        for m in METHODS:
            out = root / f"out_{m}"
            reset(out, root, args.cache)
            runs[m].append(child(command(m, root, out), scratch / f"{m}.log"))
            print(f"[{size}] round {r + 1}: {m} {runs[m][-1][0]:.2f} s, {runs[m][-1][1] / MB:.0f} MB", file=sys.stderr)
    os.sync()
    floor = child([sys.executable, "-c", "import adapterkit.cli, adapterkit.ops.merging"], scratch / "floor.log")
    proc = subprocess.run([sys.executable, __file__, "--child", "accuracy", str(root), "-"], check=True, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    result = {
        "meta": meta,
        "time": {m: min(t for t, _ in v) for m, v in runs.items()},
        "rss": {m: min(r for _, r in v) for m, v in runs.items()},
        "all": {m: v for m, v in runs.items()},
        "floor": floor,
        "accuracy": json.loads(proc.stdout),
    }
    if not args.keep:
        shutil.rmtree(root)
    return result


def verdict(ratio: float, target: float) -> str:
    return f"<= {target:g}  {'PASS' if ratio <= target else 'MISS'}"


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    import torch

    print(f"adapterkit merge benchmark: {os.cpu_count()} CPUs, torch {torch.__version__}, page cache {args.cache}, "
          f"best of {args.repeat} interleaved rounds, adapter r={RANK} {args.adapter_dtype} on all 7 projections")
    for size, res in results.items():
        meta = res["meta"]
        h, m, layers, vocab = SIZES[size]
        print(f"\n{size}: hidden {h}, MLP {m}, {layers} layers, vocab {vocab}: {meta['bytes'] / MB:.0f} MB bf16, "
              f"{meta['shards']} shards (max_shard_size {meta['max_shard_size'] / MB:.0f} MB)")
        print(f"  {'method':<46} {'wall (s)':>9} {'peak RSS (MB)':>14} {'all rounds (s)':>24}")
        for method in METHODS:
            rounds = " ".join(f"{t:.2f}" for t, _ in res["all"][method])
            print(f"  {LABELS[method]:<46} {res['time'][method]:>9.2f} {res['rss'][method] / MB:>14.0f} {rounds:>24}")
        ft, fr = res["floor"]
        print(f"  {'(python + torch + adapterkit import alone)':<46} {ft:>9.2f} {fr / MB:>14.0f}")
        acc = res["accuracy"]
        worse = [r["key"] for r in acc if r["ours"] > r["peft"]]
        same = sum(r["ours_equals_peft"] for r in acc)
        print(f"  accuracy over {len(acc)} merged tensors, largest |merged - exact fp64|: ours {max(r['ours'] for r in acc):.3g}, "
              f"PEFT {max(r['peft'] for r in acc):.3g}, naive {max(r['naive'] for r in acc):.3g}; "
              f"ours bit-identical to PEFT in {same}, to naive in {sum(r['ours_equals_naive'] for r in acc)}; "
              f"ours farther than PEFT in {len(worse)}{': ' + ', '.join(worse[:3]) if worse else ''}")
    big = results.get("7b-dims")
    small = results.get("small")
    print("\ntargets (issue 6)")
    print(f"  {'target':<58} {'ratio':>7}  {'':<13} absolute")
    for size in [s for s in ("7b-dims", "small") if s in results]:
        res = results[size]
        t, r = res["time"], res["rss"]
        tag = "" if size == "7b-dims" else " [small: for reference]"
        ratio = t["ours"] / t["cp"]
        record(f"merge wall, {size}" + (" (3.7 GB)" if size == "7b-dims" else ""), t["ours"], t["cp"], anchor_label="cp -r",
               target="<= 2x" if size == "7b-dims" else "")
        record(f"merge peak RSS, {size}", r["ours"] / MB, r["peft"] / MB, anchor_label="transformers+PEFT", unit="MB", target="<= 0.2x")
        print(f"  {'wall: ours / cp -r' + tag:<58} {ratio:>7.2f}  {verdict(ratio, 2.0):<13} {t['ours']:.2f} s vs {t['cp']:.2f} s")
        ratio = r["ours"] / r["peft"]
        print(f"  {'peak RSS: ours / transformers+PEFT' + tag:<58} {ratio:>7.2f}  {verdict(ratio, 0.2):<13} "
              f"{r['ours'] / MB:.0f} MB vs {r['peft'] / MB:.0f} MB")
        worse = sum(a["ours"] > a["peft"] for a in res["accuracy"])
        print(f"  {'tensors farther from exact than PEFT' + tag:<58} {worse:>7d}  {verdict(worse, 0):<13} "
              f"of {len(res['accuracy'])}; max err ours {max(a['ours'] for a in res['accuracy']):.3g}, "
              f"PEFT {max(a['peft'] for a in res['accuracy']):.3g}")
        ft = res["floor"][0]
        print(f"  {'  (reference) ours / (cp -r; sync), both durable' + tag:<58} {t['ours'] / t['cp_sync']:>7.2f}  {'':<13} "
              f"{t['ours']:.2f} s vs {t['cp_sync']:.2f} s")
        print(f"  {'  (reference) ours without fsync / cp -r' + tag:<58} {t['ours_nosync'] / t['cp']:>7.2f}  {'':<13} "
              f"{t['ours_nosync']:.2f} s vs {t['cp']:.2f} s")
        print(f"  {'  (reference) same, less the import floor' + tag:<58} {(t['ours_nosync'] - ft) / t['cp']:>7.2f}  {'':<13} "
              f"{t['ours_nosync'] - ft:.2f} s vs {t['cp']:.2f} s (python + torch import: {ft:.2f} s)")
        print(f"  {'  (reference) ours / naive' + tag:<58} {t['ours'] / t['naive']:>7.2f}  {'':<13} "
              f"{t['ours']:.2f} s vs {t['naive']:.2f} s; RSS {r['ours'] / MB:.0f} vs {r['naive'] / MB:.0f} MB")
    if big and small:
        ratio = big["rss"]["ours"] / small["rss"]["ours"]
        print(f"  {'peak RSS: ours 7b-dims / ours small (no growth)':<58} {ratio:>7.2f}  {verdict(ratio, 1.25):<13} "
              f"{big['rss']['ours'] / MB:.0f} MB vs {small['rss']['ours'] / MB:.0f} MB "
              f"(model {big['meta']['bytes'] / small['meta']['bytes']:.1f}x larger)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-only", action="store_true", help="only the ~1.1 GB checkpoint (a quick run)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the best (default 3)")
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm", help="the base's page-cache state before each run")
    ap.add_argument("--adapter-dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints and outputs")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, root, rest = args.child[0], Path(args.child[1]), args.child[2:]
        if what == "generate":
            generate(root, rest[0], rest[1])
        elif what == "accuracy":
            accuracy(root)
        else:
            {"peft": method_peft, "naive": method_naive}[what](root, Path(rest[0]))
        return
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_merge_", dir=args.dir))
    try:
        sizes = ["small"] if args.small_only else ["small", "7b-dims"]
        results = {size: run_size(size, scratch, args) for size in sizes}
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    report(results, args)


if __name__ == "__main__":
    main()
