"""Triton kernels of Mamba-2 SSD: the chunked algorithm, forward and backward, and the one-position decode step.

The sequence is cut into chunks of ``Q = 64`` positions. With ``cs`` the cumulative sum of ``a = dt * A`` inside a
chunk and ``S0`` the (headdim, nstate) state entering it, position ``i`` of the chunk gets::

    y_i   = sum_{j <= i} exp(cs_i - cs_j) (C_i . B_j) dt_j x_j  +  exp(cs_i) S0 C_i  +  D x_i
    S_end = exp(cs_Q) S0 + sum_j exp(cs_Q - cs_j) dt_j x_j B_j^T

The first sum is a (Q, Q) masked matrix product (``tl.dot``, so tensor cores do it); decays are always formed as
``exp(cs_i - cs_j)`` with ``j <= i`` (masked to ``-inf`` before the exp), never as ``exp(cs_i) exp(-cs_j)``.
``seq_idx`` cuts a chunk into segments (the cumulative sum of resets): pairs in different segments are masked, the
entering state reaches only segment 0 and only the last segment feeds the leaving state.

Four kernels, two sequential over chunks and two parallel over chunks:

- ``_ssd_chunk_state_fwd_kernel``, grid (nstate/64 x headdim/64, batch x heads): walks the chunks in order with a
  (64, 64) block of the (transposed) state in fp32 registers, and stores the state entering every chunk
  (``states``, (batch, heads, chunks, headdim, nstate) in the input dtype: the other kernels use it as a ``tl.dot``
  operand, which rounds it to that dtype anyway) and the final state in fp32.
- ``_ssd_chunk_out_fwd_kernel``, grid (chunks, headdim/64, batch x heads): one chunk's output from its inputs and its
  entering state: ``C B^T`` masked by the decay, times ``dt x``, plus ``exp(cs) C S0^T``, ``D x``, the gate.
- ``_ssd_chunk_adjoint_bwd_kernel``: the reverse walk of ``G = dL/dS`` (same grid as the state kernel),
  ``G_start = exp(cs_Q) G_end + C^T (exp(cs) gy)``, storing ``G`` leaving every chunk (``adjoints``, like ``states``)
  and the initial-state gradient in fp32.
- ``_ssd_chunk_bwd_kernel``, grid (chunks, headdim/64, batch x heads): all input gradients of one chunk from the
  recomputed chunk (y is recomputed for the gate's gradient), its entering state and its leaving adjoint; the
  gradient of the log-decays is summed per position and turned into d(dt), dA by a reverse cumsum in the chunk.

``reverse`` is handled inside the kernels: scan position ``i`` reads memory row ``t0 + step * i`` with
``(t0, step) = (L - 1, -1)``, so nothing is flipped or copied. Offsets that can pass 2**31 (batch, head, row and
chunk terms) are formed in int64; offsets inside a tile stay int32 (the launcher guarantees they fit).

Non-finite inputs. A matrix product cannot select, so a NaN in row ``j`` of an operand reaches every row of the
result through ``0 * NaN``. The output kernel therefore selects the masked scores (an exact 0 whatever B and dt
hold), multiplies with the finite entries of x only and sets every output at or after the first non-finite x of its
column to NaN itself. The backward keeps a zero gradient zero (``grad_mul``), zeroes the rows of a product's operand
that meet only zero gradients, and skips the path through the leaving state when its gradient is zero, so positions
the loss does not reach contribute nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rawseq.kernels.common.tl_chunks import chunk_block, chunk_ends, pair_decay, state_block
from rawseq.kernels.common.tl_math import dot, grad_mul, is_finite, silu, silu_grad, softplus


@triton.jit
def _chunk_decay(dt_ptr, seq_ptr, A_h, bias_h, c, length, t0, step, stride_dtl, stride_seql,
                 DT_SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, Q: tl.constexpr):
    """Chunk ``c``: memory row of its first position (int64 scalar), row offsets of its positions (int32, ``step``
    apart), validity, dt, within-chunk cumsum of dt * A and segment ids (all (Q,))."""
    i = c * Q + tl.arange(0, Q)
    valid = i < length
    row = t0.to(tl.int64) + step * (c * Q)  # t0, step, nchunks are never specialized to constants
    dr = step * tl.arange(0, Q)
    dtv = tl.load(dt_ptr + row * stride_dtl + dr * stride_dtl, mask=valid, other=0.0) + bias_h
    if DT_SOFTPLUS:
        dtv = softplus(dtv)
    dtv = tl.where(valid, dtv, 0.0)
    cs = tl.cumsum(dtv * A_h, 0)
    if HAS_SEQ:
        prev_ok = valid & (i > 0)
        seq_row = seq_ptr + row * stride_seql
        cur = tl.load(seq_row + dr * stride_seql, mask=valid, other=0)
        prv = tl.load(seq_row + (dr - step) * stride_seql, mask=prev_ok, other=0)
        seg = tl.cumsum((prev_ok & (cur != prv)).to(tl.int32), 0)
    else:
        seg = tl.zeros([Q], dtype=tl.int32)
    return row, dr, valid, dtv, cs, seg


@triton.jit
def _chunk_pairs(cs, seg, HAS_SEQ: tl.constexpr, Q: tl.constexpr):
    """(Q, Q) pairs ``j <= i`` in one segment, and their decay ``exp(cs_i - cs_j)`` (0 elsewhere, by selection)."""
    rows = tl.arange(0, Q)
    pair = rows[:, None] >= rows[None, :]
    if HAS_SEQ:
        pair = pair & (seg[:, None] == seg[None, :])
    return pair, pair_decay(pair, cs)


@triton.jit
def _head(A_ptr, bias_ptr, h, heads_per_group, HAS_DT_BIAS: tl.constexpr):
    """Head ``h``'s B/C group, A and dt_bias (0 without one)."""
    A_h = tl.load(A_ptr + h)
    bias_h = tl.load(bias_ptr + h) if HAS_DT_BIAS else 0.0
    return h // heads_per_group, A_h, bias_h


