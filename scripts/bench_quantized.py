#!/usr/bin/env python
"""Benchmark merging a LoRA into a bitsandbytes NF4 checkpoint: PEFT's path against ``adapterkit merge``.

Workloads (``bench_merge.py``'s checkpoints and adapter, then quantized): a bf16 Llama-shaped
checkpoint with random weights, quantized by transformers + bitsandbytes (NF4, double
quantization, bf16 compute dtype; ``from_pretrained(quantization_config=...)`` then
``save_pretrained``, on the CPU), and an r=16 LoRA on all seven projections of every layer:

  * small: hidden 2048, MLP 5632, 8 layers, vocab 32000;
  * 7b-dims: hidden 4096, MLP 11008, 8 layers, vocab 32000 (the issue's workload).

Methods, each in a fresh process (peak RSS from ``wait4``; wall time includes the interpreter
and imports):

  * peft: transformers ``from_pretrained`` of the 4-bit checkpoint -> ``PeftModel.from_pretrained``
    -> ``merge_and_unload`` (dequantize to bf16, add ΔW, quantize again in place) -> ``save_pretrained``
    (which raises NotImplementedError in transformers 5.23.0 for a model loaded pre-quantized:
    the state dict is then written with ``safetensors.torch.save_file``, the same bytes' worth);
  * ours-bf16: ``adapterkit merge NF4 ADAPTER OUT --dtype bf16`` (a dense checkpoint);
  * ours-nf4: ``adapterkit merge NF4 ADAPTER OUT`` (re-quantized to NF4, with the survival report).

Accuracy: every merged module against the exact dequant(W) + ΔW in fp64 (bitsandbytes' own
dequantization of the base; ΔW from the adapter's tensors): the Frobenius error of PEFT's
output (its 4-bit weights dequantized by bitsandbytes), of ours-bf16 and of ours-nf4.  Target:
ours at least as close for every module.  The survival figures of ours-nf4 are printed.

Targets (issue 20): ours >= 5x faster than PEFT's path; peak RSS <= 20% of it and flat in model
size (small vs 7b-dims); every merged tensor at least as close to exact.

Usage: python scripts/bench_quantized.py [--sizes small,7b-dims] [--repeat 1] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_all
from bench_all import record
from bench_merge import SIZES, child

REPO = Path(__file__).resolve().parents[1]
MB = 1e6
METHODS = ("peft", "ours-bf16", "ours-nf4")
SIZES.setdefault("tiny", (256, 512, 2, 1000))  # a check that the script runs (tests/test_bench_all.py-style), not a figure


def quantize(root: Path) -> None:
    """``root/nf4``: the bf16 base loaded in 4-bit by transformers and saved (in a child process)."""
    code = ("import sys, torch; from transformers import AutoModelForCausalLM, BitsAndBytesConfig; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map='cpu', quantization_config=BitsAndBytesConfig("
            "load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)); "
            "m.save_pretrained(sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(root / "base"), str(root / "nf4")], check=True, capture_output=True)


def method_peft(root: Path, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "nf4", device_map="cpu")
    merged = PeftModel.from_pretrained(model, root / "adapter").merge_and_unload()
    try:
        merged.save_pretrained(out)
    except NotImplementedError:  # transformers 5.23.0 cannot reverse a pre-quantized load's conversions
        from safetensors.torch import save_file

        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, out / "model.safetensors", metadata={"format": "pt"})
        shutil.copy(root / "nf4" / "config.json", out / "config.json")
        print("save_pretrained raised NotImplementedError: state_dict written with safetensors instead", flush=True)


def command(method: str, root: Path, out: Path) -> list[str]:
    if method == "peft":
        return [sys.executable, __file__, "--child", method, str(root), str(out)]
    extra = ["--dtype", "bf16"] if method == "ours-bf16" else []
    # as many threads as torch gives PEFT's process (the thread policy would otherwise count the
    # load the previous child left in the load average against us)
    threads = ["--threads", str(len(os.sched_getaffinity(0)))]
    return [sys.executable, "-m", "adapterkit", "merge", str(root / "nf4"), str(root / "adapter"), str(out), "--json", *threads, *extra]


def _open(folder: Path):
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    names = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    return [safe_open(folder / n, "pt") for n in names]


def _get(files, key: str):
    for f in files:
        if key in f.keys():
            return f.get_tensor(key)
    raise KeyError(key)


def _dequant(files, module: str):
    """bitsandbytes' fp32 dequantization of one module of a saved 4-bit checkpoint."""
    import bitsandbytes.functional as F

    weight = _get(files, module + ".weight")
    state = {}
    for f in files:
        state.update({k[len(module + ".weight."):]: f.get_tensor(k) for k in f.keys() if k.startswith(module + ".weight.")})
    quant_state = F.QuantState.from_dict(state, device="cpu")
    quant_state.dtype = __import__("torch").float32
    return F.dequantize_4bit(weight, quant_state)


