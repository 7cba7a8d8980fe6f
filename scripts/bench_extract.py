#!/usr/bin/env python
"""Benchmark ``adapterkit extract --rank 16`` on a bf16 Llama-7B-dims pair, against the issue's mergekit figures.

The pair is generated here: ``scripts/bench_merge.py --child generate ROOT 7b-dims bf16`` writes
ROOT/base (hidden 4096, MLP 11008, vocab 32000, 8 layers: ~3.7 GB bf16, 4 shards) and ROOT/adapter
(an r=16 LoRA on all seven projections); ROOT/ft is the base with that adapter merged
(``merge_checkpoint``).  Then ``python -m adapterkit extract ROOT/base ROOT/ft OUT --rank 16
--json`` runs in a fresh process, reaped with ``os.wait4`` (wall time from start to exit,
imports included; peak RSS = ``ru_maxrss``), and the report's relative error
‖ΔW − B·A‖_F / ‖ΔW‖_F over all modules is printed with the adapter's size on disk.

The true ΔW has rank 16 plus the bf16 rounding of the fine-tuned weights (which is full rank:
about half an ulp of |W| per entry), so the relative error at rank 16 measures how much of
ΔW that rounding is, not the SVD's accuracy alone.

mergekit (``mergekit-extract-lora``) is not run here (its dependencies are not installed in
this environment); the anchor figures of the issue, measured separately on full Llama-7B
(32 layers), are printed with our ratios to them: 614 s, 4.7 GB peak RSS, 0.24% relative
error, 544 MB adapter.  Our workload has 8 of the 32 layers, so the time and adapter ratios
are also given per layer (ours × 4).

Measured on the development machine (2 vCPUs AMD EPYC, 23 GB; 2026-11-27, one run each):
56 modules, all by randomized SVD; wall 28.3 s, peak RSS 853 MB (torch, one bf16 MLP pair and
its fp32 ΔW), relative error 1.048% (energy kept 99.989%), adapter 20.0 MB, 19 tensors
unchanged.  (Earlier runs: 25.3 s / 920 MB while the unchanged embeddings were still read
whole; 107.1 s / 1018 MB before ΔW lost two fp32 temporaries, with an unrelated test run
busy on one of the two cores.  Timings here vary that much from run to run.)
Ratios to the anchors: time 0.046 (0.184 scaled to 32 layers), RSS 0.181, adapter 0.037 (0.147 scaled; mergekit's 544 MB presumably includes embed_tokens and lm_head stored
whole, 524 MB in bf16, which extract leaves out unless --save-changed).  The error is not
comparable: here it is the bf16 rounding floor of the synthetic fine-tune (a 2048×2048 check:
dense SVD 3.292%, randomized 3.292%, floor ‖ΔW − ΔW_true‖/‖ΔW‖ 3.319%); mergekit's 0.24% is
on a real fine-tune.

Usage: python scripts/bench_extract.py [--dir DIR] [--keep] [--device cpu|cuda] [--rank 16]
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
from bench_merge import REPO, child

ANCHOR = {"seconds": 614.0, "rss_bytes": 4.7e9, "relative_error": 0.0024, "adapter_bytes": 544e6, "layers": 32}
LAYERS = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints and output")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
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
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        methods = sorted({m["method"] for m in report["modules"]})
        scale = ANCHOR["layers"] / LAYERS
        print(f"7b-dims ({LAYERS} layers, bf16), adapterkit extract --rank {args.rank} on {args.device}: "
              f"{len(report['modules'])} modules ({', '.join(methods)} SVD)")
        print(f"  wall {seconds:.1f} s, peak RSS {rss / 1e6:.0f} MB, relative error {100 * report['relative_error']:.3f}%, "
              f"energy kept {100 * report['energy_kept']:.4f}%, adapter {size / 1e6:.1f} MB")
        print(f"  unchanged {len(report['unchanged'])}, changed not extracted {len(report['not_extracted'])}")
        print("mergekit anchors (issue, full Llama-7B, measured separately): "
              f"{ANCHOR['seconds']:.0f} s, {ANCHOR['rss_bytes'] / 1e9:.1f} GB, {100 * ANCHOR['relative_error']:.2f}%, "
              f"{ANCHOR['adapter_bytes'] / 1e6:.0f} MB")
        print(f"  time ratio {seconds / ANCHOR['seconds']:.3f} (scaled to 32 layers: {seconds * scale / ANCHOR['seconds']:.3f}), "
              f"RSS ratio {rss / ANCHOR['rss_bytes']:.3f}, adapter ratio {size / ANCHOR['adapter_bytes']:.3f} "
              f"(scaled: {size * scale / ANCHOR['adapter_bytes']:.3f}), "
              f"error ratio {report['relative_error'] / ANCHOR['relative_error']:.3f}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
