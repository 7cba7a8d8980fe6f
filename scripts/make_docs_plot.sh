#!/usr/bin/env bash
# Regenerate docs/spectrum-example.png (shown in README.md): the spectrum plot of the built-in
# example adapter (scripts/make_example.py; fixed seed, no download).  Needs adapterkit[plot].
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python scripts/make_example.py "$TMP/example-lora"
python -m adapterkit info "$TMP/example-lora" --no-modules --plot docs/spectrum-example.png --overwrite
