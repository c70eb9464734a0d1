"""Mamba-2 state-space duality (SSD): ``ssd`` over a sequence and ``ssd_step`` for decoding.

Per head ``h`` (group ``g = h // (heads // groups)``), with a scalar decay per head and position::

    dt_t = softplus(dt_t + dt_bias)                                  (if dt_softplus)
    S_t  = exp(dt_t * A[h]) * S_{t-1} + dt_t * outer(x_t, B_t[g])    (headdim, nstate)
    y_t  = S_t @ C_t[g] + D[h] * x_t
    out  = y * silu(z)                                               (if z is given)

``naive.py`` is the specification, ``chunked.py`` the chunked CPU algorithm and decoding step (the "torch"
backend), ``triton`` the GPU kernels; ``rawseq.kernels.library`` registers the fast backends as one custom op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rawseq.kernels import library
from rawseq.kernels.common import TensorArgs, resolve_backend, step_function
from rawseq.kernels.common.checks import INT_DTYPES
from rawseq.kernels.ssd.chunked import ssd_step_torch
from rawseq.kernels.ssd.naive import ssd_naive, ssd_step_naive

__all__ = ["ssd", "ssd_step"]

_BACKENDS = ("naive", "torch", "triton")
_ARGS = TensorArgs(
    {"x": "batch length heads headdim", "dt": "batch length heads", "A": "heads", "B": "batch length groups nstate",
     "C": "batch length groups nstate", "D": "heads", "z": "batch length heads headdim", "dt_bias": "heads",
     "initial_state": "batch heads headdim nstate", "seq_idx": "batch length"},
    optional=("D", "z", "dt_bias", "initial_state", "seq_idx"), dtypes={"seq_idx": INT_DTYPES},
    nonzero=("heads", "headdim", "nstate", "groups"), divisible=[("heads", "groups")],
)
_STEP_ARGS = _ARGS.without("length", state="batch heads headdim nstate", initial_state="", seq_idx="",
                           dtypes={"state": (torch.float32, torch.float64)})
_STEPS = {"naive": ssd_step_naive, "torch": ssd_step_torch}


def ssd(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    dt_bias: Tensor | None = None, dt_softplus: bool = True, initial_state: Tensor | None = None,
    return_final_state: bool = False, seq_idx: Tensor | None = None, reverse: bool = False, chunk_size: int = 256,
    backend: str = "auto",
):
    """Mamba-2 SSD over a batch of sequences.

    Args:
        x: (batch, length, heads, headdim) inputs.
        dt: (batch, length, heads) step sizes before ``dt_bias`` and softplus.
        A: (heads,) negative decay rates, used as given.
        B, C: (batch, length, groups, nstate); head ``h`` uses group ``h // (heads // groups)``.
        D: (heads,) skip connection, or None.
        z: (batch, length, heads, headdim) gate, applied as ``y * silu(z)``, or None.
        dt_bias: (heads,) or None.
        dt_softplus: apply softplus to ``dt + dt_bias``.
        initial_state: (batch, heads, headdim, nstate) state before the first position (the last if ``reverse``).
        return_final_state: also return the state after the last position scanned.
        seq_idx: (batch, length) integer document ids; the state resets to zero wherever the id changes.
        reverse: scan from the end of the sequence to its start.
        chunk_size: positions per chunk of the chunked algorithm (torch backend; the Triton kernels use their own).
        backend: "auto", "naive", "torch" or "triton".

    Returns:
        y: (batch, length, heads, headdim) in ``x.dtype``; with ``return_final_state`` also the final state
        (batch, heads, headdim, nstate) in float32 (float64 for float64 inputs).
    """
    _, device = _ARGS.check(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
    backend = resolve_backend(backend, device, op="ssd", available=_BACKENDS, dtype=x.dtype)
    args = (x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse, chunk_size)
    y, state = ssd_naive(*args) if backend == "naive" else library.ssd(*args, backend)
    return (y, state) if return_final_state else y


def ssd_step(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = True, backend: str = "auto",
    check: bool = True,
) -> Tensor:
    """Advance a batch of decoding streams by one position, updating ``state`` in place.

    Args:
        state: (batch, heads, headdim, nstate) float32 (or float64), modified in place.
        x, z: (batch, heads, headdim). dt: (batch, heads). A, D, dt_bias: (heads,). B, C: (batch, groups, nstate).
        check: False skips the argument checks for CPU tensors (for callers that build them, as layers do).

    Returns:
        y: (batch, heads, headdim) in ``x.dtype``.
    """
    device = x.device
    if check or device.type != "cpu":
        _, device = _STEP_ARGS.check(state, x, dt, A, B, C, D, z, dt_bias)
    step = step_function("ssd", backend, device, x.dtype, _STEPS)
    return step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
