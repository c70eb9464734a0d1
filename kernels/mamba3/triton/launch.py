"""Launchers of the Mamba-3 Triton kernels, the core's forward and backward and the backend's entry points.

The op around the core (discretization, rotation, gate, MIMO weights) is ``chunked.mamba3_chunked``, shared with
the torch backend; here the chunked core runs on the kernels of ``kernels.py``. Products take the inputs' dtype
(fp16/bf16 on tensor cores; fp32 exact, or TF32 where PyTorch allows it for CUDA matmuls); states, outputs and
gradients are fp32.
"""

from __future__ import annotations

import functools

import torch
import triton

from rawseq.kernels import library
from rawseq.kernels.common.triton_utils import next_pow2, reject_float64, tf32_allowed
from rawseq.kernels.mamba3.chunked import mamba3_chunked
from rawseq.kernels.mamba3.triton.kernels import (
    _mamba3_chunk_bwd_kernel,
    _mamba3_chunk_out_fwd_kernel,
    _mamba3_chunk_walk_kernel,
    _mamba3_step_kernel,
)

__all__ = ["mamba3_core_bwd", "mamba3_core_fwd", "mamba3_step_triton", "mamba3_triton"]

CHUNK_ROWS = 64  # positions x ranks per chunk
RANKS = (1, 2, 4, 8)
MAX_NSTATE = 128
BLOCK_P = 64
SEQ_BLOCK_N = 64  # nstate block of the sequential kernels
STEP_BLOCK_P = 16
WARPS = {"state": 4, "out": 4, "adjoint": 4, "bwd": 8, "step": 4}
STAGES = {"state": 1, "out": 1, "adjoint": 1, "bwd": 1, "step": 1}


def block_n(nstate: int) -> int:
    """nstate block of the kernels that hold a whole row of q and k: 64 or 128 (few sizes, all compiled AOT)."""
    return max(64, next_pow2(nstate))


def block_p(nstate: int) -> int:
    """headdim block of those kernels: 64, or 32 with 128 state entries, which keeps the backward's shared memory
    within an sm_80's."""
    return BLOCK_P if block_n(nstate) <= 64 else BLOCK_P // 2


