"""Launchers of the selective-scan kernels and the Triton entry points.

``selective_scan_fwd`` and ``selective_scan_bwd`` are plain (no autograd) launches on the op's own arguments: the
forward returns, beside ``y`` and the final state, the float32 state at the start of every tile that the backward
needs, and the backward returns every input gradient in its input's dtype. :mod:`rawseq.kernels.library` registers
them as the ``rawseq::selective_scan`` op with its autograd, which :func:`rawseq.kernels.selective_scan` calls;
``selective_scan_triton`` calls that op on this backend and ``selective_scan_step_triton`` is the decoding step.
Float64 inputs are rejected with a ValueError: use the ``torch`` backend for float64.
"""

from __future__ import annotations

import torch
import triton

from rawseq.kernels.common.triton_utils import last_dim_contiguous, next_pow2, num_sms, reject_float64
from rawseq.kernels.selective_scan.triton.kernels import (
    _selective_scan_bwd_kernel,
    _selective_scan_chunk_state_kernel,
    _selective_scan_fwd_kernel,
    _selective_scan_state_passing_kernel,
    _selective_scan_step_kernel,
)

# A length split must hold at least this many tiles before splitting pays for the extra pass over the inputs.
MIN_TILES_PER_SPLIT = 8


def _block_d(group_size: int, per_channel: int, budget: int) -> int:
    """Channels per program: the largest power of two up to 64 that divides the group size (so a block reads one B/C
    group) and keeps ``block_d * per_channel`` elements within ``budget``; at least 1."""
    block_d = 1
    while block_d * 2 <= 64 and group_size % (block_d * 2) == 0 and block_d * 2 * per_channel <= budget:
        block_d *= 2
    return block_d


def block_config(device: torch.device, nstate: int, group_size: int, backward: bool = False):
    """(T, BLOCK_D, BLOCK_N, num_warps) of the sequence kernels.

    T must be the same forward and backward (the stored states are T apart). The backward keeps many more
    (T, BLOCK_D, BLOCK_N) blocks live, so it gets a quarter of the forward's budget of elements per block (``python
    -m rawseq.kernels.aot`` shows the registers and spills of both).
    """
    block_n = next_pow2(nstate)
    if device.type == "cuda":
        t = 32 if block_n <= 16 else 16
        budget = 2048 if backward else 8192
    else:  # the interpreter: small blocks keep its numpy work small
        t, budget = 16, 1024
    block_d = _block_d(group_size, t * block_n, budget)
    num_warps = 8 if (backward or t * block_n * block_d >= 8192) else 4
    return t, block_d, block_n, num_warps


