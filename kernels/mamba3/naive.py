"""Executable specification of Mamba-3: a plain loop over time (the recurrence of the module docstring).

Readable before fast: every position forms its rotated B and C, the trapezoid weights and the state update
literally, so the chunked and Triton paths are checked against this loop in float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rawseq.kernels.common import float_dtype_of, softplus

TWO_PI = 2.0 * math.pi


class Mamba3State(NamedTuple):
    """What a Mamba-3 scan carries from one position to the next (all float32, or float64 for float64 inputs).

    Attributes:
        ssm: (batch, heads, headdim, nstate) the state ``h``.
        angle: (batch, heads, n_angles) the cumulative rotation angle, kept in [0, 2 pi).
        B: (batch, heads, rank, nstate) the previous position's B, biased and rotated by its own angle.
        x: (batch, heads, rank, headdim) the previous position's input (projected per rank for MIMO).

    ``B`` and ``x`` feed the second tap of the trapezoid at the next position.
    """

    ssm: torch.Tensor
    angle: torch.Tensor
    B: torch.Tensor
    x: torch.Tensor


def rotate_pairs(t: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs ``(t[2i], t[2i+1])`` by ``angle[i]`` for ``i < n_angles``; the rest of ``t`` is unchanged.

    t: (..., nstate); angle: (..., n_angles), broadcasting against ``t``'s leading axes.
    """
    m = angle.shape[-1]
    if m == 0:
        return t
    pairs = t[..., : 2 * m].unflatten(-1, (m, 2))
    t0, t1 = pairs[..., 0], pairs[..., 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack([t0 * cos - t1 * sin, t0 * sin + t1 * cos], dim=-1).flatten(-2)
    return torch.cat([rotated, t[..., 2 * m :]], dim=-1)


def _expand(t, heads, f, mimo, group_axis):
    """(.., g, [R,] n) -> (.., h, R, n): heads of one group share it; SISO gains a rank axis of 1."""
    t = t.to(f)
    if not mimo:
        t = t.unsqueeze(group_axis + 1)
    return t.repeat_interleave(heads // t.shape[group_axis], dim=group_axis)


def _rank_params(heads, rank, headdim, mimo_x, mimo_z, mimo_o, f, device):
    ones = torch.ones(heads, rank, headdim, dtype=f, device=device)
    return tuple(ones if w is None else w.to(f) for w in (mimo_x, mimo_z, mimo_o))


def _bias(bias, heads, rank, nstate, f):
    return None if bias is None else bias.to(f).reshape(heads, rank, nstate)


def _advance(S, theta, Bp, xp, x_t, dt_t, A_t, B_t, C_t, lam_t, ang_t, mx, Bb, Cb):
    """One position of the recurrence; returns (S, theta, q, k, v) with the new state's S and theta.

    S (b, h, p, n), theta (b, h, m), Bp (b, h, R, n), xp (b, h, R, p); x_t (b, h, p); dt_t, A_t, lam_t (b, h)
    already discretized (dt_t is the step size); B_t, C_t (b, h, R, n); ang_t (b, h, m); mx (h, R, p).
    """
    if ang_t is not None:
        theta = theta + dt_t[..., None] * ang_t
    k = B_t if Bb is None else B_t + Bb
    q = C_t if Cb is None else C_t + Cb
    k = rotate_pairs(k, theta[:, :, None, :])
    q = rotate_pairs(q, theta[:, :, None, :])
    v = x_t[:, :, None, :] * mx  # (b, h, R, p)
    alpha = torch.exp(dt_t * A_t)
    gamma = lam_t * dt_t
    beta = (1.0 - lam_t) * dt_t * alpha
    prev = torch.einsum("bhrp,bhrn->bhpn", xp, Bp)
    cur = torch.einsum("bhrp,bhrn->bhpn", v, k)
    S = alpha[..., None, None] * S + beta[..., None, None] * prev + gamma[..., None, None] * cur
    return S, theta, q, k, v


def _readout(S, q, v, z_t, D, mz, mo):
    """y_r = q_r . S + D v_r, gated by silu(z mz_r), summed over ranks with weights mo: (b, h, p)."""
    y = torch.einsum("bhpn,bhrn->bhrp", S, q)
    if D is not None:
        y = y + D[:, None, None] * v
    if z_t is not None:
        y = y * F.silu(z_t[:, :, None, :] * mz)
    return (y * mo).sum(2)


def mamba3_naive(
    x, dt, A, B, C, lam, angle=None, D=None, z=None, dt_bias=None, dt_softplus=True, B_bias=None, C_bias=None,
    mimo_x=None, mimo_z=None, mimo_o=None, initial_state=None, seq_idx=None, reverse=False, chunk_size=64,
):
    """Same arguments as :func:`rawseq.kernels.mamba3.mamba3`; returns ``(y, final_state)`` with a
    :class:`Mamba3State`. ``chunk_size`` is ignored."""
    f = float_dtype_of(x, dt, A, B, C, lam, angle, D, z, dt_bias, B_bias, C_bias, mimo_x, mimo_z, mimo_o,
                       *(initial_state or ()))
    batch, length, heads, headdim = x.shape
    mimo = B.dim() == 5
    rank, nstate = (B.shape[3] if mimo else 1), B.shape[-1]
    m = 0 if angle is None else angle.shape[-1]
    dev = x.device
    delta = dt.to(f) if dt_bias is None else dt.to(f) + dt_bias.to(f)
    if dt_softplus:
        delta = softplus(delta)
    Af = A.to(f).expand(batch, length, heads)
    lamf = torch.sigmoid(lam.to(f))
    Bh, Ch = _expand(B, heads, f, mimo, 2), _expand(C, heads, f, mimo, 2)  # (b, l, h, R, n)
    Bb, Cb = _bias(B_bias, heads, rank, nstate, f), _bias(C_bias, heads, rank, nstate, f)
    mx, mz, mo = _rank_params(heads, rank, headdim, mimo_x, mimo_z, mimo_o, f, dev)
    xf, zf, Df = x.to(f), None if z is None else z.to(f), None if D is None else D.to(f)
    angf = None if angle is None else angle.to(f)

    zeros = _zero_state(batch, heads, headdim, nstate, rank, m, f, dev)
    S, theta, Bp, xp = zeros if initial_state is None else (t.to(f).clone() for t in initial_state)
    ys = [None] * length
    prev = None
    for t in reversed(range(length)) if reverse else range(length):
        if seq_idx is not None and prev is not None:
            new_doc = (seq_idx[:, t] != seq_idx[:, prev]).view(batch, 1, 1, 1)
            S = torch.where(new_doc, zeros.ssm, S)
            theta = torch.where(new_doc[..., 0], zeros.angle, theta)
            Bp = torch.where(new_doc, zeros.B, Bp)
            xp = torch.where(new_doc, zeros.x, xp)
        S, theta, q, Bp, xp = _advance(S, theta, Bp, xp, xf[:, t], delta[:, t], Af[:, t], Bh[:, t], Ch[:, t],
                                       lamf[:, t], None if angf is None else angf[:, t], mx, Bb, Cb)
        ys[t] = _readout(S, q, xp, None if zf is None else zf[:, t], Df, mz, mo)
        prev = t
    y = torch.stack(ys, dim=1) if length else xf.new_zeros(batch, 0, heads, headdim)
    return y.to(x.dtype), Mamba3State(S, torch.remainder(theta, TWO_PI), Bp, xp)


def _zero_state(batch, heads, headdim, nstate, rank, n_angles, dtype, device) -> Mamba3State:
    kw = dict(dtype=dtype, device=device)
    return Mamba3State(
        torch.zeros(batch, heads, headdim, nstate, **kw),
        torch.zeros(batch, heads, n_angles, **kw),
        torch.zeros(batch, heads, rank, nstate, **kw),
        torch.zeros(batch, heads, rank, headdim, **kw),
    )


def mamba3_step_naive(
    state, x, dt, A, B, C, lam, angle=None, D=None, z=None, dt_bias=None, dt_softplus=True, B_bias=None,
    C_bias=None, mimo_x=None, mimo_z=None, mimo_o=None,
):
    """One position; updates every tensor of ``state`` (a :class:`Mamba3State`) in place, returns y (b, h, p).

    x, z: (b, h, p); dt, lam: (b, h); A: (h,) or (b, h); B, C: (b, g, n) or (b, g, R, n); angle: (b, h, m).
    """
    f = state.ssm.dtype
    batch, heads, headdim = x.shape
    mimo = B.dim() == 4
    rank, nstate = (B.shape[2] if mimo else 1), B.shape[-1]
    delta = dt.to(f) if dt_bias is None else dt.to(f) + dt_bias.to(f)
    if dt_softplus:
        delta = softplus(delta)
    Af = A.to(f).expand(batch, heads)
    mx, mz, mo = _rank_params(heads, rank, headdim, mimo_x, mimo_z, mimo_o, f, x.device)
    S, theta, q, k, v = _advance(
        state.ssm, state.angle, state.B, state.x, x.to(f), delta, Af, _expand(B, heads, f, mimo, 1),
        _expand(C, heads, f, mimo, 1), torch.sigmoid(lam.to(f)), None if angle is None else angle.to(f), mx,
        _bias(B_bias, heads, rank, nstate, f), _bias(C_bias, heads, rank, nstate, f),
    )
    y = _readout(S, q, v, None if z is None else z.to(f), None if D is None else D.to(f), mz, mo)
    state.ssm.copy_(S)
    state.angle.copy_(torch.remainder(theta, TWO_PI))
    state.B.copy_(k)
    state.x.copy_(v)
    return y.to(x.dtype)
