"""Triton kernels of Mamba-3: the chunked core (forward and backward) and the one-position decode step.

The core scans the inputs that ``discretize.prepare`` forms (package docstring): per head, rows ``(t, r)`` of
``v`` (x per rank), ``k`` and ``q`` (rotated, biased B and C), and per position the log-decay ``a``, the current tap
``g`` and both taps ``w``. A chunk is ``Q = 64 / R`` positions, so ``Q R = 64`` rows: with ``cs`` the cumulative
log-decay and ``S0`` the (headdim, nstate) state entering the chunk, row ``i`` gets::

    y_i   = sum_j exp(cs_i - cs_j) (q_i . k_j) s_ij v_j + exp(cs_i) q_i S0^T,   s_ij = w_j (t_j < t_i), g_j (t_j = t_i)
    S_end = exp(cs_end) S0 + sum_j exp(cs_end - cs_j) w_j v_j^T k_j

over rows ``j`` of positions ``t_j <= t_i`` in the same document. The (64, 64) products run on ``tl.dot`` (tensor
cores); decays are formed as ``exp(cs_i - cs_j)`` selected to ``-inf`` outside the pairs, never as a product of
``exp(cs_i)`` and ``exp(-cs_j)``. Rows of padding past the end have ``a = g = w = 0`` and zero inputs.

- ``_mamba3_chunk_walk_kernel``, grid (nstate blocks x headdim blocks, batch x heads): walks the chunks with a
  block of a (transposed) state in fp32 registers. Forward, the state: storing the state entering every chunk and
  the final state. Reverse (``REVERSE``), the walk of ``G = dL/dS``, ``G_start = exp(cs_end) G_end + q^T (exp(cs)
  gy)``: storing ``G`` leaving every chunk and the initial-state gradient.
- ``_mamba3_chunk_out_fwd_kernel``, grid (chunks, headdim blocks, batch x heads): a chunk's output.
- ``_mamba3_chunk_bwd_kernel``, grid (chunks, headdim blocks, batch x heads): every input gradient of one chunk from
  the recomputed chunk, its entering state and its leaving adjoint. Gradients that sum over headdim (q, k, the
  log-decays and tap weights) leave as fp32 partial sums per headdim block, which the launcher adds.
- ``_mamba3_step_kernel``, grid (batch x heads,): one decoding position, B/C bias and rotation included; one program
  owns a head's whole state, so the previous (x, B) it reads are never overwritten by another program.

Offsets that can pass 2**31 (batch, head and chunk terms) are formed in int64; offsets inside a chunk stay int32.
Masks select (``tl.where``); a non-finite v or k still reaches the earlier rows of its chunk through the products
(the torch backend falls back to chunks of one position there, these kernels do not).
"""

from __future__ import annotations

import triton
import triton.language as tl

from rawseq.kernels.common.tl_chunks import chunk_block, chunk_ends, pair_decay, state_block
from rawseq.kernels.common.tl_math import dot, silu, softplus

TWO_PI = tl.constexpr(6.283185307179586)


@triton.jit
def _chunk_rows(a_ptr, reset_ptr, c, length, stride_al, stride_resetl, HAS_SEQ: tl.constexpr, Q: tl.constexpr,
                R: tl.constexpr):
    """Rows of chunk ``c``: position in the chunk, validity, int64 offset of the chunk's first position (in units of
    ``stride_al``), the cumulative log-decay per row and the segment (document) index per row (all (Q R,))."""
    rows = tl.arange(0, Q * R)
    dpos = rows // R
    pos = c * Q + dpos
    valid = pos < length
    first = valid & (rows % R == 0)
    base = tl.cast(c * Q, tl.int64)
    a_row = tl.load(a_ptr + base * stride_al + dpos * stride_al, mask=first, other=0.0)
    cs = tl.cumsum(a_row, 0)
    if HAS_SEQ:
        starts = tl.load(reset_ptr + base * stride_resetl + dpos * stride_resetl, mask=first, other=0)
        seg = tl.cumsum((starts != 0).to(tl.int32), 0)
    else:
        seg = tl.zeros([Q * R], dtype=tl.int32)
    return dpos, valid, base, cs, seg


