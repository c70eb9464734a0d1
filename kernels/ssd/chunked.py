"""Fast CPU path of SSD: the chunked state-space-duality algorithm (Dao & Gu, 2024), vectorized over chunks.

Inside a chunk of ``Q`` positions the scan is a masked matrix product: with ``cs`` the cumulative sum of
``dt * A`` in the chunk, position ``i`` sees position ``j <= i`` through the decay ``exp(cs_i - cs_j)``, so

    y_diag = ((C B^T) * decay) @ (dt * x)                      one (Q, Q) @ (Q, headdim) product per head

Between chunks only the (headdim, nstate) state travels: each chunk adds its local state
``sum_j exp(cs_last - cs_j) dt_j x_j B_j^T`` and decays the incoming one by ``exp(cs_last)``, a short sequential loop
over chunks; the incoming state reaches position ``i`` of a chunk through ``exp(cs_i) C_i S^T``.

The forward keeps only the inputs and the state entering each chunk. The backward is written by hand: it first runs
the reverse recurrence of the state gradient across chunks, after which every chunk is independent, so blocks of
chunks are recomputed and differentiated one at a time and peak memory is bounded by one block.

Layout inside a block: heads are split into ``g`` groups of ``r`` and chunks are batch axes, e.g. x is
(b, c, g, r, Q, p) and B, C are (b, c, g, Q, n), so every product is one batched matmul.

A matrix product cannot mask by selection: a NaN or inf in ``dt * x`` or ``B`` at one position would reach every
earlier position of its chunk through a zero of the decay matrix (``0 * inf`` is NaN). When such a value is present
the op therefore runs with chunks of one position (a plain recurrence: slow, but causal), keeping the state entering
each chunk of the requested size so that the saved tensors have the same shapes either way. Every other mask
(documents, the decay matrix's upper triangle) is applied by selection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of, softplus
from rawseq.kernels.common.math import (
    all_finite,
    flip_time,
    scan_grads_in_position_order,
    segments_from_seq_idx,
    step_sizes,
)
from rawseq.kernels.ssd.naive import ssd_step_naive

# Positions processed together; bounds the memory of the (Q, Q) matrices to about this many positions' worth.
_BLOCK_POSITIONS = 8192


def _pad_chunks(t, Q, c, value=0.0):
    """(b, l, ...) -> (b, c, Q, ...), padding the end with ``value``."""
    pad = c * Q - t.shape[1]
    if pad:
        t = F.pad(t, [0, 0] * (t.dim() - 2) + [0, pad], value=value)
    return t.view(t.shape[0], c, Q, *t.shape[2:])


class _Inputs:
    """All per-position inputs of the op in the block layout, discretized once, with chunks of ``Q`` positions (of
    one when ``dt * x`` or ``B`` holds a non-finite value)."""

    def __init__(self, x, dt, A, B, C, dt_bias, dt_softplus, seq_idx, Q, f):
        b, l, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        r = h // g
        raw = dt.to(f) if dt_bias is None else dt.to(f) + dt_bias.to(f)
        self.raw = raw
        delta = softplus(raw) if dt_softplus else raw
        xf, Bf = x.to(f), B.to(f)
        self.requested = Q
        if Q > 1 and not all_finite(delta, xf, Bf):
            Q = 1
        c = max(1, -(-l // Q))
        self.shape = (b, l, h, p, g, n, r, c, Q)
        # Padded positions get delta = 0: no input and no decay, so they leave the final state alone.
        self.delta = _pad_chunks(delta, Q, c).view(b, c, Q, g, r).permute(0, 1, 3, 4, 2)  # (b, c, g, r, Q)
        self.x = _pad_chunks(xf, Q, c).view(b, c, Q, g, r, p).permute(0, 1, 3, 4, 2, 5)  # (b, c, g, r, Q, p)
        self.B = _pad_chunks(Bf, Q, c).transpose(2, 3)  # (b, c, g, Q, n)
        self.C = _pad_chunks(C.to(f), Q, c).transpose(2, 3)
        self.A = A.to(f).view(g, r, 1)
        self.seg = self.before = None
        if seq_idx is not None:
            seg = segments_from_seq_idx(seq_idx)
            if c * Q > l:  # padding continues the last document
                seg = torch.cat([seg, seg[:, -1:].expand(b, c * Q - l)], dim=1)
            self.seg = seg.view(b, c, Q)
            self.before = torch.cat([seg.new_zeros(b, 1), self.seg[:, :-1, -1]], dim=1)  # segment before each chunk

    def saved_states(self, S_in):
        """The states entering each chunk of the requested size, from those entering this layout's chunks."""
        Q = self.requested
        return S_in if self.shape[-1] == Q else S_in[:, ::Q].contiguous()


