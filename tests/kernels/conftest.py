"""Kernel tests. pytest puts this folder on ``sys.path`` (it holds a conftest), so every test below it, ``triton/``
included, imports the shared helpers as ``from _scan_cases import ...``. Tests here that call the public functions
with ``backend="triton"`` run the kernels on CPU tensors under the interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py``), with the fixes of ``patch_interpreter``."""

from __future__ import annotations

from rawseq.kernels.common.interpreter import patch_interpreter

patch_interpreter()