@triton.jit
def _chunk_pairs(dpos, cs, seg, gam, wv):
    """(QR, QR): which pairs of rows have t_j <= t_i in one document, their decay exp(cs_i - cs_j) (0 elsewhere), the
    column weights (w_j before t_i, g_j at t_i) and whether a pair shares its position."""
    pair = (dpos[:, None] >= dpos[None, :]) & (seg[:, None] == seg[None, :])
    same = dpos[:, None] == dpos[None, :]
    scale = tl.where(same, gam[None, :], wv[None, :])
    return pair, pair_decay(pair, cs), scale, same


@triton.jit
def _tile(base, dpos, rank, offs, stride_l, stride_r, stride_c):
    """Offsets of a chunk's (QR, BLOCK) tile of a (.., length, .., R, columns) tensor: row (position ``dpos``, rank
    ``rank``) from the chunk's first position ``base`` (int64), column ``offs``."""
    return base * stride_l + (dpos[:, None] * stride_l + rank[:, None] * stride_r + offs[None, :] * stride_c)


@triton.jit
def _chunk(v_ptr, q_ptr, k_ptr, a_ptr, g_ptr, w_ptr, reset_ptr, states_ptr, c, b, h, offs_p, mask_p, offs_n, mask_n,
           length, stride_vb, stride_vl, stride_vh, stride_vr, stride_vp, stride_kb, stride_kl, stride_kh, stride_kr,
           stride_kn, stride_ab, stride_al, stride_ah, stride_resetb, stride_resetl, stride_stb, stride_sth,
           stride_stc, stride_stp, stride_stn, HAS_SEQ: tl.constexpr, Q: tl.constexpr, R: tl.constexpr):
    """What both chunk-parallel kernels read of chunk ``c``: its rows (``_chunk_rows``), their decays
    (``chunk_ends``), tap weights and pairs (``_chunk_pairs``), the q, k (QR, BLOCK_N) and v (QR, BLOCK_P) tiles,
    the entering state's (BLOCK_N, BLOCK_P) block, and the offsets and masks of those tiles."""
    rank = tl.arange(0, Q * R) % R
    dpos, valid, base, cs, seg = _chunk_rows(a_ptr + b * stride_ab + h * stride_ah, reset_ptr + b * stride_resetb, c,
                                             length, stride_al, stride_resetl, HAS_SEQ, Q, R)
    ein, e_end, to_end, last = chunk_ends(cs, seg, Q * R)
    per_pos = b * stride_ab + h * stride_ah + base * stride_al + dpos * stride_al
    gam = tl.load(g_ptr + per_pos, mask=valid, other=0.0)
    wv = tl.load(w_ptr + per_pos, mask=valid, other=0.0)
    pair, decay, scale, same = _chunk_pairs(dpos, cs, seg, gam, wv)
    kn = b * stride_kb + h * stride_kh + _tile(base, dpos, rank, offs_n, stride_kl, stride_kr, stride_kn)
    mask_qn = valid[:, None] & mask_n[None, :]
    qt = tl.load(q_ptr + kn, mask=mask_qn, other=0.0)
    kt = tl.load(k_ptr + kn, mask=mask_qn, other=0.0)
    vp = b * stride_vb + h * stride_vh + _tile(base, dpos, rank, offs_p, stride_vl, stride_vr, stride_vp)
    mask_qp = valid[:, None] & mask_p[None, :]
    vt = tl.load(v_ptr + vp, mask=mask_qp, other=0.0)
    st = b * stride_stb + h * stride_sth + c.to(tl.int64) * stride_stc \
        + (offs_n[:, None] * stride_stn + offs_p[None, :] * stride_stp)
    st_mask = mask_n[:, None] & mask_p[None, :]
    S0 = tl.load(states_ptr + st, mask=st_mask, other=0.0)
    return (dpos, valid, base, rank, ein, e_end, to_end, last, gam, wv, pair, decay, scale, same, qt, kt, vt, S0,
            vp, mask_qp, mask_qn, st, st_mask)


