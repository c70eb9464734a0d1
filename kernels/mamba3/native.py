"""The Mamba-3 decoding step as one C function (``step.c``), for CPU tensors.

A layer's step at batch 1 costs its number of tensor operations, and the PyTorch step (``chunked.py``) needs about
forty; this one is a single call that reads and writes the state once. It serves the "torch" backend on CPU tensors
when the C kernel builds (see :mod:`rawseq.kernels.common.native`), and hands everything else to the PyTorch step:
tensors on other devices, a state that is not contiguous, ``torch.compile`` tracing, calls under autograd with
inputs that require gradients (the C step is not differentiable), and batches of more than ``MAX_ROWS`` rows times
MIMO rank: the C step runs on one core, and there the PyTorch step's batched matrix products, on every core, catch
up.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from rawseq.kernels.common.native import load_library
from rawseq.kernels.mamba3.chunked import mamba3_step_torch

_SOURCE = Path(__file__).with_name("step.c")
MAX_ROWS = 16  # batch x rank up to which the C step is used
_FUNCTIONS: dict[torch.dtype, object] = {}
_UNSET = object()
_library = _UNSET


def _function(dtype: torch.dtype):
    """The C step for a state of ``dtype`` (float32 or float64), or None without the compiled library."""
    global _library
    if _library is _UNSET:
        _library = load_library(_SOURCE)
        if _library is not None:
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            for name, dt in (("mamba3_step_f32", torch.float32), ("mamba3_step_f64", torch.float64)):
                fn = getattr(_library, name)
                fn.restype = ctypes.c_int
                fn.argtypes = ([i64] * 7 + [ptr] * 7 + [i64] + [ptr] * 4 + [i64] + [ptr] * 3 + [ctypes.c_int]
                               + [ptr] * 6)
                _FUNCTIONS[dt] = fn
    return _FUNCTIONS.get(dtype)


def available() -> bool:
    """Whether the C step is built and loaded (building it on first call)."""
    return _function(torch.float32) is not None


def _ptr(t: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor | None, int | None]:
    """``t`` as a contiguous tensor of ``dtype`` (kept alive by the caller) and its address."""
    if t is None:
        return None, None
    if t.dtype != dtype:
        t = t.to(dtype)
    if not t.is_contiguous():
        t = t.contiguous()
    return t, t.data_ptr()


def mamba3_step_native(state, x, dt, A, B, C, lam, angle=None, D=None, z=None, dt_bias=None, dt_softplus=True,
                       B_bias=None, C_bias=None, mimo_x=None, mimo_z=None, mimo_o=None):
    """Same arguments and result as ``mamba3_step_torch`` (no argument checks); updates ``state`` in place.

    x, z: (b, h, p); dt, lam: (b, h); A: (h,) or (b, h); B, C: (b, g, n) or (b, g, R, n); angle (b, h or 1, m).
    """
    ssm, theta, Bp, xp = state
    f = ssm.dtype
    batch, heads, headdim = x.shape
    mimo = B.dim() == 4
    rank = B.shape[2] if mimo else 1
    use_c = x.device.type == "cpu" and batch * rank <= MAX_ROWS and not torch.compiler.is_compiling()
    fn = _function(f) if use_c else None
    if (fn is None or not (ssm.is_contiguous() and theta.is_contiguous() and Bp.is_contiguous()
                           and xp.is_contiguous())
            or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (
                x, dt, A, B, C, lam, angle, D, z, dt_bias, B_bias, C_bias, mimo_x, mimo_z, mimo_o)))):
        return mamba3_step_torch(state, x, dt, A, B, C, lam, angle, D, z, dt_bias, dt_softplus, B_bias, C_bias,
                                 mimo_x, mimo_z, mimo_o)
    n_angles = 0 if angle is None else angle.shape[-1]
    keep = [_ptr(t, f) for t in (x, dt, A, B, C, lam, angle if n_angles else None, D, z, dt_bias, B_bias, C_bias,
                                 mimo_x, mimo_z, mimo_o)]
    a = [address for _, address in keep]
    y = torch.empty(batch, heads, headdim, dtype=f)
    status = fn(batch, heads, headdim, B.shape[-1], rank, B.shape[1], n_angles,
                ssm.data_ptr(), theta.data_ptr(), Bp.data_ptr(), xp.data_ptr(),
                a[0], a[1], a[2], heads if A.dim() == 2 else 0, a[3], a[4], a[5], a[6],
                angle.shape[1] if n_angles else 1, a[7], a[8], a[9], int(dt_softplus), *a[10:], y.data_ptr())
    if status:
        raise MemoryError("mamba3_step: the C step could not allocate its scratch memory")
    return y if x.dtype == f else y.to(x.dtype)
