"""Executable specification of the Mamba-1 selective scan: a plain loop over time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of, softplus


def selective_scan_naive(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None, reverse=False
):
    """Same arguments as :func:`rawseq.kernels.selective_scan`; returns ``(y, final_state)``.

    Computes in float32, or float64 when any input is float64, and casts ``y`` back to ``x.dtype``.
    """
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    batch, length, channels = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    xf, dtf, Af = x.to(f), dt.to(f), A.to(f)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(f)
    if dt_softplus:
        dtf = softplus(dtf)
    Bc = B.to(f).repeat_interleave(channels // groups, dim=2)  # (b, l, g, n) -> (b, l, d, n)
    Cc = C.to(f).repeat_interleave(channels // groups, dim=2)
    h = torch.zeros(batch, channels, nstate, dtype=f, device=x.device)
    if initial_state is not None:
        h = initial_state.to(f).clone()
    ys = [None] * length
    prev = None
    for t in reversed(range(length)) if reverse else range(length):
        if seq_idx is not None and prev is not None:
            h = h * (seq_idx[:, t] == seq_idx[:, prev]).to(f)[:, None, None]
        h = torch.exp(dtf[:, t, :, None] * Af) * h + (dtf[:, t] * xf[:, t])[:, :, None] * Bc[:, t]
        ys[t] = (h * Cc[:, t]).sum(-1)
        prev = t
    y = torch.stack(ys, dim=1) if length else xf.new_zeros(batch, 0, channels)
    if D is not None:
        y = y + xf * D.to(f)
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(x.dtype), h


def selective_scan_step_naive(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One position of the recurrence; updates ``state`` (batch, channels, nstate) in place and returns y."""
    f = state.dtype
    channels = x.shape[1]
    groups = B.shape[1]
    dtf = dt.to(f)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(f)
    if dt_softplus:
        dtf = softplus(dtf)
    Bc = B.to(f).repeat_interleave(channels // groups, dim=1)  # (b, g, n) -> (b, d, n)
    Cc = C.to(f).repeat_interleave(channels // groups, dim=1)
    xf = x.to(f)
    new = torch.exp(dtf[:, :, None] * A.to(f)) * state + (dtf * xf)[:, :, None] * Bc
    state.copy_(new)
    y = (new * Cc).sum(-1)
    if D is not None:
        y = y + xf * D.to(f)
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(x.dtype)