@triton.jit(do_not_specialize=["nchunks"])
def _mamba3_chunk_walk_kernel(
    v_ptr, k_ptr, a_ptr, w_ptr, reset_ptr, init_ptr, states_ptr, final_ptr,
    length, nchunks, heads, headdim, nstate,
    stride_vb, stride_vl, stride_vh, stride_vr, stride_vp,
    stride_kb, stride_kl, stride_kh, stride_kr, stride_kn,
    stride_ab, stride_al, stride_ah,
    stride_resetb, stride_resetl,
    stride_stb, stride_sth, stride_stc, stride_stp, stride_stn,
    HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, Q: tl.constexpr, R: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    """Forward: ``S = e_end S + k^T (to_end w v)`` from the first chunk, storing the state entering every chunk.
    Reverse: ``G = e_end G + q^T (ein gy)`` from the last chunk, storing the gradient leaving every chunk; ``v_ptr``
    holds gy and ``k_ptr`` q (laid out like v and k), ``w_ptr`` is not read. ``init`` and ``final`` are dense
    (batch, heads, headdim, nstate)."""
    b, h, offs_p, offs_n, mask_p, mask_n, st_offs, st_mask, dense = state_block(
        heads, headdim, nstate, stride_stn, stride_stp, BLOCK_P, BLOCK_N)
    rank = tl.arange(0, Q * R) % R
    v_base = v_ptr + b * stride_vb + h * stride_vh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    a_base = a_ptr + b * stride_ab + h * stride_ah
    w_base = w_ptr + b * stride_ab + h * stride_ah
    reset_base = reset_ptr + b * stride_resetb
    st_base = states_ptr + b * stride_stb + h * stride_sth
    if REVERSE:
        st_base += (nchunks - 1).to(tl.int64) * stride_stc
    # the state (or its gradient) is kept transposed, (nstate, headdim), so that the update is k^T @ v
    state = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    if HAS_INIT:
        state = tl.load(init_ptr + dense, mask=st_mask, other=0.0)
    for i in range(0, nchunks):
        tl.store(st_base + st_offs, state, mask=st_mask)
        if REVERSE:
            c = nchunks - 1 - i
            st_base -= stride_stc
        else:
            c = i
            st_base += stride_stc
        dpos, valid, base, cs, seg = _chunk_rows(a_base, reset_base, c, length, stride_al, stride_resetl, HAS_SEQ,
                                                 Q, R)
        ein, e_end, to_end, last = chunk_ends(cs, seg, Q * R)
        if REVERSE:
            weight = ein
        else:
            weight = to_end * tl.load(w_base + base * stride_al + dpos * stride_al, mask=valid, other=0.0)
        vt = tl.load(v_base + _tile(base, dpos, rank, offs_p, stride_vl, stride_vr, stride_vp),
                     mask=valid[:, None] & mask_p[None, :], other=0.0)
        kt = tl.load(k_base + _tile(base, dpos, rank, offs_n, stride_kl, stride_kr, stride_kn),
                     mask=valid[:, None] & mask_n[None, :], other=0.0)
        ku = (kt.to(tl.float32) * weight[:, None]).to(vt.dtype)
        state = state * e_end + dot(tl.trans(ku), vt, IEEE)
    tl.store(final_ptr + dense, state, mask=st_mask)


@triton.jit(do_not_specialize=["nchunks"])
def _mamba3_chunk_out_fwd_kernel(
    v_ptr, q_ptr, k_ptr, a_ptr, g_ptr, w_ptr, reset_ptr, states_ptr, y_ptr,
    length, nchunks, heads, headdim, nstate,
    stride_vb, stride_vl, stride_vh, stride_vr, stride_vp,
    stride_kb, stride_kl, stride_kh, stride_kr, stride_kn,
    stride_ab, stride_al, stride_ah,
    stride_resetb, stride_resetl,
    stride_stb, stride_sth, stride_stc, stride_stp, stride_stn,
    HAS_SEQ: tl.constexpr, Q: tl.constexpr, R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    """y (fp32, the layout of v) of one chunk."""
    c, pid_p, b, h, offs_p, mask_p = chunk_block(heads, headdim, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    (dpos, valid, base, rank, ein, e_end, to_end, last, gam, wv, pair, decay, scale, same, qt, kt, vt, S0,
     vp, mask_qp, mask_qn, st, st_mask) = _chunk(
        v_ptr, q_ptr, k_ptr, a_ptr, g_ptr, w_ptr, reset_ptr, states_ptr, c, b, h, offs_p, mask_p, offs_n,
        offs_n < nstate, length, stride_vb, stride_vl, stride_vh, stride_vr, stride_vp, stride_kb, stride_kl,
        stride_kh, stride_kr, stride_kn, stride_ab, stride_al, stride_ah, stride_resetb, stride_resetl, stride_stb,
        stride_sth, stride_stc, stride_stp, stride_stn, HAS_SEQ, Q, R)
    W = tl.where(pair, dot(qt, tl.trans(kt), IEEE) * decay * scale, 0.0)
    y = dot(W.to(vt.dtype), vt, IEEE)
    y += dot(qt, S0.to(qt.dtype), IEEE) * ein[:, None]
    tl.store(y_ptr + vp, y, mask=mask_qp)


@triton.jit(do_not_specialize=["nchunks"])
def _mamba3_chunk_bwd_kernel(
    v_ptr, q_ptr, k_ptr, a_ptr, g_ptr, w_ptr, reset_ptr, states_ptr, adj_ptr, gy_ptr,
    gv_ptr, gq_ptr, gk_ptr, ga_ptr, gg_ptr, gw_ptr,
    length, nchunks, heads, headdim, nstate,
    stride_vb, stride_vl, stride_vh, stride_vr, stride_vp,
    stride_kb, stride_kl, stride_kh, stride_kr, stride_kn,
    stride_ab, stride_al, stride_ah,
    stride_resetb, stride_resetl,
    stride_stb, stride_sth, stride_stc, stride_stp, stride_stn,
    stride_gqk, stride_gqb, stride_gql, stride_gqh, stride_gqr,
    stride_gwk, stride_gwb, stride_gwl, stride_gwh, stride_gwr,
    HAS_SEQ: tl.constexpr, Q: tl.constexpr, R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    c, pid_p, b, h, offs_p, mask_p = chunk_block(heads, headdim, BLOCK_P)
    blk = pid_p.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    (dpos, valid, base, rank, ein, e_end, to_end, last, gam, wv, pair, decay, scale, same, qt, kt, vt, S0,
     vp, mask_qp, mask_qn, st, st_mask) = _chunk(
        v_ptr, q_ptr, k_ptr, a_ptr, g_ptr, w_ptr, reset_ptr, states_ptr, c, b, h, offs_p, mask_p, offs_n,
        offs_n < nstate, length, stride_vb, stride_vl, stride_vh, stride_vr, stride_vp, stride_kb, stride_kl,
        stride_kh, stride_kr, stride_kn, stride_ab, stride_al, stride_ah, stride_resetb, stride_resetl, stride_stb,
        stride_sth, stride_stc, stride_stp, stride_stn, HAS_SEQ, Q, R)
    u = to_end * wv
    gyt = tl.load(gy_ptr + vp, mask=mask_qp, other=0.0)
    Gt = tl.load(adj_ptr + st, mask=st_mask, other=0.0)
    dt = vt.dtype

    G = dot(qt, tl.trans(kt), IEEE)  # (QR, QR) q_i . k_j
    M = tl.where(pair, decay * scale, 0.0)
    W = G * M
    dW = dot(gyt, tl.trans(vt), IEEE)  # gy_i . v_j over this headdim block
    KG = dot(kt, Gt.to(dt), IEEE)  # (QR, BP): k_j G^T, how v_j reaches the leaving state
    gv = dot(tl.trans(W.to(dt)), gyt, IEEE) + u[:, None] * KG
    tl.store(gv_ptr + vp, gv, mask=mask_qp)
    dG = (dW * M).to(dt)
    gq = dot(dG, kt, IEEE) + ein[:, None] * dot(gyt, tl.trans(S0.to(dt)), IEEE)
    gk = dot(tl.trans(dG), qt, IEEE) + u[:, None] * dot(vt, tl.trans(Gt.to(dt)), IEEE)
    gqk = blk * stride_gqk + b * stride_gqb + h * stride_gqh + base * stride_gql \
        + (dpos[:, None] * stride_gql + rank[:, None] * stride_gqr + offs_n[None, :])
    tl.store(gq_ptr + gqk, gq, mask=mask_qn)
    tl.store(gk_ptr + gqk, gk, mask=mask_qn)

    dM = dW * G
    dX = dM * M  # gradient of the exponent cs_i - cs_j of each pair
    dcs = tl.sum(dX, 1) - tl.sum(dX, 0)
    dS = dM * decay  # gradient of the column weights
    gg = tl.sum(tl.where(same, dS, 0.0), 0)
    gw = tl.sum(tl.where(same, 0.0, dS), 0)
    QS = dot(qt, S0.to(dt), IEEE)  # q_i S0^T
    dcs += ein * tl.sum(gyt.to(tl.float32) * QS, 1)
    du = tl.sum(KG * vt.to(tl.float32), 1)
    gw += du * to_end
    dto = du * u  # gradient of the exponent cs_end - cs_j
    dcs -= dto
    dcs += tl.where(last, tl.sum(dto, 0) + e_end * tl.sum(tl.sum(Gt * S0, 1), 0), 0.0)
    ga = tl.sum(dcs, 0) - tl.cumsum(dcs, 0) + dcs  # d/da_t = sum over rows of positions >= t of d/dcs
    # per row (the launcher sums ranks and headdim blocks); ga once per position, on its rank-0 row
    gw_row = blk * stride_gwk + b * stride_gwb + h * stride_gwh + base * stride_gwl + dpos * stride_gwl \
        + rank * stride_gwr
    tl.store(ga_ptr + gw_row, tl.where(rank == 0, ga, 0.0), mask=valid)
    tl.store(gg_ptr + gw_row, gg, mask=valid)
    tl.store(gw_ptr + gw_row, gw, mask=valid)


@triton.jit
def _rotate_pairs(t_even, t_odd, cos, sin):
    return t_even * cos - t_odd * sin, t_even * sin + t_odd * cos


@triton.jit
def _mamba3_step_kernel(
    ssm_ptr, theta_ptr, Bp_ptr, xp_ptr,
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, lam_ptr, angle_ptr, D_ptr, z_ptr, dt_bias_ptr, B_bias_ptr, C_bias_ptr,
    mimo_x_ptr, mimo_z_ptr, mimo_o_ptr, y_ptr,
    heads, heads_per_group, headdim, nstate, n_angles,
    stride_sb, stride_sh, stride_sp, stride_sn,
    stride_thb, stride_thh, stride_thm,
    stride_Bpb, stride_Bph, stride_Bpr, stride_Bpn,
    stride_xpb, stride_xph, stride_xpr, stride_xpp,
    stride_xb, stride_xh, stride_xp,
    stride_dtb, stride_dth,
    stride_Ab, stride_Ah,
    stride_Bb, stride_Bg, stride_Br, stride_Bn,
    stride_Cb, stride_Cg, stride_Cr, stride_Cn,
    stride_lamb, stride_lamh,
    stride_angb, stride_angh, stride_angm,
    stride_zb, stride_zh, stride_zp,
    stride_yb, stride_yh, stride_yp,
    HAS_ANGLE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    HAS_BC_BIAS: tl.constexpr, HAS_MIMO: tl.constexpr, DT_SOFTPLUS: tl.constexpr, R: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    g = h // heads_per_group
    delta = tl.load(dt_ptr + b * stride_dtb + h * stride_dth).to(tl.float32)
    if HAS_DT_BIAS:
        delta += tl.load(dt_bias_ptr + h)
    if DT_SOFTPLUS:
        delta = softplus(delta)
    alpha = tl.exp(delta * tl.load(A_ptr + b * stride_Ab + h * stride_Ah).to(tl.float32))
    lam = tl.sigmoid(tl.load(lam_ptr + b * stride_lamb + h * stride_lamh).to(tl.float32))
    gamma = lam * delta
    beta = (1.0 - lam) * delta * alpha

    # pairs (2i, 2i + 1) of the state axis; the first n_angles pairs turn by theta
    pair = tl.arange(0, BLOCK_H)
    ev, od = 2 * pair, 2 * pair + 1
    mask_e, mask_o = ev < nstate, od < nstate
    cos = tl.full([BLOCK_H], 1.0, tl.float32)
    sin = tl.zeros([BLOCK_H], dtype=tl.float32)
    if HAS_ANGLE:
        mask_m = pair < n_angles
        th_ptrs = theta_ptr + b * stride_thb + h * stride_thh + pair * stride_thm
        rate = tl.load(angle_ptr + b * stride_angb + h * stride_angh + pair * stride_angm, mask=mask_m, other=0.0)
        theta = tl.load(th_ptrs, mask=mask_m, other=0.0) + delta * rate.to(tl.float32)
        theta = theta - TWO_PI * tl.floor(theta / TWO_PI)
        tl.store(th_ptrs, theta, mask=mask_m)
        cos = tl.where(mask_m, tl.cos(theta), 1.0)
        sin = tl.where(mask_m, tl.sin(theta), 0.0)

    r = tl.arange(0, R)
    mask_re, mask_ro = mask_e[None, :] & (r[:, None] < R), mask_o[None, :] & (r[:, None] < R)
    B_rows = B_ptr + b * stride_Bb + g * stride_Bg + r[:, None] * stride_Br
    C_rows = C_ptr + b * stride_Cb + g * stride_Cg + r[:, None] * stride_Cr
    k_e = tl.load(B_rows + ev[None, :] * stride_Bn, mask=mask_re, other=0.0).to(tl.float32)
    k_o = tl.load(B_rows + od[None, :] * stride_Bn, mask=mask_ro, other=0.0).to(tl.float32)
    q_e = tl.load(C_rows + ev[None, :] * stride_Cn, mask=mask_re, other=0.0).to(tl.float32)
    q_o = tl.load(C_rows + od[None, :] * stride_Cn, mask=mask_ro, other=0.0).to(tl.float32)
    if HAS_BC_BIAS:  # (heads, R, nstate), contiguous
        bias_rows = (h * R + r[:, None]) * nstate
        k_e += tl.load(B_bias_ptr + bias_rows + ev[None, :], mask=mask_re, other=0.0)
        k_o += tl.load(B_bias_ptr + bias_rows + od[None, :], mask=mask_ro, other=0.0)
        q_e += tl.load(C_bias_ptr + bias_rows + ev[None, :], mask=mask_re, other=0.0)
        q_o += tl.load(C_bias_ptr + bias_rows + od[None, :], mask=mask_ro, other=0.0)
    k_e, k_o = _rotate_pairs(k_e, k_o, cos[None, :], sin[None, :])
    q_e, q_o = _rotate_pairs(q_e, q_o, cos[None, :], sin[None, :])
    Bp_rows = Bp_ptr + b * stride_Bpb + h * stride_Bph + r[:, None] * stride_Bpr
    kp_e = tl.load(Bp_rows + ev[None, :] * stride_Bpn, mask=mask_re, other=0.0)
    kp_o = tl.load(Bp_rows + od[None, :] * stride_Bpn, mask=mask_ro, other=0.0)
    D_h = tl.load(D_ptr + h) if HAS_D else 0.0

    for p0 in range(0, headdim, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < headdim
        mask_rp = mask_p[None, :] & (r[:, None] < R)
        xv = tl.load(x_ptr + b * stride_xb + h * stride_xh + offs_p * stride_xp, mask=mask_p, other=0.0)
        v = tl.zeros([R, BLOCK_P], dtype=tl.float32) + xv.to(tl.float32)[None, :]
        rp = (h * R + r[:, None]) * headdim + offs_p[None, :]  # (heads, R, headdim) MIMO weights, contiguous
        if HAS_MIMO:
            v = v * tl.load(mimo_x_ptr + rp, mask=mask_rp, other=0.0)
        xp_ptrs = xp_ptr + b * stride_xpb + h * stride_xph + r[:, None] * stride_xpr + offs_p[None, :] * stride_xpp
        vp = tl.load(xp_ptrs, mask=mask_rp, other=0.0)
        s_rows = ssm_ptr + b * stride_sb + h * stride_sh + offs_p[:, None] * stride_sp
        mask_pe, mask_po = mask_p[:, None] & mask_e[None, :], mask_p[:, None] & mask_o[None, :]
        S_e = tl.load(s_rows + ev[None, :] * stride_sn, mask=mask_pe, other=0.0)
        S_o = tl.load(s_rows + od[None, :] * stride_sn, mask=mask_po, other=0.0)
        # S = alpha S + sum_r (beta xp_r^T kp_r + gamma v_r^T k_r), (BLOCK_P, BLOCK_H) per parity
        S_e = alpha * S_e + tl.sum(beta * vp[:, :, None] * kp_e[:, None, :] + gamma * v[:, :, None] * k_e[:, None, :],
                                   0)
        S_o = alpha * S_o + tl.sum(beta * vp[:, :, None] * kp_o[:, None, :] + gamma * v[:, :, None] * k_o[:, None, :],
                                   0)
        tl.store(s_rows + ev[None, :] * stride_sn, S_e, mask=mask_pe)
        tl.store(s_rows + od[None, :] * stride_sn, S_o, mask=mask_po)
        tl.store(xp_ptrs, v, mask=mask_rp)
        y = tl.sum(S_e[None, :, :] * q_e[:, None, :], 2) + tl.sum(S_o[None, :, :] * q_o[:, None, :], 2)  # (R, P)
        y += D_h * v
        if HAS_Z:
            zv = tl.load(z_ptr + b * stride_zb + h * stride_zh + offs_p * stride_zp, mask=mask_p, other=0.0)
            zr = tl.zeros([R, BLOCK_P], dtype=tl.float32) + zv.to(tl.float32)[None, :]
            if HAS_MIMO:
                zr = zr * tl.load(mimo_z_ptr + rp, mask=mask_rp, other=0.0)
            y = y * silu(zr)
        if HAS_MIMO:
            y = y * tl.load(mimo_o_ptr + rp, mask=mask_rp, other=0.0)
        out = tl.sum(y, 0)
        tl.store(y_ptr + b * stride_yb + h * stride_yh + offs_p * stride_yp, out.to(y_ptr.dtype.element_ty),
                 mask=mask_p)
    tl.store(Bp_rows + ev[None, :] * stride_Bpn, k_e, mask=mask_re)
    tl.store(Bp_rows + od[None, :] * stride_Bpn, k_o, mask=mask_ro)
