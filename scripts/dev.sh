#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv (pinned versions from constraints.txt), then runs a job.
#   bash scripts/dev.sh test      # the test suite (what CI runs)
#   bash scripts/dev.sh main      # the main job: train a tiny byte LM on the Python standard library (CPU, ~3 min)
#   bash scripts/dev.sh bench     # the CPU kernel benchmark
#   bash scripts/dev.sh setup     # only the install
set -euo pipefail
cd "$(dirname "$0")/.."

setup() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup) setup ;;
    test)
        setup
        .venv/bin/python -m pytest -q "$@"
        ;;
    main)
        setup
        .venv/bin/rawseq train "$@"
        ;;
    bench)
        setup
        .venv/bin/python benchmarks/kernels_cpu.py "$@"
        ;;
    *)
        echo "usage: bash scripts/dev.sh [setup|test|main|bench] [args...]" >&2
        exit 2
        ;;
esac
