"""Executable specification of Mamba-2's state-space duality (SSD) layer: a plain loop over time."""

from __future__ import annotations

import torch

from rawseq.kernels.common import float_dtype_of
from rawseq.kernels.common.math import naive_recurrence, skip_and_gate, step_sizes


def _update(h, x, delta, A, B, C):
    """One position for all heads: h (b, h, p, n), x (b, h, p), delta (b, h), A (h,), B and C (b, g, n)."""
    per_group = x.shape[1] // B.shape[1]
    B, C = B.repeat_interleave(per_group, dim=1), C.repeat_interleave(per_group, dim=1)  # (b, g, n) -> (b, h, n)
    decay = torch.exp(delta * A)[:, :, None, None]  # (b, h, 1, 1)
    h = decay * h + (delta[:, :, None] * x)[..., None] * B[:, :, None, :]
    return h, (h * C[:, :, None, :]).sum(-1)


def ssd_naive(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None, reverse=False,
    chunk_size=256,
):
    """Same arguments as :func:`rawseq.kernels.ssd`; returns ``(y, final_state)``. ``chunk_size`` is ignored."""
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    batch, length, heads, headdim = x.shape
    xf, delta, Af, Bf, Cf = x.to(f), step_sizes(dt, dt_bias, dt_softplus, f), A.to(f), B.to(f), C.to(f)
    h = (x.new_zeros(batch, heads, headdim, B.shape[3], dtype=f) if initial_state is None
         else initial_state.to(f).clone())
    y, h = naive_recurrence(lambda h, t: _update(h, xf[:, t], delta[:, t], Af, Bf[:, t], Cf[:, t]), h, length,
                            seq_idx, reverse)
    y = xf.new_zeros(batch, 0, heads, headdim) if y is None else y
    return skip_and_gate(y, xf, None if D is None else D[:, None], z).to(x.dtype), h


def ssd_step_naive(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One position; updates ``state`` (batch, heads, headdim, nstate) in place, returns y (batch, heads, headdim)."""
    f = state.dtype
    xf = x.to(f)
    new, y = _update(state, xf, step_sizes(dt, dt_bias, dt_softplus, f), A.to(f), B.to(f), C.to(f))
    state.copy_(new)
    return skip_and_gate(y, xf, None if D is None else D[:, None], z).to(x.dtype)
