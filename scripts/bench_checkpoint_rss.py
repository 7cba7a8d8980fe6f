#!/usr/bin/env python
"""Peak resident memory of streaming a checkpoint through adapterkit.checkpoint.

Generates a ~512 MB sharded fp32 checkpoint (one 64 MiB tensor, 28 of 16 MiB, three shards),
then copies it, each workload in a fresh process whose peak RSS (``ru_maxrss``) is reported:

  * ``import only``: python + torch + adapterkit.checkpoint, nothing read (the floor);
  * ``Checkpoint.read_bytes -> write``: raw bytes, no decoding (how merge copies untouched tensors);
  * ``Checkpoint.read -> write``: each tensor decoded to torch and written back;
  * ``safetensors load_file/save_file``: a shard at a time (the anchor a naive merge would use);
  * ``cp -r``: the floor for copying files.

Prints a table: workload, peak RSS, peak over the import floor, that as a multiple of the
largest tensor, wall time.  One run, same machine.

Usage:  python scripts/bench_checkpoint_rss.py [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_all import record

MiB = 1024 * 1024
BIG = (4096, 4096)  # 64 MiB fp32
SMALL = (2048, 2048)  # 16 MiB fp32
N_SMALL = 28
SHARDS = 3


def generate(folder: Path) -> None:
    """The base checkpoint, written with the safetensors library (a shard at a time)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    shapes = {"model.embed_tokens.weight": BIG}
    shapes.update({f"model.layers.{i}.mlp.weight": SMALL for i in range(N_SMALL)})
    keys = list(shapes)
    per = -(-len(keys) // SHARDS)
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for s in range(SHARDS):
        name = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
        part = {k: torch.randn(shapes[k], generator=g) for k in keys[s * per : (s + 1) * per]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        del part
    total = sum(4 * shapes[k][0] * shapes[k][1] for k in keys)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (folder / "config.json").write_text('{"model_type": "bench"}')


def measure(mode: str, src: Path, out: Path) -> None:
    """Run one workload in this (fresh) process; print peak RSS in bytes and seconds taken."""
    import torch  # noqa: F401  (the floor includes torch)

    from adapterkit.checkpoint import CheckpointWriter, open_checkpoint

    if mode == "generate":
        generate(src)
        return
    t0 = time.perf_counter()
    if mode in ("bytes", "tensors"):
        base = open_checkpoint(src)
        plan = {k: (base.info(k).dtype, base.info(k).shape) for k in base.keys()}
        with CheckpointWriter(out, base, plan=plan, durable=False) as w:
            for key in plan:
                w.write(key, base.read_bytes(key) if mode == "bytes" else base.read(key))
            w.commit()
    elif mode == "safetensors":
        from safetensors.torch import load_file, save_file

        out.mkdir()
        for p in sorted(src.iterdir()):
            if p.suffix == ".safetensors":
                save_file(load_file(p), out / p.name, metadata={"format": "pt"})
            else:
                shutil.copyfile(p, out / p.name)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "s": elapsed}))


def run_python(mode: str, src: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--measure", mode, str(src), str(out)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def run_cp(src: Path, out: Path) -> dict:
    code = (
        "import json, resource, subprocess, sys, time; t = time.perf_counter();"
        "subprocess.run(['cp', '-r', sys.argv[1], sys.argv[2]], check=True);"
        "print(json.dumps({'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,"
        " 's': time.perf_counter() - t}))"
    )
    return json.loads(subprocess.run([sys.executable, "-c", code, str(src), str(out)], check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--measure", nargs=3, metavar=("MODE", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        mode, src, out = args.measure
        measure(mode, Path(src), Path(out))
        return
    root = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir))
    try:
        src = root / "base"
        subprocess.run([sys.executable, __file__, "--measure", "generate", str(src), "-"], check=True)  # not in this process
        total = sum(p.stat().st_size for p in src.iterdir())
        largest = 4 * BIG[0] * BIG[1]
        shard = max(p.stat().st_size for p in src.glob("*.safetensors"))
        rows = [("import only (floor)", run_python("none", src, root / "none"))]
        rows.append(("Checkpoint.read_bytes -> write", run_python("bytes", src, root / "out_bytes")))
        rows.append(("Checkpoint.read -> write", run_python("tensors", src, root / "out_tensors")))
        rows.append(("safetensors load_file/save_file", run_python("safetensors", src, root / "out_st")))
        rows.append(("cp -r", run_cp(src, root / "out_cp")))
        floor = rows[0][1]["rss"]
        print(f"checkpoint: {total / MiB:.0f} MiB in {SHARDS} shards (largest {shard / MiB:.0f} MiB); largest tensor {largest / MiB:.0f} MiB")
        print(f"{'workload':34} {'peak RSS':>10} {'over floor':>11} {'/ largest tensor':>17} {'time':>7}")
        for name, r in rows:
            over = r["rss"] - floor if name != "cp -r" else r["rss"]
            print(f"{name:34} {r['rss'] / MiB:8.0f} MiB {over / MiB:7.0f} MiB {over / largest:16.2f}x {r['s']:6.2f}s")
            if name != "import only (floor)":
                record(f"peak RSS over the import floor: {name}", over / MiB, largest / MiB, anchor_label="largest tensor", unit="MiB")
        print("(cp -r: its own peak RSS, no python floor)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