def _masks(inp, k0, k1):
    """Where two positions of a chunk are in different documents (.., Q, Q), and the masks of the outgoing
    (j -> end) and incoming (start -> i) paths; all None without ``seq_idx``."""
    if inp.seg is None:
        return None, None, None
    seg = inp.seg[:, k0:k1]
    other = (seg.unsqueeze(-1) != seg.unsqueeze(-2))[:, :, None, None]  # (b, c, 1, 1, Q, Q)
    out_mask = (seg == seg[:, :, -1:])[:, :, None, None]  # (b, c, 1, 1, Q)
    in_mask = (seg == inp.before[:, k0:k1].unsqueeze(-1))[:, :, None, None]
    return other, out_mask, in_mask


def _decay_matrix(cs, other):
    """exp(cs_i - cs_j) for j <= i in the same document, else 0; cs (.., Q) -> (.., Q, Q).

    The exponent is floored where exp is far below the dtype's normal range (vectorized exp is slow on denormals
    and on -inf), and the upper triangle is zeroed after the exp rather than masked with -inf before it.
    """
    floor = -80.0 if cs.dtype != torch.float64 else -700.0
    decay = (cs.unsqueeze(-1) - cs.unsqueeze(-2)).clamp_(min=floor).exp_().tril_()
    if other is not None:
        decay.masked_fill_(other, 0.0)
    return decay


def _select(mask, t):
    """``t`` where ``mask`` holds, else 0 (selection: a non-finite value outside the mask does not leak)."""
    return t if mask is None else torch.where(mask, t, 0.0)


def _block(inp, k0, k1, keep_decay=False):
    """Forward pieces of chunks [k0, k1) that do not depend on the incoming state (the decay matrix only on
    request: the forward needs just its product with the scores)."""
    delta, x, B, C = inp.delta[:, k0:k1], inp.x[:, k0:k1], inp.B[:, k0:k1], inp.C[:, k0:k1]
    cs = torch.cumsum(delta * inp.A, dim=-1)  # (b, c, g, r, Q)
    other, out_mask, in_mask = _masks(inp, k0, k1)
    decay = _decay_matrix(cs, other)  # (b, c, g, r, Q, Q)
    scores = torch.matmul(C, B.transpose(-1, -2)).unsqueeze(3)  # (b, c, g, 1, Q, Q)
    W = scores * decay if keep_decay else decay.mul_(scores)
    xd = x * delta.unsqueeze(-1)
    to_end = _select(out_mask, torch.exp(cs[..., -1:] - cs))  # (b, c, g, r, Q)
    into = _select(in_mask, torch.exp(cs))
    local = torch.matmul((xd * to_end.unsqueeze(-1)).transpose(-1, -2), B.unsqueeze(3))  # (b, c, g, r, p, n)
    return dict(cs=cs, decay=decay if keep_decay else None, W=W, xd=xd, to_end=to_end, into=into, local=local)


