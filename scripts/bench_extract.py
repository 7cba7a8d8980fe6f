#!/usr/bin/env python
"""Benchmark ``adapterkit extract --rank 16`` against ``mergekit-extract-lora --max-rank 16`` on one bf16 Llama-7B-dims pair.

The pair is generated here: ``scripts/bench_merge.py --child generate ROOT 7b-dims bf16`` writes
ROOT/base (hidden 4096, MLP 11008, vocab 32000, 8 layers: ~3.7 GB bf16, 4 shards, config.json)
and ROOT/adapter (an r=16 LoRA on all seven projections); ROOT/ft is the base with that adapter
merged (``merge_checkpoint``).  Each extractor then runs in a fresh process on the same pair,
reaped with ``os.wait4`` (wall time from start to exit, imports included; peak RSS =
``ru_maxrss``).  The relative error ‖ΔW − ΔW_lora‖_F / ‖ΔW‖_F over all extracted modules (ΔW =
ft − base in fp32; ΔW_lora = scaling·B·A as PEFT computes it) is measured the same way for both
outputs, module by module in a separate process, with each adapter's size on disk and the
number of tensors it stores whole (``modules_to_save``).

mergekit runs when ``mergekit-extract-lora`` is found (``--mergekit PATH``, else on PATH; it
is not a dependency of adapterkit: install it in a separate venv, e.g. ``python -m venv mk &&
mk/bin/pip install torch mergekit==0.1.5``).  Without it the anchor figures of the issue
(mergekit 0.1.5 on the same kind of pair and machine, measured separately: 614 s, 4.7 GB peak
RSS, 0.24% relative error, 544 MB adapter) are printed with our ratios to them.

The true ΔW has rank 16 plus the bf16 rounding of the fine-tuned weights (full rank, about half
an ulp of |W| per entry), so the error at rank 16 measures how much of ΔW that rounding is; both
extractors face the same floor.  Figures measured are in the closing note of issue 9.

Usage: python scripts/bench_extract.py [--dir DIR] [--keep] [--device cpu|cuda] [--rank 16] [--mergekit PATH | --no-mergekit]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_all import record
from bench_merge import REPO, child

ANCHOR = {"seconds": 614.0, "rss_bytes": 4.7e9, "relative_error": 0.0024, "adapter_bytes": 544e6}
LAYERS = 8

MEASURE = r"""
import json, sys
import torch
import adapterkit
from adapterkit.checkpoint.reader import open_checkpoint
base, ft, out = (open_checkpoint(sys.argv[1]), open_checkpoint(sys.argv[2]), sys.argv[3])
adapter = adapterkit.load(out)
err = tot = 0.0
for name in sorted(adapter.modules):
    key = name + ".weight"
    delta = ft.read(key).float() - base.read(key).float()
    lora = adapter.delta_weight(name).float()
    err += float((delta - lora).double().square().sum()); tot += float(delta.double().square().sum())
whole = [k for k in adapter.tensors if adapter.kind.parse_key(k) is None]
print(json.dumps({"modules": len(adapter.modules), "relative_error": (err / tot) ** 0.5, "whole_tensors": len(whole),
                  "ranks": sorted({v.rank for v in adapter.modules.values()})}))
