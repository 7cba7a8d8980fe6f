"""Startup time of every adapterkit command, side by side with ``python -c pass``.

Usage: python scripts/bench_startup.py [--repeat N]

Each command runs as a fresh process (as a user runs it), best of N wall-clock times.
``--help``, ``--version`` and usage errors must not import torch; the commands that read
tensors do, and their time is mostly that import.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def best_of(cmd: list[str], repeat: int) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        code = subprocess.run(cmd, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return min(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ak-startup-"))
    try:
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
