#!/usr/bin/env bash
# The GPU check of issue 15, prepared to finish in under 8 minutes on one GPU:
#   1. the CUDA tests (every test taking the `device` fixture, its "cuda" case: marker `cuda`),
#   2. ms per update and fraction of a same-run matmul peak (MFU) for eager / compiled / bf16 /
#      CUDA graphs (compile_mode="reduce-overhead") on dreamerv3:size1m (16x64 vector),
#      dreamerv3:size12m (64x64 images) and tdmpc2:5m.
# Usage: benchmarks/gpu_check.sh [cuda|cpu] [iters]   (cpu: a dry run of the same steps, tiny)
# Results: benchmarks/results/gpu_check.json (and the printed table; copy it to docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${1:-cuda}"
ITERS="${2:-20}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

if [ "$DEVICE" = "cuda" ]; then
  echo "== CUDA tests"
  timeout 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/agents/test_devices.py \
    tests/agents/test_compile.py tests/distributed/test_device_paths.py \
    || echo "CUDA tests FAILED (continuing to the timings)"
  CASES="dreamerv3:size1m,dreamerv3:size12m,tdmpc2:5m"
  MODES="eager,compiled,bf16,compiled+bf16,cudagraphs"
else
  CASES="tdmpc2:1m"  # the dry run: the smallest case, two modes
  MODES="eager,bf16"
fi

echo "== timings ($DEVICE, $ITERS updates per cell)"
timeout 420 "$PY" benchmarks/accel_bench.py --device "$DEVICE" --cases "$CASES" \
  --modes "$MODES" --iters "$ITERS" --json "$OUT/gpu_check_$DEVICE.json"