def step_blocks(nstate: int, group_size: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_N) of the decoding step: up to 64 channels of one group, at most 4096 state entries."""
    block_n = next_pow2(nstate)
    return _block_d(group_size, block_n, 4096), block_n


def _f32(t):
    return None if t is None else t.float().contiguous()


def _prepare(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx):
    reject_float64("selective scan", x, dt, A, B, C, D, z, dt_bias, initial_state)
    x, dt, z, B, C = (last_dim_contiguous(t) for t in (x, dt, z, B, C))
    seq = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
    return x, dt, _f32(A), B, C, _f32(D), z, _f32(dt_bias), _f32(initial_state), seq


def selective_scan_fwd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None,
                       seq_idx=None, reverse=False, store_states=True, nsplit=None):
    """Forward of the Triton selective scan without autograd (arguments as :func:`rawseq.kernels.selective_scan`).

    Args:
        store_states: also return the tile-start states (needed by :func:`selective_scan_bwd`).
        nsplit: length splits of the forward; None chooses by occupancy.

    Returns:
        y: (batch, length, channels) in ``x.dtype``; final_state: (batch, channels, nstate) float32; states:
        (batch, ntiles, channels, nstate) float32, ``ntiles = ceil(length / T)`` with T from :func:`block_config`
        (0 tiles without ``store_states``).
    """
    x, dt, A, B, C, D, z, dt_bias, initial_state, seq = _prepare(x, dt, A, B, C, D, z, dt_bias, initial_state,
                                                                 seq_idx)
    batch, length, channels = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    group_size = channels // groups
    t, block_d, block_n, num_warps = block_config(x.device, nstate, group_size)
    ntiles = triton.cdiv(length, t)
    nd = triton.cdiv(channels, block_d)
    y = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
    final = torch.empty(batch, channels, nstate, dtype=torch.float32, device=x.device)
    states = torch.empty(batch, ntiles if store_states else 0, channels, nstate, dtype=torch.float32,
                         device=x.device)
    if length == 0:
        final.copy_(initial_state if initial_state is not None else torch.zeros_like(final))
        return y, final, states
    if nsplit is None:
        wanted = triton.cdiv(2 * num_sms(x.device), nd * batch)
        nsplit = max(1, min(wanted, ntiles // MIN_TILES_PER_SPLIT))
    tiles_per_split = triton.cdiv(ntiles, max(1, min(nsplit, ntiles)))
    nsplit = triton.cdiv(ntiles, tiles_per_split)
    seq_arg = seq if seq is not None else x
    stride_seqb = seq.stride(0) if seq is not None else 0
    dt_bias_arg = dt_bias if dt_bias is not None else A
    flags = dict(HAS_DT_BIAS=dt_bias is not None, HAS_SEQ=seq is not None, DT_SOFTPLUS=bool(dt_softplus),
                 REVERSE=bool(reverse))

    if nsplit > 1:
        ends = torch.empty(batch, nsplit, channels, nstate, dtype=torch.float32, device=x.device)
        decays = torch.empty_like(ends)
        starts = torch.empty_like(ends)
        _selective_scan_chunk_state_kernel[(nd, batch, nsplit - 1)](
            x, dt, A, B, dt_bias_arg, seq_arg, ends, decays,
            length, channels, nstate, group_size, tiles_per_split, nsplit,
            x.stride(0), x.stride(1), dt.stride(0), dt.stride(1), B.stride(0), B.stride(1), B.stride(2),
            stride_seqb, **flags, T=t, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=num_warps,
        )
        _selective_scan_state_passing_kernel[(nd, batch)](
            ends, decays, initial_state if initial_state is not None else ends, starts, channels, nstate, nsplit,
            HAS_INIT=initial_state is not None, BLOCK_D=block_d, BLOCK_N=block_n,
        )
        init, stride_initb, stride_inits = starts, starts.stride(0), starts.stride(1)
    elif initial_state is not None:
        init, stride_initb, stride_inits = initial_state, initial_state.stride(0), 0
    else:
        init, stride_initb, stride_inits = None, 0, 0

    _selective_scan_fwd_kernel[(nd, batch, nsplit)](
        x, dt, A, B, C, D if D is not None else A, z if z is not None else x, dt_bias_arg, seq_arg,
        init if init is not None else final, y, final, states,
        length, channels, nstate, group_size, ntiles, tiles_per_split,
        x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        y.stride(0), y.stride(1), stride_seqb, stride_initb, stride_inits,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_INIT=init is not None, STORE_STATES=bool(store_states),
        **flags, T=t, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=num_warps,
    )
    return y, final, states


def selective_scan_bwd(dy, dfinal, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True,
                       initial_state=None, seq_idx=None, reverse=False, states=None):
    """Backward of the Triton selective scan without autograd.

    Args:
        dy: gradient of y, or None (zero); dfinal: gradient of the final state, or None (zero).
        x ... reverse: the arguments of :func:`selective_scan_fwd`; states: its third output (with store_states).

    Returns:
        (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_state), each in its input's dtype and None for an input
        that was None.
    """
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_state)
    x, dt, A, B, C, D, z, dt_bias, initial_state, seq = _prepare(*inputs, seq_idx)
    batch, length, channels = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    group_size = channels // groups
    t, block_d, block_n, num_warps = block_config(x.device, nstate, group_size, backward=True)
    nd = triton.cdiv(channels, block_d)
    dy = dy.contiguous() if dy is not None else torch.zeros_like(x)
    dx = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
    ddt = torch.empty(batch, length, channels, dtype=dt.dtype, device=x.device)
    dz = torch.empty(batch, length, channels, dtype=z.dtype, device=x.device) if z is not None else None
    dB = torch.zeros(batch, length, groups, nstate, dtype=torch.float32, device=x.device)
    dC = torch.zeros_like(dB)
    dinit = torch.empty(batch, channels, nstate, dtype=torch.float32, device=x.device)
    dA = torch.empty(batch, channels, nstate, dtype=torch.float32, device=x.device)
    dD = torch.empty(batch, channels, dtype=torch.float32, device=x.device)
    ddt_bias = torch.empty(batch, channels, dtype=torch.float32, device=x.device)
    if length == 0:
        dinit = dfinal.float() if dfinal is not None else torch.zeros_like(dinit)
        dA, dD, ddt_bias = (torch.zeros_like(u) for u in (dA, dD, ddt_bias))
    else:
        if dfinal is not None:
            dfinal = dfinal.float().contiguous()
        _selective_scan_bwd_kernel[(nd, batch)](
            x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
            dt_bias if dt_bias is not None else A, seq if seq is not None else x, states, dy,
            dfinal if dfinal is not None else dinit,
            dx, ddt, dB, dC, dz if dz is not None else dx, dinit, dA, dD, ddt_bias,
            length, channels, nstate, group_size, triton.cdiv(length, t),
            x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
            z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
            B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
            dy.stride(0), dy.stride(1), seq.stride(0) if seq is not None else 0,
            dB.stride(0), dB.stride(1), dB.stride(2),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, HAS_SEQ=seq is not None,
            HAS_INIT=initial_state is not None, HAS_DFINAL=dfinal is not None, DT_SOFTPLUS=bool(dt_softplus),
            REVERSE=bool(reverse), T=t, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=num_warps,
        )
    grads = (dx, ddt, dA.sum(0), dB, dC, dD.sum(0), dz, ddt_bias.sum(0), dinit)
    return tuple(None if t is None else g.to(t.dtype) for g, t in zip(grads, inputs))


def selective_scan_triton(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None, reverse=False
):
    """The registered ``selective_scan`` op (:mod:`rawseq.kernels.library`) on these kernels, differentiable,
    without the public function's argument checks; same arguments as :func:`rawseq.kernels.selective_scan`,
    returns ``(y, final_state)``.

    ``final_state`` is float32; float64 inputs raise ValueError (use the torch backend).
    """
    from rawseq.kernels import library

    return library.selective_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, bool(reverse),
                                  0, "triton")


def selective_scan_step_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """Same arguments as :func:`rawseq.kernels.selective_scan_step`; updates the float32 ``state`` in place."""
    reject_float64("selective scan", state, x, dt, A, B, C, D, z, dt_bias)
    batch, channels = x.shape
    groups, nstate = B.shape[1], B.shape[2]
    group_size = channels // groups
    block_d, block_n = step_blocks(nstate, group_size)
    x, dt, z, B, C = (last_dim_contiguous(t) for t in (x, dt, z, B, C))
    A, D, dt_bias = _f32(A), _f32(D), _f32(dt_bias)
    y = torch.empty(batch, channels, dtype=x.dtype, device=x.device)
    _selective_scan_step_kernel[(triton.cdiv(channels, block_d), batch)](
        state, x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A, y,
        channels, nstate, group_size,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), dt.stride(0),
        z.stride(0) if z is not None else 0, B.stride(0), B.stride(1), C.stride(0), C.stride(1), y.stride(0),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        BLOCK_D=block_d, BLOCK_N=block_n,
    )
    return y
