"""The benchmark scripts that cannot run here in full still start: GPU check's dry run (arguments, shapes and byte
counts on the CPU), so that a session lent a GPU does not spend its device minutes on a broken script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dry run ok" in proc.stdout
    # 4 x 16384 x 2048 in bf16: x, dt, z read and y written (2 bytes each), B and C (4 x 16384 x 16) read once.
    assert "1.08 GB per forward" in proc.stdout


def test_gpu_check_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--no-such-flag"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--no-such-flag" in proc.stderr


def test_decode_cpu_runs_and_its_checks_pass():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "decode_cpu.py"), "--prompt=20", "--steps=2",
                           "--rounds=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "ms per byte" not in line]
    assert len(rows) == 5 and all("| ok |" in row for row in rows), proc.stdout
