#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
ruff check .
python -m pytest -q "$@"
