#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv (pinned versions from constraints.txt), then runs a job.
#   bash scripts/dev.sh test      # the test suite (what CI runs)
#   bash scripts/dev.sh main      # the main job: train a tiny byte LM on the Python standard library (CPU, ~3 min)
#   bash scripts/dev.sh bench     # the CPU kernel benchmark
#   bash scripts/dev.sh setup     # only the install (with the dev extra)
# The main job installs only what `rawseq train` needs (the package and matplotlib for loss.png); the test suite
# and the benchmarks also install the dev extra (pytest, transformers, mambapy, scikit-learn, torchcodec, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

setup() {
    local extras="${1:-dev}"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup) setup dev ;;
    test)
        setup dev
        .venv/bin/python -m pytest -q "$@"
        ;;
    main)
        setup plot
        .venv/bin/rawseq train "$@"
        ;;
    bench)
        setup dev
        .venv/bin/python benchmarks/kernels_cpu.py "$@"
        ;;
    *)
        echo "usage: bash scripts/dev.sh [setup|test|main|bench] [args...]" >&2
        exit 2
        ;;
esac
