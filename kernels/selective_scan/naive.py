"""Executable specification of the Mamba-1 selective scan: a plain loop over time."""

from __future__ import annotations

import torch

from rawseq.kernels.common import float_dtype_of
from rawseq.kernels.common.math import naive_recurrence, skip_and_gate, step_sizes


def _update(h, x, delta, A, B, C):
    """One position for all channels: h (b, d, n), x and delta (b, d), A (d, n), B and C (b, g, n) -> (h, y (b, d))."""
    per_group = x.shape[1] // B.shape[1]
    B, C = B.repeat_interleave(per_group, dim=1), C.repeat_interleave(per_group, dim=1)  # (b, g, n) -> (b, d, n)
    h = torch.exp(delta[:, :, None] * A) * h + (delta * x)[:, :, None] * B
    return h, (h * C).sum(-1)


def selective_scan_naive(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None, reverse=False
):
    """Same arguments as :func:`rawseq.kernels.selective_scan`; returns ``(y, final_state)``.

    Computes in float32, or float64 when any input is float64, and casts ``y`` back to ``x.dtype``.
    """
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    batch, length, channels = x.shape
    xf, delta, Af, Bf, Cf = x.to(f), step_sizes(dt, dt_bias, dt_softplus, f), A.to(f), B.to(f), C.to(f)
    h = x.new_zeros(batch, channels, A.shape[1], dtype=f) if initial_state is None else initial_state.to(f).clone()
    y, h = naive_recurrence(lambda h, t: _update(h, xf[:, t], delta[:, t], Af, Bf[:, t], Cf[:, t]), h, length,
                            seq_idx, reverse)
    y = xf.new_zeros(batch, 0, channels) if y is None else y
    return skip_and_gate(y, xf, D, z).to(x.dtype), h


def selective_scan_step_naive(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One position of the recurrence; updates ``state`` (batch, channels, nstate) in place and returns y."""
    f = state.dtype
    xf = x.to(f)
    new, y = _update(state, xf, step_sizes(dt, dt_bias, dt_softplus, f), A.to(f), B.to(f), C.to(f))
    state.copy_(new)
    return skip_and_gate(y, xf, D, z).to(x.dtype)
