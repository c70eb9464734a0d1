"""Fixes for running rawseq's kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``), installed by
:func:`patch_interpreter` and touching nothing else; the test suite and ``benchmarks/gpu_check.py --smoke`` call it.
Each one checks that the interpreter still has the piece it replaces and leaves a fixed interpreter alone.

- Scalar kernel arguments: the triton 3.5 and 3.6 interpreters turn them into one-element arrays and convert them
  back with ``int(array)``, which numpy >= 2.3 refuses for arrays that are not 0-d, so every ``for i in range(n)``
  with a runtime ``n`` fails. The fix converts through the single element instead.
- ``tl.associative_scan`` with a user combine function runs one element at a time in Python; the fix calls the
  combine function once per position along the scan axis on whole slices (combine functions are elementwise, so
  the result is the same), about a hundred times faster.
- bfloat16 ``tl.dot``: the interpreter keeps bfloat16 as raw uint16 bits and multiplies the bits; the fix widens
  bfloat16 operands to float32 first (exact), as the GPU's bf16 x bf16 -> fp32 product does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["patch_interpreter"]


def patch_interpreter() -> None:
    """Install the three fixes (idempotent; a no-op where triton or its interpreter is missing)."""
    _patch_interpreter_index()
    _patch_interpreter_scan()
    _patch_interpreter_bf16_dot()


def _patch_interpreter_index():
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_rawseq_shim", False):
        return

    def patched(tensor, *args, **kwargs):  # triton 3.6 adds a patch-scope argument
        original(tensor, *args, **kwargs)
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


def _patch_interpreter_bf16_dot():
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or getattr(builder.create_dot, "_rawseq_shim", False):
        return
    original = builder.create_dot

    def widen(h):
        if h.dtype.scalar != tl.bfloat16 or h.data.dtype != np.uint16:  # a fixed interpreter needs nothing
            return h
        return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, *args, **kwargs):
        return original(self, widen(a), widen(b), *args, **kwargs)

    create_dot._rawseq_shim = True
    builder.create_dot = create_dot
