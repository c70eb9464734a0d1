"""Triton kernels of the Mamba-1 selective scan, its backward and its single-step decode.

Layout: a program owns one batch row and a block of ``BLOCK_D`` channels (all within one B/C group) with the whole
state ``(BLOCK_D, BLOCK_N)`` in registers, and walks time in tiles of ``T`` positions. Inside a tile it discretizes
``a = exp(dt A)`` and ``b = dt x B`` as ``(T, BLOCK_D, BLOCK_N)`` blocks and runs ``tl.associative_scan`` along time
with the composition of affine maps, so every state of the tile exists on-chip at once; the readout ``C . h``, the
``D`` skip and the ``silu(z)`` gate are fused, and only ``y`` goes back to memory (the forward prefetches the next
tile's inputs while it scans the current one). The expanded ``(batch, length, channels, nstate)`` tensor is never
written.

Forward, in scan order (``reverse`` only changes which position a step reads):

1. ``_selective_scan_chunk_state_kernel`` (only when the length is split): per length split, the end state from a zero
   start and the product of the decays, ``(batch, nsplit, channels, nstate)`` each.
2. ``_selective_scan_state_passing_kernel``: a short sequential pass over the splits that turns those into each split's
   start state.
3. ``_selective_scan_fwd_kernel``: the scan proper from each split's start state; writes ``y``, the final state and,
   when a gradient is needed, the state at the start of every tile, ``(batch, ntiles, channels, nstate)`` float32.

Backward (``_selective_scan_bwd_kernel``, one program per batch row and channel block) walks the tiles from the last
to the first: it recomputes the tile's states from the stored tile-start state with the same forward scan, then runs
the adjoint recurrence ``g_t = C_t gy_t + a_{t+1} g_{t+1}`` as a reverse ``tl.associative_scan`` carrying ``dL/dh``
across tiles. ``dB`` and ``dC`` are sums over channels, accumulated with float32 atomics (so not bitwise
deterministic); ``dA``, ``dD`` and ``dt_bias`` get one partial per batch row, summed by the launcher.

Every scan is causal elementwise, so a non-finite input at position ``t`` reaches no state before ``t``; the
backward keeps a zero gradient zero through any decay or input (``adjoint_combine``, ``grad_mul``), so positions
after the last one the loss reaches contribute nothing to the gradients, whatever they hold.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rawseq.kernels.common.tl_math import (
    adjoint_combine,
    grad_mul,
    linear_combine,
    silu,
    silu_grad,
    softplus,
    softplus_grad,
)


@triton.jit
def _scan_pos(s, length, REVERSE: tl.constexpr):
    """Memory position of scan step ``s``."""
    if REVERSE:
        return length - 1 - s
    return s


@triton.jit
def _keep(seq_ptr, seq_base, s, pos, valid, REVERSE: tl.constexpr):
    """True where step ``s`` continues the document of step ``s - 1`` (always at ``s == 0``)."""
    if REVERSE:
        prev = pos + 1
    else:
        prev = pos - 1
    cur_id = tl.load(seq_ptr + seq_base + pos, mask=valid, other=0)
    prev_id = tl.load(seq_ptr + seq_base + prev, mask=valid & (s > 0), other=0)
    return (s == 0) | (cur_id == prev_id)


@triton.jit
def _delta(raw, DT_SOFTPLUS: tl.constexpr):
    if DT_SOFTPLUS:
        return softplus(raw)
    return raw


@triton.jit
def _load_tile(
    x_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, seq_ptr, pid_b, g, offs_d, mask_d, offs_n, mask_n, s, valid, length,
    stride_xb, stride_xl, stride_dtb, stride_dtl, stride_Bb, stride_Bl, stride_Bg, stride_Cb, stride_Cl, stride_Cg,
    stride_zb, stride_zl, stride_seqb,
    LOAD_C: tl.constexpr, HAS_Z: tl.constexpr, HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr,
):
    """Raw inputs of scan steps ``s`` (T,) where ``valid``, in their storage dtype: x, dt, z (T, BLOCK_D), B, C
    (T, BLOCK_N) and keep (T,) (False where a document starts; unused without HAS_SEQ). Unused outputs (C, z)
    alias x or B."""
    pos = _scan_pos(s, length, REVERSE).to(tl.int64)
    mask_td = valid[:, None] & mask_d[None, :]
    mask_tn = valid[:, None] & mask_n[None, :]
    x = tl.load(x_ptr + pid_b * stride_xb + pos[:, None] * stride_xl + offs_d[None, :], mask=mask_td, other=0.0)
    dt = tl.load(dt_ptr + pid_b * stride_dtb + pos[:, None] * stride_dtl + offs_d[None, :], mask=mask_td, other=0.0)
    Bt = tl.load(B_ptr + pid_b * stride_Bb + pos[:, None] * stride_Bl + g * stride_Bg + offs_n[None, :],
                 mask=mask_tn, other=0.0)
    if LOAD_C:
        Ct = tl.load(C_ptr + pid_b * stride_Cb + pos[:, None] * stride_Cl + g * stride_Cg + offs_n[None, :],
                     mask=mask_tn, other=0.0)
    else:
        Ct = Bt
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * stride_zb + pos[:, None] * stride_zl + offs_d[None, :], mask=mask_td, other=0.0)
    else:
        z = x
    if HAS_SEQ:
        keep = _keep(seq_ptr, pid_b * stride_seqb, s, pos, valid, REVERSE)
    else:
        keep = valid
    return x, dt, Bt, Ct, z, keep


@triton.jit
def _discretize(x, dt, Bt, keep, A, dt_bias, valid, mask_d, HAS_SEQ: tl.constexpr, DT_SOFTPLUS: tl.constexpr):
    """float32 x, raw dt (+ dt_bias), delta (T, BLOCK_D) and the affine map of each step, a and b
    (T, BLOCK_D, BLOCK_N). Steps past the end get delta = 0, hence a = 1, b = 0."""
    x = x.to(tl.float32)
    raw = dt.to(tl.float32) + dt_bias[None, :]
    delta = tl.where(valid[:, None] & mask_d[None, :], _delta(raw, DT_SOFTPLUS), 0.0)
    a = tl.exp(delta[:, :, None] * A[None, :, :])
    if HAS_SEQ:
        a = tl.where(keep[:, None, None], a, 0.0)
    b = (delta * x)[:, :, None] * Bt.to(tl.float32)[:, None, :]
    return x, raw, delta, a, b


@triton.jit
def _tile_inputs(
    x_ptr, dt_ptr, B_ptr, seq_ptr, A, dt_bias, pid_b, g, offs_d, mask_d, offs_n, mask_n, s, length,
    stride_xb, stride_xl, stride_dtb, stride_dtl, stride_Bb, stride_Bl, stride_Bg, stride_seqb,
    HAS_SEQ: tl.constexpr, DT_SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
):
    """Loads and discretizes the tile of steps ``s`` (T,): returns pos, valid, x, raw dt, delta (T, BLOCK_D) and
    a, b (T, BLOCK_D, BLOCK_N)."""
    valid = s < length
    x, dt, Bt, _, _, keep = _load_tile(
        x_ptr, dt_ptr, B_ptr, B_ptr, x_ptr, seq_ptr, pid_b, g, offs_d, mask_d, offs_n, mask_n, s, valid, length,
        stride_xb, stride_xl, stride_dtb, stride_dtl, stride_Bb, stride_Bl, stride_Bg, 0, 0, 0, 0, 0, stride_seqb,
        False, False, HAS_SEQ, REVERSE,
    )
    x, raw, delta, a, b = _discretize(x, dt, Bt, keep, A, dt_bias, valid, mask_d, HAS_SEQ, DT_SOFTPLUS)
    pos = _scan_pos(s, length, REVERSE).to(tl.int64)
    return pos, valid, x, raw, delta, a, b


@triton.jit
def _last_row(t, rows, T: tl.constexpr):
    """Row ``T - 1`` of a (T, BLOCK_D, BLOCK_N) block."""
    return tl.sum(tl.where((rows == T - 1)[:, None, None], t, 0.0), axis=0)


@triton.jit
def _channel_block(A_ptr, dt_bias_ptr, channels, nstate, group_size, HAS_DT_BIAS: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's ``BLOCK_D`` channels (all in one B/C group ``g``) and ``BLOCK_N`` state entries: offsets,
    masks, flat (channel, state) offsets ``dn``, and their A (BLOCK_D, BLOCK_N) and dt_bias (BLOCK_D,)."""
    pid_d = tl.program_id(0)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < channels
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < nstate
    g = (pid_d * BLOCK_D) // group_size
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn = offs_d.to(tl.int64)[:, None] * nstate + offs_n[None, :]
    A = tl.load(A_ptr + dn, mask=mask_dn, other=0.0)
    if HAS_DT_BIAS:
        dt_bias = tl.load(dt_bias_ptr + offs_d, mask=mask_d, other=0.0)
    else:
        dt_bias = tl.zeros((BLOCK_D,), tl.float32)
    return offs_d, mask_d, offs_n, mask_n, g, mask_dn, dn, A, dt_bias


