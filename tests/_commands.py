"""Running the ``rawseq`` command in a subprocess, as a user would (one torch thread: tests share the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_rawseq(*args, cwd: Path, env: dict | None = None, check: bool = True, timeout: int = 900):
    """``python -m rawseq.cli ARGS`` in ``cwd``; with ``check``, assert it succeeded and return its stdout, else
    return the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "rawseq.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout
