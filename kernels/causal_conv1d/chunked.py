"""Fast CPU path of the causal depthwise convolution: one grouped ``conv1d``, differentiable by autograd.

The convolution is a handful of large tensor ops, so autograd's graph is small and no hand-written backward is
needed. With ``seq_idx``, the taps that would reach into an earlier document are masked, one shifted product per tap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of, resets_from_seq_idx


def causal_conv1d_torch(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None):
    """Same arguments as :func:`rawseq.kernels.causal_conv1d`; returns ``(y, final_state)``."""
    f = float_dtype_of(x, weight, bias, initial_state)
    batch, length, channels = x.shape
    width = weight.shape[1]
    xt = x.to(f).transpose(1, 2)  # (b, l, d) -> (b, d, l)
    if initial_state is None:
        prefix = xt.new_zeros(batch, channels, width - 1)
    else:
        prefix = initial_state.to(f)
    u = torch.cat([prefix, xt], dim=-1)  # (b, d, width - 1 + l)
    w = weight.to(f)
    if seq_idx is None:
        y = F.conv1d(u, w.unsqueeze(1), None if bias is None else bias.to(f), groups=channels)
        final = u[:, :, u.shape[-1] - (width - 1):]
    else:
        # segment[t] counts the document starts up to t; a tap at lag j is valid iff segment[t] == segment[t - j].
        seg = resets_from_seq_idx(seq_idx).long().cumsum(1)
        seg = torch.cat([seg.new_zeros(batch, width - 1), seg], dim=1)  # the prefix belongs to the first document
        y = xt.new_zeros(batch, channels, length)
        for k in range(width):
            lag = width - 1 - k
            valid = (seg[:, width - 1:] == seg[:, width - 1 - lag: seg.shape[1] - lag]).to(f)
            y = y + u[:, :, k: k + length] * w[:, k, None] * valid[:, None, :]
        if bias is not None:
            y = y + bias.to(f)[:, None]
        tail = u[:, :, u.shape[-1] - (width - 1):]
        tail_seg = seg[:, seg.shape[1] - (width - 1):]
        final = tail * (tail_seg == seg[:, -1:]).to(f)[:, None, :]
    y = y.transpose(1, 2).contiguous()  # (b, d, l) -> (b, l, d); silu's backward is slow on mismatched layouts
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), final.to(x.dtype)
