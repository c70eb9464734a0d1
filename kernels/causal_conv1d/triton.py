"""Triton kernels for the depthwise causal convolution, its backward and its single-step decode.

A program owns a ``(BLOCK_L, BLOCK_D)`` tile of one batch row; the ``WIDTH`` taps are unrolled, each a shifted load of
the same input tile (the shifts hit cache), reading ``initial_state`` for positions before the start. With
``seq_idx`` the launcher turns document ids into segment numbers (the count of document starts so far), and a tap is
used only when its input lies in the output's segment; the initial state belongs to segment 0. This is the naive
backend's rule "reset the window wherever the id changes", including for ids that come back.

Backward: when the activation is ``silu``, the forward kernel runs once more in a mode that writes the gradient at
the pre-activation, ``dy * silu'(pre)``, in float32; without an activation that gradient is ``dy`` itself. Then
``_causal_conv1d_bwd_kernel`` computes ``dx`` (a correlation with the flipped taps), per-tile partial sums of
``dweight`` and ``dbias`` (summed by the launcher, so deterministic), ``dinitial_state`` and the final-window gradient.
Nothing beyond the inputs is stored for backward.

Float64 inputs are rejected with a ValueError: use the ``torch`` backend for float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rawseq.kernels.common.triton_utils import AotVariant, aot_variant, next_pow2, silu, silu_grad, tl_dtype_name

__all__ = ["causal_conv1d_triton", "causal_conv1d_step_triton", "CausalConv1dFunction", "AOT_VARIANTS"]


@triton.jit
def _conv_rows(
    x_ptr, w_ptr, bias_ptr, init_ptr, seg_ptr, pid_b, pos, valid, offs_d, mask_d,
    stride_xb, stride_xl, stride_ib, stride_id, stride_segb,
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
            v += tl.load(init_ptr + pid_b * stride_ib + offs_d[None, :] * stride_id + (WIDTH - 1 + p)[:, None],
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
        out = dy * silu_grad(acc)
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
    stride_xb, stride_xl, stride_yb, stride_yl, stride_dyb, stride_dyl, stride_ib, stride_id, stride_fb,
    stride_fd, stride_segb,
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
                     stride_xb, stride_xl, stride_ib, stride_id, stride_segb, HAS_BIAS, False, HAS_SEQ, WIDTH)
    if HAS_INIT:
        valid = valid & (pos >= WIDTH - 1)
    _conv_epilogue(acc, dy_ptr, y_ptr, pid_b, pos, valid[:, None] & mask_d[None, :], offs_d, stride_dyb, stride_dyl,
                   stride_yb, stride_yl, SILU, GRAD_PRE)
    if HAS_INIT:
        if pid_l == 0:
            head = tl.arange(0, BLOCK_W).to(tl.int64)
            head_valid = (head < WIDTH - 1) & (head < length)
            head_acc = _conv_rows(x_ptr, w_ptr, bias_ptr, init_ptr, seg_ptr, pid_b, head, head_valid, offs_d,
                                  mask_d, stride_xb, stride_xl, stride_ib, stride_id, stride_segb, HAS_BIAS, True,
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
                init_ptrs = init_ptr + pid_b * stride_ib + offs_d[None, :] * stride_id + (WIDTH - 1 + pw)[:, None]
                window += tl.load(init_ptrs,
                                  mask=w_in_init[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            if HAS_SEQ:
                seg_last = tl.load(seg_ptr + pid_b * stride_segb + length - 1)
                seg_w = tl.load(seg_ptr + pid_b * stride_segb + pw, mask=w_in_x, other=0)
                window = tl.where((seg_w == seg_last)[:, None], window, 0.0)
            tl.store(final_ptr + pid_b * stride_fb + offs_d[None, :] * stride_fd + offs_w[:, None],
                     window.to(final_ptr.dtype.element_ty), mask=mask_w[:, None] & mask_d[None, :])


@triton.jit
def _causal_conv1d_bwd_kernel(
    g_ptr, x_ptr, w_ptr, init_ptr, seg_ptr, dfinal_ptr, dx_ptr, dw_ptr, dbias_ptr, dinit_ptr,
    length, channels,
    stride_gb, stride_gl, stride_xb, stride_xl, stride_dxb, stride_dxl, stride_ib, stride_id, stride_fb,
    stride_fd, stride_segb,
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
        tl.store(dw_row + k, tl.sum(g_here * u, axis=0), mask=mask_d)
    if HAS_DFINAL:
        # The final window holds x[p] for the last WIDTH - 1 positions (unless a later document started).
        j = pos - (length - (WIDTH - 1))
        in_f = valid & (j >= 0)
        gf = tl.load(dfinal_ptr + pid_b * stride_fb + offs_d[None, :] * stride_fd + j[:, None],
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
                uh = tl.load(init_ptr + pid_b * stride_ib + offs_d[None, :] * stride_id + (WIDTH - 1 + ph)[:, None],
                             mask=in_init[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
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
                gfw = tl.load(dfinal_ptr + pid_b * stride_fb + offs_d[None, :] * stride_fd + jw[:, None],
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


def _blocks(device: torch.device, channels: int, width: int):
    """(BLOCK_L, BLOCK_D, BLOCK_W, num_warps)."""
    block_d = min(next_pow2(channels), 64)
    block_l = 32
    return block_l, block_d, next_pow2(max(width - 1, 1)), 4


def _segments(seq_idx):
    """(batch, length) ids -> int32 segment numbers: the count of document starts up to each position."""
    if seq_idx is None:
        return None
    starts = torch.zeros(seq_idx.shape, dtype=torch.int32, device=seq_idx.device)
    starts[:, 1:] = (seq_idx[:, 1:] != seq_idx[:, :-1]).to(torch.int32)
    return starts.cumsum(1, dtype=torch.int32).contiguous()


def _check_dtypes(*tensors):
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            raise ValueError("the triton causal conv1d computes in float32; use backend='torch' for float64 inputs")


def _last_dim_contiguous(t):
    return None if t is None else (t if t.stride(-1) == 1 else t.contiguous())


def _causal_conv1d_fwd(x, weight, bias, activation, initial_state, seg, dy=None):
    """y and the final window; with ``dy``, instead the float32 gradient at the pre-activation (and no window)."""
    batch, length, channels = x.shape
    width = weight.shape[1]
    block_l, block_d, block_w, num_warps = _blocks(x.device, channels, width)
    grad_pre = dy is not None
    y = torch.empty(batch, length, channels, dtype=torch.float32 if grad_pre else x.dtype, device=x.device)
    final = torch.empty(batch, channels, width - 1, dtype=x.dtype, device=x.device)
    if length == 0:
        if initial_state is None:
            final.zero_()
        else:
            final.copy_(initial_state)
        return y, final
    init = initial_state
    grid = (triton.cdiv(channels, block_d), triton.cdiv(length, block_l), batch)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, init if init is not None else final,
        seg if seg is not None else x, dy if grad_pre else x, y, final,
        length, channels,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        dy.stride(0) if grad_pre else 0, dy.stride(1) if grad_pre else 0,
        init.stride(0) if init is not None else 0, init.stride(1) if init is not None else 0,
        final.stride(0), final.stride(1), seg.stride(0) if seg is not None else 0,
        HAS_BIAS=bias is not None, HAS_INIT=init is not None, HAS_SEQ=seg is not None,
        SILU=activation == "silu", GRAD_PRE=grad_pre, WIDTH=width, BLOCK_L=block_l, BLOCK_D=block_d,
        BLOCK_W=block_w, num_warps=num_warps,
    )
    return y, final


def _causal_conv1d_bwd(x, weight, bias, activation, initial_state, seg, dy, dfinal):
    """Gradients (dx, dweight, dbias, dinitial_state); the last three in float32."""
    batch, length, channels = x.shape
    width = weight.shape[1]
    block_l, block_d, block_w, num_warps = _blocks(x.device, channels, width)
    nl = triton.cdiv(length, block_l)
    if activation == "silu":
        g, _ = _causal_conv1d_fwd(x, weight, bias, activation, initial_state, seg, dy=_last_dim_contiguous(dy))
    else:
        g = _last_dim_contiguous(dy)
    dx = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
    dw = torch.empty(batch, nl + (initial_state is not None), channels, width, dtype=torch.float32,
                     device=x.device)
    dbias = torch.empty(batch, nl, channels, dtype=torch.float32, device=x.device)
    dinit = torch.empty(batch, channels, width - 1, dtype=torch.float32, device=x.device)
    if length == 0:
        dinit = dfinal.float() if dfinal is not None else torch.zeros_like(dinit)
        return dx, dw.sum((0, 1)), dbias.sum((0, 1)), dinit
    if dfinal is not None:
        dfinal = dfinal.contiguous()
    grid = (triton.cdiv(channels, block_d), nl, batch)
    _causal_conv1d_bwd_kernel[grid](
        g, x, weight, initial_state if initial_state is not None else dinit, seg if seg is not None else x,
        dfinal if dfinal is not None else dinit, dx, dw, dbias, dinit,
        length, channels,
        g.stride(0), g.stride(1), x.stride(0), x.stride(1), dx.stride(0), dx.stride(1),
        initial_state.stride(0) if initial_state is not None else 0,
        initial_state.stride(1) if initial_state is not None else 0,
        dfinal.stride(0) if dfinal is not None else 0, dfinal.stride(1) if dfinal is not None else 0,
        seg.stride(0) if seg is not None else 0,
        HAS_INIT=initial_state is not None, HAS_SEQ=seg is not None, HAS_DFINAL=dfinal is not None,
        WIDTH=width, BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_W=block_w, num_warps=num_warps,
    )
    return dx, dw.sum((0, 1)), dbias.sum((0, 1)), dinit


class CausalConv1dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, seq_idx, activation):
        _check_dtypes(x, weight, bias, initial_state)
        x = _last_dim_contiguous(x)
        weight = weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        init = None if initial_state is None else initial_state.contiguous()
        seg = _segments(seq_idx)
        y, final = _causal_conv1d_fwd(x, weight, bias, activation, init, seg)
        ctx.save_for_backward(x, weight, bias, init, seg)
        ctx.activation = activation
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype,
                      None if initial_state is None else initial_state.dtype)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, weight, bias, init, seg = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        dx, dw, dbias, dinit = _causal_conv1d_bwd(x, weight, bias, ctx.activation, init, seg, dy, dfinal)
        w_dtype, b_dtype, i_dtype = ctx.dtypes
        need = ctx.needs_input_grad
        return (
            dx if need[0] else None,
            dw.to(w_dtype) if need[1] else None,
            dbias.to(b_dtype) if (need[2] and bias is not None) else None,
            dinit.to(i_dtype) if (need[3] and init is not None) else None,
            None,
            None,
        )


def causal_conv1d_triton(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None):
    """Same arguments as :func:`rawseq.kernels.causal_conv1d`; returns ``(y, final_state)`` in ``x.dtype``."""
    return CausalConv1dFunction.apply(x, weight, bias, initial_state, seq_idx, activation)


def causal_conv1d_step_triton(state, x, weight, bias=None, activation=None):
    """Same arguments as :func:`rawseq.kernels.causal_conv1d_step`; shifts ``state`` in place, returns y."""
    _check_dtypes(state, x, weight, bias)
    batch, channels = x.shape
    width = weight.shape[1]
    _, block_d, block_w, _ = _blocks(x.device, channels, width)
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    x = _last_dim_contiguous(x)
    y = torch.empty(batch, channels, dtype=x.dtype, device=x.device)
    _causal_conv1d_step_kernel[(triton.cdiv(channels, block_d), batch)](
        state, x, weight, bias if bias is not None else weight, y, channels,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, SILU=activation == "silu", WIDTH=width, BLOCK_D=block_d, BLOCK_W=block_w,
    )
    return y


def _aot_variants() -> list[AotVariant]:
    """The launchers' CUDA blocks for widths 2 and 4, in each input dtype, with every flag on (and seq_idx off)."""
    cuda = torch.device("cuda")
    variants = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = tl_dtype_name(dtype)
        e = "*" + name
        for width in (2, 4):
            block_l, block_d, block_w, num_warps = _blocks(cuda, 4096, width)
            blocks = {"WIDTH": width, "BLOCK_L": block_l, "BLOCK_D": block_d, "BLOCK_W": block_w}
            tag = f"{name}-W{width}-L{block_l}-D{block_d}"
            ptrs = {"x_ptr": e, "w_ptr": e, "bias_ptr": e, "init_ptr": e, "dy_ptr": e, "y_ptr": e, "final_ptr": e,
                    "seg_ptr": "*i32"}
            for seq in (False, True):
                cx = {"HAS_BIAS": True, "HAS_INIT": True, "HAS_SEQ": seq, "SILU": True, "GRAD_PRE": False, **blocks}
                variants.append(aot_variant(f"fwd-{tag}-seq{int(seq)}", _causal_conv1d_fwd_kernel, cx, ptrs,
                                            num_warps=num_warps))
            cx = {"HAS_BIAS": True, "HAS_INIT": True, "HAS_SEQ": True, "SILU": True, "GRAD_PRE": True, **blocks}
            variants.append(aot_variant(f"grad_pre-{tag}", _causal_conv1d_fwd_kernel, cx,
                                        {**ptrs, "y_ptr": "*fp32"}, num_warps=num_warps))
            for seq in (False, True):
                cx = {"HAS_INIT": True, "HAS_SEQ": seq, "HAS_DFINAL": True, **blocks}
                bwd_ptrs = {"g_ptr": "*fp32", "x_ptr": e, "w_ptr": e, "init_ptr": e, "seg_ptr": "*i32",
                            "dfinal_ptr": e, "dx_ptr": e}
                variants.append(aot_variant(f"bwd-{tag}-seq{int(seq)}", _causal_conv1d_bwd_kernel, cx, bwd_ptrs,
                                            num_warps=num_warps))
            cx = {"HAS_BIAS": True, "SILU": True, "WIDTH": width, "BLOCK_D": block_d, "BLOCK_W": block_w}
            variants.append(aot_variant(f"step-{name}-W{width}-D{block_d}", _causal_conv1d_step_kernel, cx,
                                        {"state_ptr": e, "x_ptr": e, "w_ptr": e, "bias_ptr": e, "y_ptr": e}))
    return variants


AOT_VARIANTS = _aot_variants()