@triton.jit
def _selective_scan_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, seq_ptr, init_ptr,
    y_ptr, final_ptr, states_ptr,
    length, channels, nstate, group_size, ntiles, tiles_per_split,
    stride_xb, stride_xl, stride_dtb, stride_dtl, stride_zb, stride_zl,
    stride_Bb, stride_Bl, stride_Bg, stride_Cb, stride_Cl, stride_Cg,
    stride_yb, stride_yl, stride_seqb, stride_initb, stride_inits,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
    HAS_INIT: tl.constexpr, DT_SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, STORE_STATES: tl.constexpr,
    T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    offs_d, mask_d, offs_n, mask_n, g, mask_dn, dn, A, dt_bias = _channel_block(
        A_ptr, dt_bias_ptr, channels, nstate, group_size, HAS_DT_BIAS, BLOCK_D, BLOCK_N)
    rows = tl.arange(0, T)
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_INIT:
        h = tl.load(init_ptr + pid_b * stride_initb + pid_s * stride_inits + dn, mask=mask_dn, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)

    # Loop bounds are plain arguments (the interpreter needs them so); the last split's surplus tiles lie past the
    # end and are fully masked. The next tile's inputs are loaded before this tile's scan, so their memory latency
    # overlaps the arithmetic.
    split_end = tl.minimum(length, (pid_s + 1) * tiles_per_split * T)
    s = pid_s * tiles_per_split * T + rows
    x_n, dt_n, B_n, C_n, z_n, keep_n = _load_tile(
        x_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, seq_ptr, pid_b, g, offs_d, mask_d, offs_n, mask_n, s, s < split_end,
        length, stride_xb, stride_xl, stride_dtb, stride_dtl, stride_Bb, stride_Bl, stride_Bg, stride_Cb, stride_Cl,
        stride_Cg, stride_zb, stride_zl, stride_seqb, True, HAS_Z, HAS_SEQ, REVERSE,
    )
    for i in range(tiles_per_split):
        k = pid_s * tiles_per_split + i
        s = k * T + rows
        valid = s < length
        x_raw, dt_raw, B_raw, C_raw, z_raw, keep = x_n, dt_n, B_n, C_n, z_n, keep_n
        s_next = s + T
        x_n, dt_n, B_n, C_n, z_n, keep_n = _load_tile(
            x_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, seq_ptr, pid_b, g, offs_d, mask_d, offs_n, mask_n, s_next,
            s_next < split_end, length, stride_xb, stride_xl, stride_dtb, stride_dtl, stride_Bb, stride_Bl,
            stride_Bg, stride_Cb, stride_Cl, stride_Cg, stride_zb, stride_zl, stride_seqb,
            True, HAS_Z, HAS_SEQ, REVERSE,
        )
        x, raw, delta, a, b = _discretize(x_raw, dt_raw, B_raw, keep, A, dt_bias, valid, mask_d, HAS_SEQ,
                                          DT_SOFTPLUS)
        if STORE_STATES:
            tl.store(states_ptr + (pid_b * ntiles + k) * channels * nstate + dn, h, mask=mask_dn & (k < ntiles))
        acum, bcum = tl.associative_scan((a, b), 0, linear_combine)
        hs = acum * h[None, :, :] + bcum
        h = _last_row(hs, rows, T)
        y = tl.sum(hs * C_raw.to(tl.float32)[:, None, :], axis=2)
        if HAS_D:
            y += D[None, :] * x
        mask_td = valid[:, None] & mask_d[None, :]
        if HAS_Z:
            y *= silu(z_raw.to(tl.float32))
        pos = _scan_pos(s, length, REVERSE).to(tl.int64)
        y_ptrs = y_ptr + pid_b * stride_yb + pos[:, None] * stride_yl + offs_d[None, :]
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask_td)
    if pid_s == tl.num_programs(2) - 1:
        tl.store(final_ptr + pid_b * channels * nstate + dn, h, mask=mask_dn)