def _unblock(y, inp):
    """(b, c, g, r, Q, p) -> (b, l, h, p)."""
    b, l, h, p, g, n, r, c, Q = inp.shape
    return y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * Q, h, p)[:, :l]


def _to_block(t, inp):
    """(b, l, h, p) -> (b, c, g, r, Q, p)."""
    b, l, h, p, g, n, r, c, Q = inp.shape
    return _pad_chunks(t, Q, c).view(b, c, Q, g, r, p).permute(0, 1, 3, 4, 2, 5)


def _chunk_states(inp, initial_state, blocks):
    """Forward over all chunks: y without D/gate (b, l, h, p), the state entering each chunk, the final state."""
    b, l, h, p, g, n, r, c, Q = inp.shape
    S = inp.x.new_zeros(b, g, r, p, n)
    if initial_state is not None:
        S = initial_state.to(S.dtype).reshape(b, g, r, p, n)
    S_in = inp.x.new_empty(b, c, g, r, p, n)
    ys = []
    for k0, k1 in blocks:
        blk = _block(inp, k0, k1)
        for k in range(k1 - k0):
            S_in[:, k0 + k] = S
            S = blk["into"][:, k, ..., -1, None, None] * S + blk["local"][:, k]
        y = torch.matmul(blk["W"], blk["xd"])
        y = y + blk["into"].unsqueeze(-1) * torch.matmul(inp.C[:, k0:k1].unsqueeze(3), S_in[:, k0:k1].transpose(-1, -2))
        ys.append(y)
    return _unblock(torch.cat(ys, dim=1), inp), S_in, S


