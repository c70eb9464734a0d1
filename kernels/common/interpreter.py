"""Fixes for running rawseq's kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``), installed by
:func:`patch_interpreter` and touching nothing else; the test suite and the ``--smoke`` runs of the GPU checks call
it. Each one checks that the interpreter still has the piece it replaces and leaves a fixed interpreter alone.

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
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    _install(interpreter, "_patch_lang_tensor", _index_fix)
    _install(getattr(interpreter, "ScanOps", None), "generic_scan", lambda original: _generic_scan)
    _install(getattr(interpreter, "InterpreterBuilder", None), "create_dot",
             lambda original: _bf16_dot_fix(original, interpreter, tl))


def _install(owner, name: str, make) -> None:
    """Replace ``owner.name`` by ``make(original)``, unless the piece is missing or already replaced."""
    original = getattr(owner, name, None)
    if original is None or getattr(original, "_rawseq_shim", False):
        return
    patched = make(original)
    patched._rawseq_shim = True
    setattr(owner, name, patched)


def _index_fix(original):
    def patched(tensor, *args, **kwargs):  # triton 3.6 adds a patch-scope argument
        original(tensor, *args, **kwargs)
        tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0]) if self.handle.data.size == 1 \
            else int(self.handle.data)

    return patched


def _generic_scan(self, input):
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


def _bf16_dot_fix(original, interpreter, tl):
    def widen(h):
        if h.dtype.scalar != tl.bfloat16 or h.data.dtype != np.uint16:  # a fixed interpreter needs nothing
            return h
        return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, *args, **kwargs):
        return original(self, widen(a), widen(b), *args, **kwargs)

    return create_dot
