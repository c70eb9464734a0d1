"""The README's Python blocks run as written, in order, in one namespace (the quickstart builds on itself)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3, "the README lost its quickstart"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed, "the quickstart prints its results"
    assert 0 < float(printed[0]) < 16  # untrained bits per byte of a 256-symbol model: about 8
    assert isinstance(namespace["out"].bits_per_byte, torch.Tensor)
    assert namespace["y"].shape == (2, 1024, 512) and torch.isfinite(namespace["y"]).all()
