"""Push and pull a LoRA through the fake Hub (tests/fake_hub.py, loopback HTTP): adapterkit's
push/pull against huggingface_hub's upload_folder/snapshot_download of the same files.

Usage: python scripts/bench_hub.py [--mb 64]

Prints a table: workload, ours (s), anchor (s), ratio.  One run, same machine; the server is
in-process, so the figures are overheads of validation, card, listing and copying, not network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_all import record

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="adapter size in MB (fp32)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    from fake_hub import FakeHub

    hub = FakeHub().start()
    os.environ.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp / "cache"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    import torch
    from huggingface_hub import HfApi, snapshot_download

    import adapterkit
    from adapterkit import Adapter, LoraConfig

    width, r = 4096, 16
    layers = max(1, args.mb * 2**20 // (4 * 2 * r * width))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(layers):
        tensors[f"base_model.model.model.layers.{i}.q_proj.lora_A.weight"] = torch.randn(r, width, generator=g)
        tensors[f"base_model.model.model.layers.{i}.q_proj.lora_B.weight"] = torch.randn(width, r, generator=g)
    adapterkit.save(Adapter.from_tensors(LoraConfig(r=r, lora_alpha=r, target_modules=("q_proj",)), tensors), tmp / "lora")
    size = (tmp / "lora" / "adapter_model.safetensors").stat().st_size / 1e6
    rows = []

    t = time.perf_counter()
    adapterkit.push(tmp / "lora", "bench/ours")
    ours = time.perf_counter() - t
    api = HfApi(endpoint=hub.url)
    t = time.perf_counter()
    api.create_repo("bench/anchor", exist_ok=True)
    api.upload_folder(repo_id="bench/anchor", folder_path=tmp / "lora")
    rows.append((f"push {size:.0f} MB (anchor: upload_folder)", ours, time.perf_counter() - t))

    t = time.perf_counter()
    adapterkit.pull("bench/ours", tmp / "pulled")
    ours = time.perf_counter() - t
    t = time.perf_counter()
    snapshot_download("bench/anchor", cache_dir=tmp / "cache2", endpoint=hub.url)
    rows.append((f"pull {size:.0f} MB (anchor: snapshot_download)", ours, time.perf_counter() - t))
    hub.stop()

    print(f"{'workload':<44} {'ours s':>8} {'anchor s':>9} {'ratio':>6}")
    for name, a, b in rows:
        print(f"{name:<44} {a:8.2f} {b:9.2f} {a / b:6.2f}")
        record(name, a, b)


if __name__ == "__main__":
    main()
