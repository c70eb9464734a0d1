"""Executable specification of the depthwise causal convolution: a plain loop over time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of


def _update(window, x, weight, bias, activation):
    """One position: window (b, d, w - 1) and x (b, d) -> (the next window, y (b, d))."""
    full = torch.cat([window, x.unsqueeze(-1)], dim=-1)  # (b, d, w)
    y = (full * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return full[:, :, 1:], (F.silu(y) if activation == "silu" else y)


def causal_conv1d_naive(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None):
    """Same arguments as :func:`rawseq.kernels.causal_conv1d`; returns ``(y, final_state)``.

    ``y_t = bias + sum_k weight[:, k] * u_{t - (width - 1) + k}`` where ``u`` is the input stream preceded by
    ``initial_state``; inputs of an earlier document (``seq_idx``) count as zero.
    """
    f = float_dtype_of(x, weight, bias, initial_state)
    batch, length, channels = x.shape
    w, b = weight.to(f), None if bias is None else bias.to(f)
    window = x.new_zeros(batch, channels, weight.shape[1] - 1, dtype=f)
    if initial_state is not None:
        window = initial_state.to(f).clone()
    ys = []
    for t in range(length):
        if seq_idx is not None and t > 0:  # selection, so that a non-finite input never reaches the next document
            window = torch.where((seq_idx[:, t] == seq_idx[:, t - 1])[:, None, None], window, 0.0)
        window, y = _update(window, x[:, t].to(f), w, b, activation)
        ys.append(y)
    y = torch.stack(ys, dim=1) if length else x.new_zeros(batch, 0, channels, dtype=f)
    return y.to(x.dtype), window.to(x.dtype)


def causal_conv1d_step_naive(state, x, weight, bias=None, activation=None):
    """One position: shifts ``state`` (batch, channels, width - 1) in place and returns y (batch, channels)."""
    f = float_dtype_of(x, weight, bias)
    window, y = _update(state.to(f), x.to(f), weight.to(f), None if bias is None else bias.to(f), activation)
    state.copy_(window)
    return y.to(x.dtype)
