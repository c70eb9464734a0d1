"""Launchers of the SSD kernels and the Triton entry points.

``ssd_fwd`` and ``ssd_bwd`` are plain (no autograd) launches on the op's own arguments: the forward returns the
chunk-entering ``states`` the backward needs beside ``y`` and the final state, and the backward returns every input
gradient in its input's dtype. :mod:`rawseq.kernels.library` registers them as the ``rawseq::ssd`` op with its
autograd, which :func:`rawseq.kernels.ssd.ssd` calls; ``ssd_triton`` calls that op on this backend and
``ssd_step_triton`` is the decoding step.

``chunk_size`` is accepted for the common signature and ignored (always ``CHUNK = 64``, the chunk that keeps the
(Q, Q) and (Q, nstate) tiles in registers at nstate 128), so results do not depend on it at all. Nothing of size
(batch, length, heads, headdim, nstate) is formed; the extra memory is ``states`` and ``adjoints`` (one state per
chunk each). Gradients that sum over the heads of a group or over headdim blocks (B, C, dt, D) leave the kernels as
fp32 partial sums that ``ssd_bwd`` reduces.
"""

from __future__ import annotations

import torch
import triton

from rawseq.kernels.common import softplus
from rawseq.kernels.common.triton_utils import grad_mul, next_pow2, tf32_allowed
from rawseq.kernels.ssd.triton.kernels import (
    _ssd_chunk_adjoint_bwd_kernel,
    _ssd_chunk_bwd_kernel,
    _ssd_chunk_out_fwd_kernel,
    _ssd_chunk_state_fwd_kernel,
    _ssd_step_kernel,
)

CHUNK = 64
MAX_NSTATE = 256
BLOCK_P = 64
SUB_N = 64  # nstate block of the sequential kernels, and the inner nstate step of the gradient kernel
STEP_BLOCK_P = 16  # the decode step is memory-bound: small (16, nstate) state blocks, more programs, few registers
WARPS = {"state": 8, "out": 8, "adjoint": 8, "bwd": 8, "step": 4}
STAGES = {"state": 2, "out": 1, "adjoint": 2, "bwd": 1, "step": 1}
_INT32 = 2**31


def block_n(nstate: int) -> int:
    """nstate block of the chunk-parallel kernels: nstate padded to 64, 128 or 256. Few sizes on purpose, so that
    every variant can be compiled ahead of time (headdim always takes blocks of 64); small heads only waste masked
    lanes."""
    return max(SUB_N, next_pow2(nstate))


def ieee_products(dtype: torch.dtype) -> bool:
    """Exact fp32 products for fp32 inputs unless PyTorch allows TF32 for CUDA matmuls (``tf32_allowed``): the exact
    path runs the products on CUDA cores, which costs registers and spills in the chunk kernels (see the AOT table);
    fp16/bf16: no effect."""
    return dtype == torch.float32 and not tf32_allowed()