def accuracy(root: Path, outs: dict[str, Path]) -> dict:
    """Per merged module, the Frobenius error of each output against dequant(W) + ΔW in fp64."""
    from safetensors.torch import load_file

    adapter = load_file(root / "adapter" / "adapter_model.safetensors")
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    base, files = _open(root / "nf4"), {m: _open(p) for m, p in outs.items()}
    worse = {m: 0 for m in outs if m != "peft"}
    errors: dict[str, float] = {m: 0.0 for m in outs}
    modules = sorted({k[len("base_model.model."):].rsplit(".lora_", 1)[0] for k in adapter})
    for module in modules:
        a = adapter[f"base_model.model.{module}.lora_A.weight"].double()
        b = adapter[f"base_model.model.{module}.lora_B.weight"].double()
        exact = _dequant(base, module).double() + scale * (b @ a)
        err = {}
        for method, f in files.items():
            got = _get(f, module + ".weight")
            value = got.double() if got.is_floating_point() and got.dim() == 2 and tuple(got.shape) == tuple(exact.shape) else _dequant(f, module).double()
            err[method] = (value - exact).norm().item()
            errors[method] = max(errors[method], err[method] / exact.norm().item())
        for method in worse:
            worse[method] += err[method] > err["peft"] * (1 + 1e-9)
    return {"modules": len(modules), "worse_than_peft": worse, "max_relative_error": errors}


def run_size(size: str, scratch: Path, args: argparse.Namespace) -> dict:
    root = scratch / size
    if not (root / "nf4").exists():
        print(f"[{size}] generating and quantizing ...", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        # in child processes: a child's peak RSS counts the parent's size when it was forked
        child([sys.executable, str(Path(__file__).with_name("bench_merge.py")), "--child", "generate", str(root), size, "bf16"],
              root.parent / f"generate-{size}.log")
        quantize(root)
        shutil.rmtree(root / "base")
    result: dict = {m: {"seconds": [], "rss": []} for m in METHODS}
    outs = {m: root / f"out-{m}" for m in METHODS}
    for _ in range(args.repeat):
        for method in METHODS:
            shutil.rmtree(outs[method], ignore_errors=True)
            subprocess.run(["sync"], check=False)
            seconds, rss = child(command(method, root, outs[method]), root / f"{method}.log")
            result[method]["seconds"].append(seconds)
            result[method]["rss"].append(rss)
            print(f"[{size}] {method}: {seconds:.1f} s, peak RSS {rss / MB:.0f} MB", flush=True)
    text = (root / "ours-nf4.log").read_text()  # the --json report, with the warning lines of stderr around it
    report = json.JSONDecoder().raw_decode(text[text.index("\n{") + 1 if not text.startswith("{") else 0:])[0]
    result["survival"] = (report.get("quantized") or {}).get("survival", {})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,7b-dims")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (kept between runs: the checkpoints are reused)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method_peft(Path(args.child[1]), Path(args.child[2]))
        return
    scratch = args.dir or Path(tempfile.mkdtemp(prefix="bench_quantized."))
    print(bench_all.machine(), flush=True)
    results = {size: run_size(size, scratch, args) for size in args.sizes.split(",")}
    for size in results:  # after every timed run: loading tensors here would count in later children's peak RSS
        outs = {m: scratch / size / f"out-{m}" for m in METHODS}
        results[size]["accuracy"] = accuracy(scratch / size, outs)
        if not args.keep:
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
    print()
    for size, r in results.items():
        best = {m: (min(r[m]["seconds"]), min(r[m]["rss"])) for m in METHODS}
        peft_s, peft_rss = best["peft"]
        print(f"== {size} (best of {args.repeat}) ==")
        for m in METHODS:
            s, rss = best[m]
            print(f"  {m:10s} {s:8.1f} s  {rss / MB:8.0f} MB   speed-up vs peft {peft_s / s:5.2f}x   RSS {rss / peft_rss:5.2f}x")
        acc = r["accuracy"]
        print(f"  accuracy: {acc['modules']} modules; modules where ours is farther from exact than PEFT's: {acc['worse_than_peft']}; "
              f"largest relative error {({k: f'{v:.2e}' for k, v in acc['max_relative_error'].items()})}")
        if r["survival"]:
            s = r["survival"]
            print(f"  ours-nf4 survival: {s['kept']:.1%} of ‖ΔW‖ moved the weights, {s['error']:.1%} error; "
                  f"{len(s['lost_modules'])} of {len(s['modules'])} modules mostly rounded away")
        for m in ("ours-bf16", "ours-nf4"):
            record(f"merge into NF4 {size}: {m}", best[m][0], peft_s, anchor_label="transformers+PEFT merge_and_unload", target=">= 5x faster")
            record(f"merge into NF4 {size}: {m} peak RSS", best[m][1] / MB, peft_rss / MB, anchor_label="PEFT", target="<= 0.2x", unit="MB")
    if len(results) > 1:
        sizes = list(results)
        for m in ("ours-bf16", "ours-nf4"):
            a, b = (min(results[s][m]["rss"]) for s in sizes[:2])
            print(f"RSS flat in model size ({m}): {sizes[0]} {a / MB:.0f} MB, {sizes[1]} {b / MB:.0f} MB ({b / a:.2f}x)")
    if args.dir is None and not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
