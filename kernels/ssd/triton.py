"""Triton kernels for Mamba-2 SSD: the chunked algorithm, forward and backward, and the one-position decode step.

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

Nothing of size (batch, length, heads, headdim, nstate) is formed; the extra memory is ``states`` and ``adjoints``
(one state per chunk each). Gradients that sum over the heads of a group or over headdim blocks (B, C, dt, D) leave
the kernels as fp32 partial sums that the wrapper reduces. ``reverse`` is handled inside the kernels: scan position
``i`` reads memory row ``t0 + step * i`` with ``(t0, step) = (L - 1, -1)``, so nothing is flipped or copied.
``chunk_size`` is accepted for the common signature and ignored (always ``Q = 64``, the chunk that keeps the (Q, Q)
and (Q, nstate) tiles in registers at nstate 128), so results do not depend on it at all. Offsets that can pass
2**31 (batch, head, row and chunk terms) are formed in int64; offsets inside a tile stay int32, and the launcher
copies the rare input whose strides would take those past 2**31 (``_kernel_layout``).
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from rawseq.kernels.common.triton_utils import AotVariant, next_pow2, tf32_allowed, tl_dtype_name

__all__ = ["ssd_step_triton", "ssd_triton"]

_Q = 64
_MAX_NSTATE = 256
_INT32 = 2**31


@triton.jit
def _softplus(v):
    """log(1 + exp(v)) without losing the small values for negative v (no log1p in ``tl``), linear above 20."""
    e = tl.exp(-tl.abs(v))
    u = 1.0 + e
    log1p_e = tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.where(v > 20.0, v, tl.maximum(v, 0.0) + log1p_e)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """``tl.dot`` with fp32 accumulation. fp32 inputs: exact fp32 products with ``IEEE``, else TF32 tensor cores
    (see ``_ieee``); fp16/bf16 inputs always take tensor cores and ignore ``IEEE``."""
    if IEEE:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def _chunk_decay(dt_ptr, seq_ptr, A_h, bias_h, c, L, t0, step, s_dt_l, s_seq_l, dt_softplus, has_seq,
                 Q: tl.constexpr):
    """Chunk ``c``: memory row of its first position (int64 scalar), row offsets of its positions (int32, ``step``
    apart), validity, dt, within-chunk cumsum of dt * A and segment ids (all (Q,))."""
    i = c * Q + tl.arange(0, Q)
    valid = i < L
    row = t0.to(tl.int64) + step * (c * Q)  # t0, step, NC are never specialized to constants
    dr = step * tl.arange(0, Q)
    dtv = tl.load(dt_ptr + row * s_dt_l + dr * s_dt_l, mask=valid, other=0.0) + bias_h
    if dt_softplus != 0:
        dtv = _softplus(dtv)
    dtv = tl.where(valid, dtv, 0.0)
    cs = tl.cumsum(dtv * A_h, 0)
    reset = tl.zeros([Q], dtype=tl.int32)
    if has_seq != 0:
        prev_ok = valid & (i > 0)
        seq_row = seq_ptr + row * s_seq_l
        cur = tl.load(seq_row + dr * s_seq_l, mask=valid, other=0)
        prv = tl.load(seq_row + (dr - step) * s_seq_l, mask=prev_ok, other=0)
        reset = (prev_ok & (cur != prv)).to(tl.int32)
    seg = tl.cumsum(reset, 0)
    return row, dr, valid, dtv, cs, seg


@triton.jit
def _chunk_ends(cs, seg, Q: tl.constexpr):
    """Decay of the entering state to each row (``ein``), to the chunk end (``e_end``) and of each row to the end."""
    last = tl.arange(0, Q) == Q - 1
    cs_end = tl.sum(tl.where(last, cs, 0.0), 0)
    seg_end = tl.max(seg, 0)
    ein = tl.where(seg == 0, tl.exp(cs), 0.0)
    e_end = tl.where(seg_end == 0, tl.exp(cs_end), 0.0)
    w_end = tl.where(seg == seg_end, tl.exp(cs_end - cs), 0.0)
    return ein, e_end, w_end, last


@triton.jit(do_not_specialize=["NC", "t0", "step"])
def _ssd_chunk_state_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, seq_ptr, init_ptr, states_ptr, final_ptr,
    L, NC, H, HPG, P, N, t0, step, dt_softplus, has_seq, has_init,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_dt_b, s_dt_l, s_dt_h,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_seq_b, s_seq_l,
    s_st_b, s_st_h, s_st_c, s_st_p, s_st_n,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
):
    npb = tl.cdiv(P, BP)
    pid_n = tl.program_id(0) // npb
    pid_p = tl.program_id(0) % npb
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    g = h // HPG
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_p = offs_p < P
    mask_n = offs_n < N
    A_h = tl.load(A_ptr + h)
    bias_h = tl.load(bias_ptr + h)
    x_base = x_ptr + b * s_x_b + h * s_x_h
    dt_base = dt_ptr + b * s_dt_b + h * s_dt_h
    B_base = B_ptr + b * s_B_b + g * s_B_g
    seq_base = seq_ptr + b * s_seq_b
    # the state is kept transposed, (nstate, headdim), so that the update is B^T @ x
    st_offs = offs_n[:, None] * s_st_n + offs_p[None, :] * s_st_p
    st_mask = mask_n[:, None] & mask_p[None, :]
    st_base = states_ptr + b * s_st_b + h * s_st_h
    dense_base = (b * H + h) * P * N
    dense = offs_n[:, None] + offs_p[None, :] * N
    state = tl.zeros([BN, BP], dtype=tl.float32)
    if has_init != 0:
        state = tl.load(init_ptr + dense_base + dense, mask=st_mask, other=0.0)
    for c in range(0, NC):
        tl.store(st_base + st_offs, state.to(states_ptr.dtype.element_ty), mask=st_mask)
        st_base += s_st_c
        row, dr, valid, dtv, cs, seg = _chunk_decay(dt_base, seq_base, A_h, bias_h, c, L, t0, step, s_dt_l,
                                                    s_seq_l, dt_softplus, has_seq, Q)
        ein, e_end, w_end, last = _chunk_ends(cs, seg, Q)
        xt = tl.load(x_base + row * s_x_l + (dr[:, None] * s_x_l + offs_p[None, :] * s_x_p),
                     mask=valid[:, None] & mask_p[None, :], other=0.0)
        Bt = tl.load(B_base + row * s_B_l + (dr[:, None] * s_B_l + offs_n[None, :] * s_B_n),
                     mask=valid[:, None] & mask_n[None, :], other=0.0)
        Bw = (Bt * (w_end * dtv)[:, None]).to(xt.dtype)
        state = state * e_end + _dot(tl.trans(Bw), xt, IEEE)
    tl.store(final_ptr + dense_base + dense, state, mask=st_mask)


@triton.jit(do_not_specialize=["NC", "t0", "step"])
def _ssd_chunk_out_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, C_ptr, D_ptr, z_ptr, seq_ptr, states_ptr, y_ptr,
    L, NC, H, HPG, P, N, t0, step, dt_softplus, has_seq, has_z,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_dt_b, s_dt_l, s_dt_h,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_seq_b, s_seq_l,
    s_st_b, s_st_h, s_st_c, s_st_p, s_st_n,
    s_y_b, s_y_l, s_y_h, s_y_p,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
):
    c = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    g = h // HPG
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mask_p = offs_p < P
    mask_n = offs_n < N
    A_h = tl.load(A_ptr + h)
    bias_h = tl.load(bias_ptr + h)
    D_h = tl.load(D_ptr + h)
    row, dr, valid, dtv, cs, seg = _chunk_decay(dt_ptr + b * s_dt_b + h * s_dt_h, seq_ptr + b * s_seq_b, A_h, bias_h,
                                                c, L, t0, step, s_dt_l, s_seq_l, dt_softplus, has_seq, Q)
    ein, e_end, w_end, last = _chunk_ends(cs, seg, Q)
    rows = tl.arange(0, Q)
    mask_qp = valid[:, None] & mask_p[None, :]
    mask_qn = valid[:, None] & mask_n[None, :]
    Ct = tl.load(C_ptr + b * s_C_b + g * s_C_g + row * s_C_l + (dr[:, None] * s_C_l + offs_n[None, :] * s_C_n),
                 mask=mask_qn, other=0.0)
    Bt = tl.load(B_ptr + b * s_B_b + g * s_B_g + row * s_B_l + (dr[:, None] * s_B_l + offs_n[None, :] * s_B_n),
                 mask=mask_qn, other=0.0)
    pair = (rows[:, None] >= rows[None, :]) & (seg[:, None] == seg[None, :])
    decay = tl.exp(tl.where(pair, cs[:, None] - cs[None, :], float("-inf")))
    scores = _dot(Ct, tl.trans(Bt), IEEE) * decay * dtv[None, :]  # (Q, Q)
    xt = tl.load(x_ptr + b * s_x_b + h * s_x_h + row * s_x_l + (dr[:, None] * s_x_l + offs_p[None, :] * s_x_p),
                 mask=mask_qp, other=0.0)
    y = _dot(scores.to(xt.dtype), xt, IEEE) + D_h * xt.to(tl.float32)
    S0 = tl.load(states_ptr + b * s_st_b + h * s_st_h + c.to(tl.int64) * s_st_c
                 + (offs_n[:, None] * s_st_n + offs_p[None, :] * s_st_p),
                 mask=mask_n[:, None] & mask_p[None, :], other=0.0)
    y += _dot(Ct, S0, IEEE) * ein[:, None]
    if has_z != 0:
        zt = tl.load(z_ptr + b * s_z_b + h * s_z_h + row * s_z_l + (dr[:, None] * s_z_l + offs_p[None, :] * s_z_p),
                     mask=mask_qp, other=0.0).to(tl.float32)
        y = y * zt * tl.sigmoid(zt)
    tl.store(y_ptr + b * s_y_b + h * s_y_h + row * s_y_l + (dr[:, None] * s_y_l + offs_p[None, :] * s_y_p),
             y.to(y_ptr.dtype.element_ty), mask=mask_qp)


@triton.jit(do_not_specialize=["NC", "t0", "step"])
def _ssd_chunk_adjoint_bwd_kernel(
    gy_ptr, z_ptr, dt_ptr, A_ptr, bias_ptr, C_ptr, seq_ptr, gfinal_ptr, adj_ptr, ginit_ptr,
    L, NC, H, HPG, P, N, t0, step, dt_softplus, has_seq, has_z, has_gfinal,
    s_gy_b, s_gy_l, s_gy_h, s_gy_p,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_dt_b, s_dt_l, s_dt_h,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_seq_b, s_seq_l,
    s_st_b, s_st_h, s_st_c, s_st_p, s_st_n,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
):
    npb = tl.cdiv(P, BP)
    pid_n = tl.program_id(0) // npb
    pid_p = tl.program_id(0) % npb
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    g = h // HPG
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_p = offs_p < P
    mask_n = offs_n < N
    A_h = tl.load(A_ptr + h)
    bias_h = tl.load(bias_ptr + h)
    gy_base = gy_ptr + b * s_gy_b + h * s_gy_h
    z_base = z_ptr + b * s_z_b + h * s_z_h
    dt_base = dt_ptr + b * s_dt_b + h * s_dt_h
    C_base = C_ptr + b * s_C_b + g * s_C_g
    seq_base = seq_ptr + b * s_seq_b
    st_offs = offs_n[:, None] * s_st_n + offs_p[None, :] * s_st_p
    st_mask = mask_n[:, None] & mask_p[None, :]
    adj_base = adj_ptr + b * s_st_b + h * s_st_h + (NC - 1).to(tl.int64) * s_st_c
    dense_base = (b * H + h) * P * N
    dense = offs_n[:, None] + offs_p[None, :] * N
    # G^T = dL/dS^T at the end of the current chunk, (nstate, headdim)
    adj = tl.zeros([BN, BP], dtype=tl.float32)
    if has_gfinal != 0:
        adj = tl.load(gfinal_ptr + dense_base + dense, mask=st_mask, other=0.0)
    for k in range(0, NC):
        c = NC - 1 - k
        tl.store(adj_base + st_offs, adj.to(adj_ptr.dtype.element_ty), mask=st_mask)
        adj_base -= s_st_c
        row, dr, valid, dtv, cs, seg = _chunk_decay(dt_base, seq_base, A_h, bias_h, c, L, t0, step, s_dt_l,
                                                    s_seq_l, dt_softplus, has_seq, Q)
        ein, e_end, w_end, last = _chunk_ends(cs, seg, Q)
        mask_qp = valid[:, None] & mask_p[None, :]
        gyt = tl.load(gy_base + row * s_gy_l + (dr[:, None] * s_gy_l + offs_p[None, :] * s_gy_p), mask=mask_qp,
                      other=0.0).to(tl.float32)
        if has_z != 0:
            zt = tl.load(z_base + row * s_z_l + (dr[:, None] * s_z_l + offs_p[None, :] * s_z_p), mask=mask_qp,
                         other=0.0).to(tl.float32)
            gyt = gyt * zt * tl.sigmoid(zt)
        Ct = tl.load(C_base + row * s_C_l + (dr[:, None] * s_C_l + offs_n[None, :] * s_C_n),
                     mask=valid[:, None] & mask_n[None, :], other=0.0)
        gye = (gyt * ein[:, None]).to(Ct.dtype)
        adj = adj * e_end + _dot(tl.trans(Ct), gye, IEEE)
    tl.store(ginit_ptr + dense_base + dense, adj, mask=st_mask)


@triton.jit(do_not_specialize=["NC", "t0", "step"])
def _ssd_chunk_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, C_ptr, D_ptr, z_ptr, gy_ptr, seq_ptr, states_ptr, adj_ptr,
    gx_ptr, gz_ptr, gB_ptr, gC_ptr, ddt_ptr, da_ptr, gD_ptr,
    L, NC, H, HPG, P, N, t0, step, dt_softplus, has_seq, has_z,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_dt_b, s_dt_l, s_dt_h,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_gy_b, s_gy_l, s_gy_h, s_gy_p,
    s_seq_b, s_seq_l,
    s_st_b, s_st_h, s_st_c, s_st_p, s_st_n,
    s_gx_b, s_gx_l, s_gx_h, s_gx_p,
    s_gB_k, s_gB_b, s_gB_l, s_gB_h,
    s_dd_k, s_dd_b, s_dd_l,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr, IEEE: tl.constexpr,
):
    # nstate is walked in blocks of NB twice (products over nstate, then the (Q, nstate) gradients) so that only
    # (Q, NB) and (NB, BP) tiles of B, C, the state and its adjoint are live at a time
    c = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    g = h // HPG
    k = pid_p.to(tl.int64)
    offs_p = pid_p * BP + tl.arange(0, BP)
    mask_p = offs_p < P
    A_h = tl.load(A_ptr + h)
    bias_h = tl.load(bias_ptr + h)
    D_h = tl.load(D_ptr + h)
    row, dr, valid, dtv, cs, seg = _chunk_decay(dt_ptr + b * s_dt_b + h * s_dt_h, seq_ptr + b * s_seq_b, A_h, bias_h,
                                                c, L, t0, step, s_dt_l, s_seq_l, dt_softplus, has_seq, Q)
    ein, e_end, w_end, last = _chunk_ends(cs, seg, Q)
    rows = tl.arange(0, Q)
    mask_qp = valid[:, None] & mask_p[None, :]
    B_rows = B_ptr + b * s_B_b + g * s_B_g + row * s_B_l
    C_rows = C_ptr + b * s_C_b + g * s_C_g + row * s_C_l
    st_base = b * s_st_b + h * s_st_h + c.to(tl.int64) * s_st_c
    xt = tl.load(x_ptr + b * s_x_b + h * s_x_h + row * s_x_l + (dr[:, None] * s_x_l + offs_p[None, :] * s_x_p),
                 mask=mask_qp, other=0.0)
    CB = tl.zeros([Q, Q], dtype=tl.float32)
    CS = tl.zeros([Q, BP], dtype=tl.float32)  # C_i S0^T: the entering state read by each row, before its decay
    BG = tl.zeros([Q, BP], dtype=tl.float32)  # B_j G^T with G = dL/dS leaving the chunk
    GS0 = 0.0
    for nb in range(0, BN // NB):
        offs_n = nb * NB + tl.arange(0, NB)
        mask_n = offs_n < N
        qn = dr[:, None] * s_B_l + offs_n[None, :] * s_B_n
        Bt = tl.load(B_rows + qn, mask=valid[:, None] & mask_n[None, :], other=0.0)
        Ct = tl.load(C_rows + (dr[:, None] * s_C_l + offs_n[None, :] * s_C_n), mask=valid[:, None] & mask_n[None, :],
                     other=0.0)
        np_offs = st_base + (offs_n[:, None] * s_st_n + offs_p[None, :] * s_st_p)
        S0 = tl.load(states_ptr + np_offs, mask=mask_n[:, None] & mask_p[None, :], other=0.0)
        Gt = tl.load(adj_ptr + np_offs, mask=mask_n[:, None] & mask_p[None, :], other=0.0)
        CB += _dot(Ct, tl.trans(Bt), IEEE)
        CS += _dot(Ct, S0, IEEE)
        BG += _dot(Bt, Gt, IEEE)
        GS0 += tl.sum(tl.sum(Gt.to(tl.float32) * S0.to(tl.float32), 1), 0)
    xBG = tl.sum(xt.to(tl.float32) * BG, 1)
    pair = (rows[:, None] >= rows[None, :]) & (seg[:, None] == seg[None, :])
    decay = tl.exp(tl.where(pair, cs[:, None] - cs[None, :], float("-inf")))
    K = CB * decay  # dt_j is applied to x_j (forward) or to the column sums (backward) instead of to K
    gx_base = b * s_gx_b + h * s_gx_h + row * s_gx_l
    gx_loc = dr[:, None] * s_gx_l + offs_p[None, :] * s_gx_p
    gyt = tl.load(gy_ptr + b * s_gy_b + h * s_gy_h + row * s_gy_l + (dr[:, None] * s_gy_l + offs_p[None, :] * s_gy_p),
                  mask=mask_qp, other=0.0).to(tl.float32)
    if has_z != 0:
        zt = tl.load(z_ptr + b * s_z_b + h * s_z_h + row * s_z_l + (dr[:, None] * s_z_l + offs_p[None, :] * s_z_p),
                     mask=mask_qp, other=0.0).to(tl.float32)
        xf = xt.to(tl.float32)
        y = _dot(K.to(xt.dtype), (xf * dtv[:, None]).to(xt.dtype), IEEE) + CS * ein[:, None] + D_h * xf
        sig = tl.sigmoid(zt)
        gz = gyt * y * sig * (1.0 + zt * (1.0 - sig))
        tl.store(gz_ptr + gx_base + gx_loc, gz.to(gz_ptr.dtype.element_ty), mask=mask_qp)
        gyt = gyt * zt * sig
    tl.store(gD_ptr + ((b * NC + c) * H + h) * P + offs_p, tl.sum(gyt * xt.to(tl.float32), 0), mask=mask_p)
    dcs = ein * tl.sum(gyt * CS, 1)
    gyd = gyt.to(xt.dtype)
    wd = w_end * dtv
    # x_j reaches y_i through K_ij dt_j and the chunk's outgoing state through w_j dt_j B_j
    gx = (_dot(tl.trans(K.to(xt.dtype)), gyd, IEEE) + w_end[:, None] * BG) * dtv[:, None] + D_h * gyt
    tl.store(gx_ptr + gx_base + gx_loc, gx.to(gx_ptr.dtype.element_ty), mask=mask_qp)
    dKd = _dot(gyd, tl.trans(xt), IEEE)  # (Q, Q): gy_i . x_j
    T = dKd * K
    ddt = tl.sum(T, 0)  # the intra-chunk part of dL/ddt_j; T * dt_j is dL/d(log decay) of the pair (i, j)
    dcs += tl.sum(T * dtv[None, :], 1) - ddt * dtv
    dCB = (dKd * dtv[None, :] * decay).to(xt.dtype)
    ddt += w_end * xBG
    r = wd * xBG
    dcs += tl.where(last, tl.sum(r, 0) + e_end * GS0, 0.0) - r
    da = tl.sum(dcs, 0) - tl.cumsum(dcs, 0) + dcs  # d/da_j = sum over i >= j of d/dcs_i
    dd_base = k * s_dd_k + b * s_dd_b + h + row * s_dd_l
    tl.store(ddt_ptr + dd_base + dr * s_dd_l, ddt, mask=valid)
    tl.store(da_ptr + dd_base + dr * s_dd_l, da, mask=valid)
    gye = (gyt * ein[:, None]).to(xt.dtype)
    gB_base = k * s_gB_k + b * s_gB_b + h * s_gB_h + row * s_gB_l
    for nb in range(0, BN // NB):
        offs_n = nb * NB + tl.arange(0, NB)
        mask_n = offs_n < N
        mask_qn = valid[:, None] & mask_n[None, :]
        Bt = tl.load(B_rows + (dr[:, None] * s_B_l + offs_n[None, :] * s_B_n), mask=mask_qn, other=0.0)
        Ct = tl.load(C_rows + (dr[:, None] * s_C_l + offs_n[None, :] * s_C_n), mask=mask_qn, other=0.0)
        np_offs = st_base + (offs_n[:, None] * s_st_n + offs_p[None, :] * s_st_p)
        S0 = tl.load(states_ptr + np_offs, mask=mask_n[:, None] & mask_p[None, :], other=0.0)
        Gt = tl.load(adj_ptr + np_offs, mask=mask_n[:, None] & mask_p[None, :], other=0.0)
        gB_loc = dr[:, None] * s_gB_l + offs_n[None, :]
        gC = _dot(dCB, Bt, IEEE) + _dot(gye, tl.trans(S0), IEEE)
        tl.store(gC_ptr + gB_base + gB_loc, gC.to(gC_ptr.dtype.element_ty), mask=mask_qn)
        gB = _dot(tl.trans(dCB), Ct, IEEE) + wd[:, None] * _dot(xt, tl.trans(Gt), IEEE)
        tl.store(gB_ptr + gB_base + gB_loc, gB.to(gB_ptr.dtype.element_ty), mask=mask_qn)


@triton.jit
def _ssd_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, C_ptr, D_ptr, z_ptr, y_ptr,
    H, HPG, P, N, dt_softplus, has_z,
    s_s_b, s_s_h, s_s_p, s_s_n,
    s_x_b, s_x_h, s_x_p,
    s_dt_b, s_dt_h,
    s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n,
    s_z_b, s_z_h, s_z_p,
    s_y_b, s_y_h, s_y_p,
    BP: tl.constexpr, BN: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    g = h // HPG
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask = mask_p[:, None] & mask_n[None, :]
    s_ptrs = state_ptr + b * s_s_b + h * s_s_h + (offs_p[:, None] * s_s_p + offs_n[None, :] * s_s_n)
    state = tl.load(s_ptrs, mask=mask, other=0.0)
    xv = tl.load(x_ptr + b * s_x_b + h * s_x_h + offs_p * s_x_p, mask=mask_p, other=0.0).to(tl.float32)
    dtv = tl.load(dt_ptr + b * s_dt_b + h * s_dt_h) + tl.load(bias_ptr + h)
    if dt_softplus != 0:
        dtv = _softplus(dtv)
    Bv = tl.load(B_ptr + b * s_B_b + g * s_B_g + offs_n * s_B_n, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_C_b + g * s_C_g + offs_n * s_C_n, mask=mask_n, other=0.0).to(tl.float32)
    state = state * tl.exp(dtv * tl.load(A_ptr + h)) + (dtv * xv)[:, None] * Bv[None, :]
    tl.store(s_ptrs, state, mask=mask)
    y = tl.sum(state * Cv[None, :], 1) + tl.load(D_ptr + h) * xv
    if has_z != 0:
        zv = tl.load(z_ptr + b * s_z_b + h * s_z_h + offs_p * s_z_p, mask=mask_p, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(y_ptr + b * s_y_b + h * s_y_h + offs_p * s_y_p, y.to(y_ptr.dtype.element_ty), mask=mask_p)


_WARPS = {"state": 8, "out": 8, "adjoint": 8, "bwd": 8, "step": 4}
_STAGES = {"state": 2, "out": 1, "adjoint": 2, "bwd": 1, "step": 1}
_BP = 64
_BN_SEQ = 64
_STEP_BP = 16  # the decode step is memory-bound: small (16, nstate) state blocks, more programs, few registers


def _blocks(headdim: int, nstate: int) -> tuple[int, int, int]:
    """(BP, BN covering nstate, BN of the sequential kernels). Few sizes on purpose, so that every variant can be
    compiled ahead of time: headdim blocks of 64 (more blocks above 64) and nstate padded to 64, 128 or 256. Small
    heads only waste masked lanes."""
    return _BP, max(_BN_SEQ, next_pow2(nstate)), _BN_SEQ


def _ieee(dtype: torch.dtype) -> bool:
    """Exact fp32 products for fp32 inputs unless PyTorch allows TF32 for CUDA matmuls (``tf32_allowed``): the exact
    path runs the products on CUDA cores, and ptxas gives its chunk-output kernel 32 registers and 23-65 KB of spill
    traffic (AOT table), where the TF32 one compiles without spills at nstate <= 128. fp16/bf16: no effect."""
    return dtype == torch.float32 and not tf32_allowed()


def _kernel_layout(t: torch.Tensor | None, dim: int = 1, rows: int = _Q) -> torch.Tensor | None:
    """The kernels (and their AOT variants) take the innermost stride as 1, and form the offsets inside a tile (up to
    ``rows - 1`` steps of ``t.stride(dim)`` plus the innermost dimension) in int32; batch, head, row and chunk terms are
    int64. Copy the rare tensor where either does not hold (a position stride of 2**25 elements or more, say): the
    contiguous copy fits, since ``_prepare`` refuses positions of that size."""
    if t is None:
        return t
    if t.stride(-1) == 1 and (rows - 1) * abs(t.stride(dim)) + t.shape[-1] - 1 < _INT32:
        return t
    return t.contiguous()


def _prepare(x, dt, A, B, C, D, z, dt_bias, seq_idx):
    """Bring every input to the dtypes the kernels are compiled for: B, C, z in x's dtype; dt, A, D, dt_bias fp32;
    seq_idx int32; innermost strides 1."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the triton ssd backend takes float16, bfloat16 or float32 x, got {x.dtype}; "
                         "use backend='torch' for float64")
    heads, headdim, nstate = x.shape[2], x.shape[3], B.shape[-1]
    if nstate > _MAX_NSTATE:
        raise ValueError(f"the triton ssd backend supports nstate <= {_MAX_NSTATE}, got {nstate}")
    if _Q * heads * max(headdim, nstate) + max(headdim, nstate) >= _INT32:
        raise ValueError(f"the triton ssd backend forms offsets inside a chunk in int32 and takes fewer than "
                         f"{_INT32 // _Q} elements per position in x or B, got heads * max(headdim, nstate) = "
                         f"{heads} * {max(headdim, nstate)}; use backend='torch'")
    f32 = dict(dtype=torch.float32, device=x.device)
    B = _kernel_layout(B.to(x.dtype))
    C = _kernel_layout(C.to(x.dtype))
    z = None if z is None else _kernel_layout(z.to(x.dtype))
    dtf = _kernel_layout(dt.to(torch.float32))
    Af = A.to(torch.float32).contiguous()
    Df = torch.zeros(heads, **f32) if D is None else D.to(torch.float32).contiguous()
    biasf = torch.zeros(heads, **f32) if dt_bias is None else dt_bias.to(torch.float32).contiguous()
    seq = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
    return _kernel_layout(x), B, C, z, dtf, Af, Df, biasf, seq


