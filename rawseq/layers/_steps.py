"""Decoding steps: one position of the conv window and of the SSM recurrences, updating the state in place.

Triton steps go through the public kernel functions. On CPU a small model's decoding time is the count of tensor
ops, not arithmetic, so these steps compute what ``kernels/*/naive.py``'s ``*_step_naive`` compute (the tests
check them against the parallel scans) with fewer ops: heads are grouped with views instead of
``repeat_interleave``, the state is updated in place, and the public functions' argument checks are skipped. The
conv window uses the naive step itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels import causal_conv1d_step, selective_scan_step, ssd_step
from rawseq.kernels.causal_conv1d.naive import causal_conv1d_step_naive
from rawseq.kernels.common import softplus


def _triton(backend: str, t: torch.Tensor) -> bool:
    return backend == "triton" or (backend == "auto" and t.device.type == "cuda")


def conv_step(state, x, weight, bias, activation, backend):
    """state (b, d, w - 1), x (b, d), weight (d, w) -> (b, d); the window shifts in place."""
    if _triton(backend, x):
        return causal_conv1d_step(state, x, weight, bias, activation, backend=backend)
    return causal_conv1d_step_naive(state, x, weight, bias, activation)


def scan_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """Mamba-1: state (b, d, n) float32, x/dt/z (b, d), A (d, n), B/C (b, g, n) -> y (b, d)."""
    if _triton(backend, x):
        return selective_scan_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend=backend)
    f = state.dtype
    batch, channels = x.shape
    groups, n = B.shape[1], B.shape[2]
    dt = dt.to(f) if dt_bias is None else dt.to(f) + dt_bias.to(f)
    if dt_softplus:
        dt = softplus(dt)
    xf = x.to(f)
    grouped = state.view(batch, groups, channels // groups, n)  # channels of one group share B and C
    grouped.mul_(torch.exp(dt.unsqueeze(-1) * A.to(f)).view_as(grouped))
    grouped.add_((dt * xf).view(batch, groups, -1, 1) * B.to(f).unsqueeze(2))
    # A product and a sum: at batch 1 a (p, n) @ (n, 1) bmm costs ~20x more in dispatch than the arithmetic.
    y = (grouped * C.to(f).view(batch, groups, 1, n)).sum(-1).view(batch, channels)
    if D is not None:
        y = y.addcmul_(xf, D.to(f))
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(x.dtype)


def ssd_step_fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """Mamba-2: state (b, h, p, n) float32, x/z (b, h, p), dt (b, h), A/D/dt_bias (h,), B/C (b, g, n) -> (b, h, p)."""
    if _triton(backend, x):
        return ssd_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend=backend)
    f = state.dtype
    batch, heads, headdim = x.shape
    groups, n = B.shape[1], B.shape[2]
    dt = dt.to(f) if dt_bias is None else dt.to(f) + dt_bias.to(f)
    if dt_softplus:
        dt = softplus(dt)
    xf = x.to(f)
    grouped = state.view(batch, groups, heads // groups, headdim, n)  # heads of one group share B and C
    grouped.mul_(torch.exp(dt * A.to(f)).view(batch, groups, -1, 1, 1))
    drive = (dt.unsqueeze(-1) * xf).view(batch, groups, -1, headdim, 1)
    grouped.add_(drive * B.to(f).view(batch, groups, 1, 1, n))
    y = (grouped * C.to(f).view(batch, groups, 1, 1, n)).sum(-1).view(batch, heads, headdim)
    if D is not None:
        y = y.addcmul_(xf, D.to(f).unsqueeze(-1))
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(x.dtype)
