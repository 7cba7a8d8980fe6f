#!/usr/bin/env python
"""What ``merge --as-trained`` changes: logits of merged models against the QLoRA model that trained the adapter.

Builds a tiny bf16 Llama (random weights, fixed seed), loads it in 4-bit with transformers +
bitsandbytes (NF4, double quantization, bf16 compute: a QLoRA base), puts a LoRA on it with PEFT
(random factors at a fine-tune's scale: the adapter "trained" on the 4-bit model), and computes
that model's logits on a fixed input: the reference.  Then merges the adapter into the 16-bit base
two ways with ``adapterkit merge`` and compares each merged model's logits with the reference:

  * into the original 16-bit weights (what PEFT or any other tool does with a QLoRA adapter);
  * ``--as-trained nf4``: the 16-bit weights rounded through bitsandbytes' NF4 quantizer first,
    as the QLoRA run saw them.

Prints the largest absolute logit difference and the relative one (against the largest logit)
for both, and how many next-token predictions differ; then the floor: one merged model computed in
fp32 against the same in bf16 (the QLoRA model computes in bf16, so no merge gets closer).  tests/test_quant_bnb.py asserts the same
comparison on a smaller model.

Usage: python scripts/qlora_as_trained.py [--hidden 256] [--layers 4] [--scale 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--scale", type=float, default=4.0, help="lora_B multiplied by this (PEFT's init is tiny)")
    parser.add_argument("--dtype", default="BF16,F32", help="the merged checkpoints' dtypes (comma-separated)")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    from adapterkit.ops.merging import merge_checkpoint

    root = Path(tempfile.mkdtemp(prefix="as_trained."))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=args.hidden * 3, num_hidden_layers=args.layers,
                      num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64, max_position_embeddings=128,
                      tie_word_embeddings=False, dtype="bfloat16")
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(root / "base")
    four = AutoModelForCausalLM.from_pretrained(root / "base", device_map="cpu", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16))
    torch.manual_seed(1)
    model = get_peft_model(four, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(args.scale)
    model.save_pretrained(root / "lora")
    ids = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(input_ids=ids).logits.float()
    for dtype in args.dtype.split(","):
        for name, extra in (("original 16-bit base", {}), ("--as-trained nf4", {"as_trained": {"quant_type": "nf4"}})):
            out = root / f"{name.replace(' ', '_')}-{dtype}"
            merge_checkpoint(root / "base", [root / "lora"], out, dtype=dtype, **extra)
            merged = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
            with torch.no_grad():
                logits = merged(input_ids=ids).logits.float()
            diff = (logits - reference).abs().max().item()
            flips = (logits.argmax(-1) != reference.argmax(-1)).float().mean().item()
            print(f"{dtype:4s} merged into {name:22s}: max |Δlogit| {diff:.4f} ({diff / reference.abs().max().item():.2%} of the largest logit); "
                  f"next-token predictions that differ from the QLoRA model: {flips:.1%}")

    # the floor: the same merged model computed in fp32 and in bf16 (QLoRA's compute dtype) differs by this much
    floor = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32)
    with torch.no_grad():
        a = floor(input_ids=ids).logits.float()
        b = floor.to(torch.bfloat16)(input_ids=ids).logits.float()
    diff = (a - b).abs().max().item()
    print(f"bf16 arithmetic alone (one merged model in fp32 vs bf16): max |Δlogit| {diff:.4f} "
          f"({diff / reference.abs().max().item():.2%}); predictions that differ: {(a.argmax(-1) != b.argmax(-1)).float().mean().item():.1%}")


if __name__ == "__main__":
    main()
