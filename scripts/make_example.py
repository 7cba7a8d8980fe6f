"""Write the built-in example: a small LoRA adapter in PEFT's directory layout (no download).

Usage: python scripts/make_example.py OUT_DIR
The adapter mimics a 4-layer decoder with q/k/v/o and MLP projections, one rank_pattern
override, fixed-seed weights, and a non-zero lora_B so that ‖ΔW‖ is meaningful.
"""

from __future__ import annotations

import sys

import torch

import adapterkit
from adapterkit import Adapter, LoraConfig


def build() -> Adapter:
    gen = torch.Generator().manual_seed(0)
    hidden, inter, layers = 64, 176, 4
    shapes = {
        "self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden // 4, hidden),
        "self_attn.v_proj": (hidden // 4, hidden), "self_attn.o_proj": (hidden, hidden),
        "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter),
    }
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=tuple(sorted(s.split(".")[1] for s in shapes)),
        rank_pattern={"down_proj": 4}, base_model_name_or_path="example/tiny-decoder", task_type="CAUSAL_LM",
    )
    tensors = {}
    for i in range(layers):
        for sub, (out_f, in_f) in shapes.items():
            module = f"model.layers.{i}.{sub}"
            r = config.rank_for(module)[0]
            prefix = f"base_model.model.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, in_f, generator=gen) / in_f**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_f, r, generator=gen) * 0.01
    return Adapter.from_tensors(config, tensors)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "example-out/peft-lora"
    adapterkit.save(build(), out)
    print(f"wrote example adapter to {out}")
