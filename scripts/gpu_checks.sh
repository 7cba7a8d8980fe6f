#!/usr/bin/env bash
# The checks that need a GPU, as one short run for a lent device machine (python3 there holds a
# CUDA torch; run from the repository root; $OUT collects the logs):
#   the CUDA-marked tests, bench_ops.py on cuda (and its resize on the same machine's CPU), and
#   bench_all.py's device scripts on the CPU and on cuda (tables side by side), and
#   `adapterkit merge --device cuda` against `--device cpu` and cp on a 3.7 GB bf16 checkpoint.
# Usage: OUT=/tmp/gpu bash scripts/gpu_checks.sh
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_checks}"
mkdir -p "$OUT"
TIMEFORMAT='%R s'
nvidia-smi -L
python3 -c "import torch, peft, transformers; print('torch', torch.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), torch.get_num_threads(), 'threads')"

echo "== CUDA tests"
timeout 240 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_linalg.py tests/test_combine.py tests/test_resize.py tests/test_merge_stream.py tests/test_attach.py tests/test_quant_bnb.py 2>&1 | tee "$OUT/cuda_tests.log" | tail -15

echo "== bench_quantized (small) on this machine's CPUs, and adapterkit merge onto NF4 with --device cuda"
timeout 400 python3 scripts/bench_quantized.py --sizes small --dir /tmp/bq 2>&1 | tail -8 | tee "$OUT/bench_quantized_cpu.log"
( time python3 -m adapterkit merge /tmp/bq/small/nf4 /tmp/bq/small/adapter /tmp/bq/cuda-bf16 --dtype bf16 --device cuda ) 2>&1 | tail -2 | tee "$OUT/merge_nf4_cuda.log"

echo "== bench_ops --device cuda"
timeout 240 python3 scripts/bench_ops.py --device cuda --repeat 3 --combine-modules 2 2>&1 | tee "$OUT/bench_ops_cuda.log"
echo "== bench_ops resize --device cpu (same machine)"
timeout 120 python3 scripts/bench_ops.py --device cpu --only resize --repeat 1 2>&1 | tee "$OUT/bench_ops_cpu.log"

echo "== bench_all: the scripts that take a device, on this machine's CPU and on cuda (one table each)"
timeout 300 python3 scripts/bench_all.py --only bench_inspect.py bench_io.py --dry-run 2>&1 | tail -12 | tee "$OUT/bench_all_cpu.md"
timeout 300 python3 scripts/bench_all.py --only bench_inspect.py bench_io.py --device cuda --dry-run 2>&1 | tail -12 | tee "$OUT/bench_all_cuda.md"

echo "== merge 7b-dims: cp, --device cpu, --device cuda"
B=/tmp/bm/7b
python3 scripts/bench_merge.py --child generate "$B" 7b-dims bf16 >/dev/null 2>&1 || echo "generate failed"
du -sh "$B/base"
for round in 1 2; do
  for what in cp cpu cuda; do
    rm -rf "/tmp/bm/out_$what"; sync
    echo -n "round $round $what: "
    case $what in
      cp) time cp -r --reflink=never "$B/base" "/tmp/bm/out_$what" ;;
      *) time python3 -m adapterkit merge "$B/base" "$B/adapter" "/tmp/bm/out_$what" --device "$what" >"$OUT/merge_$what.log" 2>&1 ;;
    esac
  done
done
tail -1 "$OUT/merge_cuda.log"
python3 - "$B" <<'PY'
import json, sys
from pathlib import Path
import torch
from safetensors import safe_open
from safetensors.torch import load_file
root = Path(sys.argv[1])
adapter = load_file(root / "adapter" / "adapter_model.safetensors")
cfg = json.loads((root / "adapter" / "adapter_config.json").read_text())
scaling = cfg["lora_alpha"] / cfg["r"]
def get(folder, key):
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(folder / index[key], "pt") as f:
        return f.get_tensor(key)
worst = {"cpu": 0.0, "cuda": 0.0}
equal = 0
keys = sorted(k for k in adapter if ".lora_A." in k)
for akey in keys:
    prefix = akey.split(".lora_A.")[0]
    key = prefix.removeprefix("base_model.model.") + ".weight"
    A, B = adapter[akey].double(), adapter[f"{prefix}.lora_B.weight"].double()
    exact = get(root / "base", key).double() + (B @ A) * scaling
    got = {d: get(Path(f"/tmp/bm/out_{d}"), key) for d in worst}
    for d, t in got.items():
        worst[d] = max(worst[d], float((t.double() - exact).abs().max()))
    equal += bool(torch.equal(got["cpu"], got["cuda"]))
print(f"merged tensors: {len(keys)}; cuda output bit-identical to cpu output in {equal}; largest |merged - exact fp64|: cpu {worst['cpu']:.3g}, cuda {worst['cuda']:.3g}")
PY
