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
from rawseq.layers.norm import rms_norm_rows


def _triton(backend: str, t: torch.Tensor) -> bool:
    return backend == "triton" or (backend == "auto" and t.device.type == "cuda")


def lean_cpu_step(layer, hidden: torch.Tensor) -> bool:
    """Whether ``layer`` can take the lean CPU step below: CPU, float32 input and weights, no forced backend."""
    return (
        hidden.device.type == "cpu"
        and hidden.dtype == torch.float32
        and layer.in_proj.weight.dtype == torch.float32
        and layer.backend in ("auto", "torch")
    )


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
    return _conv_cpu(state, x, weight, bias, activation == "silu")


def _conv_cpu(state, x, weight, bias, silu: bool):
    """The conv step for CPU tensors of one dtype, without checks: state (b, d, w - 1), x (b, d) -> (b, d)."""
    window = torch.cat([state, x.unsqueeze(-1)], dim=-1)  # (b, d, w)
    state.copy_(window[:, :, 1:])
    y = torch.linalg.vecdot(window, weight)
    if bias is not None:
        y.add_(bias)
    return F.silu(y, inplace=True) if silu else y


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


# Lean float32 CPU steps of whole mixers. They do what ``Mamba.step`` / ``Mamba2.step`` do through the functions
# above, minus what costs time at batch 1 beyond the arithmetic: casts, ``split`` (7 us; slices cost 1.5 us each),
# extra views (~1.4 us each) and nn.Module attribute lookups (~0.8 us per level). Measured: 8-10% of a batch-1
# Mamba-1 or Mamba-2 step against the generic path (generic and lean steps interleaved in one process).


def mamba_step_cpu(layer, hidden: torch.Tensor, state: dict) -> torch.Tensor:
    """Mamba-1 (one group of B/C): hidden (b, d_model) -> (b, d_model); ``state`` is updated in place."""
    params, mods = layer._parameters, layer._modules
    in_proj, out_proj = mods["in_proj"], mods["out_proj"]
    d, r, n = layer.d_inner, layer.dt_rank, layer.d_state
    xz = F.linear(hidden, in_proj.weight, in_proj.bias)  # (b, 2 d)
    x = _conv_cpu(state["conv"], xz[:, :d], params["conv_weight"], params.get("conv_bias"), True)
    dbc = F.linear(x, mods["x_proj"].weight)  # (b, dt_rank + 2 n)
    dt_proj = mods["dt_proj"]
    dt = F.softplus(F.linear(dbc[:, :r], dt_proj.weight, dt_proj.bias))  # (b, d); threshold 20 as softplus()
    ssm = state["ssm"]  # (b, d, n)
    decay = torch.mul(dt.unsqueeze(-1), decay_rates(layer)).exp_()
    drive = (dt * x).unsqueeze(-1) * dbc[:, None, r : r + n]
    torch.addcmul(drive, ssm, decay, out=ssm)
    y = torch.bmm(ssm, dbc[:, r + n :, None]).squeeze(-1)  # C: (b, n, 1)
    y.addcmul_(x, params["D"]).mul_(F.silu(xz[:, d:]))
    return F.linear(y, out_proj.weight, out_proj.bias)


def mamba2_step_cpu(layer, hidden: torch.Tensor, state: dict) -> torch.Tensor:
    """Mamba-2: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place."""
    params, mods = layer._parameters, layer._modules
    in_proj, out_proj, norm = mods["in_proj"], mods["out_proj"], mods["norm"]
    d, h, p, g, n = layer.d_inner, layer.nheads, layer.headdim, layer.n_groups, layer.d_state
    conv_end = d + layer.conv_dim
    zxbcdt = F.linear(hidden, in_proj.weight, in_proj.bias)  # (b, d + conv_dim + h)
    xbc = _conv_cpu(state["conv"], zxbcdt[:, d:conv_end], params["conv_weight"], params.get("conv_bias"), True)
    dt = F.softplus(zxbcdt[:, conv_end:] + params["dt_bias"])  # (b, h); threshold 20 as softplus()
    if layer.dt_limit is not None:
        dt = dt.clamp(*layer.dt_limit)
    b = hidden.shape[0]
    grouped = state["ssm"].view(b, g, h // g, p, n)  # heads of one group share B and C
    decay = torch.mul(dt, decay_rates(layer)).exp_().view(b, g, -1, 1, 1)
    x = xbc[:, :d]
    drive = (dt.unsqueeze(-1) * x.view(b, h, p)).view(b, g, -1, p, 1) * xbc[:, d : d + g * n].view(b, g, 1, 1, n)
    torch.addcmul(drive, grouped, decay, out=grouped)
    y = torch.bmm(grouped.view(b * g, -1, n), xbc[:, d + g * n :].reshape(b * g, n, 1)).view(b, h, p)
    y = y.addcmul_(x.view(b, h, p), params["D"].unsqueeze(-1)).view(b, d)
    z = zxbcdt[:, :d]
    if g == 1:
        y = rms_norm_rows(y.mul_(F.silu(z)), norm.weight, norm.eps)
    else:
        y = norm(y, z)
    return F.linear(y, out_proj.weight, out_proj.bias)
