"""Mamba-2 state-space duality (SSD): ``ssd`` over a sequence and ``ssd_step`` for decoding.

Per head ``h`` (group ``g = h // (heads // groups)``), with a scalar decay per head and position::

    dt_t = softplus(dt_t + dt_bias)                                  (if dt_softplus)
    S_t  = exp(dt_t * A[h]) * S_{t-1} + dt_t * outer(x_t, B_t[g])    (headdim, nstate)
    y_t  = S_t @ C_t[g] + D[h] * x_t
    out  = y * silu(z)                                               (if z is given)

``naive.py`` is the specification, ``chunked.py`` the chunked CPU algorithm (the "torch" backend), ``triton.py``
the GPU kernels.
"""

from __future__ import annotations

import torch

from rawseq.kernels.common import check_same_device, check_tensor, resolve_backend
from rawseq.kernels.common.checks import INT_DTYPES, check_divisible
from rawseq.kernels.ssd.naive import ssd_naive, ssd_step_naive

__all__ = ["ssd", "ssd_step"]

_BACKENDS = ("naive", "torch", "triton")


def _check(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, chunk_size):
    check_tensor("x", x, (None, None, None, None), "batch, length, heads, headdim")
    batch, length, heads, headdim = x.shape
    check_tensor("dt", dt, (batch, length, heads), "batch, length, heads")
    check_tensor("A", A, (heads,), "heads")
    check_tensor("B", B, (batch, length, None, None), "batch, length, groups, nstate")
    groups, nstate = B.shape[2], B.shape[3]
    check_divisible("heads", heads, "groups", groups)
    check_tensor("C", C, (batch, length, groups, nstate), "batch, length, groups, nstate")
    check_tensor("D", D, (heads,), "heads", optional=True)
    check_tensor("z", z, (batch, length, heads, headdim), "batch, length, heads, headdim", optional=True)
    check_tensor("dt_bias", dt_bias, (heads,), "heads", optional=True)
    check_tensor("initial_state", initial_state, (batch, heads, headdim, nstate),
                 "batch, heads, headdim, nstate", optional=True)
    check_tensor("seq_idx", seq_idx, (batch, length), "batch, length", dtypes=INT_DTYPES, optional=True)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
    return check_same_device(
        x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state, seq_idx=seq_idx
    )


def ssd(
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
    chunk_size: int = 256,
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
        chunk_size: positions per chunk of the chunked algorithm (torch and triton backends).
        backend: "auto", "naive", "torch" or "triton".

    Returns:
        y: (batch, length, heads, headdim) in ``x.dtype``; with ``return_final_state`` also the final state
        (batch, heads, headdim, nstate) in float32 (float64 for float64 inputs).
    """
    device = _check(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, chunk_size)
    backend = resolve_backend(backend, device, op="ssd", available=_BACKENDS, dtype=x.dtype)
    args = (x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse, chunk_size)
    if backend == "naive":
        y, state = ssd_naive(*args)
    elif backend == "torch":
        from rawseq.kernels.ssd.chunked import ssd_torch

        y, state = ssd_torch(*args)
    else:
        from rawseq.kernels.ssd.triton import ssd_triton

        y, state = ssd_triton(*args)
    return (y, state) if return_final_state else y


def ssd_step(
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
        state: (batch, heads, headdim, nstate) float32 (or float64), modified in place.
        x, z: (batch, heads, headdim). dt: (batch, heads). A, D, dt_bias: (heads,). B, C: (batch, groups, nstate).

    Returns:
        y: (batch, heads, headdim) in ``x.dtype``.
    """
    check_tensor("x", x, (None, None, None), "batch, heads, headdim")
    batch, heads, headdim = x.shape
    check_tensor("B", B, (batch, None, None), "batch, groups, nstate")
    groups, nstate = B.shape[1], B.shape[2]
    check_divisible("heads", heads, "groups", groups)
    check_tensor("state", state, (batch, heads, headdim, nstate), "batch, heads, headdim, nstate",
                 dtypes=(torch.float32, torch.float64))
    check_tensor("dt", dt, (batch, heads), "batch, heads")
    check_tensor("A", A, (heads,), "heads")
    check_tensor("C", C, (batch, groups, nstate), "batch, groups, nstate")
    check_tensor("D", D, (heads,), "heads", optional=True)
    check_tensor("z", z, (batch, heads, headdim), "batch, heads, headdim", optional=True)
    check_tensor("dt_bias", dt_bias, (heads,), "heads", optional=True)
    device = check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    backend = resolve_backend(backend, device, op="ssd_step", available=_BACKENDS, dtype=x.dtype)
    args = (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if backend == "triton":
        from rawseq.kernels.ssd.triton import ssd_step_triton

        return ssd_step_triton(*args)
    return ssd_step_naive(*args)