@triton.jit
def _selective_scan_chunk_state_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, dt_bias_ptr, seq_ptr, end_ptr, decay_ptr,
    length, channels, nstate, group_size, tiles_per_split, nsplit,
    stride_xb, stride_xl, stride_dtb, stride_dtl, stride_Bb, stride_Bl, stride_Bg, stride_seqb,
    HAS_DT_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, DT_SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Per length split: the end state from a zero start and the product of the decays, (batch, nsplit, d, n)."""
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    offs_d, mask_d, offs_n, mask_n, g, mask_dn, dn, A, dt_bias = _channel_block(
        A_ptr, dt_bias_ptr, channels, nstate, group_size, HAS_DT_BIAS, BLOCK_D, BLOCK_N)
    rows = tl.arange(0, T)
    h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    p = tl.full((BLOCK_D, BLOCK_N), 1.0, tl.float32)
    # Loop bounds are plain arguments (the interpreter needs them so); the last split's surplus tiles lie past the
    # end and are fully masked.
    for i in range(tiles_per_split):
        k = pid_s * tiles_per_split + i
        s = k * T + rows
        pos, valid, x, raw, delta, a, b = _tile_inputs(
            x_ptr, dt_ptr, B_ptr, seq_ptr, A, dt_bias, pid_b, g, offs_d, mask_d, offs_n, mask_n, s, length,
            stride_xb, stride_xl, stride_dtb, stride_dtl, stride_Bb, stride_Bl, stride_Bg, stride_seqb,
            HAS_SEQ, DT_SOFTPLUS, REVERSE,
        )
        acum, bcum = tl.associative_scan((a, b), 0, linear_combine)
        tile_a = _last_row(acum, rows, T)
        h = tile_a * h + _last_row(bcum, rows, T)
        p = p * tile_a
    out = (pid_b * nsplit + pid_s) * channels * nstate + dn
    tl.store(end_ptr + out, h, mask=mask_dn)
    tl.store(decay_ptr + out, p, mask=mask_dn)


@triton.jit
def _selective_scan_state_passing_kernel(
    end_ptr, decay_ptr, init_ptr, starts_ptr, channels, nstate, nsplit,
    HAS_INIT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Start state of every split: H_0 = initial state, H_{k+1} = decay_k * H_k + end_k."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_dn = (offs_d < channels)[:, None] & (offs_n < nstate)[None, :]
    dn = offs_d.to(tl.int64)[:, None] * nstate + offs_n[None, :]
    if HAS_INIT:
        h = tl.load(init_ptr + pid_b * channels * nstate + dn, mask=mask_dn, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    for k in range(nsplit):
        off = (pid_b * nsplit + k) * channels * nstate + dn
        tl.store(starts_ptr + off, h, mask=mask_dn)
        more = mask_dn & (k < nsplit - 1)
        h = tl.load(decay_ptr + off, mask=more, other=1.0) * h + tl.load(end_ptr + off, mask=more, other=0.0)


@triton.jit
def _selective_scan_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, seq_ptr, states_ptr, dy_ptr, dfinal_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dz_ptr, dinit_ptr, dA_ptr, dD_ptr, ddt_bias_ptr,
    length, channels, nstate, group_size, ntiles,
    stride_xb, stride_xl, stride_dtb, stride_dtl, stride_zb, stride_zl,
    stride_Bb, stride_Bl, stride_Bg, stride_Cb, stride_Cl, stride_Cg,
    stride_dyb, stride_dyl, stride_seqb, stride_dBb, stride_dBl, stride_dBg,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_DFINAL: tl.constexpr, DT_SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dx, ddt, dz share the layout of dy (contiguous (b, l, d)); dB, dC are float32 (b, l, g, n) accumulated with
    atomics; dA (b, d, n), dD (b, d), ddt_bias (b, d) are per-batch partials; dinit (b, d, n)."""
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d, mask_d, offs_n, mask_n, g, mask_dn, dn, A, dt_bias = _channel_block(
        A_ptr, dt_bias_ptr, channels, nstate, group_size, HAS_DT_BIAS, BLOCK_D, BLOCK_N)
    rows = tl.arange(0, T)
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_DFINAL:
        carry = tl.load(dfinal_ptr + pid_b * channels * nstate + dn, mask=mask_dn, other=0.0)
    else:
        carry = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), tl.float32)

    for kk in range(ntiles):
        k = ntiles - 1 - kk
        s = k * T + rows
        pos, valid, x, raw, delta, a, b = _tile_inputs(
            x_ptr, dt_ptr, B_ptr, seq_ptr, A, dt_bias, pid_b, g, offs_d, mask_d, offs_n, mask_n, s, length,
            stride_xb, stride_xl, stride_dtb, stride_dtl, stride_Bb, stride_Bl, stride_Bg, stride_seqb,
            HAS_SEQ, DT_SOFTPLUS, REVERSE,
        )
        mask_td = valid[:, None] & mask_d[None, :]
        h0 = tl.load(states_ptr + (pid_b * ntiles + k) * channels * nstate + dn, mask=mask_dn, other=0.0)
        acum, bcum = tl.associative_scan((a, b), 0, linear_combine)
        hs = acum * h0[None, :, :] + bcum

        # alpha_t = a_{t+1}, the decay that carries g_{t+1} back to g_t; 1 on the tile's last step, where the
        # carry from the next tile (already multiplied by its decay) enters instead.
        nxt = s + 1 < tl.minimum(length, k * T + T)
        pos1 = _scan_pos(s + 1, length, REVERSE).to(tl.int64)
        mask_nd = nxt[:, None] & mask_d[None, :]
        raw1 = tl.load(dt_ptr + pid_b * stride_dtb + pos1[:, None] * stride_dtl + offs_d[None, :], mask=mask_nd,
                       other=0.0).to(tl.float32) + dt_bias[None, :]
        delta1 = tl.where(mask_nd, _delta(raw1, DT_SOFTPLUS), 0.0)
        alpha = tl.exp(delta1[:, :, None] * A[None, :, :])
        if HAS_SEQ:
            keep1 = _keep(seq_ptr, pid_b * stride_seqb, s + 1, pos1, nxt, REVERSE)
            alpha = tl.where(keep1[:, None, None], alpha, 0.0)

        dy = tl.load(dy_ptr + pid_b * stride_dyb + pos[:, None] * stride_dyl + offs_d[None, :], mask=mask_td,
                     other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + pid_b * stride_zb + pos[:, None] * stride_zl + offs_d[None, :], mask=mask_td,
                        other=0.0).to(tl.float32)
            gy = grad_mul(dy, silu(z))
        else:
            gy = dy
        Ct = tl.load(C_ptr + pid_b * stride_Cb + pos[:, None] * stride_Cl + g * stride_Cg + offs_n[None, :],
                     mask=valid[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + pid_b * stride_Bb + pos[:, None] * stride_Bl + g * stride_Bg + offs_n[None, :],
                     mask=valid[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        c = grad_mul(gy[:, :, None], Ct[:, None, :])
        galpha, gc = tl.associative_scan((alpha, c), 0, adjoint_combine, reverse=True)
        gs = tl.where(valid[:, None, None], gc + grad_mul(carry[None, :, :], galpha), 0.0)
        carry = tl.sum(tl.where((rows == 0)[:, None, None], grad_mul(gs, a), 0.0), axis=0)

        # a_t h_{t-1} = h_t - b_t, so dL/da_t * a_t needs no shifted copy of the states.
        q = grad_mul(gs, hs - b)
        dA_acc += tl.sum(grad_mul(q, delta[:, :, None]), axis=0)
        gB = tl.sum(grad_mul(gs, Bt[:, None, :]), axis=2)
        ddelta = tl.sum(q * A[None, :, :], axis=2) + grad_mul(gB, x)
        # dx, dz, dB, dC belong to this position only: where the loss does not reach it they need no guard
        dx = delta * gB
        if HAS_D:
            dx += D[None, :] * gy
            dD_acc += tl.sum(grad_mul(gy, x), axis=0)
        if DT_SOFTPLUS:
            ddelta = grad_mul(ddelta, softplus_grad(raw))
        ddelta = tl.where(mask_td, ddelta, 0.0)
        dbias_acc += tl.sum(ddelta, axis=0)
        out = pid_b * stride_dyb + pos[:, None] * stride_dyl + offs_d[None, :]
        tl.store(dx_ptr + out, dx.to(dx_ptr.dtype.element_ty), mask=mask_td)
        tl.store(ddt_ptr + out, ddelta.to(ddt_ptr.dtype.element_ty), mask=mask_td)
        if HAS_Z:
            ypre = tl.sum(hs * Ct[:, None, :], axis=2)
            if HAS_D:
                ypre += D[None, :] * x
            tl.store(dz_ptr + out, (dy * ypre * silu_grad(z)).to(dz_ptr.dtype.element_ty), mask=mask_td)
        dB = tl.sum(gs * (delta * x)[:, :, None], axis=1)
        dC = tl.sum(gy[:, :, None] * hs, axis=1)
        mask_tn = valid[:, None] & mask_n[None, :]
        gn = pid_b * stride_dBb + pos[:, None] * stride_dBl + g * stride_dBg + offs_n[None, :]
        tl.atomic_add(dB_ptr + gn, dB, mask=mask_tn)
        tl.atomic_add(dC_ptr + gn, dC, mask=mask_tn)

    if HAS_INIT:
        tl.store(dinit_ptr + pid_b * channels * nstate + dn, carry, mask=mask_dn)
    tl.store(dA_ptr + pid_b * channels * nstate + dn, dA_acc, mask=mask_dn)
    tl.store(dD_ptr + pid_b * channels + offs_d, dD_acc, mask=mask_d)
    tl.store(ddt_bias_ptr + pid_b * channels + offs_d, dbias_acc, mask=mask_d)


@triton.jit
def _selective_scan_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, y_ptr,
    channels, nstate, group_size,
    stride_sb, stride_sd, stride_sn, stride_xb, stride_dtb, stride_zb, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
    stride_yb,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One decoding step for a block of channels of one stream; the state is updated in place."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < channels
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < nstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    g = (pid_d * BLOCK_D) // group_size
    A = tl.load(A_ptr + offs_d.to(tl.int64)[:, None] * nstate + offs_n[None, :], mask=mask_dn, other=0.0)
    x = tl.load(x_ptr + pid_b * stride_xb + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + pid_b * stride_dtb + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        raw += tl.load(dt_bias_ptr + offs_d, mask=mask_d, other=0.0)
    delta = _delta(raw, DT_SOFTPLUS)
    Bv = tl.load(B_ptr + pid_b * stride_Bb + g * stride_Bg + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * stride_Cb + g * stride_Cg + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + pid_b * stride_sb + offs_d.to(tl.int64)[:, None] * stride_sd + offs_n[None, :] * stride_sn
    h = tl.load(s_ptrs, mask=mask_dn, other=0.0)
    h = tl.exp(delta[:, None] * A) * h + (delta * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, h, mask=mask_dn)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0) * x
    if HAS_Z:
        y *= silu(tl.load(z_ptr + pid_b * stride_zb + offs_d, mask=mask_d, other=0.0).to(tl.float32))
    tl.store(y_ptr + pid_b * stride_yb + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
