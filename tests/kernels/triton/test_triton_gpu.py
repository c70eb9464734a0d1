"""The compiled Triton kernels on a CUDA device at realistic shapes (``pytest -m gpu``; skipped without CUDA).

Each check of ``gpu_cases.py`` runs in a fresh process without ``TRITON_INTERPRET`` (this suite's conftest sets it
for the interpreter tests), compares outputs, final states and every gradient with the float64 torch backend, and
covers tensors of more than 2**31 elements (``wide``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GPU_CASES = Path(__file__).with_name("gpu_cases.py")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("check", ["selective_scan", "causal_conv1d", "ssd", "wide"])
def test_triton_kernels_on_cuda(check):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(GPU_CASES), check], capture_output=True, text=True, env=env,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