def _ssd_fwd(x, dtf, Af, B, C, Df, z, biasf, dt_softplus, initial_state, seq, reverse):
    """Launch the state pass then the output pass; returns (y, final_state fp32, states entering each chunk)."""
    batch, length, heads, headdim = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    nchunks = triton.cdiv(length, _Q)
    bp, bn, bn_seq = _blocks(headdim, nstate)
    ieee = _ieee(x.dtype)
    states = torch.empty(batch, heads, nchunks, headdim, nstate, dtype=x.dtype, device=x.device)
    final = torch.empty(batch, heads, headdim, nstate, dtype=torch.float32, device=x.device)
    y = torch.empty(batch, length, heads, headdim, dtype=x.dtype, device=x.device)
    init = final if initial_state is None else initial_state.to(torch.float32).contiguous()
    seq_t = seq if seq is not None else torch.zeros(1, 1, dtype=torch.int32, device=x.device)
    z_t = z if z is not None else x
    t0, step = (length - 1, -1) if reverse else (0, 1)
    common = (length, nchunks, heads, heads // groups, headdim, nstate, t0, step, int(dt_softplus),
              int(seq is not None))
    grid = (triton.cdiv(nstate, bn_seq) * triton.cdiv(headdim, bp), batch * heads)
    _ssd_chunk_state_fwd_kernel[grid](
        x, dtf, Af, biasf, B, seq_t, init, states, final,
        *common, int(initial_state is not None),
        *x.stride(), *dtf.stride(), *B.stride(), *seq_t.stride(), *states.stride(),
        Q=_Q, BP=bp, BN=bn_seq, IEEE=ieee, num_warps=_WARPS["state"], num_stages=_STAGES["state"],
    )
    grid = (nchunks, triton.cdiv(headdim, bp), batch * heads)
    _ssd_chunk_out_fwd_kernel[grid](
        x, dtf, Af, biasf, B, C, Df, z_t, seq_t, states, y,
        *common, int(z is not None),
        *x.stride(), *dtf.stride(), *B.stride(), *C.stride(), *z_t.stride(), *seq_t.stride(), *states.stride(),
        *y.stride(),
        Q=_Q, BP=bp, BN=bn, IEEE=ieee, num_warps=_WARPS["out"], num_stages=_STAGES["out"],
    )
    return y, final, states


