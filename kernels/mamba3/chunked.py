"""Fast CPU path of Mamba-3: the trapezoidal scan in chunked (SSD) form with a hand-written backward, and the step.

After ``discretize.prepare`` the scan is SSD-like (package docstring): inside a chunk of ``Q`` positions, with ``cs``
the cumulative log-decay, output row ``(i, r)`` (position i, rank r) is

    y = (q k^T * M) v + exp(cs_i) q S_in^T,    M[(i, r), (j, s)] = exp(cs_i - cs_j) * (w_j if j < i, g_j if j = i)

one (QR, QR) masked product per head and chunk: the two taps of every input sum into ``w_j`` off the diagonal, and
the diagonal keeps only the current tap ``g_j``. Between chunks only the (p, n) state travels:
``S_out = exp(cs_end) S_in + sum_j exp(cs_end - cs_j) w_j v_j^T k_j``, where the last position's ``w`` already holds
the second tap of the next chunk's first position.

As in ``kernels/ssd/chunked.py`` the forward keeps only its inputs (v, q, k in the block layout) and the state
entering each chunk; the backward runs the reverse recurrence of the state gradient across chunks, then recomputes
and differentiates blocks of chunks one at a time, so peak memory is bounded by one block. Layout inside a block:
rows are (position, rank) pairs, chunks a batch axis: v is (b, c, h, Q R, p), q and k (b, c, h, Q R, n), the
per-position a, g, w (b, c, h, Q).

Non-finite inputs: masks select (``torch.where``, ``masked_fill``), but a matrix product cannot, so a non-finite v or
k would reach the earlier rows of its chunk; such inputs run with chunks of one position (a plain recurrence: slow,
but causal in the forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels import library
from rawseq.kernels.common import float_dtype_of, softplus
from rawseq.kernels.common.math import all_finite, constant
from rawseq.kernels.mamba3.discretize import final_state, finish, prepare
from rawseq.kernels.mamba3.naive import TWO_PI

# Rows (positions times ranks) processed together; bounds the (QR, QR) matrices of one block.
_BLOCK_ROWS = 8192


def _pad(t, Q, c):
    pad = c * Q - t.shape[1]
    return F.pad(t, [0, 0] * (t.dim() - 2) + [0, pad]) if pad else t


def _rows(t, Q, c):
    """(b, l, h, R, d) -> (b, c, h, Q R, d), zero-padded at the end."""
    b, _, h, R, d = t.shape
    return _pad(t, Q, c).view(b, c, Q, h, R, d).permute(0, 1, 3, 2, 4, 5).reshape(b, c, h, Q * R, d)


def _unrows(t, length, R):
    """(b, c, h, Q R, d) -> (b, l, h, R, d)."""
    b, c, h, QR, d = t.shape
    return t.view(b, c, h, QR // R, R, d).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, h, R, d)[:, :length]


def _positions(t, Q, c):
    """(b, l, h) -> (b, c, h, Q)."""
    b, _, h = t.shape
    return _pad(t, Q, c).view(b, c, Q, h).transpose(2, 3)


def _unpositions(t, length):
    b, c, h, Q = t.shape
    return t.transpose(2, 3).reshape(b, c * Q, h)[:, :length]


def _expand_rows(M, R):
    """(.., Q, Q) -> (.., Q R, Q R): every (position, position) entry for all rank pairs."""
    if R == 1:
        return M
    *lead, Q, _ = M.shape
    return M[..., :, None, :, None].expand(*lead, Q, R, Q, R).reshape(*lead, Q * R, Q * R)


def _reduce_rows(M, R):
    """Sum of (.., Q R, Q R) over the rank pairs -> (.., Q, Q)."""
    if R == 1:
        return M
    *lead, QR, _ = M.shape
    return M.view(*lead, QR // R, R, QR // R, R).sum((-3, -1))


def _row(t, R):
    """(.., Q) -> (.., Q R)."""
    return t if R == 1 else t.repeat_interleave(R, dim=-1)


def _per_pos(t, R):
    """(.., Q R) -> (.., Q), summing the ranks."""
    return t if R == 1 else t.view(*t.shape[:-1], -1, R).sum(-1)


class _Layout:
    """The core's inputs in the block layout, and the segment masks."""

    def __init__(self, v, q, k, a, gamma, w, seg, Q, blocked=False):
        """v, q, k: (b, l, h, R, d), or already in the block layout (b, c, h, Q R, d) with ``blocked``."""
        b, l, h = a.shape
        self.Q, self.length = Q, l
        self.c = c = max(1, -(-l // Q))
        if blocked:
            self.R = v.shape[3] // Q
            self.v, self.q, self.k = v, q, k
        else:
            self.R = v.shape[3]
            self.v, self.q, self.k = _rows(v, Q, c), _rows(q, Q, c), _rows(k, Q, c)
        self.a, self.gamma, self.w = _positions(a, Q, c), _positions(gamma, Q, c), _positions(w, Q, c)
        self.seg = self.before = None
        if seg is not None:
            if c * Q > l:  # padding continues the last document
                seg = torch.cat([seg, seg[:, -1:].expand(b, c * Q - l)], dim=1)
            self.seg = seg.view(b, c, Q)
            self.before = torch.cat([seg.new_zeros(b, 1), self.seg[:, :-1, -1]], dim=1)

    def masks(self, k0, k1):
        """Pairs in different documents (b, c, 1, Q, Q), and the masks of the paths position -> chunk end and
        chunk start -> position (b, c, 1, Q); all None without ``seq_idx``."""
        if self.seg is None:
            return None, None, None
        seg = self.seg[:, k0:k1]
        other = (seg.unsqueeze(-1) != seg.unsqueeze(-2))[:, :, None]
        out_mask = (seg == seg[:, :, -1:])[:, :, None]
        in_mask = (seg == self.before[:, k0:k1].unsqueeze(-1))[:, :, None]
        return other, out_mask, in_mask


def _decay_matrix(cs, other):
    """exp(cs_i - cs_j) for j <= i in the same document, else 0; (.., Q) -> (.., Q, Q). The exponent is floored
    where exp underflows anyway (vectorized exp is slow on denormals)."""
    floor = -80.0 if cs.dtype != torch.float64 else -700.0
    decay = (cs.unsqueeze(-1) - cs.unsqueeze(-2)).clamp_(min=floor).exp_().tril_()
    if other is not None:
        decay.masked_fill_(other, 0.0)
    return decay


def _block(lay, k0, k1):
    """Forward pieces of chunks [k0, k1) that do not depend on the entering state."""
    R = lay.R
    q, k, v, w, gamma = lay.q[:, k0:k1], lay.k[:, k0:k1], lay.v[:, k0:k1], lay.w[:, k0:k1], lay.gamma[:, k0:k1]
    cs = torch.cumsum(lay.a[:, k0:k1], dim=-1)  # (b, c, h, Q)
    other, out_mask, in_mask = lay.masks(k0, k1)
    E = _decay_matrix(cs, other)  # (b, c, h, Q, Q)
    Q = cs.shape[-1]
    below = torch.ones(Q, Q, dtype=torch.bool, device=cs.device).tril_(-1)
    if other is not None:
        below = below & ~other
    M = torch.where(below, E * w.unsqueeze(-2), 0.0)  # selected: w of a later position may not be finite
    M.diagonal(dim1=-2, dim2=-1).copy_(gamma)  # the diagonal of E is 1: only the current tap there
    G = torch.matmul(q, k.transpose(-1, -2))  # (b, c, h, QR, QR)
    W = G * _expand_rows(M, R)
    to_end = torch.exp(cs[..., -1:] - cs)
    into = torch.exp(cs)
    if out_mask is not None:
        to_end = torch.where(out_mask, to_end, 0.0)
        into = torch.where(in_mask, into, 0.0)
    u = to_end * w
    local = torch.matmul((v * _row(u, R).unsqueeze(-1)).transpose(-1, -2), k)  # (b, c, h, p, n)
    return dict(cs=cs, E=E, M=M, G=G, W=W, to_end=to_end, into=into, u=u, local=local)


def _blocks(c, rows_per_chunk):
    per = max(1, _BLOCK_ROWS // rows_per_chunk)
    return [(k0, min(c, k0 + per)) for k0 in range(0, c, per)]


def _scan(lay, S0):
    """Forward over the chunks of a layout: y (b, l, h, R, p), the final state, the states entering each chunk."""
    b, l, h = lay.a.shape[0], lay.length, lay.a.shape[2]
    R, p, n = lay.R, lay.v.shape[-1], lay.q.shape[-1]
    S = lay.v.new_zeros(b, h, p, n) if S0 is None else S0
    S_in = lay.v.new_empty(b, lay.c, h, p, n)
    ys = []
    for k0, k1 in _blocks(lay.c, lay.Q * R):
        blk = _block(lay, k0, k1)
        for i in range(k1 - k0):
            S_in[:, k0 + i] = S
            S = blk["into"][:, i, :, -1, None, None] * S + blk["local"][:, i]
        y = torch.matmul(blk["W"], lay.v[:, k0:k1])
        readout = torch.matmul(lay.q[:, k0:k1], S_in[:, k0:k1].transpose(-1, -2))  # (b, c, h, QR, p)
        ys.append(y.addcmul_(_row(blk["into"], R).unsqueeze(-1), readout))
    return _unrows(torch.cat(ys, dim=1), l, R), S, S_in


def _chunk_length(chunk_size, length):
    return min(chunk_size, max(1, length))


def mamba3_core_forward(v, q, k, a, gamma, w, S0, seg, chunk_size):
    """The chunked core's forward: (v, q, k (b, l, h, R, d), a, gamma, w (b, l, h), S0, seg) -> y (b, l, h, R, p),
    the final state (b, h, p, n) and the states entering each chunk of ``min(chunk_size, l)`` positions
    (b, c, h, p, n), the only tensor the backward needs beside the inputs. Non-finite v or k run as chunks of one
    position (module docstring); the returned states are those of the requested chunks either way.

    Called through the op registered in ``kernels/library.py`` (``rawseq::mamba3_core``), which owns the autograd.
    """
    Q = _chunk_length(chunk_size, v.shape[1])
    lay = _Layout(v, q, k, a, gamma, w, seg, Q)
    if Q > 1 and not all_finite(lay.v, lay.k):
        y, S, S_in = _scan(_Layout(v, q, k, a, gamma, w, seg, 1), S0)
        return y, S, S_in[:, ::Q].contiguous()
    return _scan(lay, S0)


def mamba3_core_backward(gy, gS, v, q, k, a, gamma, w, S0, seg, S_in, chunk_size):
    """The chunked core's backward from the gradients of y and of the final state, the inputs and the chunk states
    that :func:`mamba3_core_forward` returned: the gradients of (v, q, k, a, gamma, w, S0), the last None without
    an initial state."""
    Q = _chunk_length(chunk_size, v.shape[1])
    b, l, h = a.shape
    if Q > 1 and not all_finite(v, k):  # as the forward ran: chunks of one position, their states recomputed
        Q = 1
        S_in = _scan(_Layout(v, q, k, a, gamma, w, seg, 1), S_in[:, 0])[2]
    lay = _Layout(v, q, k, a, gamma, w, seg, Q)
    has_S0 = S0 is not None
    R, c = lay.R, lay.c
    gY = _rows(gy, Q, c) if gy is not None else torch.zeros_like(lay.v)  # (b, c, h, QR, p)

    # 1. Gradient of the state leaving each chunk, from the outputs of later chunks and the final state.
    into = torch.exp(torch.cumsum(lay.a, dim=-1))
    if lay.seg is not None:
        into = torch.where(lay.masks(0, c)[2], into, 0.0)
    direct = torch.matmul((gY * _row(into, R).unsqueeze(-1)).transpose(-1, -2), lay.q)  # (b, c, h, p, n)
    dS_out = torch.empty_like(S_in)
    carry = S_in.new_zeros(S_in[:, 0].shape) if gS is None else gS.to(S_in.dtype)
    for i in reversed(range(c)):
        dS_out[:, i] = carry
        carry = direct[:, i] + into[:, i, :, -1, None, None] * carry
    dS0 = carry if has_S0 else None

    # 2. Each block of chunks: recompute its forward and differentiate it.
    dv, dq, dk, da, dg, dw = [], [], [], [], [], []
    for k0, k1 in _blocks(c, Q * R):
        blk = _block(lay, k0, k1)
        gYb, Sb, dSb = gY[:, k0:k1], S_in[:, k0:k1], dS_out[:, k0:k1]
        qb, kb, vb = lay.q[:, k0:k1], lay.k[:, k0:k1], lay.v[:, k0:k1]
        E, M, G, W, to_end, into_b, u = (blk[key] for key in ("E", "M", "G", "W", "to_end", "into", "u"))
        # y_diag = W v, W = G * M (rows)
        dW = torch.matmul(gYb, vb.transpose(-1, -2))
        dvb = torch.matmul(W.transpose(-1, -2), gYb)
        dG = dW * _expand_rows(M, R)
        dqb = torch.matmul(dG, kb)
        dkb = torch.matmul(dG.transpose(-1, -2), qb)
        dM = _reduce_rows(dW * G, R)  # (b, c, h, Q, Q)
        dX = dM * M  # gradient wrt the exponent cs_i - cs_j
        dcs = dX.sum(-1) - dX.sum(-2)
        dScale = dM * E  # gradient wrt the column weights
        dgb = dScale.diagonal(dim1=-2, dim2=-1).clone()
        dwb = dScale.sum(-2) - dgb
        # y_off = into * (q S_in^T)
        intor = _row(into_b, R).unsqueeze(-1)
        readout = torch.matmul(qb, Sb.transpose(-1, -2))
        dqb = dqb + torch.matmul(gYb * intor, Sb)
        dcs = dcs + _per_pos((gYb * readout).sum(-1), R) * into_b
        # S_out = into[-1] S_in + (v * u)^T k
        ur = _row(u, R).unsqueeze(-1)
        dxe = torch.matmul(kb, dSb.transpose(-1, -2))  # (b, c, h, QR, p)
        dkb = dkb + torch.matmul(vb * ur, dSb)
        dvb = dvb + dxe * ur
        du = _per_pos((dxe * vb).sum(-1), R)
        dwb = dwb + du * to_end
        dto = du * u  # gradient wrt the exponent cs_end - cs_j
        dcs = dcs - dto
        dcs[..., -1] += dto.sum(-1) + (dSb * Sb).sum((-1, -2)) * into_b[..., -1]
        da.append(dcs.flip(-1).cumsum(-1).flip(-1))
        dv.append(dvb)
        dq.append(dqb)
        dk.append(dkb)
        dg.append(dgb)
        dw.append(dwb)
    cat = lambda parts: torch.cat(parts, dim=1)  # noqa: E731
    return (
        _unrows(cat(dv), l, R), _unrows(cat(dq), l, R), _unrows(cat(dk), l, R),
        _unpositions(cat(da), l), _unpositions(cat(dg), l), _unpositions(cat(dw), l),
        dS0,
    )


def mamba3_core_torch(v, q, k, a, gamma, w, S0, seg, chunk_size):
    """The chunked core on CPU (or any device), through the registered op: (y (b, l, h, R, p), final state)."""
    return library.mamba3_core(v, q, k, a, gamma, w, S0, seg, chunk_size, "torch")


def mamba3_chunked(core, x, dt, A, B, C, lam, angle=None, D=None, z=None, dt_bias=None, dt_softplus=True,
                   B_bias=None, C_bias=None, mimo_x=None, mimo_z=None, mimo_o=None, initial_state=None, seq_idx=None,
                   reverse=False, chunk_size=64):
    """The op around a chunked ``core`` (this module's or the Triton one); returns ``(y, final_state)``.

    Same arguments as :func:`rawseq.kernels.mamba3.mamba3`, for a sequence of at least one position.
    """
    if reverse:
        flip = lambda t: None if t is None or t.dim() < 2 else t.flip(1)  # noqa: E731
        y, state = mamba3_chunked(
            core, flip(x), flip(dt), A if A.dim() == 1 else flip(A), flip(B), flip(C), flip(lam), flip(angle), D,
            flip(z), dt_bias, dt_softplus, B_bias, C_bias, mimo_x, mimo_z, mimo_o, initial_state, flip(seq_idx),
            False, chunk_size,
        )
        return y.flip(1), state
    f = float_dtype_of(x, dt, A, B, C, lam, angle, D, z, dt_bias, B_bias, C_bias, mimo_x, mimo_z, mimo_o,
                       *(initial_state or ()))
    p = prepare(x, dt, A, B, C, lam, angle, dt_bias, dt_softplus, B_bias, C_bias, mimo_x, initial_state, seq_idx, f)
    y, ssm = core(p.v, p.q, p.k, p.a, p.gamma, p.w, p.S0, p.seg, chunk_size)
    return finish(y, p.v, z, D, mimo_z, mimo_o, x.dtype), final_state(p, ssm)


def mamba3_torch(*args, **kwargs):
    """The torch backend: :func:`mamba3_chunked` with :func:`mamba3_core_torch`."""
    return mamba3_chunked(mamba3_core_torch, *args, **kwargs)


def _as(t, dtype):
    """``t.to(dtype)`` without the dispatch when it already is ``dtype`` (a step is dominated by op count)."""
    return t if t.dtype == dtype else t.to(dtype)


def _one(like: torch.Tensor) -> torch.Tensor:
    """A one that broadcasts against ``like`` (the unit modulus of the rotation): a kept 0-dim tensor, so no
    allocation and no operation per step (a tensor of ones while ``torch.compile`` traces)."""
    one = constant(1.0, like)
    return one if isinstance(one, torch.Tensor) else torch.ones_like(like)


def mamba3_step_torch(state, x, dt, A, B, C, lam, angle=None, D=None, z=None, dt_bias=None, dt_softplus=True,
                      B_bias=None, C_bias=None, mimo_x=None, mimo_z=None, mimo_o=None):
    """One decoding position with few tensor ops (at batch 1 a step costs its op count, views included, not its
    arithmetic); same arguments and result as ``mamba3_step_naive``, without argument checks. For decoding: its
    in-place updates are not differentiable (``mamba3_step_naive`` is).

    x, z: (b, h, p); dt, lam: (b, h); A: (h,) or (b, h); B, C: (b, g, n) or (b, g, R, n); angle (b, h or 1, m).
    """
    ssm, theta, Bp, xp = state
    f = ssm.dtype
    batch, heads, headdim = x.shape
    mimo = B.dim() == 4
    rank, n = (B.shape[2] if mimo else 1), B.shape[-1]
    bh = batch * heads
    # per-head scalars (b, h)
    delta = _as(dt, f) if dt_bias is None else _as(dt, f) + _as(dt_bias, f)
    if dt_softplus:
        delta = softplus(delta)
    alpha = torch.mul(delta, _as(A, f)).exp_()
    gamma = torch.sigmoid(_as(lam, f)).mul_(delta)  # lam dt
    beta = (delta - gamma).mul_(alpha)  # (1 - lam) dt alpha
    kq = _keys_queries(B, C, B_bias, C_bias, heads, f)  # (2, b, h, [R,] n)
    if angle is not None and angle.shape[-1]:
        m = angle.shape[-1]
        theta.addcmul_(delta.unsqueeze(-1), _as(angle, f)).remainder_(constant(TWO_PI, theta))
        turn = torch.polar(_one(theta), theta)  # (b, h, m) unit complex numbers
        pairs = kq.view(*kq.shape[:-1], n // 2, 2) if n % 2 == 0 else kq[..., : 2 * m].unflatten(-1, (m, 2))
        torch.view_as_complex(pairs)[..., :m].mul_(turn.unsqueeze(2) if mimo else turn)  # rotates in place
    k, q = kq.unbind(0)
    if not mimo:
        k = k.unsqueeze(2)
    v = _as(x, f).unsqueeze(2) if mimo_x is None else _as(x, f).unsqueeze(2) * _as(mimo_x, f)  # (b, h, R, p)
    # S = alpha S + beta x_prev^T B_prev + gamma x^T k: the 2R taps as one batched product
    coef = torch.stack([beta, gamma], dim=-1).unsqueeze_(-1)  # (b, h, 2, 1)
    taps = torch.cat([xp, v], dim=2).mul_(coef if rank == 1 else coef.repeat_interleave(rank, dim=2))
    keys = torch.cat([Bp, k], dim=2)  # (b, h, 2R, n)
    ssm.mul_(alpha.view(batch, heads, 1, 1))
    rows = ssm.view(bh, headdim, n)
    rows.baddbmm_(taps.view(bh, 2 * rank, headdim).transpose(1, 2), keys.view(bh, 2 * rank, n))
    Bp.copy_(k)
    xp.copy_(v)
    if not mimo:  # (b h, p, n) (b h, n, 1): one row of C per head
        y = torch.bmm(rows, q.view(bh, n, 1)).view(batch, heads, headdim)
        if D is not None:
            y.addcmul_(x if x.dtype == f else x.to(f), _as(D, f).view(heads, 1))
        if z is not None:
            y.mul_(F.silu(_as(z, f)))
        return _as(y, x.dtype)
    y = torch.bmm(q.view(bh, rank, n), rows.transpose(1, 2)).view(batch, heads, rank, headdim)
    if D is not None:
        y.addcmul_(v, _as(D, f).view(heads, 1, 1))
    if z is not None:
        zr = _as(z, f).unsqueeze(2)
        y.mul_(F.silu(zr if mimo_z is None else zr * _as(mimo_z, f)))
    if mimo_o is not None:
        y.mul_(_as(mimo_o, f))
    return _as(y.sum(2), x.dtype)


def _keys_queries(B, C, B_bias, C_bias, heads, f):
    """B and C (b, g, [R,] n) with their per-head biases -> (2, b, h, [R,] n), a new tensor (rotated in place)."""
    kq = torch.stack([_as(B, f), _as(C, f)])
    groups = B.shape[1]
    if groups == heads and B_bias is None and C_bias is None:  # what a layer passes: B and C already per head
        return kq
    inner = kq.shape[3:]  # ([R,] n)
    kq = kq.unsqueeze(3)  # (2, b, g, 1, [R,] n)
    if B_bias is None and C_bias is None:
        kq = kq.expand(2, kq.shape[1], groups, heads // groups, *inner)
    else:
        biases = [t if t is None else _as(t, f).view(heads, *inner) for t in (B_bias, C_bias)]
        biases = [torch.zeros_like(other) if t is None else t for t, other in zip(biases, biases[::-1])]
        kq = kq + torch.stack(biases).view(2, 1, groups, heads // groups, *inner)
    return kq.reshape(2, kq.shape[1], heads, *inner)
