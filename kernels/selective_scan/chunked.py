"""Fast CPU path of the selective scan: a sequential scan vectorized over (batch, channels, nstate), chunked in time.

Autograd over a per-step loop is what makes naive PyTorch scans slow (one graph node per step), so the scan lives in
one ``autograd.Function``. The forward keeps only the state at each chunk boundary; the backward recomputes a
chunk's states from its boundary state and runs the adjoint recurrence in reverse. The expanded
(length, channels, nstate) tensors only ever exist for one chunk at a time, so memory stays bounded at any length.

Inside a chunk, tensors are laid out time-major, ``(T, batch, groups, channels_per_group, nstate)``, so that each
step of the loop touches one contiguous slab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of, resets_from_seq_idx, softplus

CHUNK = 64


def _prepare(x, dt, A, B, C, dt_bias, dt_softplus, f):
    """Cast to the compute dtype and split channels into groups: x, delta (b, l, g, p); A (g, p, n)."""
    batch, length, channels = x.shape
    groups = B.shape[2]
    p = channels // groups
    raw = dt.to(f) if dt_bias is None else dt.to(f) + dt_bias.to(f)
    delta = softplus(raw) if dt_softplus else raw
    return (
        x.to(f).view(batch, length, groups, p),
        delta.view(batch, length, groups, p),
        raw.view(batch, length, groups, p),
        A.to(f).view(groups, p, -1),
    )


def _chunk_inputs(xg, delta, Ag, B, keep, s, e, f):
    """Discretize positions [s, e): decay (T, b, g, p, n) and input (T, b, g, p, n), time-major."""
    d = delta[:, s:e].transpose(0, 1)  # (b, T, g, p) -> (T, b, g, p)
    decay = torch.exp(d.unsqueeze(-1) * Ag)
    if keep is not None:
        decay = decay * keep[:, s:e].transpose(0, 1)[:, :, None, None, None]
    drive = (d * xg[:, s:e].transpose(0, 1)).unsqueeze(-1) * B[:, s:e].transpose(0, 1).to(f).unsqueeze(-2)
    return decay, drive


def _scan_chunk(decay, drive, h):
    """In place: drive[t] becomes h_t. Returns the last state."""
    for t in range(drive.shape[0]):
        h = drive[t].addcmul_(decay[t], h)
    return h


def _readout(states, C, s, e, f):
    """states (T, b, g, p, n), C (b, l, g, n) -> (b, T, g, p)."""
    Ct = C[:, s:e].transpose(0, 1).to(f)  # (T, b, g, n)
    return torch.matmul(states, Ct.unsqueeze(-1)).squeeze(-1).transpose(0, 1)


class SelectiveScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_state, keep, dt_softplus):
        f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
        batch, length, channels = x.shape
        groups, n = B.shape[2], B.shape[3]
        p = channels // groups
        xg, delta, _, Ag = _prepare(x, dt, A, B, C, dt_bias, dt_softplus, f)
        h = x.new_zeros(batch, groups, p, n, dtype=f)
        if initial_state is not None:
            h = initial_state.to(f).reshape(batch, groups, p, n).clone()
        y = torch.empty(batch, length, groups, p, dtype=f, device=x.device)
        nchunks = (length + CHUNK - 1) // CHUNK
        boundaries = x.new_empty(nchunks, batch, groups, p, n, dtype=f)
        for k, s in enumerate(range(0, length, CHUNK)):
            e = min(s + CHUNK, length)
            boundaries[k] = h
            decay, drive = _chunk_inputs(xg, delta, Ag, B, keep, s, e, f)
            h = _scan_chunk(decay, drive, h).clone()
            y[:, s:e] = _readout(drive, C, s, e, f)
        y = y.view(batch, length, channels)
        if D is not None:
            y = y + x.to(f) * D.to(f)
        if z is not None:
            y = y * F.silu(z.to(f))
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state, keep, boundaries)
        ctx.dt_softplus = dt_softplus
        ctx.f = f
        return y.to(x.dtype), h.view(batch, channels, n)

    @staticmethod
    def backward(ctx, gout, gstate):
        x, dt, A, B, C, D, z, dt_bias, initial_state, keep, boundaries = ctx.saved_tensors
        f = ctx.f
        batch, length, channels = x.shape
        groups, n = B.shape[2], B.shape[3]
        p = channels // groups
        xg, delta, raw, Ag = _prepare(x, dt, A, B, C, dt_bias, ctx.dt_softplus, f)
        gout = gout.to(f)
        gy = gout if z is None else gout * F.silu(z.to(f))  # gradient wrt y before gating, (b, l, d)
        gyg = gy.view(batch, length, groups, p)

        dx = torch.empty(batch, length, groups, p, dtype=f, device=x.device)
        ddelta = torch.empty_like(dx)
        dB = torch.empty(batch, length, groups, n, dtype=f, device=x.device)
        dC = torch.empty_like(dB)
        dA = torch.zeros(groups, p, n, dtype=f, device=x.device)
        ypre = torch.empty_like(dx) if z is not None else None
        carry = x.new_zeros(batch, groups, p, n, dtype=f)
        if gstate is not None:
            carry = gstate.to(f).reshape(batch, groups, p, n)

        starts = list(range(0, length, CHUNK))
        for k in reversed(range(len(starts))):
            s = starts[k]
            e = min(s + CHUNK, length)
            decay, drive = _chunk_inputs(xg, delta, Ag, B, keep, s, e, f)
            h0 = boundaries[k]
            _scan_chunk(decay, drive, h0)
            states = drive  # (T, b, g, p, n): h_t for t in [s, e)
            if ypre is not None:
                ypre[:, s:e] = _readout(states, C, s, e, f)
            Ct = C[:, s:e].transpose(0, 1).to(f)
            gyt = gyg[:, s:e].transpose(0, 1)  # (T, b, g, p)
            adj = gyt.unsqueeze(-1) * Ct.unsqueeze(-2)  # dL/dh_t from the readout
            adj[-1] += carry
            for t in range(e - s - 1, 0, -1):
                adj[t - 1].addcmul_(decay[t], adj[t])
            carry = decay[0] * adj[0]
            prev = torch.cat([h0.unsqueeze(0), states[:-1]], dim=0)  # h_{t-1}
            # decay = exp(delta * A) * keep: its derivative wrt (delta * A) is the decay itself.
            q = adj * prev * decay
            Bt = B[:, s:e].transpose(0, 1).to(f)
            dt_ = delta[:, s:e].transpose(0, 1)
            xt = xg[:, s:e].transpose(0, 1)
            adjB = torch.matmul(adj, Bt.unsqueeze(-1)).squeeze(-1)  # sum_n adj * B, (T, b, g, p)
            dA += torch.einsum("tbgpn,tbgp->gpn", q, dt_)
            ddelta[:, s:e] = ((q * Ag).sum(-1) + xt * adjB).transpose(0, 1)
            dx[:, s:e] = (dt_ * adjB).transpose(0, 1)
            dB[:, s:e] = torch.matmul((dt_ * xt).unsqueeze(-2), adj).squeeze(-2).transpose(0, 1)
            dC[:, s:e] = torch.matmul(gyt.unsqueeze(-2), states).squeeze(-2).transpose(0, 1)

        dx = dx.view(batch, length, channels)
        draw = ddelta.view(batch, length, channels)
        if ctx.dt_softplus:
            draw = draw * torch.sigmoid(raw.view(batch, length, channels))
        dD = dz = None
        if D is not None:
            dx = dx + gy * D.to(f)
            dD = (gy * x.to(f)).sum((0, 1)).to(D.dtype)
        if z is not None:
            y_ungated = ypre.view(batch, length, channels)
            if D is not None:
                y_ungated = y_ungated + x.to(f) * D.to(f)
            zf = z.to(f)
            sig = torch.sigmoid(zf)
            dz = (gout * y_ungated * sig * (1 + zf * (1 - sig))).to(z.dtype)
        ddt_bias = draw.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
        dinit = carry.reshape(batch, channels, n).to(initial_state.dtype) if initial_state is not None else None
        return (
            dx.to(x.dtype),
            draw.to(dt.dtype),
            dA.view(channels, n).to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            dD,
            dz,
            ddt_bias,
            dinit,
            None,
            None,
        )


def selective_scan_torch(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None, seq_idx=None, reverse=False
):
    """Same arguments as :func:`rawseq.kernels.selective_scan`; returns ``(y, final_state)``."""
    if reverse:
        flip = lambda t: None if t is None else t.flip(1)
        y, h = selective_scan_torch(
            flip(x), flip(dt), A, flip(B), flip(C), D, flip(z), dt_bias, dt_softplus, initial_state, flip(seq_idx)
        )
        return y.flip(1), h
    resets = resets_from_seq_idx(seq_idx)
    keep = None if resets is None else (~resets).to(float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state))
    return SelectiveScanFunction.apply(x, dt, A, B, C, D, z, dt_bias, initial_state, keep, dt_softplus)