def _kernel_layout(t: torch.Tensor | None, dim: int = 1, rows: int = CHUNK) -> torch.Tensor | None:
    """The kernels (and their AOT variants) take the innermost stride as 1, and form the offsets inside a tile (up to
    ``rows - 1`` steps of ``t.stride(dim)`` plus the innermost dimension) in int32; batch, head, row and chunk terms are
    int64. Copy the rare tensor where either does not hold (a position stride of 2**25 elements or more, say): the
    contiguous copy fits, since ``_prepare`` refuses positions of that size."""
    if t is None:
        return t
    if t.stride(-1) == 1 and (rows - 1) * abs(t.stride(dim)) + t.shape[-1] - 1 < _INT32:
        return t
    return t.contiguous()


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _prepare(x, dt, A, B, C, D, z, dt_bias, seq_idx):
    """Bring every input to the dtypes the kernels are compiled for: B, C, z in x's dtype; dt, A, D, dt_bias fp32;
    seq_idx int32; innermost strides 1."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the triton ssd backend takes float16, bfloat16 or float32 x, got {x.dtype}; "
                         "use backend='torch' for float64")
    heads, headdim, nstate = x.shape[2], x.shape[3], B.shape[-1]
    if nstate > MAX_NSTATE:
        raise ValueError(f"the triton ssd backend supports nstate <= {MAX_NSTATE}, got {nstate}")
    if CHUNK * heads * max(headdim, nstate) + max(headdim, nstate) >= _INT32:
        raise ValueError(f"the triton ssd backend forms offsets inside a chunk in int32 and takes fewer than "
                         f"{_INT32 // CHUNK} elements per position in x or B, got heads * max(headdim, nstate) = "
                         f"{heads} * {max(headdim, nstate)}; use backend='torch'")
    B = _kernel_layout(B.to(x.dtype))
    C = _kernel_layout(C.to(x.dtype))
    z = None if z is None else _kernel_layout(z.to(x.dtype))
    dtf = _kernel_layout(dt.to(torch.float32))
    seq = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
    return _kernel_layout(x), dtf, _f32(A), B, C, _f32(D), z, _f32(dt_bias), seq


def _launch_args(x, B, reverse):
    batch, length, heads, headdim = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    t0, step = (length - 1, -1) if reverse else (0, 1)
    return (length, triton.cdiv(length, CHUNK), heads, heads // groups, headdim, nstate, t0, step)


def ssd_fwd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None,
            reverse=False):
    """Forward of the Triton SSD without autograd (arguments as :func:`rawseq.kernels.ssd.ssd`).

    Returns:
        y: (batch, length, heads, headdim) in ``x.dtype``; final_state: (batch, heads, headdim, nstate) float32;
        states: (batch, heads, chunks, headdim, nstate), the state entering each chunk, for :func:`ssd_bwd`.
    """
    batch, length, heads, headdim = x.shape
    nstate = B.shape[-1]
    x, dtf, Af, B, C, Df, z, biasf, seq = _prepare(x, dt, A, B, C, D, z, dt_bias, seq_idx)
    nchunks = triton.cdiv(length, CHUNK)
    states = torch.empty(batch, heads, nchunks, headdim, nstate, dtype=x.dtype, device=x.device)
    if length == 0:
        final = (torch.zeros(batch, heads, headdim, nstate, dtype=torch.float32, device=x.device)
                 if initial_state is None else initial_state.to(torch.float32).clone())
        return x.new_zeros(x.shape), final, states
    ieee = ieee_products(x.dtype)
    final = torch.empty(batch, heads, headdim, nstate, dtype=torch.float32, device=x.device)
    y = torch.empty(batch, length, heads, headdim, dtype=x.dtype, device=x.device)
    init = final if initial_state is None else initial_state.to(torch.float32).contiguous()
    seq_t = seq if seq is not None else torch.zeros(1, 1, dtype=torch.int32, device=x.device)
    z_t = z if z is not None else x
    common = _launch_args(x, B, reverse)
    flags = dict(HAS_DT_BIAS=biasf is not None, HAS_SEQ=seq is not None, DT_SOFTPLUS=bool(dt_softplus))
    grid = (triton.cdiv(nstate, SUB_N) * triton.cdiv(headdim, BLOCK_P), batch * heads)
    _ssd_chunk_state_fwd_kernel[grid](
        x, dtf, Af, Af if biasf is None else biasf, B, seq_t, init, states, final, *common,
        *x.stride(), *dtf.stride(), *B.stride(), *seq_t.stride(), *states.stride(),
        HAS_INIT=initial_state is not None, **flags, Q=CHUNK, BLOCK_P=BLOCK_P, BLOCK_N=SUB_N, IEEE=ieee,
        num_warps=WARPS["state"], num_stages=STAGES["state"],
    )
    grid = (nchunks, triton.cdiv(headdim, BLOCK_P), batch * heads)
    _ssd_chunk_out_fwd_kernel[grid](
        x, dtf, Af, Af if biasf is None else biasf, B, C, Af if Df is None else Df, z_t, seq_t, states, y, *common,
        *x.stride(), *dtf.stride(), *B.stride(), *C.stride(), *z_t.stride(), *seq_t.stride(), *states.stride(),
        *y.stride(),
        HAS_D=Df is not None, HAS_Z=z is not None, **flags, Q=CHUNK, BLOCK_P=BLOCK_P, BLOCK_N=block_n(nstate),
        IEEE=ieee, num_warps=WARPS["out"], num_stages=STAGES["out"],
    )
    return y, final, states


def ssd_bwd(dy, dfinal, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None,
            seq_idx=None, reverse=False, states=None):
    """Backward of the Triton SSD without autograd.

    Args:
        dy: gradient of y, or None (zero); dfinal: gradient of the final state, or None (zero).
        x ... reverse: the arguments of :func:`ssd_fwd`; states: its third output.

    Returns:
        (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_state), each in its input's dtype and None for an input
        that was None.
    """
    batch, length, heads, headdim = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    dtypes = [None if t is None else t.dtype for t in (x, dt, A, B, C, D, z, dt_bias, initial_state)]
    if length == 0:
        grads = [torch.zeros_like(t) if t is not None else None for t in (x, dt, A, B, C, D, z, dt_bias)]
        dinit = None
        if initial_state is not None:
            dinit = torch.zeros_like(initial_state) if dfinal is None else dfinal.to(initial_state.dtype)
        return (*grads, dinit)
    x, dtf, Af, B, C, Df, z, biasf, seq = _prepare(x, dt, A, B, C, D, z, dt_bias, seq_idx)
    nchunks = triton.cdiv(length, CHUNK)
    npb = triton.cdiv(headdim, BLOCK_P)
    ieee = ieee_products(x.dtype)
    dev = x.device
    gy = _kernel_layout(dy.to(x.dtype)) if dy is not None else torch.zeros_like(x)
    adj = torch.empty_like(states)
    ginit = torch.empty(batch, heads, headdim, nstate, dtype=torch.float32, device=dev)
    gfinal_t = ginit if dfinal is None else dfinal.to(torch.float32).contiguous()
    seq_t = seq if seq is not None else torch.zeros(1, 1, dtype=torch.int32, device=dev)
    z_t = z if z is not None else x
    common = _launch_args(x, B, reverse)
    flags = dict(HAS_Z=z is not None, HAS_DT_BIAS=biasf is not None, HAS_SEQ=seq is not None,
                 DT_SOFTPLUS=bool(dt_softplus))
    bias_t = Af if biasf is None else biasf
    grid = (triton.cdiv(nstate, SUB_N) * npb, batch * heads)
    _ssd_chunk_adjoint_bwd_kernel[grid](
        gy, z_t, dtf, Af, bias_t, C, seq_t, gfinal_t, adj, ginit, *common,
        *gy.stride(), *z_t.stride(), *dtf.stride(), *C.stride(), *seq_t.stride(), *states.stride(),
        HAS_DFINAL=dfinal is not None, **flags, Q=CHUNK, BLOCK_P=BLOCK_P, BLOCK_N=SUB_N, IEEE=ieee,
        num_warps=WARPS["adjoint"], num_stages=STAGES["adjoint"],
    )
    gx = torch.empty(batch, length, heads, headdim, dtype=x.dtype, device=dev)
    gz = torch.empty_like(gx) if z is not None else gx
    # with one head per group and one headdim block nothing is summed: write dB, dC in their dtype directly
    direct = groups == heads and npb == 1
    gB = torch.empty(npb, batch, length, heads, nstate, dtype=B.dtype if direct else torch.float32, device=dev)
    gC = torch.empty_like(gB)
    ddt = torch.empty(npb, batch, length, heads, dtype=torch.float32, device=dev)
    da = torch.empty_like(ddt)
    gD = torch.empty(batch, nchunks, heads, headdim, dtype=torch.float32, device=dev) if Df is not None else ddt
    grid = (nchunks, npb, batch * heads)
    _ssd_chunk_bwd_kernel[grid](
        x, dtf, Af, bias_t, B, C, Af if Df is None else Df, z_t, gy, seq_t, states, adj,
        gx, gz, gB, gC, ddt, da, gD, *common,
        *x.stride(), *dtf.stride(), *B.stride(), *C.stride(), *z_t.stride(), *gy.stride(), *seq_t.stride(),
        *states.stride(), *gx.stride(), *gB.stride()[:4], *ddt.stride()[:3],
        HAS_D=Df is not None, **flags, Q=CHUNK, BLOCK_P=BLOCK_P, BLOCK_N=block_n(nstate), SUB_N=SUB_N, IEEE=ieee,
        num_warps=WARPS["bwd"], num_stages=STAGES["bwd"],
    )
    da = da.sum(0)  # (b, l, h)
    raw = dtf if biasf is None else dtf + biasf
    delta = softplus(raw) if dt_softplus else raw
    ddelta = ddt.sum(0) + da * Af
    draw = grad_mul(ddelta, torch.where(raw > 20.0, 1.0, torch.sigmoid(raw))) if dt_softplus else ddelta
    gA = grad_mul(da, delta).sum((0, 1))
    # (npb, b, l, h, n) -> (b, l, g, n): sum the headdim blocks and the heads sharing a group
    if direct:
        gB, gC = gB[0], gC[0]
    else:
        gB = gB.view(npb, batch, length, groups, heads // groups, nstate).sum((0, 4))
        gC = gC.view(npb, batch, length, groups, heads // groups, nstate).sum((0, 4))
    grads = (gx, draw, gA, gB, gC, gD.sum((0, 1, 3)) if Df is not None else None, gz if z is not None else None,
             draw.sum((0, 1)) if biasf is not None else None, ginit if initial_state is not None else None)
    return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, dtypes))


def ssd_triton(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None,
               reverse=False, chunk_size=256):
    """The registered ``ssd`` op (:mod:`rawseq.kernels.library`) on these kernels, differentiable, without the
    public function's argument checks; same arguments as :func:`rawseq.kernels.ssd.ssd`, returns
    ``(y, final_state)``.

    ``chunk_size`` is ignored (the kernels use chunks of 64); ``reverse`` reads the rows backwards in the kernels.
    float16, bfloat16 and float32 inputs; states and accumulation in float32; nstate up to 256.
    """
    from rawseq.kernels import library

    return library.ssd(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, bool(reverse), chunk_size,
                       "triton")


def ssd_step_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One decoding position, same arguments as :func:`rawseq.kernels.ssd.ssd_step`; updates the fp32 ``state``
    (batch, heads, headdim, nstate) in place and returns y (batch, heads, headdim) in ``x.dtype``. Not differentiable.
    """
    if state.dtype != torch.float32:
        raise ValueError(f"the triton ssd_step backend keeps a float32 state, got {state.dtype}")
    batch, heads, headdim = x.shape
    groups, nstate = B.shape[1], B.shape[2]
    x, dtf, Af, B, C, Df, z, biasf, _ = _prepare(x[:, None], dt, A, B[:, None], C[:, None], D, z, dt_bias, None)
    x, B, C = x[:, 0], B[:, 0], C[:, 0]
    work = _kernel_layout(state, dim=2, rows=state.shape[2])
    y = torch.empty(batch, heads, headdim, dtype=x.dtype, device=x.device)
    z_t = z if z is not None else x
    grid = (triton.cdiv(headdim, STEP_BLOCK_P), batch * heads)
    _ssd_step_kernel[grid](
        work, x, dtf, Af, Af if biasf is None else biasf, B, C, Af if Df is None else Df, z_t, y,
        heads, heads // groups, headdim, nstate,
        *work.stride(), *x.stride(), *dtf.stride(), *B.stride(), *C.stride(), *z_t.stride(), *y.stride(),
        HAS_D=Df is not None, HAS_Z=z is not None, HAS_DT_BIAS=biasf is not None, DT_SOFTPLUS=bool(dt_softplus),
        BLOCK_P=STEP_BLOCK_P, BLOCK_N=block_n(nstate), num_warps=WARPS["step"], num_stages=STAGES["step"],
    )
    if work is not state:
        state.copy_(work)
    return y
