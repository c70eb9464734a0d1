"""Fast CPU path of the causal depthwise convolution: ``width`` shifted multiply-adds with a hand-written backward
(registered in ``rawseq.kernels.library``), and its decoding step.

The input is kept in its (batch, length, channels) layout, channels innermost, and prefixed with the
``width - 1`` inputs that precede it; tap ``k`` then reads the contiguous-per-row slice ``u[:, k : k + length]``.
A depthwise ``conv1d`` would need (batch, channels, length) copies in and out, and its CPU backward is much
slower than these few passes over the input.
With ``seq_idx``, the taps that would reach into an earlier document are dropped by selection, so that a
non-finite input of one document never reaches the next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.causal_conv1d.naive import causal_conv1d_step_naive
from rawseq.kernels.common import float_dtype_of
from rawseq.kernels.common.math import all_finite, segments_from_seq_idx


def _prepare(x, weight, bias, initial_state, seq_idx, f):
    """u = [prefix, x] (b, w - 1 + l, d) in f; taps (w, d); bias in f; per tap ``k < w - 1`` a (b, l, 1) bool mask
    of the positions whose input at lag ``w - 1 - k`` is in the same document (None without ``seq_idx``); and a
    (b, 1, w - 1) mask of the final window's entries in the last document."""
    batch, length, channels = x.shape
    width = weight.shape[1]
    if initial_state is None:
        prefix = x.new_zeros(batch, width - 1, channels, dtype=f)
    else:
        prefix = initial_state.to(f).transpose(1, 2)  # (b, d, w - 1) -> (b, w - 1, d)
    u = torch.cat([prefix, x.to(f)], dim=1)
    taps = weight.to(f).t().contiguous()  # (w, d): each tap's channel weights contiguous
    valid = tail = None
    if seq_idx is not None and width > 1:
        # segment[t] counts the document starts up to t; a tap at lag j is valid iff segment[t] == segment[t - j].
        seg = segments_from_seq_idx(seq_idx)
        seg = torch.cat([seg.new_zeros(batch, width - 1), seg], dim=1)  # the prefix belongs to the first document
        now = seg[:, width - 1 :]
        valid = [(now == seg[:, k : k + length]).unsqueeze(-1) for k in range(width - 1)]
        tail = (seg[:, seg.shape[1] - (width - 1) :] == seg[:, -1:]).unsqueeze(1)
    return u, taps, None if bias is None else bias.to(f), valid, tail


def _tap(u, valid, k, length):
    tap = u[:, k : k + length]
    return tap if valid is None else torch.where(valid[k], tap, 0.0)


def causal_conv1d_forward(x, weight, bias, activation, initial_state, seq_idx):
    """Returns y (b, l, d) and the final window (b, d, w - 1) in x.dtype, and for SiLU the output before the
    activation (float32, or float64 for float64 inputs; else an empty tensor)."""
    f = float_dtype_of(x, weight, bias, initial_state)
    length = x.shape[1]
    width = weight.shape[1]
    u, taps, b, valid, tail = _prepare(x, weight, bias, initial_state, seq_idx, f)
    xf = u[:, width - 1 :]
    y = xf * taps[-1] if b is None else torch.addcmul(b, xf, taps[-1])
    for k in range(width - 1):
        y.addcmul_(_tap(u, valid, k, length), taps[k])
    final = u[:, length:].transpose(1, 2)  # the last w - 1 inputs, (b, w - 1, d) -> (b, d, w - 1)
    if tail is not None:
        final = torch.where(tail, final, 0.0)
    pre = y if activation == "silu" else y.new_empty(0)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), final.to(x.dtype), pre


def causal_conv1d_backward(gy, gfinal, x, weight, bias, activation, initial_state, seq_idx, pre):
    """Gradients (x, weight, bias, initial_state), None for absent inputs."""
    f = float_dtype_of(x, weight, bias, initial_state)
    length = x.shape[1]
    width = weight.shape[1]
    u, taps, _, valid, tail = _prepare(x, weight, bias, initial_state, seq_idx, f)
    gy = gy.to(f)
    if activation == "silu":
        # An output that the loss does not use passes nothing back, even where its input is inf or NaN (where
        # silu' times the zero gradient would be NaN and reach the inputs of earlier outputs); with finite inputs
        # silu' is finite and the selection is not needed.
        dpre = torch.ops.aten.silu_backward(gy, pre)
        gy = dpre if all_finite(pre) else torch.where(gy == 0, 0.0, dpre)
    gu = torch.empty_like(u)  # gradient of [prefix, x]
    torch.mul(gy, taps[-1], out=gu[:, width - 1 :])
    gu[:, : width - 1].zero_()
    dtaps = torch.empty_like(taps)
    dtaps[-1] = (gy * u[:, width - 1 :]).sum((0, 1))
    for k in range(width - 1):
        g = gy if valid is None else torch.where(valid[k], gy, 0.0)
        gu[:, k : k + length].addcmul_(g, taps[k])
        dtaps[k] = (g * u[:, k : k + length]).sum((0, 1))
    if gfinal is not None:
        gtail = gfinal.to(f)
        if tail is not None:
            gtail = torch.where(tail, gtail, 0.0)
        gu[:, length:] += gtail.transpose(1, 2)
    db = None if bias is None else gy.sum((0, 1)).to(bias.dtype)
    dinit = None if initial_state is None else gu[:, : width - 1].transpose(1, 2).to(initial_state.dtype, copy=True)
    return gu[:, width - 1 :].to(x.dtype), dtaps.t().to(weight.dtype), db, dinit


def causal_conv1d_step_torch(state, x, weight, bias=None, activation=None):
    """One position with few tensor ops for tensors of one dtype (else the naive step): state (b, d, w - 1) shifts
    in place, x (b, d) -> y (b, d)."""
    if not (state.dtype == x.dtype == weight.dtype) or (bias is not None and bias.dtype != x.dtype):
        return causal_conv1d_step_naive(state, x, weight, bias, activation)
    window = torch.cat([state, x.unsqueeze(-1)], dim=-1)  # (b, d, w)
    state.copy_(window[:, :, 1:])
    y = torch.linalg.vecdot(window, weight)
    if bias is not None:
        y.add_(bias)
    return F.silu(y, inplace=True) if activation == "silu" else y
