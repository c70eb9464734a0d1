"""Executable specification of the depthwise causal convolution: a plain loop over time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of


def causal_conv1d_naive(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None):
    """Same arguments as :func:`rawseq.kernels.causal_conv1d`; returns ``(y, final_state)``.

    ``y_t = bias + sum_k weight[:, k] * u_{t - (width - 1) + k}`` where ``u`` is the input stream preceded by
    ``initial_state``; inputs of an earlier document (``seq_idx``) count as zero.
    """
    f = float_dtype_of(x, weight, bias, initial_state)
    batch, length, channels = x.shape
    width = weight.shape[1]
    w = weight.to(f)
    window = x.new_zeros(batch, channels, width - 1, dtype=f)
    if initial_state is not None:
        window = initial_state.to(f).clone()
    ys = []
    for t in range(length):
        if seq_idx is not None and t > 0:
            window = window * (seq_idx[:, t] == seq_idx[:, t - 1]).to(f)[:, None, None]
        full = torch.cat([window, x[:, t].to(f).unsqueeze(-1)], dim=-1)  # (b, d, width)
        y = (full * w).sum(-1)
        if bias is not None:
            y = y + bias.to(f)
        ys.append(y)
        window = full[:, :, 1:]
    y = torch.stack(ys, dim=1) if length else x.new_zeros(batch, 0, channels, dtype=f)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), window.to(x.dtype)


def causal_conv1d_step_naive(state, x, weight, bias=None, activation=None):
    """One position: shifts ``state`` (batch, channels, width - 1) in place and returns y (batch, channels)."""
    f = float_dtype_of(x, weight, bias)
    full = torch.cat([state.to(f), x.to(f).unsqueeze(-1)], dim=-1)
    y = (full * weight.to(f)).sum(-1)
    if bias is not None:
        y = y + bias.to(f)
    if activation == "silu":
        y = F.silu(y)
    state.copy_(full[:, :, 1:])
    return y.to(x.dtype)
