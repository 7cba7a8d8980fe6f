#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run adapterkit end to end on a built-in example (no downloads):
# build a PEFT-layout LoRA adapter, show it, validate it, convert it to the single-file form and back.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${1:-example-out}
rm -rf "$OUT"
python scripts/make_example.py "$OUT/peft-lora"
set -x
adapterkit info "$OUT/peft-lora"
adapterkit validate "$OUT/peft-lora"
adapterkit convert "$OUT/peft-lora" "$OUT/lora.safetensors"   # the name picks the single-file form
adapterkit convert "$OUT/lora.safetensors" "$OUT/roundtrip"     # and this one PEFT's directory layout
cmp "$OUT/peft-lora/adapter_model.safetensors" "$OUT/roundtrip/adapter_model.safetensors"
adapterkit validate "$OUT/roundtrip"
