"""Check the example's merge against the reference: transformers + PEFT's merge_and_unload.

Usage: python scripts/check_example.py OUT   (the folder scripts/example.sh filled)

Loads the base with transformers, attaches the adapter with PEFT, merges it in fp32 and
compares every tensor with ``OUT/merged`` (adapterkit computes in fp32 and rounds once to
bf16, so the two agree exactly); then compares the logits of the merged checkpoint loaded by
transformers with those of the adapter-attached model; and reports how far ``OUT/unmerged``
is from the base (bf16 rounding).  Exits 1 on any disagreement.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def main(out: Path) -> int:
    warnings.simplefilter("ignore")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    base = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, out / "peft-lora").merge_and_unload().state_dict()
    merged = tensors(out / "merged")
    worst = max(float((merged[k].float() - reference[k].to(torch.bfloat16).float()).abs().max()) for k in merged)
    ids = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)(ids).logits
        peft_merged = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
        peft_merged.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in reference.items()})  # stored as bf16, as ours
        theirs = peft_merged(ids).logits
    logits = float((ours - theirs).abs().max())
    original = tensors(out / "base")
    back = max(float((tensors(out / "unmerged")[k].float() - v.float()).abs().max()) for k, v in original.items()) \
        if (out / "unmerged").exists() else None
    print(f"merged vs PEFT merge_and_unload (fp32, rounded to bf16): max |diff| = {worst:g} over {len(merged)} tensors")
    print(f"logits of the merged checkpoint vs PEFT's merged model in bf16: max |diff| = {logits:g}")
    if back is not None:
        print(f"unmerged vs base: max |diff| = {back:g} (bf16 rounding)")
    return 0 if worst == 0 and logits == 0 else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "example-out")))