def _ssd_bwd(gy, gfinal, x, dtf, Af, B, C, Df, z, biasf, dt_softplus, seq, reverse, states):
    """Launch the adjoint pass then the chunk-parallel gradient pass; returns the gradients in fp32 partial form."""
    batch, length, heads, headdim = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    nchunks = triton.cdiv(length, _Q)
    bp, bn, bn_seq = _blocks(headdim, nstate)
    npb = triton.cdiv(headdim, bp)
    ieee = _ieee(x.dtype)
    dev = x.device
    gy = _kernel_layout(gy.to(x.dtype))
    adj = torch.empty_like(states)
    ginit = torch.empty(batch, heads, headdim, nstate, dtype=torch.float32, device=dev)
    gfinal_t = ginit if gfinal is None else gfinal.to(torch.float32).contiguous()
    seq_t = seq if seq is not None else torch.zeros(1, 1, dtype=torch.int32, device=dev)
    z_t = z if z is not None else x
    t0, step = (length - 1, -1) if reverse else (0, 1)
    common = (length, nchunks, heads, heads // groups, headdim, nstate, t0, step, int(dt_softplus),
              int(seq is not None), int(z is not None))
    grid = (triton.cdiv(nstate, bn_seq) * npb, batch * heads)
    _ssd_chunk_adjoint_bwd_kernel[grid](
        gy, z_t, dtf, Af, biasf, C, seq_t, gfinal_t, adj, ginit,
        *common, int(gfinal is not None),
        *gy.stride(), *z_t.stride(), *dtf.stride(), *C.stride(), *seq_t.stride(), *states.stride(),
        Q=_Q, BP=bp, BN=bn_seq, IEEE=ieee, num_warps=_WARPS["adjoint"], num_stages=_STAGES["adjoint"],
    )
    gx = torch.empty(batch, length, heads, headdim, dtype=x.dtype, device=dev)
    gz = torch.empty_like(gx) if z is not None else gx
    # with one head per group and one headdim block nothing is summed: write dB, dC in their dtype directly
    direct = groups == heads and npb == 1
    gB = torch.empty(npb, batch, length, heads, nstate, dtype=B.dtype if direct else torch.float32, device=dev)
    gC = torch.empty_like(gB)
    ddt = torch.empty(npb, batch, length, heads, dtype=torch.float32, device=dev)
    da = torch.empty_like(ddt)
    gD = torch.empty(batch, nchunks, heads, headdim, dtype=torch.float32, device=dev)
    grid = (nchunks, npb, batch * heads)
    _ssd_chunk_bwd_kernel[grid](
        x, dtf, Af, biasf, B, C, Df, z_t, gy, seq_t, states, adj,
        gx, gz, gB, gC, ddt, da, gD,
        *common,
        *x.stride(), *dtf.stride(), *B.stride(), *C.stride(), *z_t.stride(), *gy.stride(), *seq_t.stride(),
        *states.stride(), *gx.stride(), *gB.stride()[:4], *ddt.stride()[:3],
        Q=_Q, BP=bp, BN=bn, NB=bn_seq, IEEE=ieee, num_warps=_WARPS["bwd"], num_stages=_STAGES["bwd"],
    )
    return gx, (gz if z is not None else None), gB, gC, ddt, da, gD, ginit


