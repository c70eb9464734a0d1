#!/usr/bin/env bash
# Fetch the peer library that benchmarks/gpu_check.sh compares the SSD against, as a wheel for the lent GPU machine
# (offline, Python 3.12, x86_64), into .whl/ (git-ignored). Run it here, where PyPI is reachable, then carry the
# folder:  run(command="bash benchmarks/gpu_check.sh $OUT/gpu_check.md", carry=[".whl"])
#
# fla-core is flash-linear-attention's kernel package (chunk_simple_gla): pure Python and Triton, and it needs only
# einops, which that machine has. mamba_ssm and causal_conv1d publish only sources on PyPI (CUDA extensions compiled
# at install, many minutes of device time), so the check lists them as not importable unless the machine has them.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
mkdir -p .whl
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "fla-core==0.6.0"
ls -l .whl
