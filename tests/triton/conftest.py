"""Triton kernels run under the interpreter here: ``TRITON_INTERPRET=1`` must be set before any module defining
``@triton.jit`` kernels is imported, so it is set at import time of this conftest.

The triton 3.5 interpreter turns scalar kernel arguments into one-element arrays and converts them back with
``int(array)``, which numpy >= 2.3 refuses for arrays that are not 0-d; every ``for i in range(n)`` with a runtime
``n`` then fails. The shim below converts through ``.item()`` instead. The interpreter also runs
``tl.associative_scan`` with a user combine function one element at a time in Python; the second shim calls the
combine function once per position along the scan axis on whole slices (combine functions are elementwise, so the
result is the same), which makes the scan kernels' tests about a hundred times faster. Both only touch the
interpreter.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def _patch_interpreter_index():
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_rawseq_shim", False):
        return

    def patched(tensor):
        original(tensor)
        tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0]) if self.handle.data.size == 1 \
            else int(self.handle.data)

    patched._rawseq_shim = True
    interpreter._patch_lang_tensor = patched


def _patch_interpreter_scan():
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    scan_ops = getattr(interpreter, "ScanOps", None)
    if scan_ops is None or not hasattr(scan_ops, "generic_scan") or getattr(scan_ops, "_rawseq_shim", False):
        return

    def generic_scan(self, input):
        datas = [arg.handle.data for arg in input]
        outs = [np.empty_like(d) for d in datas]
        acc = None
        for i in range(datas[0].shape[self.axis]):
            cur = tuple(self.to_tensor(np.take(d, i, axis=self.axis), arg.dtype) for d, arg in zip(datas, input))
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            for out, value in zip(outs, acc):
                index = [slice(None)] * out.ndim
                index[self.axis] = i
                out[tuple(index)] = np.asarray(value.handle.data).reshape(out[tuple(index)].shape)
        return [self.to_tensor(out, arg.dtype) for out, arg in zip(outs, input)]

    scan_ops.generic_scan = generic_scan
    scan_ops._rawseq_shim = True


_patch_interpreter_index()
_patch_interpreter_scan()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/triton/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.triton)


@pytest.fixture
def cpu():
    return torch.device("cpu")
