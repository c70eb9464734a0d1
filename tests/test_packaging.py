"""The wheel maps kernels/ to rawseq.kernels and modalities/ to rawseq.modalities, with no top-level clashes."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
    )
    (path,) = out.glob("rawseq-*.whl")
    return path


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"rawseq"}, tops
    for module in ("rawseq/kernels/__init__.py", "rawseq/kernels/ssd/chunked.py",
                   "rawseq/kernels/selective_scan/naive.py", "rawseq/modalities/__init__.py",
                   "rawseq/kernels/mamba3/step.c"):
        assert module in names, module


def test_wheel_imports_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import rawseq.kernels as k, rawseq.modalities as m, torch; "
        "print(k.__file__); print(m.__file__); "
        "x = torch.randn(1, 3, 2); "
        "print(k.causal_conv1d(x, torch.ones(2, 2)).shape); "
        "from rawseq.kernels.common.native import _compiler; from rawseq.kernels.mamba3 import native; "
        "print(_compiler() is None or native.available())"
    )
    env = dict(os.environ, PYTHONPATH=str(site), RAWSEQ_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=env).stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1].startswith(str(site)), out
    assert out[2] == "torch.Size([1, 3, 2])"
    assert out[3] == "True", "the native Mamba-3 step did not build from the wheel's C source"
