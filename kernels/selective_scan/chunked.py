"""Fast CPU path of the selective scan: a sequential scan vectorized over (batch, channels, nstate), chunked in time,
and its decoding step.

Autograd over a per-step loop is what makes naive PyTorch scans slow (one graph node per step), so the scan has a
hand-written backward (registered with the forward in ``rawseq.kernels.library``) and its loops are in-place
``addcmul_`` over one time step's (batch, channels, nstate) slab. The forward keeps only the state at each chunk
boundary (and the output before gating); the backward recomputes a chunk's decays and states from its boundary state
and runs the adjoint recurrence in reverse. The expanded (length, channels, nstate) tensors only ever exist for one
chunk at a time, so memory stays bounded at any length. Keeping every decay and state instead is slower than
recomputing them: a chunk's tensors stay in cache, the full ones do not.

Tensors are laid out time-major, ``(length, batch, groups, channels_per_group[, nstate])``, made contiguous once per
call, so that every chunk is a contiguous slice and each step of the loop touches one contiguous slab. Document
resets (``seq_idx``) zero the state by selection, at the few steps where some row starts a document.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of, resets_from_seq_idx, softplus
from rawseq.kernels.common.math import flip_time, scan_grads_in_position_order, step_sizes
from rawseq.kernels.selective_scan.naive import selective_scan_step_naive

CHUNK = 32


def _time_major(t, f, *shape):
    """(b, l, ...) -> contiguous (l, b, *shape) in dtype f."""
    return t.to(f).transpose(0, 1).reshape(t.shape[1], t.shape[0], *shape).contiguous()


class _Inputs:
    """The per-position inputs cast, split into channel groups and time-major: x, delta, raw dt (l, b, g, p); B, C
    (l, b, g, n); A (g, p, n); the document resets (l, b) and the steps at which some row resets."""

    def __init__(self, x, dt, A, B, C, dt_bias, dt_softplus, seq_idx, f):
        groups, n = B.shape[2], B.shape[3]
        p = x.shape[2] // groups
        self.raw = _time_major(dt, f, groups, p)
        if dt_bias is not None:
            self.raw = self.raw + dt_bias.to(f).view(groups, p)
        self.delta = softplus(self.raw) if dt_softplus else self.raw
        self.x = _time_major(x, f, groups, p)
        self.B, self.C = _time_major(B, f, groups, n), _time_major(C, f, groups, n)
        self.A = A.to(f).view(groups, p, n)
        self.resets = self.reset_steps = None
        if seq_idx is not None:
            self.resets = resets_from_seq_idx(seq_idx).t().contiguous()  # (l, b)
            self.reset_steps = set(self.resets.any(1).nonzero().flatten().tolist())

    def chunk(self, s, e):
        """Discretize positions [s, e): decay and input, both (T, b, g, p, n); the decay is 0 at a reset."""
        d = self.delta[s:e]
        decay = torch.mul(d.unsqueeze(-1), self.A).exp_()
        if self.resets is not None:
            decay.masked_fill_(self.resets[s:e, :, None, None, None], 0.0)
        drive = (d * self.x[s:e]).unsqueeze(-1) * self.B[s:e].unsqueeze(-2)
        return decay, drive

    def scan(self, decay, drive, h, s):
        """In place: drive[t] becomes h_t = decay[t] * h_{t-1} + drive[t] for the chunk starting at position s, from
        h = h_{s-1}; at a document start h_{t-1} is replaced by zeros first. Returns the last state."""
        if not self.reset_steps:
            for dr, de in zip(drive.unbind(0), decay.unbind(0)):
                h = dr.addcmul_(de, h)
            return h
        for t, (dr, de) in enumerate(zip(drive.unbind(0), decay.unbind(0))):
            if s + t in self.reset_steps:
                h = torch.where(self.resets[s + t, :, None, None, None], 0.0, h)
            h = dr.addcmul_(de, h)
        return h


def selective_scan_forward(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse, chunk):
    """Returns y (b, l, d) in x.dtype, the final state (b, d, n), the state entering each chunk of ``chunk``
    positions (c, b, g, p, n) and, with a gate, y before gating and skip (l, b, g, p) (else an empty tensor)."""
    if reverse:
        x, dt, B, C, z, seq_idx = (flip_time(t) for t in (x, dt, B, C, z, seq_idx))
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    batch, length, channels = x.shape
    groups, n = B.shape[2], B.shape[3]
    p = channels // groups
    inp = _Inputs(x, dt, A, B, C, dt_bias, dt_softplus, seq_idx, f)
    h = x.new_zeros(batch, groups, p, n, dtype=f)
    if initial_state is not None:
        h = initial_state.to(f).reshape(batch, groups, p, n)
    y = torch.empty(length, batch, groups, p, dtype=f, device=x.device)
    boundaries = x.new_empty((-(-length // chunk), batch, groups, p, n), dtype=f)
    for k, s in enumerate(range(0, length, chunk)):
        e = min(s + chunk, length)
        boundaries[k] = h
        decay, drive = inp.chunk(s, e)
        h = inp.scan(decay, drive, h, s)
        y[s:e] = torch.matmul(drive, inp.C[s:e].unsqueeze(-1)).squeeze(-1)  # readout: sum_n h_t C_t
    final = h.clone().view(batch, channels, n)
    # The gate's gradient needs y before gating; keeping it (batch x length x channels) saves a readout pass over
    # every state in the backward.
    ypre = y if z is not None else y.new_empty(0)
    # Back to batch-first in the pass that adds the skip: the result is written contiguous, as the op returns it.
    yt, y = y.transpose(0, 1).reshape(batch, length, channels), torch.empty(batch, length, channels, dtype=f,
                                                                            device=x.device)
    if D is not None:
        torch.addcmul(yt, x.to(f), D.to(f), out=y)
    else:
        y.copy_(yt)
    if z is not None:
        y.mul_(F.silu(z.to(f)))
    y = y.to(x.dtype)
    return (y.flip(1) if reverse else y), final, boundaries, ypre


def selective_scan_backward(gout, gstate, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, boundaries, ypre,
                            dt_softplus, reverse, chunk):
    """Gradients (x, dt, A, B, C, D, z, dt_bias, initial_state), None for absent inputs, from the gradients of y and
    of the final state and what :func:`selective_scan_forward` kept."""
    if reverse:
        x, dt, B, C, z, seq_idx, gout = (flip_time(t) for t in (x, dt, B, C, z, seq_idx, gout))
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    batch, length, channels = x.shape
    groups, n = B.shape[2], B.shape[3]
    p = channels // groups
    inp = _Inputs(x, dt, A, B, C, dt_bias, dt_softplus, seq_idx, f)
    gout = gout.to(f)
    gy = gout if z is None else gout * F.silu(z.to(f))  # gradient wrt y before gating, (b, l, d)
    gyt = _time_major(gy, f, groups, p)

    dx = torch.empty(length, batch, groups, p, dtype=f, device=x.device)
    ddelta = torch.empty_like(dx)
    dB = torch.empty(length, batch, groups, n, dtype=f, device=x.device)
    dC = torch.empty_like(dB)
    dA = torch.zeros(groups, p, n, dtype=f, device=x.device)
    carry = x.new_zeros(batch, groups, p, n, dtype=f) if gstate is None else gstate.to(f).reshape(batch, groups, p, n)

    ones = torch.ones(n, dtype=f, device=x.device)
    starts = list(range(0, length, chunk))
    for k in reversed(range(len(starts))):
        s = starts[k]
        e = min(s + chunk, length)
        h_before = boundaries[k]
        decay, states = inp.chunk(s, e)
        inp.scan(decay, states, h_before, s)  # the chunk's drive becomes its states h_t, t in [s, e)
        Cc, gyc = inp.C[s:e], gyt[s:e]
        adj = gyc.unsqueeze(-1) * Cc.unsqueeze(-2)  # dL/dh_t from the readout, then from h_{t+1} too
        adj[-1] += carry
        adj_t, decay_t = adj.unbind(0), decay.unbind(0)
        for t in range(e - s - 1, 0, -1):
            adj_t[t - 1].addcmul_(decay_t[t], adj_t[t])
        carry = decay[0] * adj[0]
        # q = dL/d(delta * A) = adj_t * decay_t * h_{t-1}; zero where a document starts (h_{t-1} was not used).
        q = decay.mul_(adj)
        q[1:].mul_(states[:-1])
        q[0].mul_(h_before)
        if inp.reset_steps:
            q.masked_fill_(inp.resets[s:e, :, None, None, None], 0.0)
        Bc, dc, xc = inp.B[s:e], inp.delta[s:e], inp.x[s:e]
        adjB = torch.matmul(adj, Bc.unsqueeze(-1)).squeeze(-1)  # sum_n adj * B, (T, b, g, p)
        # Reductions as 2-D sums and a matrix-vector product, which are faster than sum((0, 1)) and sum(-1) on the
        # 5-D tensors.
        dA += (q * dc.unsqueeze(-1)).view(-1, dA.numel()).sum(0).view_as(dA)
        qA = torch.mv(q.mul_(inp.A).view(-1, n), ones).view_as(dc)  # sum_n q * A
        torch.addcmul(qA, xc, adjB, out=ddelta[s:e])
        torch.mul(dc, adjB, out=dx[s:e])
        dB[s:e] = torch.matmul((dc * xc).unsqueeze(-2), adj).squeeze(-2)
        dC[s:e] = torch.matmul(gyc.unsqueeze(-2), states).squeeze(-2)

    def batch_major(t):  # (l, b, g, k) -> (b, l, g * k)
        return t.transpose(0, 1).reshape(batch, length, -1)

    dx = batch_major(dx)
    draw = batch_major(ddelta)
    if dt_softplus:  # fused: one pass instead of a sigmoid and a product
        draw = torch.ops.aten.softplus_backward(draw, batch_major(inp.raw), 1.0, 20.0)
    dB = batch_major(dB).view(B.shape)
    dC = batch_major(dC).view(C.shape)
    dD = dz = None
    if D is not None:
        dx = torch.addcmul(dx, gy, D.to(f))
        dD = (gy * x.to(f)).sum((0, 1)).to(D.dtype)
    if z is not None:
        y_ungated = batch_major(ypre)
        if D is not None:
            y_ungated = torch.addcmul(y_ungated, x.to(f), D.to(f))
        dz = torch.ops.aten.silu_backward(gout * y_ungated, z.to(f)).to(z.dtype)
    ddt_bias = draw.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    dinit = carry.reshape(batch, channels, n).to(initial_state.dtype) if initial_state is not None else None
    grads = [dx.to(x.dtype), draw.to(dt.dtype), dA.view(channels, n).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
             dD, dz, ddt_bias, dinit]
    return scan_grads_in_position_order(grads, reverse)


def selective_scan_step_torch(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """One position with as few tensor ops as possible (a batch-1 decoding step costs its op count, not its
    arithmetic): no casts where dtypes already match, channels grouped with views, the state updated in place.
    Computes what ``naive.selective_scan_step_naive`` specifies; state (b, d, n), x/dt/z (b, d) -> y (b, d)."""
    if not state.is_contiguous():
        return selective_scan_step_naive(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    f = state.dtype
    batch, channels = x.shape
    groups, n = B.shape[1], B.shape[2]
    delta = step_sizes(dt, dt_bias, dt_softplus, f)
    xf = x if x.dtype == f else x.to(f)
    B = B if B.dtype == f else B.to(f)
    C = C if C.dtype == f else C.to(f)
    decay = torch.mul(delta.unsqueeze(-1), A if A.dtype == f else A.to(f)).exp_()  # (b, d, n)
    if groups == 1:  # B and C (b, 1, n) broadcast over the channels: fewer views, which cost as much as ops here
        torch.addcmul((delta * xf).unsqueeze(-1) * B, state, decay, out=state)
        y = torch.bmm(state, C.transpose(1, 2)).squeeze(-1)
    else:
        grouped = state.view(batch, groups, channels // groups, n)  # channels of one group share B and C
        drive = (delta * xf).view(batch, groups, -1, 1) * B.unsqueeze(2)
        torch.addcmul(drive, grouped, decay.view_as(grouped), out=grouped)
        y = torch.bmm(state.view(batch * groups, -1, n), C.reshape(batch * groups, n, 1)).view(batch, channels)
    if D is not None:
        y.addcmul_(xf, D if D.dtype == f else D.to(f))
    if z is not None:
        y.mul_(F.silu(z if z.dtype == f else z.to(f)))
    return y if y.dtype == x.dtype else y.to(x.dtype)
