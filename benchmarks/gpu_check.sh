#!/usr/bin/env bash
# Benchmark the Triton kernels on a CUDA machine (stopped at 470 s; the tuning sweeps stop starting at 400):
# correctness at realistic shapes against float64 (the checks of `pytest -m gpu`), do_bench timings against the
# device copy bandwidth and peer libraries, tensors past 2**31 elements, and tuning sweeps.
# Usage: benchmarks/gpu_check.sh [OUT.md] [--quick|--no-sweep|--budget S|--dry-run|--smoke]
# PYTHON=... picks the interpreter (default python3).
#
# The machine needs torch and triton, nothing else, and no network. When `import rawseq.kernels` fails (rawseq not
# installed), the package is staged from this checkout into a scratch folder by the same map setup.py installs
# (kernels/ -> rawseq/kernels, modalities/ -> rawseq/modalities), with no build step. Wheels in .whl/ (see
# benchmarks/peer_wheels.sh) are installed into the same folder, so peer libraries can be compared offline.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.md}"
shift || true
unset TRITON_INTERPRET
py="${PYTHON:-python3}"
site=""
if ! "$py" -c "import rawseq.kernels" >/dev/null 2>&1; then
    site="$(mktemp -d)"
    cp -r rawseq "$site/rawseq"
    cp -r kernels "$site/rawseq/kernels"
    cp -r modalities "$site/rawseq/modalities"
    echo "rawseq staged from this checkout in $site"
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    site="${site:-$(mktemp -d)}"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    echo "peer wheels installed in $site: $(cd .whl && ls -- *.whl | tr '\n' ' ')"
fi
if [ -n "$site" ]; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
exec timeout 470 "$py" benchmarks/gpu_check.py "$out" "$@"
