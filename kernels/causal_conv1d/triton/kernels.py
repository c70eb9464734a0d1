"""Triton kernels of the depthwise causal convolution, its backward and its single-step decode.

A program owns a ``(BLOCK_L, BLOCK_D)`` tile of one batch row; the ``WIDTH`` taps are unrolled, each a shifted load of
the same input tile (the shifts hit cache), reading ``initial_state`` for positions before the start. With
``seq_idx`` the launcher turns document ids into segment numbers (the count of document starts so far), and a tap is
used only when its input lies in the output's segment (selected, not multiplied); the initial state belongs to
segment 0. This is the naive backend's rule "reset the window wherever the id changes", including for ids that come
back.

Backward: when the activation is ``silu``, the forward kernel runs once more in a mode that writes the gradient at
the pre-activation, ``dy * silu'(pre)``, in float32; without an activation that gradient is ``dy`` itself. Then
``_causal_conv1d_bwd_kernel`` computes ``dx`` (a correlation with the flipped taps), per-tile partial sums of
``dweight`` and ``dbias`` (summed by the launcher, so deterministic), ``dinitial_state`` and the final-window gradient.
A zero gradient stays zero whatever input it meets (``grad_mul``), so positions the loss does not reach add nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rawseq.kernels.common.tl_math import grad_mul, silu, silu_grad


@triton.jit
def _conv_rows(
    x_ptr, w_ptr, bias_ptr, init_ptr, seg_ptr, pid_b, pos, valid, offs_d, mask_d,
    stride_xb, stride_xl, stride_initb, stride_initd, stride_segb,
    HAS_BIAS: tl.constexpr, USE_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, WIDTH: tl.constexpr,
):
    """Pre-activation at positions ``pos`` (R,) for channels ``offs_d``: (R, BLOCK_D) float32. Inputs before the
    start come from the initial state when USE_INIT, else count as zero."""
    if HAS_SEQ:
        seg_t = tl.load(seg_ptr + pid_b * stride_segb + pos, mask=valid, other=0)
    acc = tl.zeros((pos.shape[0], offs_d.shape[0]), tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(WIDTH):
        p = pos - (WIDTH - 1 - k)
        in_x = valid & (p >= 0)
        v = tl.load(x_ptr + pid_b * stride_xb + p[:, None] * stride_xl + offs_d[None, :],
                    mask=in_x[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        if USE_INIT:
            in_init = valid & (p < 0)
            v += tl.load(init_ptr + pid_b * stride_initb + offs_d[None, :] * stride_initd + (WIDTH - 1 + p)[:, None],
                         mask=in_init[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            # Inputs before the start (the initial state) belong to segment 0.
            seg_p = tl.load(seg_ptr + pid_b * stride_segb + p, mask=in_x, other=0)
            v = tl.where((seg_p == seg_t)[:, None], v, 0.0)
        w = tl.load(w_ptr + offs_d * WIDTH + k, mask=mask_d, other=0.0).to(tl.float32)
        acc += v * w[None, :]
    return acc


@triton.jit
def _conv_epilogue(acc, dy_ptr, y_ptr, pid_b, pos, mask, offs_d, stride_dyb, stride_dyl, stride_yb, stride_yl,
                   SILU: tl.constexpr, GRAD_PRE: tl.constexpr):
    if GRAD_PRE:
        dy = tl.load(dy_ptr + pid_b * stride_dyb + pos[:, None] * stride_dyl + offs_d[None, :], mask=mask,
                     other=0.0).to(tl.float32)
        out = grad_mul(dy, silu_grad(acc))
    elif SILU:
        out = silu(acc)
    else:
        out = acc
    tl.store(y_ptr + pid_b * stride_yb + pos[:, None] * stride_yl + offs_d[None, :],
             out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seg_ptr, dy_ptr, y_ptr, final_ptr,
    length, channels,
    stride_xb, stride_xl, stride_yb, stride_yl, stride_dyb, stride_dyl, stride_initb, stride_initd, stride_finalb,
    stride_finald, stride_segb,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr,
    GRAD_PRE: tl.constexpr, WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """y = act(bias + sum_k w[:, k] u[t - (WIDTH - 1) + k]); with GRAD_PRE, writes dy * act'(pre) (float32).

    The main tile never reads the initial state: with one, the first WIDTH - 1 positions are left to a small
    head tile of the first length block, which keeps the main tile's registers low.
    """
    pid_d = tl.program_id(0)
    pid_l = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < channels
    pos = (pid_l * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    valid = pos < length
    acc = _conv_rows(x_ptr, w_ptr, bias_ptr, init_ptr, seg_ptr, pid_b, pos, valid, offs_d, mask_d,
                     stride_xb, stride_xl, stride_initb, stride_initd, stride_segb, HAS_BIAS, False, HAS_SEQ, WIDTH)
    if HAS_INIT:
        valid = valid & (pos >= WIDTH - 1)
    _conv_epilogue(acc, dy_ptr, y_ptr, pid_b, pos, valid[:, None] & mask_d[None, :], offs_d, stride_dyb, stride_dyl,
                   stride_yb, stride_yl, SILU, GRAD_PRE)
    if HAS_INIT:
        if pid_l == 0:
            head = tl.arange(0, BLOCK_W).to(tl.int64)
            head_valid = (head < WIDTH - 1) & (head < length)
            head_acc = _conv_rows(x_ptr, w_ptr, bias_ptr, init_ptr, seg_ptr, pid_b, head, head_valid, offs_d,
                                  mask_d, stride_xb, stride_xl, stride_initb, stride_initd, stride_segb, HAS_BIAS, True,
                                  HAS_SEQ, WIDTH)
            _conv_epilogue(head_acc, dy_ptr, y_ptr, pid_b, head, head_valid[:, None] & mask_d[None, :], offs_d,
                           stride_dyb, stride_dyl, stride_yb, stride_yl, SILU, GRAD_PRE)

    if not GRAD_PRE:
        if pid_l == tl.num_programs(1) - 1:
            # The final window: the last WIDTH - 1 inputs of the stream (initial state, then x).
            offs_w = tl.arange(0, BLOCK_W)
            mask_w = offs_w < WIDTH - 1
            pw = (length - (WIDTH - 1) + offs_w).to(tl.int64)
            w_in_x = mask_w & (pw >= 0)
            window = tl.load(x_ptr + pid_b * stride_xb + pw[:, None] * stride_xl + offs_d[None, :],
                             mask=w_in_x[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            if HAS_INIT:
                w_in_init = mask_w & (pw < 0)
                init_ptrs = init_ptr + pid_b * stride_initb + offs_d[None, :] * stride_initd + (WIDTH - 1 + pw)[:, None]
                window += tl.load(init_ptrs,
                                  mask=w_in_init[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            if HAS_SEQ:
                seg_last = tl.load(seg_ptr + pid_b * stride_segb + length - 1)
                seg_w = tl.load(seg_ptr + pid_b * stride_segb + pw, mask=w_in_x, other=0)
                window = tl.where((seg_w == seg_last)[:, None], window, 0.0)
            tl.store(final_ptr + pid_b * stride_finalb + offs_d[None, :] * stride_finald + offs_w[:, None],
                     window.to(final_ptr.dtype.element_ty), mask=mask_w[:, None] & mask_d[None, :])


@triton.jit
def _causal_conv1d_bwd_kernel(
    g_ptr, x_ptr, w_ptr, init_ptr, seg_ptr, dfinal_ptr, dx_ptr, dw_ptr, dbias_ptr, dinit_ptr,
    length, channels,
    stride_gb, stride_gl, stride_xb, stride_xl, stride_dxb, stride_dxl, stride_initb, stride_initd, stride_finalb,
    stride_finald, stride_segb,
    HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_DFINAL: tl.constexpr, WIDTH: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """g is the gradient at the pre-activation. dw (b, nslots, d, WIDTH) and dbias (b, nblocks_l, d) are float32
    partials: slot pid_l for this tile, and with an initial state slot nblocks_l for the taps that read it (written
    by the first tile). dinit (b, d, WIDTH - 1) float32 is written by the first tile of each row."""
    pid_d = tl.program_id(0)
    pid_l = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    nl = tl.num_programs(1)
    nslots = nl + 1 if HAS_INIT else nl
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < channels
    pos = (pid_l * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    valid = pos < length
    mask = valid[:, None] & mask_d[None, :]
    if HAS_SEQ:
        seg_here = tl.load(seg_ptr + pid_b * stride_segb + pos, mask=valid, other=0)
        seg_last = tl.load(seg_ptr + pid_b * stride_segb + length - 1)
    g_here = tl.load(g_ptr + pid_b * stride_gb + pos[:, None] * stride_gl + offs_d[None, :], mask=mask,
                     other=0.0).to(tl.float32)
    tl.store(dbias_ptr + (pid_b * nl + pid_l) * channels + offs_d, tl.sum(g_here, axis=0), mask=mask_d)
    dw_row = dw_ptr + ((pid_b * nslots + pid_l) * channels + offs_d) * WIDTH

    dx = tl.zeros((BLOCK_L, BLOCK_D), tl.float32)
    for k in tl.static_range(WIDTH):
        lag = WIDTH - 1 - k
        w = tl.load(w_ptr + offs_d * WIDTH + k, mask=mask_d, other=0.0).to(tl.float32)
        # dx[p] gathers the outputs t = p + lag that read p through tap k.
        t = pos + lag
        in_t = valid & (t < length)
        g = tl.load(g_ptr + pid_b * stride_gb + t[:, None] * stride_gl + offs_d[None, :],
                    mask=in_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            seg_t = tl.load(seg_ptr + pid_b * stride_segb + t, mask=in_t, other=0)
            g = tl.where((seg_t == seg_here)[:, None], g, 0.0)
        dx += g * w[None, :]
        # dw[k] sums, over the outputs of this tile, g times the input of x that tap k read.
        p = pos - lag
        in_x = valid & (p >= 0)
        u = tl.load(x_ptr + pid_b * stride_xb + p[:, None] * stride_xl + offs_d[None, :],
                    mask=in_x[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            seg_p = tl.load(seg_ptr + pid_b * stride_segb + p, mask=in_x, other=0)
            u = tl.where((seg_p == seg_here)[:, None], u, 0.0)
        tl.store(dw_row + k, tl.sum(grad_mul(g_here, u), axis=0), mask=mask_d)
    if HAS_DFINAL:
        # The final window holds x[p] for the last WIDTH - 1 positions (unless a later document started).
        j = pos - (length - (WIDTH - 1))
        in_f = valid & (j >= 0)
        gf = tl.load(dfinal_ptr + pid_b * stride_finalb + offs_d[None, :] * stride_finald + j[:, None],
                     mask=in_f[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            gf = tl.where((seg_here == seg_last)[:, None], gf, 0.0)
        dx += gf
    tl.store(dx_ptr + pid_b * stride_dxb + pos[:, None] * stride_dxl + offs_d[None, :],
             dx.to(dx_ptr.dtype.element_ty), mask=mask)

    if HAS_INIT:
        if pid_l == 0:
            offs_w = tl.arange(0, BLOCK_W)
            mask_w = offs_w < WIDTH - 1
            # Taps of the first outputs that read the initial state: their dw share goes to slot nl.
            head = offs_w.to(tl.int64)
            head_valid = mask_w & (head < length)
            g_head = tl.load(g_ptr + pid_b * stride_gb + head[:, None] * stride_gl + offs_d[None, :],
                             mask=head_valid[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            if HAS_SEQ:
                seg_head = tl.load(seg_ptr + pid_b * stride_segb + head, mask=head_valid, other=0)
                g_head = tl.where((seg_head == 0)[:, None], g_head, 0.0)
            dw_init = dw_ptr + ((pid_b * nslots + nl) * channels + offs_d) * WIDTH
            for kh in tl.static_range(WIDTH):
                ph = head - (WIDTH - 1 - kh)
                in_init = head_valid & (ph < 0)
                uh = tl.load(init_ptr + pid_b * stride_initb + offs_d[None, :] * stride_initd
                             + (WIDTH - 1 + ph)[:, None], mask=in_init[:, None] & mask_d[None, :],
                             other=0.0).to(tl.float32)
                tl.store(dw_init + kh, tl.sum(g_head * uh, axis=0), mask=mask_d)

            pw = (offs_w - (WIDTH - 1)).to(tl.int64)  # stream positions of the initial state, all < 0
            di = tl.zeros((BLOCK_W, BLOCK_D), tl.float32)
            for kw in tl.static_range(WIDTH):
                tw = pw + (WIDTH - 1 - kw)
                w_in_t = mask_w & (tw >= 0) & (tw < length)
                gw = tl.load(g_ptr + pid_b * stride_gb + tw[:, None] * stride_gl + offs_d[None, :],
                             mask=w_in_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                if HAS_SEQ:
                    seg_tw = tl.load(seg_ptr + pid_b * stride_segb + tw, mask=w_in_t, other=0)
                    gw = tl.where((seg_tw == 0)[:, None], gw, 0.0)
                wk = tl.load(w_ptr + offs_d * WIDTH + kw, mask=mask_d, other=0.0).to(tl.float32)
                di += gw * wk[None, :]
            if HAS_DFINAL:
                jw = pw + (WIDTH - 1) - length  # the final-window slot of the same stream position
                w_in_f = mask_w & (jw >= 0) & (jw < WIDTH - 1)
                gfw = tl.load(dfinal_ptr + pid_b * stride_finalb + offs_d[None, :] * stride_finald + jw[:, None],
                              mask=w_in_f[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                if HAS_SEQ:
                    gfw = tl.where(seg_last == 0, gfw, 0.0)
                di += gfw
            tl.store(dinit_ptr + pid_b * channels * (WIDTH - 1) + offs_d[None, :] * (WIDTH - 1) + offs_w[:, None],
                     di, mask=mask_w[:, None] & mask_d[None, :])


@triton.jit
def _causal_conv1d_step_kernel(
    state_ptr, x_ptr, w_ptr, bias_ptr, y_ptr, channels,
    stride_sb, stride_sd, stride_sw, stride_xb, stride_yb,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One input per stream: y from the window and x, then the window shifts left by one, in place."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < channels
    offs_w = tl.arange(0, BLOCK_W)
    mask_w = offs_w < WIDTH - 1
    s_base = state_ptr + pid_b * stride_sb + offs_d.to(tl.int64)[:, None] * stride_sd
    window = tl.load(s_base + offs_w[None, :] * stride_sw, mask=mask_d[:, None] & mask_w[None, :], other=0.0)
    x = tl.load(x_ptr + pid_b * stride_xb + offs_d, mask=mask_d, other=0.0)
    w_win = tl.load(w_ptr + offs_d[:, None] * WIDTH + offs_w[None, :], mask=mask_d[:, None] & mask_w[None, :],
                    other=0.0).to(tl.float32)
    w_cur = tl.load(w_ptr + offs_d * WIDTH + WIDTH - 1, mask=mask_d, other=0.0).to(tl.float32)
    y = tl.sum(window.to(tl.float32) * w_win, axis=1) + x.to(tl.float32) * w_cur
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        y = silu(y)
    tl.store(y_ptr + pid_b * stride_yb + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
    shifted = tl.load(s_base + (offs_w[None, :] + 1) * stride_sw,
                      mask=mask_d[:, None] & (offs_w[None, :] + 1 < WIDTH - 1), other=0.0)
    shifted = tl.where((offs_w == WIDTH - 2)[None, :], x[:, None].to(shifted.dtype), shifted)
    tl.store(s_base + offs_w[None, :] * stride_sw, shifted, mask=mask_d[:, None] & mask_w[None, :])
