#!/usr/bin/env python
"""Benchmark ``adapterkit.attach`` against PEFT's ``PeftModel.from_pretrained``, side by side.

Workload, built here from a config under a fixed seed (nothing downloaded): a small Llama
(``--hidden`` 256, ``--layers`` 4, vocabulary 1000, fp32) and a PEFT-saved LoRA adapter, r=8,
alpha 16, on all seven projections of every layer, random values.  Both sides load the same
adapter directory into a fresh copy of the same base model, in one process:

* attach: ``attach(base, load(dir))`` vs ``PeftModel.from_pretrained(base, dir)`` (reading the
  file included, building the base excluded), best of ``--repeat``;
* forward: one forward of a (``--batch``, ``--seq``) token batch under ``torch.no_grad``; the
  base model, ours and PEFT's are called in turn for ``--rounds`` rounds and each keeps its
  fastest call, so that noise from other processes hits all three alike; the base model's own
  forward gives each side's overhead over the base.  ``--threads`` (default 1) sets torch's
  threads: with two threads on a shared 2-core machine, OpenMP stalls swamp the difference.

Prints a table (workload, ours, anchor, ratio) and the targets: attach at least as fast as
PEFT; forward within 5% of PEFT's.

Measured on the development machine (2 vCPUs AMD EPYC, 1 torch thread, fp32, 2026-11-27;
logits bit-identical to PEFT's in both): default workload — attach 4.1 ms vs 30.1 ms (0.14x),
forward 28.8 vs 29.5 ms (0.98x; overhead over the base 4.2 vs 4.9 ms); ``--hidden 1024
--layers 2 --seq 128`` — attach 5.0 vs 26.0 ms (0.19x), forward 367.6 vs 373.3 ms (0.98x;
overhead 49.6 vs 55.3 ms).  With 2 threads while other jobs ran, single figures swung by
±15% either way (OpenMP stalls): compare only runs from a quiet machine or with 1 thread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from bench_all import record


def base_model(hidden: int, layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def save_adapter(hidden: int, layers: int, path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base_model(hidden, layers), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(path)


def best_of(fn, repeat: int, inner: int = 1) -> float:
    times = []
    for _ in range(repeat):
        runs = []
        for _ in range(inner):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        times.append(statistics.median(runs))
    return min(times)


def row(workload: str, ours: float, anchor: float, unit: str = "ms") -> None:
    scale = 1e3 if unit == "ms" else 1
    print(f"{workload:<44} {ours * scale:>10.3f} {unit} {anchor * scale:>10.3f} {unit} {ours / anchor:>8.3f}x")
    record(workload, ours * scale, anchor * scale, anchor_label="PEFT", unit=unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from peft import PeftModel

    import adapterkit

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        save_adapter(args.hidden, args.layers, path)
        bases = [base_model(args.hidden, args.layers) for _ in range(2 * args.repeat + 4)]

        def ours_attach() -> torch.nn.Module:
            return adapterkit.attach(bases.pop(), adapterkit.load(path))

        def peft_attach() -> torch.nn.Module:
            return PeftModel.from_pretrained(bases.pop(), path).eval()

        ours_attach(), peft_attach()  # warm-up: imports, first-call set-up
        t_ours_attach = best_of(ours_attach, args.repeat)
        t_peft_attach = best_of(peft_attach, args.repeat)

        ours, peft_model, base = ours_attach(), peft_attach(), base_model(args.hidden, args.layers)
        ids = torch.randint(0, 1000, (args.batch, args.seq), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            diff = float((ours(input_ids=ids).logits - peft_model(input_ids=ids).logits).abs().max())
            forwards: dict[str, float] = {}
            for model in (base, ours, peft_model):  # warm-up
                model(input_ids=ids)
            for _ in range(args.rounds):  # one call each per round, interleaved: machine noise hits all three alike
                for label, model in (("base", base), ("ours", ours), ("peft", peft_model)):
                    t0 = time.perf_counter()
                    model(input_ids=ids)
                    t = time.perf_counter() - t0
                    forwards[label] = min(t, forwards.get(label, t))

    print(f"Llama hidden={args.hidden} layers={args.layers}, LoRA r=8 on 7 projections x {args.layers} layers, fp32, "
          f"{torch.get_num_threads()} threads; max |logits ours - PEFT| = {diff:.1e}")
    print(f"{'workload':<44} {'ours':>13} {'PEFT':>13} {'ratio':>9}")
    row("attach (load + wrap)", t_ours_attach, t_peft_attach)
    row(f"forward ({args.batch}x{args.seq} tokens)", forwards["ours"], forwards["peft"])
    over_ours, over_peft = forwards["ours"] - forwards["base"], forwards["peft"] - forwards["base"]
    row("forward overhead over the base model", over_ours, over_peft)
    print(f"base model forward {forwards['base'] * 1e3:.3f} ms")
    ok_attach = t_ours_attach <= t_peft_attach
    ok_forward = forwards["ours"] <= 1.05 * forwards["peft"]
    print(f"target attach <= PEFT: {t_ours_attach / t_peft_attach:.3f}x  {'PASS' if ok_attach else 'MISS'}")
    print(f"target forward within 5% of PEFT: {forwards['ours'] / forwards['peft']:.3f}x  {'PASS' if ok_forward else 'MISS'}")


if __name__ == "__main__":
    main()
