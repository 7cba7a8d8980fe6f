#!/usr/bin/env bash
# Create .venv and install adapterkit (editable) with its test extra.  Quiet and quick when
# nothing changed: a stamp of pyproject.toml, this script, the Python and the checkout's path
# is kept in .venv, and a second run with the same stamp installs nothing and prints nothing.
#
# torch (the package itself only requires torch>=2.2):
#   * a torch that is already installed is kept: one in .venv, or, in auto mode, one that
#     $PYTHON already has (the new .venv is then created with --system-site-packages);
#   * otherwise ADAPTERKIT_TORCH picks the build of torch==$ADAPTERKIT_TORCH_VERSION (2.13.0):
#       cpu   PyTorch's CPU-only wheel (index https://download.pytorch.org/whl/cpu, ~190 MB, no CUDA libraries)
#       cuda  the PyPI wheel: on Linux x86-64 the CUDA build (~20 nvidia-*/triton packages, several GB)
#       auto  (default) cuda when `nvidia-smi -L` lists a GPU, else cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
MODE=${ADAPTERKIT_TORCH:-auto}
TORCH_VERSION=${ADAPTERKIT_TORCH_VERSION:-2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu
case "$MODE" in auto|cpu|cuda) ;; *) echo "setup: ADAPTERKIT_TORCH must be auto, cpu or cuda (got '$MODE')" >&2; exit 2;; esac

ORACLES=$VENV/oracles/quant
QUANT_ORACLES=(gptqmodel==7.7.0 autoawq==0.2.9 pypcre==0.6.4 logbar==0.4.15 threadpoolctl==3.8.0 device-smi==0.5.7)

stamp() { { cat pyproject.toml scripts/setup.sh; pwd; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1; }
have_all() {
  "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in
             ("adapterkit", "torch", "safetensors", "click", "peft", "transformers", "hypothesis", "pytest", "ruff")))
EOF
}

if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.adapterkit-setup" ] && [ "$(cat "$VENV/.adapterkit-setup")" = "$(stamp)" ] && have_all \
   && [ -d "$ORACLES/gptqmodel" ] && [ -d "$ORACLES/awq" ]; then
  exit 0  # nothing changed since the last setup
fi

started=$SECONDS
LOG=$VENV/setup.log
if [ ! -x "$VENV/bin/python" ]; then
  if [ "$MODE" = auto ] && "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m venv --system-site-packages "$VENV"
    echo "setup: created $VENV from $("$PY" -c 'import sys; print(sys.executable)') with its site-packages (it has torch)"
  else
    "$PY" -m venv "$VENV"
    echo "setup: created $VENV ($("$VENV/bin/python" -V))"
  fi
fi
: > "$LOG"
pip_quiet() {  # pip's own chatter (and setuptools' editable-install notice) goes to the log
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
    echo "setup: pip install $* failed; the last lines of $LOG:" >&2
    tail -n 25 "$LOG" >&2
    exit 1
  fi
}

torch_desc() {
  "$VENV/bin/python" -W ignore -c "import torch; print(f'torch {torch.__version__}', f'(CUDA {torch.version.cuda} build)' if torch.version.cuda else '(CPU-only build)')"
}
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: keeping the installed $(torch_desc)"
else
  if [ "$MODE" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then MODE=cuda; else MODE=cpu; fi
  fi
  if [ "$MODE" = cpu ]; then
    echo "setup: installing torch==$TORCH_VERSION, CPU-only build (from $CPU_INDEX, or a CPU wheel pip already has)"
    pip_quiet "torch==$TORCH_VERSION" --extra-index-url "$CPU_INDEX"
  else
    echo "setup: installing torch==$TORCH_VERSION from PyPI (on Linux x86-64: the CUDA build, several GB)"
    pip_quiet "torch==$TORCH_VERSION"
  fi
  echo "setup: installed $(torch_desc)"
fi
echo "setup: installing adapterkit (editable) with its test extra (pytest, hypothesis, ruff, jsonschema, peft==0.22.0, transformers==5.23.0, matplotlib)"
pip_quiet -e ".[test]"
# The GPTQ/AWQ test oracles (tests/quant_oracle.py runs their packing code in a child process) go
# beside site-packages, not into it: PEFT imports any installed gptqmodel (and then wants optimum
# and GPTQModel's own dependencies, which pin a newer torch), and neither package is needed to run
# adapterkit.  Installed without dependencies: GPTQModel's import chain needs only the four small ones.
echo "setup: installing the GPTQ/AWQ test oracles (gptqmodel==7.7.0, autoawq==0.2.9) into $ORACLES, outside site-packages"
pip_quiet --no-deps --upgrade --target "$ORACLES" "${QUANT_ORACLES[@]}"
have_all || { echo "setup: a required package is missing after install; see $LOG" >&2; exit 1; }
stamp > "$VENV/.adapterkit-setup"
echo "setup: done in $((SECONDS - started)) s; a second run skips all of this"
