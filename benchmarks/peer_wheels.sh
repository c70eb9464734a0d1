#!/usr/bin/env bash
# Download the peer library that benchmarks/gpu_check.sh compares the SSD against, as a wheel for an offline CUDA
# machine (Python 3.12, x86_64), into .whl/ (git-ignored). Run it where PyPI is reachable, copy .whl/ next to the
# checkout on the CUDA machine, then run benchmarks/gpu_check.sh there.
#
# fla-core is flash-linear-attention's kernel package (chunk_simple_gla): pure Python and Triton, needing only einops.
# mamba_ssm and causal_conv1d publish only sources on PyPI (CUDA extensions compiled at install, many minutes), so
# the check lists them as not importable unless the machine already has them.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
mkdir -p .whl
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "fla-core==0.6.0"
ls -l .whl
