"""Launchers of the causal-conv kernels and the Triton entry points.

``causal_conv1d_fwd`` and ``causal_conv1d_bwd`` are plain (no autograd) launches on the op's own arguments; nothing
beyond the inputs is kept for the backward. :mod:`rawseq.kernels.library` registers them as the
``rawseq::causal_conv1d`` op with its autograd, which :func:`rawseq.kernels.causal_conv1d` calls;
``causal_conv1d_triton`` calls that op on this backend and ``causal_conv1d_step_triton`` is the decoding step.
Float64 inputs are rejected with a ValueError: use the ``torch`` backend for float64.
"""

from __future__ import annotations

import torch
import triton

from rawseq.kernels.causal_conv1d.triton.kernels import (
    _causal_conv1d_bwd_kernel,
    _causal_conv1d_fwd_kernel,
    _causal_conv1d_step_kernel,
)
from rawseq.kernels.common.triton_utils import last_dim_contiguous, next_pow2, reject_float64


def block_config(channels: int, width: int) -> tuple[int, int, int, int]:
    """(BLOCK_L, BLOCK_D, BLOCK_W, num_warps)."""
    return 32, min(next_pow2(channels), 64), next_pow2(max(width - 1, 1)), 4


def _segments(seq_idx):
    """(batch, length) ids -> int32 segment numbers: the count of document starts up to each position."""
    if seq_idx is None:
        return None
    starts = torch.zeros(seq_idx.shape, dtype=torch.int32, device=seq_idx.device)
    starts[:, 1:] = (seq_idx[:, 1:] != seq_idx[:, :-1]).to(torch.int32)
    return starts.cumsum(1, dtype=torch.int32).contiguous()


def _contiguous(t):
    return None if t is None else t.contiguous()


def _prepare(x, weight, bias, initial_state, seq_idx):
    reject_float64("causal conv1d", x, weight, bias, initial_state)
    return last_dim_contiguous(x), weight.contiguous(), _contiguous(bias), _contiguous(initial_state), \
        _segments(seq_idx)


def _launch_fwd(x, weight, bias, activation, init, seg, dy=None):
    """y and the final window; with ``dy``, instead the float32 gradient at the pre-activation (and no window)."""
    batch, length, channels = x.shape
    width = weight.shape[1]
    block_l, block_d, block_w, num_warps = block_config(channels, width)
    grad_pre = dy is not None
    y = torch.empty(batch, length, channels, dtype=torch.float32 if grad_pre else x.dtype, device=x.device)
    final = torch.empty(batch, channels, width - 1, dtype=x.dtype, device=x.device)
    if length == 0:
        if init is None:
            final.zero_()
        else:
            final.copy_(init)
        return y, final
    grid = (triton.cdiv(channels, block_d), triton.cdiv(length, block_l), batch)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, init if init is not None else final,
        seg if seg is not None else x, dy if grad_pre else x, y, final,
        length, channels,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        dy.stride(0) if grad_pre else 0, dy.stride(1) if grad_pre else 0,
        init.stride(0) if init is not None else 0, init.stride(1) if init is not None else 0,
        final.stride(0), final.stride(1), seg.stride(0) if seg is not None else 0,
        HAS_BIAS=bias is not None, HAS_INIT=init is not None, HAS_SEQ=seg is not None,
        SILU=activation == "silu", GRAD_PRE=grad_pre, WIDTH=width, BLOCK_L=block_l, BLOCK_D=block_d,
        BLOCK_W=block_w, num_warps=num_warps,
    )
    return y, final


def causal_conv1d_fwd(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None):
    """Forward of the Triton causal conv without autograd (arguments as :func:`rawseq.kernels.causal_conv1d`).

    Returns:
        y: (batch, length, channels) and final_state: (batch, channels, width - 1), both in ``x.dtype``.
    """
    x, weight, bias, init, seg = _prepare(x, weight, bias, initial_state, seq_idx)
    return _launch_fwd(x, weight, bias, activation, init, seg)


