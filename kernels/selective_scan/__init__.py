"""Mamba-1 selective scan: ``selective_scan`` over a sequence and ``selective_scan_step`` for decoding.

Recurrence, per channel ``c`` and state index ``s`` (``g = c // (channels // groups)``)::

    dt_t = softplus(dt_t + dt_bias)                       (if dt_softplus)
    h_t  = exp(dt_t * A[c]) * h_{t-1} + dt_t * B_t[g] * x_t
    y_t  = sum_s C_t[g, s] * h_t[s] + D[c] * x_t
    out  = y * silu(z)                                    (if z is given)

``naive.py`` is the specification, ``chunked.py`` the fast CPU path (the "torch" backend), ``triton.py`` the
GPU kernels.
"""

from __future__ import annotations

import torch

from rawseq.kernels.common import check_same_device, check_tensor, resolve_backend
from rawseq.kernels.common.checks import INT_DTYPES, check_divisible
from rawseq.kernels.selective_scan.naive import selective_scan_naive, selective_scan_step_naive

__all__ = ["selective_scan", "selective_scan_step"]

_BACKENDS = ("naive", "torch", "triton")


def _check(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx):
    check_tensor("x", x, (None, None, None), "batch, length, channels")
    batch, length, channels = x.shape
    check_tensor("dt", dt, (batch, length, channels), "batch, length, channels")
    check_tensor("A", A, (channels, None), "channels, nstate")
    nstate = A.shape[1]
    check_tensor("B", B, (batch, length, None, nstate), "batch, length, groups, nstate")
    groups = B.shape[2]
    check_divisible("channels", channels, "groups", groups)
    check_tensor("C", C, (batch, length, groups, nstate), "batch, length, groups, nstate")
    check_tensor("D", D, (channels,), "channels", optional=True)
    check_tensor("z", z, (batch, length, channels), "batch, length, channels", optional=True)
    check_tensor("dt_bias", dt_bias, (channels,), "channels", optional=True)
    check_tensor("initial_state", initial_state, (batch, channels, nstate), "batch, channels, nstate", optional=True)
    check_tensor("seq_idx", seq_idx, (batch, length), "batch, length", dtypes=INT_DTYPES, optional=True)
    return check_same_device(
        x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state, seq_idx=seq_idx
    )


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    seq_idx: torch.Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
):
    """Mamba-1 selective scan over a batch of sequences.

    Args:
        x: (batch, length, channels) inputs.
        dt: (batch, length, channels) step sizes before ``dt_bias`` and softplus.
        A: (channels, nstate) negative continuous-time decay rates, used as given (not negated).
        B, C: (batch, length, groups, nstate); channel ``c`` uses group ``c // (channels // groups)``.
        D: (channels,) skip connection, or None.
        z: (batch, length, channels) gate, applied as ``y * silu(z)``, or None.
        dt_bias: (channels,) added to ``dt`` before softplus, or None.
        dt_softplus: apply softplus to ``dt + dt_bias``.
        initial_state: (batch, channels, nstate) state before the first position (the last if ``reverse``).
        return_final_state: also return the state after the last position scanned.
        seq_idx: (batch, length) integer document ids; the state resets to zero wherever the id changes.
        reverse: scan from the end of the sequence to its start.
        backend: "auto", "naive", "torch" or "triton".

    Returns:
        y: (batch, length, channels) in ``x.dtype``; with ``return_final_state`` also the final state
        (batch, channels, nstate) in float32 (float64 for float64 inputs).
    """
    device = _check(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx)
    backend = resolve_backend(backend, device, op="selective_scan", available=_BACKENDS, dtype=x.dtype)
    args = (x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse)
    if backend == "naive":
        y, state = selective_scan_naive(*args)
    elif backend == "torch":
        from rawseq.kernels.selective_scan.chunked import selective_scan_torch

        y, state = selective_scan_torch(*args)
    else:
        from rawseq.kernels.selective_scan.triton import selective_scan_triton

        y, state = selective_scan_triton(*args)
    return (y, state) if return_final_state else y


def selective_scan_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Advance a batch of decoding streams by one position, updating ``state`` in place.

    Args:
        state: (batch, channels, nstate) float32 (or float64) state, modified in place.
        x, dt, z: (batch, channels).
        A: (channels, nstate). B, C: (batch, groups, nstate). D, dt_bias: (channels,).

    Returns:
        y: (batch, channels) in ``x.dtype``.
    """
    check_tensor("x", x, (None, None), "batch, channels")
    batch, channels = x.shape
    check_tensor("A", A, (channels, None), "channels, nstate")
    nstate = A.shape[1]
    check_tensor("state", state, (batch, channels, nstate), "batch, channels, nstate",
                 dtypes=(torch.float32, torch.float64))
    check_tensor("dt", dt, (batch, channels), "batch, channels")
    check_tensor("B", B, (batch, None, nstate), "batch, groups, nstate")
    groups = B.shape[1]
    check_divisible("channels", channels, "groups", groups)
    check_tensor("C", C, (batch, groups, nstate), "batch, groups, nstate")
    check_tensor("D", D, (channels,), "channels", optional=True)
    check_tensor("z", z, (batch, channels), "batch, channels", optional=True)
    check_tensor("dt_bias", dt_bias, (channels,), "channels", optional=True)
    device = check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    backend = resolve_backend(backend, device, op="selective_scan_step", available=_BACKENDS, dtype=x.dtype)
    args = (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if backend == "triton":
        from rawseq.kernels.selective_scan.triton import selective_scan_step_triton

        return selective_scan_step_triton(*args)
    return selective_scan_step_naive(*args)
