"""Decoding steps: one position of the conv window and of the SSM recurrences, updating the state in place.

Triton steps go through the public kernel functions. On CPU a small model's decoding time is the count of tensor
ops, not arithmetic (each op costs 2-8 us of dispatch at batch 1, about as much as a (1, 256) x (256, 1024)
matmul), so these steps compute what ``kernels/*/naive.py``'s ``*_step_naive`` compute (the tests check them
against the parallel scans) with as few ops as possible: no casts where dtypes already match, heads grouped with
views instead of ``repeat_interleave``, results written in place, and the public functions' argument checks
skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels import causal_conv1d_step, selective_scan_step, ssd_step
from rawseq.kernels.causal_conv1d.naive import causal_conv1d_step_naive
from rawseq.kernels.common import softplus


def _triton(backend: str, t: torch.Tensor) -> bool:
    return backend == "triton" or (backend == "auto" and t.device.type == "cuda")


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatch when it is already ``dtype`` (a no-op ``to`` costs ~1.5 us)."""
    return t if t.dtype == dtype else t.to(dtype)


def decay_rates(module) -> torch.Tensor:
    """``-exp(module.A_log)`` in float32, kept between decoding steps while ``A_log`` is unchanged (its in-place
    version counter and storage identify it), so that a step does not recompute it."""
    A_log = module.A_log
    key = (A_log._version, A_log.data_ptr(), A_log.device, A_log.dtype)
    cache = module.__dict__.get("_decay_cache")
    if cache is None or cache[0] != key:
        cache = (key, -torch.exp(A_log.detach().float()))
        module.__dict__["_decay_cache"] = cache
    return cache[1]


def conv_step(state, x, weight, bias, activation, backend):
    """state (b, d, w - 1), x (b, d), weight (d, w) -> (b, d); the window shifts in place."""
    if _triton(backend, x):
        return causal_conv1d_step(state, x, weight, bias, activation, backend=backend)
    if not (state.dtype == x.dtype == weight.dtype) or (bias is not None and bias.dtype != x.dtype):
        return causal_conv1d_step_naive(state, x, weight, bias, activation)
    window = torch.cat([state, x.unsqueeze(-1)], dim=-1)  # (b, d, w)
    y = torch.linalg.vecdot(window, weight)
    state.copy_(window[:, :, 1:])
    if bias is not None:
        y.add_(bias)
    if activation == "silu":
        F.silu(y, inplace=True)
    return y


def scan_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """Mamba-1: state (b, d, n) float32, x/dt/z (b, d), A (d, n), B/C (b, g, n) -> y (b, d)."""
    if _triton(backend, x):
        return selective_scan_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend=backend)
    f = state.dtype
    batch, channels = x.shape
    groups, n = B.shape[1], B.shape[2]
    dt = _as(dt, f) if dt_bias is None else _as(dt, f) + _as(dt_bias, f)
    if dt_softplus:
        dt = softplus(dt)
    xf = _as(x, f)
    grouped = state.view(batch, groups, channels // groups, n)  # channels of one group share B and C
    decay = torch.mul(dt.unsqueeze(-1), _as(A, f)).exp_().view_as(grouped)
    drive = (dt * xf).view(batch, groups, -1, 1) * _as(B, f).unsqueeze(2)
    torch.addcmul(drive, grouped, decay, out=grouped)
    y = torch.bmm(state.view(batch * groups, -1, n), _as(C, f).reshape(batch * groups, n, 1)).view(batch, channels)
    if D is not None:
        y.addcmul_(xf, _as(D, f))
    if z is not None:
        y.mul_(F.silu(_as(z, f)))
    return _as(y, x.dtype)


def ssd_step_fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """Mamba-2: state (b, h, p, n) float32, x/z (b, h, p), dt (b, h), A/D/dt_bias (h,), B/C (b, g, n) -> (b, h, p)."""
    if _triton(backend, x):
        return ssd_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend=backend)
    f = state.dtype
    batch, heads, headdim = x.shape
    groups, n = B.shape[1], B.shape[2]
    dt = _as(dt, f) if dt_bias is None else _as(dt, f) + _as(dt_bias, f)
    if dt_softplus:
        dt = softplus(dt)
    xf = _as(x, f)
    grouped = state.view(batch, groups, heads // groups, headdim, n)  # heads of one group share B and C
    decay = torch.mul(dt, _as(A, f)).exp_().view(batch, groups, -1, 1, 1)
    drive = (dt.unsqueeze(-1) * xf).view(batch, groups, -1, headdim, 1) * _as(B, f).view(batch, groups, 1, 1, n)
    torch.addcmul(drive, grouped, decay, out=grouped)
    y = torch.bmm(state.view(batch * groups, -1, n), _as(C, f).reshape(batch * groups, n, 1))
    y = y.view(batch, heads, headdim)
    if D is not None:
        y.addcmul_(xf, _as(D, f).unsqueeze(-1))
    if z is not None:
        y.mul_(F.silu(_as(z, f)))
    return _as(y, x.dtype)