def _blocks(c, Q):
    per = max(1, _BLOCK_POSITIONS // Q)
    return [(k0, min(c, k0 + per)) for k0 in range(0, c, per)]


def ssd_forward(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse, chunk_size):
    """Returns y (b, l, h, p) in x.dtype, the final state (b, h, p, n) and the state entering each chunk of
    ``min(chunk_size, length)`` positions (b, c, g, r, p, n), the only tensor the backward needs beside the inputs."""
    if reverse:
        x, dt, B, C, z, seq_idx = (flip_time(t) for t in (x, dt, B, C, z, seq_idx))
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    inp = _Inputs(x, dt, A, B, C, dt_bias, dt_softplus, seq_idx, _chunk_length(chunk_size, x.shape[1]), f)
    b, l, h, p, g, n, r, c, Q = inp.shape
    y, S_in, S = _chunk_states(inp, initial_state, _blocks(c, Q))
    if D is not None:
        y = y + x.to(f) * D.to(f)[:, None]
    if z is not None:
        y = y * F.silu(z.to(f))
    y = y.to(x.dtype)
    return (y.flip(1) if reverse else y), S.reshape(b, h, p, n), inp.saved_states(S_in)


def _chunk_length(chunk_size, length):
    return min(chunk_size, max(1, length))


def ssd_backward(gout, gstate, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, S_in, dt_softplus, reverse,
                 chunk_size):
    """Gradients (x, dt, A, B, C, D, z, dt_bias, initial_state), None for absent inputs, from the gradients of y and
    of the final state and the chunk states that :func:`ssd_forward` kept."""
    if reverse:
        x, dt, B, C, z, seq_idx, gout = (flip_time(t) for t in (x, dt, B, C, z, seq_idx, gout))
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    Q = _chunk_length(chunk_size, x.shape[1])
    inp = _Inputs(x, dt, A, B, C, dt_bias, dt_softplus, seq_idx, Q, f)
    b, l, h, p, g, n, r, c, Q = inp.shape
    if Q != inp.requested:  # chunks of one position (non-finite inputs): their states are recomputed
        S_in = _chunk_states(inp, initial_state, _blocks(c, Q))[1]
    gout = gout.to(f)
    gy = gout if z is None else gout * F.silu(z.to(f))  # gradient of the ungated output
    gY = _to_block(gy, inp)  # (b, c, g, r, Q, p)
    blocks = _blocks(c, Q)

    # 1. Gradient of the state leaving each chunk: dS_out[k-1] = (use of S_in[k] by chunk k's outputs)
    #    + decay[k] * dS_out[k]. Only the cumulative decays are needed for it.
    cs = torch.cumsum(inp.delta * inp.A, dim=-1)
    into = torch.exp(cs)
    if inp.seg is not None:
        into = _select(_masks(inp, 0, c)[2], into)
    direct = torch.matmul((gY * into.unsqueeze(-1)).transpose(-1, -2), inp.C.unsqueeze(3))  # (b, c, g, r, p, n)
    dS_out = torch.empty_like(S_in)
    carry = x.new_zeros(b, g, r, p, n, dtype=f)
    if gstate is not None:
        carry = gstate.to(f).reshape(b, g, r, p, n)
    for k in reversed(range(c)):
        dS_out[:, k] = carry
        carry = direct[:, k] + into[:, k, ..., -1, None, None] * carry
    dinit = carry

    # 2. Each block of chunks: recompute its forward and differentiate it by hand.
    dX, dDelta, dBs, dCs, Ys = [], [], [], [], []
    dA = torch.zeros(g, r, dtype=f, device=x.device)
    for k0, k1 in blocks:
        blk = _block(inp, k0, k1, keep_decay=True)
        gYb, Sb, dSb = gY[:, k0:k1], S_in[:, k0:k1], dS_out[:, k0:k1]
        Bb, Cb, xb, db = inp.B[:, k0:k1], inp.C[:, k0:k1], inp.x[:, k0:k1], inp.delta[:, k0:k1]
        decay, W, xd = blk["decay"], blk["W"], blk["xd"]
        to_end, into_b = blk["to_end"], blk["into"]
        readout = torch.matmul(Cb.unsqueeze(3), Sb.transpose(-1, -2))  # C S^T, (b, c, g, r, Q, p)
        if z is not None:
            Ys.append(torch.matmul(W, xd) + into_b.unsqueeze(-1) * readout)
        # y_diag = W @ xd with W = scores * decay
        dW = torch.matmul(gYb, xd.transpose(-1, -2))
        dxd = torch.matmul(W.transpose(-1, -2), gYb)
        # In place: decay and dW are not needed after these two lines (two (Q, Q) temporaries fewer per block).
        dscores = decay.mul_(dW).sum(3)  # (b, c, g, Q, Q)
        dE = dW.mul_(W)  # gradient wrt the exponent cs_i - cs_j (zero where masked)
        dcs = dE.sum(-1) - dE.sum(-2)
        dC = torch.matmul(dscores, Bb)
        dB = torch.matmul(dscores.transpose(-1, -2), Cb)
        # y_off = into * (C S^T)
        ginto = gYb * into_b.unsqueeze(-1)
        dcs = dcs + (gYb * readout).sum(-1) * into_b
        dC = dC + torch.matmul(ginto, Sb).sum(3)
        # local = (xd * to_end)^T B;  S_out = into[-1] * S_in + local
        dxe = torch.matmul(Bb.unsqueeze(3), dSb.transpose(-1, -2))  # (b, c, g, r, Q, p)
        dB = dB + torch.matmul(xd * to_end.unsqueeze(-1), dSb).sum(3)
        dxd = dxd + dxe * to_end.unsqueeze(-1)
        dto_end = (dxe * xd).sum(-1) * to_end  # gradient wrt the exponent cs_last - cs_j
        dcs = dcs - dto_end
        dcs[..., -1] += dto_end.sum(-1) + (dSb * Sb).sum((-1, -2)) * into_b[..., -1]
        # cs = cumsum(delta * A);  xd = x * delta
        da = dcs.flip(-1).cumsum(-1).flip(-1)
        dX.append(dxd * db.unsqueeze(-1))
        dDelta.append((dxd * xb).sum(-1) + da * inp.A)
        dBs.append(dB)
        dCs.append(dC)
        dA += (da * db).sum((0, 1, 4))  # (g, r)
    dxs = _unblock(torch.cat(dX, dim=1), inp)
    ddelta = torch.cat(dDelta, dim=1).permute(0, 1, 4, 2, 3).reshape(b, c * Q, h)[:, :l]
    dBf = torch.cat(dBs, dim=1).transpose(2, 3).reshape(b, c * Q, g, n)[:, :l]
    dCf = torch.cat(dCs, dim=1).transpose(2, 3).reshape(b, c * Q, g, n)[:, :l]
    draw = ddelta * torch.sigmoid(inp.raw) if dt_softplus else ddelta
    dD = dz = None
    if D is not None:
        dxs = dxs + gy * D.to(f)[:, None]
        dD = (gy * x.to(f)).sum((0, 1, 3)).to(D.dtype)
    if z is not None:
        y_ungated = _unblock(torch.cat(Ys, dim=1), inp)
        if D is not None:
            y_ungated = y_ungated + x.to(f) * D.to(f)[:, None]
        zf = z.to(f)
        sig = torch.sigmoid(zf)
        dz = (gout * y_ungated * sig * (1 + zf * (1 - sig))).to(z.dtype)
    grads = [dxs.to(x.dtype), draw.to(dt.dtype), dA.reshape(h).to(A.dtype), dBf.to(B.dtype), dCf.to(C.dtype), dD,
             dz, None if dt_bias is None else draw.sum((0, 1)).to(dt_bias.dtype),
             None if initial_state is None else dinit.reshape(b, h, p, n).to(initial_state.dtype)]
    return scan_grads_in_position_order(grads, reverse)


def ssd_step_torch(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One position with as few tensor ops as possible (a batch-1 decoding step costs its op count, not its
    arithmetic): no casts where dtypes already match, heads grouped with views, the state updated in place.
    Computes what ``naive.ssd_step_naive`` specifies; state (b, h, p, n), x/z (b, h, p), dt (b, h) -> y (b, h, p)."""
    if not state.is_contiguous():
        return ssd_step_naive(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    f = state.dtype
    batch, heads, headdim = x.shape
    groups, n = B.shape[1], B.shape[2]
    delta = step_sizes(dt, dt_bias, dt_softplus, f)
    xf = x if x.dtype == f else x.to(f)
    B = B if B.dtype == f else B.to(f)
    C = C if C.dtype == f else C.to(f)
    decay = torch.mul(delta, A if A.dtype == f else A.to(f)).exp_()  # (b, h)
    if groups == 1:  # B and C (b, 1, n) broadcast over the heads: fewer views, which cost as much as ops here
        drive = (delta.unsqueeze(-1) * xf).unsqueeze(-1) * B.unsqueeze(1)  # (b, h, p, n)
        torch.addcmul(drive, state, decay.view(batch, heads, 1, 1), out=state)
        y = torch.bmm(state.view(batch, heads * headdim, n), C.transpose(1, 2)).view(batch, heads, headdim)
    else:
        grouped = state.view(batch, groups, heads // groups, headdim, n)  # heads of one group share B and C
        drive = (delta.unsqueeze(-1) * xf).view(batch, groups, -1, headdim, 1) * B.view(batch, groups, 1, 1, n)
        torch.addcmul(drive, grouped, decay.view(batch, groups, -1, 1, 1), out=grouped)
        y = torch.bmm(state.view(batch * groups, -1, n), C.reshape(batch * groups, n, 1))
        y = y.view(batch, heads, headdim)
    if D is not None:
        y.addcmul_(xf, (D if D.dtype == f else D.to(f)).unsqueeze(-1))
    if z is not None:
        y.mul_(F.silu(z if z.dtype == f else z.to(f)))
    return y if y.dtype == x.dtype else y.to(x.dtype)
