"""Executable specification of Mamba-2's state-space duality (SSD) layer: a plain loop over time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of, softplus


def ssd_naive(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None, reverse=False,
    chunk_size=256,
):
    """Same arguments as :func:`rawseq.kernels.ssd`; returns ``(y, final_state)``. ``chunk_size`` is ignored."""
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    batch, length, heads, headdim = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    xf = x.to(f)
    dtf = dt.to(f)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(f)
    if dt_softplus:
        dtf = softplus(dtf)
    Bh = B.to(f).repeat_interleave(heads // groups, dim=2)  # (b, l, g, n) -> (b, l, h, n)
    Ch = C.to(f).repeat_interleave(heads // groups, dim=2)
    h = x.new_zeros(batch, heads, headdim, nstate, dtype=f)
    if initial_state is not None:
        h = initial_state.to(f).clone()
    ys = [None] * length
    prev = None
    for t in reversed(range(length)) if reverse else range(length):
        if seq_idx is not None and prev is not None:
            h = h * (seq_idx[:, t] == seq_idx[:, prev]).to(f)[:, None, None, None]
        decay = torch.exp(dtf[:, t] * A.to(f))[:, :, None, None]  # (b, h, 1, 1)
        h = decay * h + (dtf[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]
        ys[t] = (h * Ch[:, t, :, None, :]).sum(-1)
        prev = t
    y = torch.stack(ys, dim=1) if length else xf.new_zeros(batch, 0, heads, headdim)
    if D is not None:
        y = y + xf * D.to(f)[:, None]
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(x.dtype), h


def ssd_step_naive(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One position; updates ``state`` (batch, heads, headdim, nstate) in place, returns y (batch, heads, headdim)."""
    f = state.dtype
    heads = x.shape[1]
    groups = B.shape[1]
    dtf = dt.to(f)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(f)
    if dt_softplus:
        dtf = softplus(dtf)
    Bh = B.to(f).repeat_interleave(heads // groups, dim=1)  # (b, g, n) -> (b, h, n)
    Ch = C.to(f).repeat_interleave(heads // groups, dim=1)
    xf = x.to(f)
    decay = torch.exp(dtf * A.to(f))[:, :, None, None]
    new = decay * state + (dtf[:, :, None] * xf)[..., None] * Bh[:, :, None, :]
    state.copy_(new)
    y = (new * Ch[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + xf * D.to(f)[:, None]
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(x.dtype)
