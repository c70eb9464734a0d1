"""Triton kernels run under the interpreter here: ``TRITON_INTERPRET=1`` must be set before any module defining
``@triton.jit`` kernels is imported, so it is set at import time of this conftest.

``patch_interpreter`` (``rawseq/kernels/common/interpreter.py``) fixes three interpreter problems that these
tests would otherwise hit (see that module).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from rawseq.kernels.common.interpreter import patch_interpreter  # noqa: E402

patch_interpreter()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/triton/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.triton)


@pytest.fixture
def cpu():
    return torch.device("cpu")
