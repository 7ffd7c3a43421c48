#!/usr/bin/env bash
# On a lent GPU machine, from the repository root, after benchmarks/gpu/prepare_wheels.sh ran on the
# development machine (its .whl/ folder travels with `carry: [".whl"]`):
#
#     bash benchmarks/gpu/run_checks.sh [--commit SHA] [STAGE ...]   (default: every stage, in order)
#
# The copy of the tree there has no .git: pass the commit measured (git rev-parse HEAD here) so
# that the result files record it.
# Stages, each under its own time limit so that one slow stage cannot eat the others:
#   env            GPU, driver, torch/CUDA/Triton/fla/DeepSpeed versions; fails if a package
#                  the other stages import is missing or broken
#   kernels        tests/test_wkv_cuda.py (cuda and fla against the reference), gpu precision tests
#   deepspeed      tests/test_deepspeed_gpu.py (ZeRO 1/2/3 + offload: train, export, resume)
#   kernel-bench   benchmarks/kernel_benchmark.py (B=8, T=4096, C=768/2048, every backend)
#   strategy-bench benchmarks/strategy_benchmark.py (peak memory and tokens/s per strategy)
# Everything goes to $OUT (the device tool brings it back): checks.log (all output), summary.txt
# (stage, exit code, seconds) and the benchmarks' result files; commit those to benchmarks/results/.
# One device call runs at most 10 minutes and a session has about 15 minutes of device time, so
# split by priority: first `env kernels kernel-bench` (about 8 minutes at most), then, if time
# is left, `deepspeed strategy-bench`.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
COMMIT=unknown
if [ "${1:-}" = "--commit" ]; then COMMIT=$2; shift 2; fi
echo "commit $COMMIT" >> "$OUT/summary.txt"
# nothing can be downloaded there: the hub libraries must not try
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch-extensions HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" | tee -a "$OUT/summary.txt"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "===== $name (limit ${limit}s): $*" >> "$OUT/checks.log"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >> "$OUT/checks.log" 2>&1
  rc=$?
  printf '%-15s rc=%-4s %5ss\n' "$name" "$rc" "$((SECONDS - start))" | tee -a "$OUT/summary.txt"
}

run_stage() {
  case $1 in
    env) stage env 90 bash -c 'nvidia-smi; python3 -c "
import importlib, sys
missing = []
for name in (\"torch\", \"triton\", \"lightning\", \"jsonargparse\", \"datasets\", \"pyarrow\", \"huggingface_hub\",
             \"deepspeed\", \"fla\", \"rwkv\", \"rwkv_infctx.cli\"):
    try:
        print(name, getattr(importlib.import_module(name), \"__version__\", \"ok\"), flush=True)
    except Exception as exc:
        missing.append(name); print(name, \"FAILED:\", type(exc).__name__, exc, flush=True)
sys.exit(1 if missing else 0)"' ;;
    kernels) stage kernels 240 python3 -m pytest -q -m gpu -rs tests/test_wkv_cuda.py tests/test_precision.py ;;
    deepspeed) stage deepspeed 330 python3 -m pytest -q -m gpu -rs -s tests/test_deepspeed_gpu.py ;;
    kernel-bench) stage kernel-bench 180 python3 benchmarks/kernel_benchmark.py --repeat 5 --commit "$COMMIT"
                  cp benchmarks/results/kernels-*.json benchmarks/results/kernels-*.md "$OUT"/ 2>/dev/null ;;
    strategy-bench) stage strategy-bench 200 python3 benchmarks/strategy_benchmark.py --steps 12 --wkv_backend cuda --commit "$COMMIT"
                    cp benchmarks/results/strategies.json benchmarks/results/strategies.md "$OUT"/ 2>/dev/null ;;
    *) echo "unknown stage $1 (env kernels deepspeed kernel-bench strategy-bench)"; exit 2 ;;
  esac
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(env kernels deepspeed kernel-bench strategy-bench)
for s in "${stages[@]}"; do run_stage "$s"; done
cat "$OUT/summary.txt"
