"""Write the built-in example: a small LoRA adapter in PEFT's directory layout and, with
``--checkpoint``, the Llama-style base checkpoint it fits (no download, no transformers).

Usage: python scripts/make_example.py OUT_DIR [--checkpoint BASE_DIR]
The adapter mimics a 4-layer decoder with q/k/v/o and MLP projections, one rank_pattern
override, fixed-seed weights, and a non-zero lora_B so that ‖ΔW‖ is meaningful.  The
checkpoint is what ``LlamaForCausalLM(config).save_pretrained(max_shard_size=...)`` would
write for that decoder: two safetensors shards, ``model.safetensors.index.json``,
``config.json``, ``generation_config.json`` and a tokenizer config, weights in bf16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import adapterkit
from adapterkit import Adapter, LoraConfig

HIDDEN, INTER, LAYERS, VOCAB, KV = 64, 176, 4, 128, 16
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.up_proj": (INTER, HIDDEN), "mlp.down_proj": (HIDDEN, INTER),
}
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": INTER,
    "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
    "vocab_size": VOCAB, "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 2048,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "dtype": "bfloat16",
}


def build() -> Adapter:
    gen = torch.Generator().manual_seed(0)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=tuple(sorted(s.split(".")[1] for s in SHAPES)),
        rank_pattern={"down_proj": 4}, base_model_name_or_path="example/tiny-decoder", task_type="CAUSAL_LM",
    )
    tensors = {}
    for i in range(LAYERS):
        for sub, (out_f, in_f) in SHAPES.items():
            module = f"model.layers.{i}.{sub}"
            r = config.rank_for(module)[0]
            prefix = f"base_model.model.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, in_f, generator=gen) / in_f**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_f, r, generator=gen) * 0.01
    return Adapter.from_tensors(config, tensors)


def checkpoint_tensors() -> dict[str, torch.Tensor]:
    """The base decoder's state dict (bf16), with the key names transformers' Llama uses."""
    gen = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.05).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for sub, shape in {**SHAPES, "mlp.gate_proj": (INTER, HIDDEN)}.items():
            tensors[f"{p}.{sub}.weight"] = rand(*shape)
        tensors[f"{p}.input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        tensors[f"{p}.post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    tensors["model.norm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    tensors["lm_head.weight"] = rand(VOCAB, HIDDEN)
    return tensors


def write_checkpoint(out: Path, shards: int = 2) -> Path:
    """Write the base checkpoint to ``out`` (a new directory), sharded like transformers does."""
    from safetensors.torch import save_file

    tensors = checkpoint_tensors()
    keys = list(tensors)
    out.mkdir(parents=True)
    per = -(-len(keys) // shards)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[s * per:(s + 1) * per]}
        save_file(part, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}, indent=2) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="example-out/peft-lora")
    parser.add_argument("--checkpoint", default=None, help="also write the base checkpoint here")
    args = parser.parse_args()
    adapterkit.save(build(), args.out)
    print(f"wrote example adapter to {args.out}")
    if args.checkpoint:
        write_checkpoint(Path(args.checkpoint))
        print(f"wrote example base checkpoint to {args.checkpoint}")