def causal_conv1d_bwd(dy, dfinal, x, weight, bias=None, activation=None, initial_state=None, seq_idx=None):
    """Backward of the Triton causal conv without autograd.

    Args:
        dy: gradient of y, or None (zero); dfinal: gradient of the final window, or None (zero).
        x ... seq_idx: the arguments of :func:`causal_conv1d_fwd`.

    Returns:
        (dx, dweight, dbias, dinitial_state), each in its input's dtype and None for an input that was None.
    """
    inputs = (x, weight, bias, initial_state)
    x, weight, bias, init, seg = _prepare(x, weight, bias, initial_state, seq_idx)
    batch, length, channels = x.shape
    width = weight.shape[1]
    block_l, block_d, block_w, num_warps = block_config(channels, width)
    nl = triton.cdiv(length, block_l)
    dy = last_dim_contiguous(dy) if dy is not None else torch.zeros_like(x)
    if activation == "silu":
        g, _ = _launch_fwd(x, weight, bias, activation, init, seg, dy=dy)
    else:
        g = dy
    dx = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
    dw = torch.empty(batch, nl + (init is not None), channels, width, dtype=torch.float32, device=x.device)
    dbias = torch.empty(batch, nl, channels, dtype=torch.float32, device=x.device)
    dinit = torch.empty(batch, channels, width - 1, dtype=torch.float32, device=x.device)
    if length == 0:
        dinit = dfinal.float() if dfinal is not None else torch.zeros_like(dinit)
    else:
        if dfinal is not None:
            dfinal = dfinal.contiguous()
        grid = (triton.cdiv(channels, block_d), nl, batch)
        _causal_conv1d_bwd_kernel[grid](
            g, x, weight, init if init is not None else dinit, seg if seg is not None else x,
            dfinal if dfinal is not None else dinit, dx, dw, dbias, dinit,
            length, channels,
            g.stride(0), g.stride(1), x.stride(0), x.stride(1), dx.stride(0), dx.stride(1),
            init.stride(0) if init is not None else 0, init.stride(1) if init is not None else 0,
            dfinal.stride(0) if dfinal is not None else 0, dfinal.stride(1) if dfinal is not None else 0,
            seg.stride(0) if seg is not None else 0,
            HAS_INIT=init is not None, HAS_SEQ=seg is not None, HAS_DFINAL=dfinal is not None,
            WIDTH=width, BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_W=block_w, num_warps=num_warps,
        )
    grads = (dx, dw.sum((0, 1)), dbias.sum((0, 1)), dinit)
    return tuple(None if t is None else g.to(t.dtype) for g, t in zip(grads, inputs))


def causal_conv1d_triton(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None):
    """The registered ``causal_conv1d`` op (:mod:`rawseq.kernels.library`) on these kernels, differentiable,
    without the public function's argument checks; same arguments as :func:`rawseq.kernels.causal_conv1d`, returns
    ``(y, final_state)`` in ``x.dtype``."""
    from rawseq.kernels import library

    return library.causal_conv1d(x, weight, bias, activation, initial_state, seq_idx, "triton")


def causal_conv1d_step_triton(state, x, weight, bias=None, activation=None):
    """Same arguments as :func:`rawseq.kernels.causal_conv1d_step`; shifts ``state`` in place, returns y."""
    reject_float64("causal conv1d", state, x, weight, bias)
    batch, channels = x.shape
    width = weight.shape[1]
    _, block_d, block_w, _ = block_config(channels, width)
    weight = weight.contiguous()
    bias = _contiguous(bias)
    x = last_dim_contiguous(x)
    y = torch.empty(batch, channels, dtype=x.dtype, device=x.device)
    _causal_conv1d_step_kernel[(triton.cdiv(channels, block_d), batch)](
        state, x, weight, bias if bias is not None else weight, y, channels,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, SILU=activation == "silu", WIDTH=width, BLOCK_D=block_d, BLOCK_W=block_w,
    )
    return y