@triton.jit
def _state_block(A_ptr, bias_ptr, heads, heads_per_group, headdim, nstate, stride_stn, stride_stp,
                 HAS_DT_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """The block of a sequential kernel (``tl_chunks.state_block``), with the head's group, A and dt_bias."""
    b, h, offs_p, offs_n, mask_p, mask_n, st_offs, st_mask, dense = state_block(
        heads, headdim, nstate, stride_stn, stride_stp, BLOCK_P, BLOCK_N)
    g, A_h, bias_h = _head(A_ptr, bias_ptr, h, heads_per_group, HAS_DT_BIAS)
    return b, h, g, offs_p, offs_n, mask_p, mask_n, A_h, bias_h, st_offs, st_mask, dense


@triton.jit
def _chunk_program(dt_ptr, seq_ptr, A_ptr, bias_ptr, length, heads, heads_per_group, headdim, t0, step, stride_dtb,
                   stride_dtl, stride_dth, stride_seqb, stride_seql, HAS_DT_BIAS: tl.constexpr,
                   DT_SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr):
    """The block of a chunk-parallel kernel (``tl_chunks.chunk_block``), the head's group, and the chunk's rows and
    decays (``_chunk_decay``)."""
    c, pid_p, b, h, offs_p, mask_p = chunk_block(heads, headdim, BLOCK_P)
    g, A_h, bias_h = _head(A_ptr, bias_ptr, h, heads_per_group, HAS_DT_BIAS)
    row, dr, valid, dtv, cs, seg = _chunk_decay(dt_ptr + b * stride_dtb + h * stride_dth, seq_ptr + b * stride_seqb,
                                                A_h, bias_h, c, length, t0, step, stride_dtl, stride_seql,
                                                DT_SOFTPLUS, HAS_SEQ, Q)
    return c, pid_p, b, h, g, offs_p, mask_p, row, dr, valid, dtv, cs, seg


@triton.jit
def _rows(row, dr, offs, stride_l, stride_c):
    """Offsets of a chunk's (Q, BLOCK) tile: positions ``row + dr`` (``row`` the int64 memory row of the chunk's
    first position), columns ``offs``."""
    return row * stride_l + (dr[:, None] * stride_l + offs[None, :] * stride_c)


@triton.jit
def _state_tiles(B_rows, C_rows, states_ptr, adj_ptr, st_base, dr, offs_n, mask_B, mask_C, mask_np, offs_p,
                 stride_Bl, stride_Bn, stride_Cl, stride_Cn, stride_stn, stride_stp):
    """(Q, SUB_N) tiles of B and C and (SUB_N, BLOCK_P) blocks of the entering state and the leaving adjoint."""
    Bt = tl.load(B_rows + (dr[:, None] * stride_Bl + offs_n[None, :] * stride_Bn), mask=mask_B, other=0.0)
    Ct = tl.load(C_rows + (dr[:, None] * stride_Cl + offs_n[None, :] * stride_Cn), mask=mask_C, other=0.0)
    np_offs = st_base + (offs_n[:, None] * stride_stn + offs_p[None, :] * stride_stp)
    S0 = tl.load(states_ptr + np_offs, mask=mask_np, other=0.0)
    Gt = tl.load(adj_ptr + np_offs, mask=mask_np, other=0.0)
    return Bt, Ct, S0, Gt


@triton.jit(do_not_specialize=["nchunks", "t0", "step"])
def _ssd_chunk_state_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, seq_ptr, init_ptr, states_ptr, final_ptr,
    length, nchunks, heads, heads_per_group, headdim, nstate, t0, step,
    stride_xb, stride_xl, stride_xh, stride_xp,
    stride_dtb, stride_dtl, stride_dth,
    stride_Bb, stride_Bl, stride_Bg, stride_Bn,
    stride_seqb, stride_seql,
    stride_stb, stride_sth, stride_stc, stride_stp, stride_stn,
    HAS_DT_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    b, h, g, offs_p, offs_n, mask_p, mask_n, A_h, bias_h, st_offs, st_mask, dense = _state_block(
        A_ptr, bias_ptr, heads, heads_per_group, headdim, nstate, stride_stn, stride_stp, HAS_DT_BIAS, BLOCK_P,
        BLOCK_N)
    x_base = x_ptr + b * stride_xb + h * stride_xh
    dt_base = dt_ptr + b * stride_dtb + h * stride_dth
    B_base = B_ptr + b * stride_Bb + g * stride_Bg
    seq_base = seq_ptr + b * stride_seqb
    st_base = states_ptr + b * stride_stb + h * stride_sth
    # the state is kept transposed, (nstate, headdim), so that the update is B^T @ x
    state = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    if HAS_INIT:
        state = tl.load(init_ptr + dense, mask=st_mask, other=0.0)
    for c in range(0, nchunks):
        tl.store(st_base + st_offs, state.to(states_ptr.dtype.element_ty), mask=st_mask)
        st_base += stride_stc
        row, dr, valid, dtv, cs, seg = _chunk_decay(dt_base, seq_base, A_h, bias_h, c, length, t0, step, stride_dtl,
                                                    stride_seql, DT_SOFTPLUS, HAS_SEQ, Q)
        ein, e_end, w_end, last = chunk_ends(cs, seg, Q)
        xt = tl.load(x_base + _rows(row, dr, offs_p, stride_xl, stride_xp), mask=valid[:, None] & mask_p[None, :],
                     other=0.0)
        Bt = tl.load(B_base + _rows(row, dr, offs_n, stride_Bl, stride_Bn), mask=valid[:, None] & mask_n[None, :],
                     other=0.0)
        if HAS_SEQ:
            # positions before the chunk's last reset do not reach the leaving state: select, do not multiply
            seg_end = tl.max(seg, 0)
            in_last = seg == seg_end
            Bw = tl.where(in_last[:, None], Bt * (w_end * dtv)[:, None], 0.0).to(xt.dtype)
            xt = tl.where(in_last[:, None], xt, 0.0)
            state = tl.where(seg_end == 0, state * e_end, 0.0)
        else:
            Bw = (Bt * (w_end * dtv)[:, None]).to(xt.dtype)
            state = state * e_end
        state += dot(tl.trans(Bw), xt, IEEE)
    tl.store(final_ptr + dense, state, mask=st_mask)


@triton.jit(do_not_specialize=["nchunks", "t0", "step"])
def _ssd_chunk_out_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, C_ptr, D_ptr, z_ptr, seq_ptr, states_ptr, y_ptr,
    length, nchunks, heads, heads_per_group, headdim, nstate, t0, step,
    stride_xb, stride_xl, stride_xh, stride_xp,
    stride_dtb, stride_dtl, stride_dth,
    stride_Bb, stride_Bl, stride_Bg, stride_Bn,
    stride_Cb, stride_Cl, stride_Cg, stride_Cn,
    stride_zb, stride_zl, stride_zh, stride_zp,
    stride_seqb, stride_seql,
    stride_stb, stride_sth, stride_stc, stride_stp, stride_stn,
    stride_yb, stride_yl, stride_yh, stride_yp,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    c, pid_p, b, h, g, offs_p, mask_p, row, dr, valid, dtv, cs, seg = _chunk_program(
        dt_ptr, seq_ptr, A_ptr, bias_ptr, length, heads, heads_per_group, headdim, t0, step, stride_dtb, stride_dtl,
        stride_dth, stride_seqb, stride_seql, HAS_DT_BIAS, DT_SOFTPLUS, HAS_SEQ, Q, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < nstate
    rows = tl.arange(0, Q)
    mask_qp = valid[:, None] & mask_p[None, :]
    mask_qn = valid[:, None] & mask_n[None, :]
    Ct = tl.load(C_ptr + b * stride_Cb + g * stride_Cg + _rows(row, dr, offs_n, stride_Cl, stride_Cn), mask=mask_qn,
                 other=0.0)
    Bt = tl.load(B_ptr + b * stride_Bb + g * stride_Bg + _rows(row, dr, offs_n, stride_Bl, stride_Bn), mask=mask_qn,
                 other=0.0)
    # a masked pair (j > i, or across a reset) adds an exact 0 whatever B_j and dt_j hold: selected, not multiplied
    pair, decay = _chunk_pairs(cs, seg, HAS_SEQ, Q)
    scores = tl.where(pair, dot(Ct, tl.trans(Bt), IEEE) * decay * dtv[None, :], 0.0)  # (Q, Q)
    xt = tl.load(x_ptr + b * stride_xb + h * stride_xh + _rows(row, dr, offs_p, stride_xl, stride_xp), mask=mask_qp,
                 other=0.0)
    # the product sees the finite x only; rows at or after the first non-finite x of a column are set to NaN
    bad = ~is_finite(xt)
    first_bad = tl.min(tl.where(bad, rows[:, None], Q), 0)
    xt = tl.where(bad, 0.0, xt)
    y = dot(scores.to(xt.dtype), xt, IEEE)
    if HAS_D:
        y += tl.load(D_ptr + h) * xt.to(tl.float32)
    S0 = tl.load(states_ptr + b * stride_stb + h * stride_sth + c.to(tl.int64) * stride_stc
                 + (offs_n[:, None] * stride_stn + offs_p[None, :] * stride_stp),
                 mask=mask_n[:, None] & mask_p[None, :], other=0.0)
    if HAS_SEQ:
        y += tl.where((seg == 0)[:, None], dot(Ct, S0, IEEE) * tl.exp(cs)[:, None], 0.0)
    else:
        y += dot(Ct, S0, IEEE) * tl.exp(cs)[:, None]
    if HAS_Z:
        zt = tl.load(z_ptr + b * stride_zb + h * stride_zh + _rows(row, dr, offs_p, stride_zl, stride_zp),
                     mask=mask_qp, other=0.0)
        y = y * silu(zt.to(tl.float32))
    y = tl.where(rows[:, None] >= first_bad[None, :], float("nan"), y)
    tl.store(y_ptr + b * stride_yb + h * stride_yh + _rows(row, dr, offs_p, stride_yl, stride_yp),
             y.to(y_ptr.dtype.element_ty), mask=mask_qp)


@triton.jit(do_not_specialize=["nchunks", "t0", "step"])
def _ssd_chunk_adjoint_bwd_kernel(
    gy_ptr, z_ptr, dt_ptr, A_ptr, bias_ptr, C_ptr, seq_ptr, gfinal_ptr, adj_ptr, ginit_ptr,
    length, nchunks, heads, heads_per_group, headdim, nstate, t0, step,
    stride_gyb, stride_gyl, stride_gyh, stride_gyp,
    stride_zb, stride_zl, stride_zh, stride_zp,
    stride_dtb, stride_dtl, stride_dth,
    stride_Cb, stride_Cl, stride_Cg, stride_Cn,
    stride_seqb, stride_seql,
    stride_stb, stride_sth, stride_stc, stride_stp, stride_stn,
    HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_DFINAL: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    b, h, g, offs_p, offs_n, mask_p, mask_n, A_h, bias_h, st_offs, st_mask, dense = _state_block(
        A_ptr, bias_ptr, heads, heads_per_group, headdim, nstate, stride_stn, stride_stp, HAS_DT_BIAS, BLOCK_P,
        BLOCK_N)
    gy_base = gy_ptr + b * stride_gyb + h * stride_gyh
    z_base = z_ptr + b * stride_zb + h * stride_zh
    dt_base = dt_ptr + b * stride_dtb + h * stride_dth
    C_base = C_ptr + b * stride_Cb + g * stride_Cg
    seq_base = seq_ptr + b * stride_seqb
    adj_base = adj_ptr + b * stride_stb + h * stride_sth + (nchunks - 1).to(tl.int64) * stride_stc
    # G^T = dL/dS^T at the end of the current chunk, (nstate, headdim)
    adj = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    if HAS_DFINAL:
        adj = tl.load(gfinal_ptr + dense, mask=st_mask, other=0.0)
    for k in range(0, nchunks):
        c = nchunks - 1 - k
        tl.store(adj_base + st_offs, adj.to(adj_ptr.dtype.element_ty), mask=st_mask)
        adj_base -= stride_stc
        row, dr, valid, dtv, cs, seg = _chunk_decay(dt_base, seq_base, A_h, bias_h, c, length, t0, step, stride_dtl,
                                                    stride_seql, DT_SOFTPLUS, HAS_SEQ, Q)
        ein, e_end, w_end, last = chunk_ends(cs, seg, Q)
        mask_qp = valid[:, None] & mask_p[None, :]
        gyt = tl.load(gy_base + _rows(row, dr, offs_p, stride_gyl, stride_gyp), mask=mask_qp, other=0.0)
        gyt = gyt.to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_base + _rows(row, dr, offs_p, stride_zl, stride_zp), mask=mask_qp, other=0.0)
            gyt = grad_mul(gyt, silu(zt.to(tl.float32)))
        Ct = tl.load(C_base + _rows(row, dr, offs_n, stride_Cl, stride_Cn), mask=valid[:, None] & mask_n[None, :],
                     other=0.0)
        gye = grad_mul(gyt, ein[:, None]).to(Ct.dtype)
        live = tl.max(tl.where(gye != 0.0, 1, 0), 1) > 0  # rows whose C meets a nonzero gradient
        Ct = tl.where(live[:, None], Ct, 0.0)
        adj = grad_mul(adj, e_end) + dot(tl.trans(Ct), gye, IEEE)
    tl.store(ginit_ptr + dense, adj, mask=st_mask)


@triton.jit(do_not_specialize=["nchunks", "t0", "step"])
def _ssd_chunk_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, C_ptr, D_ptr, z_ptr, gy_ptr, seq_ptr, states_ptr, adj_ptr,
    gx_ptr, gz_ptr, gB_ptr, gC_ptr, ddt_ptr, da_ptr, gD_ptr,
    length, nchunks, heads, heads_per_group, headdim, nstate, t0, step,
    stride_xb, stride_xl, stride_xh, stride_xp,
    stride_dtb, stride_dtl, stride_dth,
    stride_Bb, stride_Bl, stride_Bg, stride_Bn,
    stride_Cb, stride_Cl, stride_Cg, stride_Cn,
    stride_zb, stride_zl, stride_zh, stride_zp,
    stride_gyb, stride_gyl, stride_gyh, stride_gyp,
    stride_seqb, stride_seql,
    stride_stb, stride_sth, stride_stc, stride_stp, stride_stn,
    stride_gxb, stride_gxl, stride_gxh, stride_gxp,
    stride_gBk, stride_gBb, stride_gBl, stride_gBh,
    stride_ddk, stride_ddb, stride_ddl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    # nstate is walked in blocks of SUB_N twice (products over nstate, then the (Q, nstate) gradients) so that only
    # (Q, SUB_N) and (SUB_N, BLOCK_P) tiles of B, C, the state and its adjoint are live at a time
    c, pid_p, b, h, g, offs_p, mask_p, row, dr, valid, dtv, cs, seg = _chunk_program(
        dt_ptr, seq_ptr, A_ptr, bias_ptr, length, heads, heads_per_group, headdim, t0, step, stride_dtb, stride_dtl,
        stride_dth, stride_seqb, stride_seql, HAS_DT_BIAS, DT_SOFTPLUS, HAS_SEQ, Q, BLOCK_P)
    k = pid_p.to(tl.int64)
    ein, e_end, w_end, last = chunk_ends(cs, seg, Q)
    rows = tl.arange(0, Q)
    mask_qp = valid[:, None] & mask_p[None, :]
    B_rows = B_ptr + b * stride_Bb + g * stride_Bg + row * stride_Bl
    C_rows = C_ptr + b * stride_Cb + g * stride_Cg + row * stride_Cl
    st_base = b * stride_stb + h * stride_sth + c.to(tl.int64) * stride_stc
    xt = tl.load(x_ptr + b * stride_xb + h * stride_xh + _rows(row, dr, offs_p, stride_xl, stride_xp), mask=mask_qp,
                 other=0.0)
    CB = tl.zeros([Q, Q], dtype=tl.float32)
    CS = tl.zeros([Q, BLOCK_P], dtype=tl.float32)  # C_i S0^T: the entering state read by each row, before its decay
    BG = tl.zeros([Q, BLOCK_P], dtype=tl.float32)  # B_j G^T with G = dL/dS leaving the chunk
    GS0 = 0.0
    G_nonzero = 0
    for nb in range(0, BLOCK_N // SUB_N):
        offs_n = nb * SUB_N + tl.arange(0, SUB_N)
        mask_n = offs_n < nstate
        mask_qn = valid[:, None] & mask_n[None, :]
        Bt, Ct, S0, Gt = _state_tiles(B_rows, C_rows, states_ptr, adj_ptr, st_base, dr, offs_n, mask_qn, mask_qn,
                                      mask_n[:, None] & mask_p[None, :], offs_p, stride_Bl, stride_Bn, stride_Cl,
                                      stride_Cn, stride_stn, stride_stp)
        CB += dot(Ct, tl.trans(Bt), IEEE)
        CS += dot(Ct, S0, IEEE)
        BG += dot(Bt, Gt, IEEE)
        GS0 += tl.sum(tl.sum(Gt.to(tl.float32) * S0.to(tl.float32), 1), 0)
        G_nonzero = tl.maximum(G_nonzero, tl.max(tl.max(tl.where(Gt != 0.0, 1, 0), 1), 0))
    # the state path (through G, the gradient leaving the chunk) is skipped when G is zero: then it reaches
    # nothing, whatever B, x and the entering state hold
    G_live = G_nonzero > 0
    xf = xt.to(tl.float32)
    xBG = tl.where(G_live, tl.sum(xf * BG, 1), 0.0)
    gyt = tl.load(gy_ptr + b * stride_gyb + h * stride_gyh + _rows(row, dr, offs_p, stride_gyl, stride_gyp),
                  mask=mask_qp, other=0.0).to(tl.float32)
    # rows that meet a nonzero output gradient, and the columns (positions j) some such row i >= j reads
    live = tl.max(tl.where(gyt != 0.0, 1, 0), 1) > 0
    col_live = rows <= tl.max(tl.where(live, rows, -1), 0)
    pair, decay = _chunk_pairs(cs, seg, HAS_SEQ, Q)
    pair = pair & live[:, None]
    K = tl.where(pair, CB * decay, 0.0)  # dt_j is applied to x_j (forward) or to the column sums (backward)
    gx_base = b * stride_gxb + h * stride_gxh + row * stride_gxl
    gx_loc = dr[:, None] * stride_gxl + offs_p[None, :] * stride_gxp
    if HAS_Z:
        zt = tl.load(z_ptr + b * stride_zb + h * stride_zh + _rows(row, dr, offs_p, stride_zl, stride_zp),
                     mask=mask_qp, other=0.0).to(tl.float32)
        xdt = tl.where(col_live[:, None], xf * dtv[:, None], 0.0).to(xt.dtype)
        y = dot(K.to(xt.dtype), xdt, IEEE) + CS * ein[:, None]
        if HAS_D:
            y += tl.load(D_ptr + h) * xf
        tl.store(gz_ptr + gx_base + gx_loc, grad_mul(gyt, y * silu_grad(zt)).to(gz_ptr.dtype.element_ty),
                 mask=mask_qp)
        gyt = grad_mul(gyt, silu(zt))
    if HAS_D:
        tl.store(gD_ptr + ((b * nchunks + c) * heads + h) * headdim + offs_p, tl.sum(grad_mul(gyt, xf), 0),
                 mask=mask_p)
    dcs = grad_mul(tl.sum(grad_mul(gyt, CS), 1), ein)
    gyd = gyt.to(xt.dtype)
    wd = w_end * dtv
    # x_j reaches y_i through K_ij dt_j and the chunk's outgoing state through w_j dt_j B_j
    gx = (dot(tl.trans(K.to(xt.dtype)), gyd, IEEE) + tl.where(G_live, w_end[:, None] * BG, 0.0)) * dtv[:, None]
    if HAS_D:
        gx += tl.load(D_ptr + h) * gyt
    tl.store(gx_ptr + gx_base + gx_loc, gx.to(gx_ptr.dtype.element_ty), mask=mask_qp)
    dKd = dot(gyd, tl.trans(xt), IEEE)  # (Q, Q): gy_i . x_j
    T = tl.where(pair, dKd * K, 0.0)
    ddt = tl.sum(T, 0)  # the intra-chunk part of dL/ddt_j; T * dt_j is dL/d(log decay) of the pair (i, j)
    dcs += tl.sum(grad_mul(T, dtv[None, :]), 1) - grad_mul(ddt, dtv)
    dCB = tl.where(pair, dKd * dtv[None, :] * decay, 0.0).to(xt.dtype)
    ddt += tl.where(G_live, w_end * xBG, 0.0)
    r = tl.where(G_live, wd * xBG, 0.0)
    dcs += tl.where(last & G_live, tl.sum(r, 0) + e_end * GS0, 0.0) - r
    da = tl.cumsum(dcs, 0, reverse=True)  # d/da_j = sum over i >= j of d/dcs_i
    dd_base = k * stride_ddk + b * stride_ddb + h + row * stride_ddl
    tl.store(ddt_ptr + dd_base + dr * stride_ddl, ddt, mask=valid)
    tl.store(da_ptr + dd_base + dr * stride_ddl, da, mask=valid)
    gye = grad_mul(gyt, ein[:, None]).to(xt.dtype)
    gB_base = k * stride_gBk + b * stride_gBb + h * stride_gBh + row * stride_gBl
    for nb in range(0, BLOCK_N // SUB_N):
        offs_n = nb * SUB_N + tl.arange(0, SUB_N)
        mask_n = offs_n < nstate
        mask_qn = valid[:, None] & mask_n[None, :]
        # B_j meets dCB only in columns some live row reads, C_i only in live rows
        Bt, Ct, S0, Gt = _state_tiles(B_rows, C_rows, states_ptr, adj_ptr, st_base, dr, offs_n,
                                      mask_qn & col_live[:, None], mask_qn & live[:, None],
                                      mask_n[:, None] & mask_p[None, :], offs_p, stride_Bl, stride_Bn, stride_Cl,
                                      stride_Cn, stride_stn, stride_stp)
        gB_loc = dr[:, None] * stride_gBl + offs_n[None, :]
        gC = dot(dCB, Bt, IEEE) + dot(gye, tl.trans(S0), IEEE)
        tl.store(gC_ptr + gB_base + gB_loc, gC.to(gC_ptr.dtype.element_ty), mask=mask_qn)
        gB = dot(tl.trans(dCB), Ct, IEEE) + tl.where(G_live, wd[:, None] * dot(xt, tl.trans(Gt), IEEE), 0.0)
        tl.store(gB_ptr + gB_base + gB_loc, gB.to(gB_ptr.dtype.element_ty), mask=mask_qn)


@triton.jit
def _ssd_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, C_ptr, D_ptr, z_ptr, y_ptr,
    heads, heads_per_group, headdim, nstate,
    stride_sb, stride_sh, stride_sp, stride_sn,
    stride_xb, stride_xh, stride_xp,
    stride_dtb, stride_dth,
    stride_Bb, stride_Bg, stride_Bn,
    stride_Cb, stride_Cg, stride_Cn,
    stride_zb, stride_zh, stride_zp,
    stride_yb, stride_yh, stride_yp,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    g = h // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < headdim
    mask_n = offs_n < nstate
    mask = mask_p[:, None] & mask_n[None, :]
    s_ptrs = state_ptr + b * stride_sb + h * stride_sh + (offs_p[:, None] * stride_sp + offs_n[None, :] * stride_sn)
    state = tl.load(s_ptrs, mask=mask, other=0.0)
    xv = tl.load(x_ptr + b * stride_xb + h * stride_xh + offs_p * stride_xp, mask=mask_p, other=0.0).to(tl.float32)
    dtv = tl.load(dt_ptr + b * stride_dtb + h * stride_dth)
    if HAS_DT_BIAS:
        dtv += tl.load(bias_ptr + h)
    if DT_SOFTPLUS:
        dtv = softplus(dtv)
    Bv = tl.load(B_ptr + b * stride_Bb + g * stride_Bg + offs_n * stride_Bn, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * stride_Cb + g * stride_Cg + offs_n * stride_Cn, mask=mask_n, other=0.0).to(tl.float32)
    state = state * tl.exp(dtv * tl.load(A_ptr + h)) + (dtv * xv)[:, None] * Bv[None, :]
    tl.store(s_ptrs, state, mask=mask)
    y = tl.sum(state * Cv[None, :], 1)
    if HAS_D:
        y += tl.load(D_ptr + h) * xv
    if HAS_Z:
        y = y * silu(tl.load(z_ptr + b * stride_zb + h * stride_zh + offs_p * stride_zp, mask=mask_p,
                             other=0.0).to(tl.float32))
    tl.store(y_ptr + b * stride_yb + h * stride_yh + offs_p * stride_yp, y.to(y_ptr.dtype.element_ty), mask=mask_p)
