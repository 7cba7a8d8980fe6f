#!/usr/bin/env python
"""Every benchmark, quickly, into one table in docs/benchmarks.md.

Usage: python scripts/bench_all.py [--only NAME ...] [--device cpu|cuda] [--dry-run] [--timeout S]

Runs each ``scripts/bench_*.py`` in a fresh process with small settings (the ``QUICK`` table
below: fewer repeats, the smaller workloads), one after the other, nothing else of ours running.
Each script reports its headline figures by calling :func:`record` (a no-op unless
``ADAPTERKIT_BENCH_JSONL`` names a file: then one JSON line per figure is appended there); this
script collects them and writes one table — figure, ours, anchor, ratio, target, machine — between
the ``bench_all`` markers of docs/benchmarks.md, with the machine (CPU, cores this process may
use, load average, GPU) and the date.  ``--dry-run`` prints the table instead of writing it.
A script that fails or times out is listed as such; the others still run.

GPU figures: ``--device cuda`` passes the device to the scripts that take one (``DEVICE_SCRIPTS``),
runs only those, and writes its own table (markers ``bench_all:cuda``) beside the CPU one;
``scripts/gpu_checks.sh`` does that on a lent device machine, with the same scripts on that
machine's CPU first, so that the two tables come from one machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
DEVICE_SCRIPTS = ("bench_io.py", "bench_inspect.py", "bench_ops.py", "bench_extract.py")  # take --device
ENV = "ADAPTERKIT_BENCH_JSONL"

# script -> the quick settings it runs with here
QUICK: dict[str, list[str]] = {
    "bench_startup.py": ["--repeat", "3"],
    "bench_io.py": ["--repeat", "5"],
    "bench_digest.py": ["--repeat", "5"],
    "bench_inspect.py": ["--only", "diff", "--repeat", "1", "--dense-modules", "0"],  # the dense anchor takes ~12 min
    "bench_ops.py": ["--repeat", "1", "--combine-modules", "2"],
    "bench_threads.py": ["--repeat", "1", "--only", "svd"],
    "bench_merge.py": ["--small-only", "--repeat", "1"],
    "bench_quantized.py": ["--sizes", "small", "--repeat", "1"],
    "bench_kinds.py": ["--layers", "1", "--hidden", "512", "--mlp", "1376"],
    "bench_attach.py": [],
    "bench_hub.py": [],
    "bench_checkpoint_rss.py": [],
    "bench_extract.py": [],
}


def record(figure: str, ours: float, anchor: float | None = None, *, anchor_label: str = "", target: str = "",
           unit: str = "s", better: str = "lower") -> None:
    """Report one headline figure of a benchmark to ``bench_all.py`` (no-op when run alone).

    ``ours`` and ``anchor`` in ``unit``; ``target`` as the issue states it (e.g. "<= 1.5x",
    "<= 0.3 s"); ``better``: whether a lower or higher ratio ours/anchor is the good side."""
    path = os.environ.get(ENV)
    if not path:
        return
    row = {"script": Path(sys.argv[0]).name, "figure": figure, "ours": ours, "anchor": anchor, "anchor_label": anchor_label,
           "target": target, "unit": unit, "better": better}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def machine() -> str:
    """The machine in one line: CPU, usable cores, load average, GPU if torch sees one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip() if _has("nvidia-smi") else ""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {cores} usable cores, load {load}" + (f", {gpu.splitlines()[0]}" if gpu else ", no GPU")


def _has(cmd: str) -> bool:
    return any((Path(d) / cmd).exists() for d in os.environ.get("PATH", "").split(os.pathsep))


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    return f"{x:.3g} {unit}" if abs(x) < 1000 else f"{x:,.0f} {unit}"


def table(rows: list[dict], failed: dict[str, str], where: str, when: str) -> str:
    lines = [f"Measured {when} with `python scripts/bench_all.py` on {where}.", "",
             "| script | figure | ours | anchor | ratio | target |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ours'] / r['anchor']:.3g}×" if r["anchor"] not in (None, 0) else "-"
        anchor = _fmt(r["anchor"], r["unit"]) + (f" ({r['anchor_label']})" if r["anchor_label"] else "")
        lines.append(f"| `{r['script']}` | {r['figure']} | {_fmt(r['ours'], r['unit'])} | {anchor} | {ratio} | {r['target'] or '-'} |")
    for script, why in failed.items():
        lines.append(f"| `{script}` | did not finish: {why} | | | | |")
    return "\n".join(lines)


def write_doc(text: str, device: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    begin, end = f"<!-- bench_all:{device}:begin -->", f"<!-- bench_all:{device}:end -->"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + f"\n\n## All figures, one run on {device} (bench_all.py)\n\n" + block + "\n"
    DOC.write_text(doc, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="script names (bench_io.py ...) to run; default: all")
    parser.add_argument("--dry-run", action="store_true", help="print the table instead of writing docs/benchmarks.md")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per script")
    parser.add_argument("--device", default="cpu", help="cuda: only the scripts that take a device, on it")
    args = parser.parse_args()
    scripts = [s for s in QUICK if (not args.only or s in args.only) and (args.device == "cpu" or s in DEVICE_SCRIPTS)]
    rows: list[dict] = []
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ak-bench-all-") as tmp:
        out = Path(tmp) / "rows.jsonl"
        for script in scripts:
            if not (HERE / script).is_file():
                failed[script] = "script missing"
                continue
            start = time.perf_counter()
            print(f"== {script} {' '.join(QUICK[script])}", flush=True)
            try:
                extra = ["--device", args.device] if args.device != "cpu" else []
                proc = subprocess.run([sys.executable, str(HERE / script), *QUICK[script], *extra], env={**os.environ, ENV: str(out)},
                                      timeout=args.timeout, capture_output=True, text=True)
                print(proc.stdout[-3000:], flush=True)
                if proc.returncode != 0:
                    failed[script] = f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:120]}"
            except subprocess.TimeoutExpired:
                failed[script] = f"timed out after {args.timeout:.0f} s"
            print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
        if out.exists():
            rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    text = table(rows, failed, machine(), datetime.date.today().isoformat())
    if args.dry_run:
        print(text)
    else:
        write_doc(text, args.device)
        print(f"wrote {len(rows)} figures to {DOC}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
