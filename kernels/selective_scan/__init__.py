"""Mamba-1 selective scan: ``selective_scan`` over a sequence and ``selective_scan_step`` for decoding.

Recurrence, per channel ``c`` and state index ``s`` (``g = c // (channels // groups)``)::

    dt_t = softplus(dt_t + dt_bias)                       (if dt_softplus)
    h_t  = exp(dt_t * A[c]) * h_{t-1} + dt_t * B_t[g] * x_t
    y_t  = sum_s C_t[g, s] * h_t[s] + D[c] * x_t
    out  = y * silu(z)                                    (if z is given)

``naive.py`` is the specification, ``chunked.py`` the fast CPU path and decoding step (the "torch" backend),
``triton`` the GPU kernels; ``rawseq.kernels.library`` registers the fast backends as one custom op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rawseq.kernels import library
from rawseq.kernels.common import TensorArgs, resolve_backend, step_function
from rawseq.kernels.common.checks import INT_DTYPES
from rawseq.kernels.selective_scan import chunked
from rawseq.kernels.selective_scan.chunked import selective_scan_step_torch
from rawseq.kernels.selective_scan.naive import selective_scan_naive, selective_scan_step_naive

__all__ = ["selective_scan", "selective_scan_step"]

_BACKENDS = ("naive", "torch", "triton")
_ARGS = TensorArgs(
    {"x": "batch length channels", "dt": "batch length channels", "A": "channels nstate",
     "B": "batch length groups nstate", "C": "batch length groups nstate", "D": "channels",
     "z": "batch length channels", "dt_bias": "channels", "initial_state": "batch channels nstate",
     "seq_idx": "batch length"},
    optional=("D", "z", "dt_bias", "initial_state", "seq_idx"), dtypes={"seq_idx": INT_DTYPES},
    nonzero=("channels", "nstate", "groups"), divisible=[("channels", "groups")],
)
_STEP_ARGS = _ARGS.without("length", state="batch channels nstate", initial_state="", seq_idx="",
                           dtypes={"state": (torch.float32, torch.float64)})
_STEPS = {"naive": selective_scan_step_naive, "torch": selective_scan_step_torch}


def selective_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    dt_bias: Tensor | None = None, dt_softplus: bool = True, initial_state: Tensor | None = None,
    return_final_state: bool = False, seq_idx: Tensor | None = None, reverse: bool = False, backend: str = "auto",
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
    _, device = _ARGS.check(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx)
    backend = resolve_backend(backend, device, op="selective_scan", available=_BACKENDS, dtype=x.dtype)
    args = (x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse)
    if backend == "naive":
        y, state = selective_scan_naive(*args)
    else:
        y, state = library.selective_scan(*args, chunked.CHUNK, backend)
    return (y, state) if return_final_state else y


def selective_scan_step(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True, backend: str = "auto",
    check: bool = True,
) -> Tensor:
    """Advance a batch of decoding streams by one position, updating ``state`` in place.

    Args:
        state: (batch, channels, nstate) float32 (or float64) state, modified in place.
        x, dt, z: (batch, channels).
        A: (channels, nstate). B, C: (batch, groups, nstate). D, dt_bias: (channels,).
        check: False skips the argument checks for CPU tensors (for callers that build them, as layers do).

    Returns:
        y: (batch, channels) in ``x.dtype``.
    """
    device = x.device
    if check or device.type != "cpu":
        _, device = _STEP_ARGS.check(state, x, dt, A, B, C, D, z, dt_bias)
    step = step_function("selective_scan", backend, device, x.dtype, _STEPS)
    return step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