def step_block_h(nstate: int) -> int:
    """Pairs of state entries covered by the step kernel: 32 or 64."""
    return max(32, next_pow2((nstate + 1) // 2))


def _ieee(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 and not tf32_allowed()


def _check_sizes(rank: int, nstate: int, where: str = "B") -> None:
    if rank not in RANKS:
        raise ValueError(f"{where} has mimo rank {rank}; the triton mamba3 backend needs a rank that divides "
                         f"{CHUNK_ROWS}, one of {RANKS}")
    if nstate > MAX_NSTATE:
        raise ValueError(f"{where} has nstate={nstate}; the triton mamba3 backend supports nstate <= {MAX_NSTATE}, "
                         "use backend='torch'")


def _resets(seg: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(b, l) int32, 1 where a document starts (from the cumulative segment ids), or a dummy without seq_idx."""
    if seg is None:
        return torch.zeros(1, 1, dtype=torch.int32, device=like.device)
    starts = torch.zeros(seg.shape, dtype=torch.int32, device=seg.device)
    starts[:, 1:] = (seg[:, 1:] != seg[:, :-1]).to(torch.int32)
    return starts


def _launch(kernel, kind, pointers, v, k, a, resets, states, has_seq, extra_strides=(), **flags):
    """One launch of a chunked kernel: ``kind`` "state" or "adjoint" (the walk over chunks, one program per state
    block and head) or "out" or "bwd" (one program per chunk, headdim block and head). Sizes and strides come from
    v (b, l, h, R, p), k (b, l, h, R, n), a (b, l, h), the document starts and ``states`` (b, h, chunks, p, n): the
    tensors laid out like them share their strides."""
    batch, length, heads, R, headdim = v.shape
    nstate = k.shape[-1]
    nchunks = states.shape[2]
    if kind in ("state", "adjoint"):
        bp, bn = BLOCK_P, SEQ_BLOCK_N
        grid = (triton.cdiv(nstate, bn) * triton.cdiv(headdim, bp), batch * heads)
    else:
        bp, bn = block_p(nstate), block_n(nstate)
        grid = (nchunks, triton.cdiv(headdim, bp), batch * heads)
    kernel[grid](
        *pointers, length, nchunks, heads, headdim, nstate,
        *v.stride(), *k.stride(), *a.stride(), *resets.stride(), *states.stride(), *extra_strides,
        HAS_SEQ=has_seq, Q=CHUNK_ROWS // R, R=R, BLOCK_P=bp, BLOCK_N=bn, IEEE=_ieee(v.dtype), **flags,
        num_warps=WARPS[kind], num_stages=STAGES[kind],
    )


def core_fwd(v, q, k, a, g, w, S0, resets, has_seq):
    """State pass then output pass: y (b, l, h, R, p) fp32, the final state and the states entering each chunk."""
    batch, length, heads, R, headdim = v.shape
    f32 = dict(dtype=torch.float32, device=v.device)
    states = torch.empty(batch, heads, triton.cdiv(length, CHUNK_ROWS // R), headdim, q.shape[-1], **f32)
    final = torch.empty(batch, heads, headdim, q.shape[-1], **f32)
    init = final if S0 is None else S0.float().contiguous()
    _launch(_mamba3_chunk_walk_kernel, "state", (v, k, a, w, resets, init, states, final), v, k, a, resets, states,
            has_seq, HAS_INIT=S0 is not None, REVERSE=False)
    y = torch.empty(v.shape, **f32)
    _launch(_mamba3_chunk_out_fwd_kernel, "out", (v, q, k, a, g, w, resets, states, y), v, k, a, resets, states,
            has_seq)
    return y, final, states


def core_bwd(gy, gfinal, v, q, k, a, g, w, resets, has_seq, states):
    """Adjoint pass then the chunk-parallel gradient pass; gradients of (v, q, k, a, g, w, S0) in fp32."""
    batch, length, heads, R, headdim = v.shape
    nstate = q.shape[-1]
    f32 = dict(dtype=torch.float32, device=v.device)
    gy = gy.to(v.dtype).contiguous()
    adj = torch.empty_like(states)
    ginit = torch.empty(batch, heads, headdim, nstate, **f32)
    gfinal_t = ginit if gfinal is None else gfinal.float().contiguous()
    # gy is laid out like v, q like k; the walk reads no tap weights (a stands in for them)
    _launch(_mamba3_chunk_walk_kernel, "adjoint", (gy, q, a, a, resets, gfinal_t, adj, ginit), v, k, a, resets,
            states, has_seq, HAS_INIT=gfinal is not None, REVERSE=True)
    npb = triton.cdiv(headdim, block_p(nstate))
    gv = torch.empty(v.shape, **f32)
    gq = torch.empty(npb, batch, length, heads, R, nstate, **f32)
    gk = torch.empty_like(gq)
    ga = torch.empty(npb, batch, length, heads, R, **f32)
    gg, gw = torch.empty_like(ga), torch.empty_like(ga)
    _launch(_mamba3_chunk_bwd_kernel, "bwd", (v, q, k, a, g, w, resets, states, adj, gy, gv, gq, gk, ga, gg, gw),
            v, k, a, resets, states, has_seq, (*gq.stride()[:5], *ga.stride()))
    return gv, gq.sum(0), gk.sum(0), ga.sum((0, 4)), gg.sum((0, 4)), gw.sum((0, 4)), ginit


def _kernel_inputs(v, q, k, a, g, w, dot_dtype):
    return (*(t.to(dot_dtype).contiguous() for t in (v, q, k)), *(t.float().contiguous() for t in (a, g, w)))


def mamba3_core_fwd(v, q, k, a, g, w, S0, seg, dot_dtype):
    """The core's forward on the kernels, for the op registered in ``kernels/library.py``: y and the final state in
    v's dtype, and the fp32 states entering each chunk of ``CHUNK_ROWS // R`` positions."""
    _check_sizes(v.shape[3], q.shape[-1], "B")
    y, final, states = core_fwd(*_kernel_inputs(v, q, k, a, g, w, dot_dtype), S0, _resets(seg, v), seg is not None)
    return y.to(v.dtype), final.to(v.dtype), states


def mamba3_core_bwd(gy, gfinal, v, q, k, a, g, w, S0, seg, states, dot_dtype):
    """The core's backward on the kernels: gradients of (v, q, k, a, g, w, S0) in their dtypes (None without S0)."""
    grads = core_bwd(gy, gfinal, *_kernel_inputs(v, q, k, a, g, w, dot_dtype), _resets(seg, v), seg is not None,
                     states)
    out = [grad.to(t.dtype) for grad, t in zip(grads[:6], (v, q, k, a, g, w))]
    return (*out, None if S0 is None else grads[6].to(S0.dtype))


def mamba3_core_triton(v, q, k, a, g, w, S0, seg, chunk_size, dot_dtype=torch.float32):
    """The chunked core on the kernels, through the registered op; ``chunk_size`` is ignored (chunks are
    ``CHUNK_ROWS / rank`` positions)."""
    return library.mamba3_core(v, q, k, a, g, w, S0, seg, chunk_size, "triton", dot_dtype)


def mamba3_triton(x, dt, A, B, C, lam, angle=None, D=None, z=None, dt_bias=None, dt_softplus=True, B_bias=None,
                  C_bias=None, mimo_x=None, mimo_z=None, mimo_o=None, initial_state=None, seq_idx=None,
                  reverse=False, chunk_size=64):
    """Triton Mamba-3, differentiable; same arguments as :func:`rawseq.kernels.mamba3.mamba3`, returns
    ``(y, final_state)``. float16, bfloat16 and float32 inputs; rank in ``RANKS``, nstate up to ``MAX_NSTATE``."""
    reject_float64("mamba3", x, dt, B, C)
    _check_sizes(B.shape[3] if B.dim() == 5 else 1, B.shape[-1])
    dot_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
    core = functools.partial(mamba3_core_triton, dot_dtype=dot_dtype)
    return mamba3_chunked(core, x, dt, A, B, C, lam, angle, D, z, dt_bias, dt_softplus, B_bias, C_bias, mimo_x,
                          mimo_z, mimo_o, initial_state, seq_idx, reverse, chunk_size)


def mamba3_step_triton(state, x, dt, A, B, C, lam, angle=None, D=None, z=None, dt_bias=None, dt_softplus=True,
                       B_bias=None, C_bias=None, mimo_x=None, mimo_z=None, mimo_o=None):
    """One decoding position on the step kernel; same arguments as :func:`rawseq.kernels.mamba3.mamba3_step`,
    updates the fp32 ``state`` in place and returns y (batch, heads, headdim) in ``x.dtype``. Not differentiable."""
    ssm, theta, Bp, xp = state
    if ssm.dtype != torch.float32:
        raise ValueError(f"the triton mamba3_step keeps a float32 state, got {ssm.dtype}")
    batch, heads, headdim = x.shape
    mimo = B.dim() == 4
    R, nstate, groups = (B.shape[2] if mimo else 1), B.shape[-1], B.shape[1]
    _check_sizes(R, nstate)
    f32 = dict(dtype=torch.float32, device=x.device)
    B4, C4 = (B, C) if mimo else (B.unsqueeze(2), C.unsqueeze(2))
    has_bias = B_bias is not None or C_bias is not None
    biases = [torch.zeros(heads, R, nstate, **f32) if t is None else t.float().reshape(heads, R, nstate).contiguous()
              for t in (B_bias, C_bias)]
    has_mimo = any(t is not None for t in (mimo_x, mimo_z, mimo_o))
    weights = [torch.ones(heads, R, headdim, **f32) if t is None else t.float().contiguous()
               for t in (mimo_x, mimo_z, mimo_o)]
    dt_bias_t = dt_bias.float().contiguous() if dt_bias is not None else ssm
    D_t = D.float().contiguous() if D is not None else ssm
    has_angle = angle is not None and angle.shape[-1] > 0
    angle_t = angle if has_angle else theta
    A_strides = (0, A.stride(0)) if A.dim() == 1 else A.stride()
    ang_strides = angle_t.stride() if has_angle else (0, 0, 0)
    if has_angle and angle_t.shape[1] == 1:
        ang_strides = (ang_strides[0], 0, ang_strides[2])
    z_t = z if z is not None else x
    y = torch.empty(batch, heads, headdim, dtype=x.dtype, device=x.device)
    _mamba3_step_kernel[(batch * heads,)](
        ssm, theta, Bp, xp, x, dt, A, B4, C4, lam, angle_t, D_t, z_t, dt_bias_t, *biases, *weights, y,
        heads, heads // groups, headdim, nstate, theta.shape[-1],
        *ssm.stride(), *theta.stride(), *Bp.stride(), *xp.stride(), *x.stride(), *dt.stride(), *A_strides,
        *B4.stride(), *C4.stride(), *lam.stride(), *ang_strides, *z_t.stride(), *y.stride(),
        HAS_ANGLE=has_angle, HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None,
        HAS_BC_BIAS=has_bias, HAS_MIMO=has_mimo, DT_SOFTPLUS=bool(dt_softplus), R=R, BLOCK_P=STEP_BLOCK_P,
        BLOCK_H=step_block_h(nstate), num_warps=WARPS["step"], num_stages=STAGES["step"],
    )
    return y
