"""``benchmarks/mamba3_cpu.py`` runs end to end at tiny sizes: its correctness check passes and it prints
its three rows (the step with the C step and with the PyTorch step only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mamba3_cpu.py"


def test_mamba3_cpu_benchmark_smoke():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--d-model", "64", "--d-state", "16", "--headdim", "32",
                           "--length", "40", "--repeats", "1", "--steps", "2", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "max relative error" in proc.stdout and "CHECK FAILED" not in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| forward+backward", "| decoding step"))]
    assert len(rows) == 3 and rows[-1].startswith("| decoding step (batch 1), PyTorch step only"), proc.stdout
    assert "Mamba-3 step: C step" in proc.stdout or "did not build" in proc.stdout
