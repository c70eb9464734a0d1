"""Triton kernels run under the interpreter here: ``TRITON_INTERPRET=1`` must be set before any module defining
``@triton.jit`` kernels is imported, so it is set at import time of this conftest (the root conftest sets it too).

``patch_interpreter`` (``kernels/common/interpreter.py``) fixes three interpreter problems that these tests would
otherwise hit (see that module). Tests marked ``gpu`` need CUDA and run their kernels compiled, in a subprocess
without the interpreter; they are skipped where CUDA is not available.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from rawseq.kernels.common.interpreter import patch_interpreter  # noqa: E402

patch_interpreter()

_HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(items):
    for item in items:
        if os.path.abspath(str(item.fspath)).startswith(_HERE + os.sep):
            item.add_marker(pytest.mark.triton)
