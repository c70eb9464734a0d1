#!/usr/bin/env bash
# One prepared command for a GPU machine (under 8 minutes on one H200): correctness of the Triton kernels at realistic
# shapes against float64, then do_bench timings against the device copy bandwidth and peer libraries.
# Usage: benchmarks/gpu_check.sh [OUT.md] [--quick]   (PYTHON=... to pick the interpreter; default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.md}"
shift || true
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
exec timeout 470 "${PYTHON:-python}" benchmarks/gpu_check.py "$out" "$@"
