#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run adapterkit's main job end to end on a built-in example (no
# downloads): build a Llama-style base checkpoint (2 bf16 shards) and a LoRA adapter for it in PEFT's
# layout, check the adapter, merge it into the checkpoint streaming tensor by tensor, show what the
# merge made, check it against transformers + PEFT's merge_and_unload, and take the adapter out again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${1:-example-out}
rm -rf "$OUT"
python scripts/make_example.py "$OUT/peft-lora" --checkpoint "$OUT/base"
set -x
adapterkit info "$OUT/peft-lora" --no-modules
adapterkit validate "$OUT/peft-lora"
adapterkit merge "$OUT/base" "$OUT/peft-lora" "$OUT/merged"
adapterkit info "$OUT/merged"
python scripts/check_example.py "$OUT"
adapterkit unmerge "$OUT/merged" "$OUT/peft-lora" "$OUT/unmerged"
adapterkit convert "$OUT/peft-lora" "$OUT/lora.safetensors"   # the name picks the single-file form
adapterkit convert "$OUT/lora.safetensors" "$OUT/roundtrip"     # and this one PEFT's directory layout
cmp "$OUT/peft-lora/adapter_model.safetensors" "$OUT/roundtrip/adapter_model.safetensors"