def _softplus_torch(v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(v, beta=1.0, threshold=20.0)


class SSDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse):
        x, Bk, Ck, zk, dtf, Af, Df, biasf, seq = _prepare(x, dt, A, B, C, D, z, dt_bias, seq_idx)
        y, final, states = _ssd_fwd(x, dtf, Af, Bk, Ck, Df, zk, biasf, dt_softplus, initial_state, seq, reverse)
        ctx.save_for_backward(x, dtf, Af, Bk, Ck, Df, zk, biasf, seq, states)
        ctx.dt_softplus = dt_softplus
        ctx.reverse = reverse
        ctx.groups = B.shape[2]
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (dt, A, B, C, D, z, dt_bias, initial_state))
        ctx.has_optional = (D is not None, z is not None, dt_bias is not None, initial_state is not None)
        return y, final

    @staticmethod
    def backward(ctx, gy, gfinal):
        x, dtf, Af, Bk, Ck, Df, zk, biasf, seq, states = ctx.saved_tensors
        has_D, has_z, has_bias, has_init = ctx.has_optional
        dt_dtype, A_dtype, B_dtype, C_dtype, D_dtype, z_dtype, bias_dtype, init_dtype = ctx.dtypes
        batch, length, heads, headdim = x.shape
        groups, nstate = ctx.groups, Bk.shape[-1]
        if gy is None:
            gy = torch.zeros_like(x)
        gx, gz, gB, gC, ddt, da, gD, ginit = _ssd_bwd(
            gy, gfinal, x, dtf, Af, Bk, Ck, Df, zk, biasf, ctx.dt_softplus, seq, ctx.reverse, states
        )
        da = da.sum(0)  # (b, l, h)
        raw = dtf + biasf
        delta = _softplus_torch(raw) if ctx.dt_softplus else raw
        ddelta = ddt.sum(0) + da * Af
        draw = ddelta * torch.where(raw > 20.0, 1.0, torch.sigmoid(raw)) if ctx.dt_softplus else ddelta
        gA = (da * delta).sum((0, 1))
        # (npb, b, l, h, n) -> (b, l, g, n): sum the headdim blocks and the heads sharing a group
        if gB.shape[0] == 1 and groups == heads:
            gB, gC = gB[0], gC[0]
        else:
            gB = gB.view(-1, batch, length, groups, heads // groups, nstate).sum((0, 4))
            gC = gC.view(-1, batch, length, groups, heads // groups, nstate).sum((0, 4))
        return (
            gx,
            draw.to(dt_dtype),
            gA.to(A_dtype),
            gB.to(B_dtype),
            gC.to(C_dtype),
            gD.sum((0, 1, 3)).to(D_dtype) if has_D else None,
            gz.to(z_dtype) if has_z else None,
            draw.sum((0, 1)).to(bias_dtype) if has_bias else None,
            None,
            ginit.to(init_dtype) if has_init else None,
            None,
            None,
        )


def ssd_triton(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None,
               reverse=False, chunk_size=256):
    """Triton SSD, differentiable; same arguments as :func:`rawseq.kernels.ssd.ssd`, returns ``(y, final_state)``.

    ``chunk_size`` is ignored (the kernels use chunks of 64); ``reverse`` reads the rows backwards in the kernels.
    float16, bfloat16 and float32 inputs; states and accumulation in float32; nstate up to 256.
    """
    batch, length, heads, headdim = x.shape
    if length == 0:
        final = (torch.zeros(batch, heads, headdim, B.shape[-1], dtype=torch.float32, device=x.device)
                 if initial_state is None else initial_state.to(torch.float32).clone())
        return x.new_zeros(x.shape), final
    return SSDFunction.apply(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse)


def ssd_step_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One decoding position, same arguments as :func:`rawseq.kernels.ssd.ssd_step`; updates the fp32 ``state``
    (batch, heads, headdim, nstate) in place and returns y (batch, heads, headdim) in ``x.dtype``. Not differentiable.
    """
    if state.dtype != torch.float32:
        raise ValueError(f"the triton ssd_step backend keeps a float32 state, got {state.dtype}")
    batch, heads, headdim = x.shape
    groups, nstate = B.shape[1], B.shape[2]
    x, B, C, z, dtf, Af, Df, biasf, _ = _prepare(x[:, None], dt, A, B[:, None], C[:, None], D, z, dt_bias, None)
    x, B, C = x[:, 0], B[:, 0], C[:, 0]
    _, bn, _ = _blocks(headdim, nstate)
    work = _kernel_layout(state, dim=2, rows=state.shape[2])
    y = torch.empty(batch, heads, headdim, dtype=x.dtype, device=x.device)
    z_t = z if z is not None else x
    grid = (triton.cdiv(headdim, _STEP_BP), batch * heads)
    _ssd_step_kernel[grid](
        work, x, dtf, Af, biasf, B, C, Df, z_t, y,
        heads, heads // groups, headdim, nstate, int(dt_softplus), int(z is not None),
        *work.stride(), *x.stride(), *dtf.stride(), *B.stride(), *C.stride(), *z_t.stride(), *y.stride(),
        BP=_STEP_BP, BN=bn, num_warps=_WARPS["step"], num_stages=_STAGES["step"],
    )
    if work is not state:
        state.copy_(work)
    return y


_FP32_POINTERS = {"dt_ptr", "A_ptr", "bias_ptr", "D_ptr", "init_ptr", "final_ptr", "gfinal_ptr", "ginit_ptr",
                  "gB_ptr", "gC_ptr", "ddt_ptr", "da_ptr", "gD_ptr", "state_ptr"}


_UNIT_STRIDES = {"s_x_p", "s_dt_h", "s_B_n", "s_C_n", "s_z_p", "s_gy_p", "s_seq_l", "s_st_n", "s_y_p", "s_gx_p",
                 "s_s_n"}


def _signature(fn, dtype: torch.dtype, fp32_grads: bool = True) -> dict[str, str]:
    """AOT signature as the launchers call ``fn``: inputs in ``dtype``, fp32 side tensors, int32 seq_idx, and i32
    scalars and strides, as triton types them below 2**31 (every offset that can pass 2**31 is formed in int64)."""
    sig = {}
    # read the Python function (the interpreter wraps it in an object without ``params``)
    for name, param in inspect.signature(getattr(fn, "fn", fn)).parameters.items():
        if "constexpr" in str(param.annotation) or name in _UNIT_STRIDES:
            sig[name] = "constexpr"
        elif name == "seq_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            fp32 = name in _FP32_POINTERS and (fp32_grads or name not in ("gB_ptr", "gC_ptr"))
            sig[name] = "*fp32" if fp32 else f"*{tl_dtype_name(dtype)}"
        else:
            sig[name] = "i32"
    return sig


def _aot_variant(name, fn, dtype, num_warps, num_stages, fp32_grads=True, **constexprs) -> AotVariant:
    sig = _signature(fn, dtype, fp32_grads)
    units = {k: 1 for k in sig if k in _UNIT_STRIDES}
    return AotVariant(name=name, fn=fn, signature=sig, constexprs={**constexprs, **units}, num_warps=num_warps,
                      num_stages=num_stages)


def _aot_variants() -> list[AotVariant]:
    """Every (kernel, dtype, block sizes) the launchers can choose (see ``_blocks``)."""
    variants = []
    for dtype, ieee in ((torch.float32, True), (torch.float32, False), (torch.float16, False),
                        (torch.bfloat16, False)):
        dname = tl_dtype_name(dtype) + ("-tf32" if dtype == torch.float32 and not ieee else "")
        for kind, fn in (("state", _ssd_chunk_state_fwd_kernel), ("adjoint", _ssd_chunk_adjoint_bwd_kernel)):
            variants.append(_aot_variant(f"{kind}-{dname}-Q{_Q}-P{_BP}-N{_BN_SEQ}", fn, dtype, _WARPS[kind],
                                         _STAGES[kind], Q=_Q, BP=_BP, BN=_BN_SEQ, IEEE=ieee))
        for bn in (64, 128, _MAX_NSTATE):
            variants.append(_aot_variant(f"out-{dname}-Q{_Q}-P{_BP}-N{bn}", _ssd_chunk_out_fwd_kernel, dtype,
                                         _WARPS["out"], _STAGES["out"], Q=_Q, BP=_BP, BN=bn, IEEE=ieee))
            for fp32_grads in (True, False) if dtype != torch.float32 else (True,):
                variants.append(_aot_variant(
                    f"bwd-{dname}-Q{_Q}-P{_BP}-N{bn}" + ("" if fp32_grads else "-directBC"), _ssd_chunk_bwd_kernel,
                    dtype, _WARPS["bwd"], _STAGES["bwd"], fp32_grads, Q=_Q, BP=_BP, BN=bn, NB=_BN_SEQ, IEEE=ieee,
                ))
            if not dname.endswith("tf32"):  # the step kernel has no products
                variants.append(_aot_variant(f"step-{dname}-P{_STEP_BP}-N{bn}", _ssd_step_kernel, dtype,
                                             _WARPS["step"], _STAGES["step"], BP=_STEP_BP, BN=bn))
    return variants


AOT_VARIANTS = _aot_variants()