"""


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _measure(root: Path, out: Path, log: Path) -> dict:
    subprocess.run([sys.executable, "-c", MEASURE, str(root / "base"), str(root / "ft"), str(out)], check=True,
                   stdout=log.open("w"), stderr=subprocess.STDOUT)
    text = log.read_text()
    return json.loads(text[text.rindex("{"):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints and output")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--mergekit", default=None, help="path of mergekit-extract-lora (default: found on PATH)")
    ap.add_argument("--no-mergekit", action="store_true", help="do not run mergekit; print the issue's anchors")
    args = ap.parse_args()
    mergekit = None if args.no_mergekit else (args.mergekit or shutil.which("mergekit-extract-lora"))
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_extract_", dir=args.dir))
    try:
        root = scratch / "pair"
        child([sys.executable, str(REPO / "scripts" / "bench_merge.py"), "--child", "generate", str(root), "7b-dims", "bf16"],
              scratch / "generate.log")
        child([sys.executable, "-c", "import sys; from adapterkit.ops import merge_checkpoint; "
               "merge_checkpoint(sys.argv[1], [sys.argv[2]], sys.argv[3], durable=False)",
               str(root / "base"), str(root / "adapter"), str(root / "ft")], scratch / "merge.log")
        subprocess.run(["sync"], check=False)
        out = scratch / "extracted"
        log = scratch / "extract.log"
        seconds, rss = child([sys.executable, "-m", "adapterkit", "extract", str(root / "base"), str(root / "ft"), str(out),
                              "--rank", str(args.rank), "--device", args.device, "--json"], log)
        text = log.read_text()
        report = json.loads(text[text.index("{"):])
        ours = _measure(root, out, scratch / "measure_ours.log")
        size = _size(out)
        methods = sorted({m["method"] for m in report["modules"]})
        print(f"7b-dims ({LAYERS} layers, bf16 pair), --rank {args.rank}, device {args.device}")
        print(f"  adapterkit extract: wall {seconds:.1f} s, peak RSS {rss / 1e6:.0f} MB, relative error {100 * ours['relative_error']:.3f}% "
              f"(reported {100 * report['relative_error']:.3f}%), adapter {size / 1e6:.1f} MB, {ours['modules']} modules "
              f"({', '.join(methods)} SVD), {ours['whole_tensors']} whole tensors; {len(report['unchanged'])} unchanged left out")
        if mergekit:
            mk_out = scratch / "mergekit"
            mk_seconds, mk_rss = child([mergekit, "--model", str(root / "ft"), "--base-model", str(root / "base"),
                                        "--out-path", str(mk_out), "--max-rank", str(args.rank), "--no-copy-tokenizer"]
                                       + (["--cuda"] if args.device.startswith("cuda") else []), scratch / "mergekit.log")
            theirs = _measure(root, mk_out, scratch / "measure_mergekit.log")
            mk_size = _size(mk_out)
            print(f"  mergekit-extract-lora: wall {mk_seconds:.1f} s, peak RSS {mk_rss / 1e6:.0f} MB, relative error "
                  f"{100 * theirs['relative_error']:.3f}%, adapter {mk_size / 1e6:.1f} MB, {theirs['modules']} modules, "
                  f"{theirs['whole_tensors']} whole tensors")
            record(f"extract --rank {args.rank}, 7b-dims {LAYERS} layers ({args.device})", seconds, mk_seconds,
                   anchor_label="mergekit-extract-lora, same run")
            print(f"  ours / mergekit: time {seconds / mk_seconds:.4f} ({mk_seconds / seconds:.1f}x faster), RSS {rss / mk_rss:.3f}, "
                  f"error {100 * (ours['relative_error'] - theirs['relative_error']):+.3f} points, adapter {size / mk_size:.3f}")
        else:
            print("mergekit-extract-lora not found; the issue's anchors (mergekit 0.1.5, same kind of pair, measured separately): "
                  f"{ANCHOR['seconds']:.0f} s, {ANCHOR['rss_bytes'] / 1e9:.1f} GB, {100 * ANCHOR['relative_error']:.2f}%, "
                  f"{ANCHOR['adapter_bytes'] / 1e6:.0f} MB")
            record(f"extract --rank {args.rank}, 7b-dims {LAYERS} layers ({args.device})", seconds, ANCHOR["seconds"],
                   anchor_label="mergekit 0.1.5, the issue's figure (not this run)")
            print(f"  ours / anchor: time {seconds / ANCHOR['seconds']:.4f} ({ANCHOR['seconds'] / seconds:.1f}x faster), "
                  f"RSS {rss / ANCHOR['rss_bytes']:.3f}, error {100 * (ours['relative_error'] - ANCHOR['relative_error']):+.3f} points, "
                  f"adapter {size / ANCHOR['adapter_bytes']:.3f}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
