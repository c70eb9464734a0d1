"""The per-position pieces of Mamba-3 around its chunked core, shared by the torch and Triton backends.

``prepare`` turns the op's inputs into those of the core scan (see the package docstring)::

    a_t = dt_t A_t                       log-decay            (b, l, h)
    g_t = lam_t dt_t                     current tap          (b, l, h)
    w_t = g_t + (1 - lam_{t+1}) dt_{t+1} both taps of x_t     (b, l, h); the second is 0 where t+1 starts a document
    v_t = x_t * mimo_x                   (b, l, h, R, p)
    k_t, q_t = rotate(B_t + B_bias), rotate(C_t + C_bias) by the cumulative angle      (b, l, h, R, n)
    S0 = ssm_0 + (1 - lam_0) dt_0 sum_r x_prev_r B_prev_r^T                             (b, h, p, n)

and ``finish`` applies ``D``, the gate and the MIMO output weights to the core's output. Everything here is
elementwise or a cumulative sum over (b, l, h, ...) tensors, so it is left to autograd; only the core, whose naive
form would hold a (p, n) state per position, is differentiated by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rawseq.kernels.common import resets_from_seq_idx, softplus
from rawseq.kernels.mamba3.naive import TWO_PI, Mamba3State, rotate_pairs


class Prepared:
    """Inputs of the core scan (all in the accumulation dtype ``f``) and the pieces of the final state."""

    __slots__ = ("v", "q", "k", "a", "gamma", "w", "S0", "seg", "theta_last", "k_last", "v_last")


def _cumulative_angle(delta, angle, resets, init):
    """theta_t = sum of dt_s * angle_s over s <= t in t's document (plus ``init`` in the first one), in [0, 2 pi).

    Summed in float64 so that long sequences keep the angle's precision; delta (b, l, h), angle (b, l, h, m),
    resets (b, l) bool or None, init (b, h, m) or None.
    """
    inc = (delta.unsqueeze(-1) * angle).double()
    theta = torch.cumsum(inc, dim=1)
    first_doc = None
    if resets is not None:
        b, l = resets.shape
        positions = torch.arange(l, device=resets.device).expand(b, l)
        start = torch.cummax(torch.where(resets, positions, 0), dim=1).values  # where each position's doc starts
        before = theta - inc  # the sum up to the position before
        theta = theta - before.gather(1, start[:, :, None, None].expand_as(before))
        first_doc = (start == 0)[:, :, None, None]
    if init is not None:
        carried = init.double().unsqueeze(1).expand_as(theta)
        theta = theta + (carried if first_doc is None else torch.where(first_doc, carried, 0.0))
    return torch.remainder(theta, TWO_PI).to(delta.dtype)


def prepare(x, dt, A, B, C, lam, angle, dt_bias, dt_softplus, B_bias, C_bias, mimo_x, initial_state, seq_idx, f):
    """Inputs of the public op (scan order, batch-first) -> :class:`Prepared`."""
    batch, length, heads, headdim = x.shape
    mimo = B.dim() == 5
    rank, nstate = (B.shape[3] if mimo else 1), B.shape[-1]
    delta = dt.to(f) if dt_bias is None else dt.to(f) + dt_bias.to(f)
    if dt_softplus:
        delta = softplus(delta)
    lamf = torch.sigmoid(lam.to(f))
    resets = resets_from_seq_idx(seq_idx)
    second = (1.0 - lamf) * delta  # weight of the second tap, without the decay
    nxt = F.pad(second[:, 1:], (0, 0, 0, 1))
    if resets is not None:
        nxt = torch.where(F.pad(resets[:, 1:], (0, 1)).unsqueeze(-1), 0.0, nxt)

    p = Prepared()
    p.a = delta * A.to(f)
    p.gamma = lamf * delta
    p.w = p.gamma + nxt
    p.seg = None if resets is None else resets.long().cumsum(1)

    def per_head(t, bias):  # (b, l, g, [R,] n) -> (b, l, h, R, n)
        t = t.to(f) if mimo else t.to(f).unsqueeze(3)
        t = t.repeat_interleave(heads // t.shape[2], dim=2) if t.shape[2] != heads else t
        return t if bias is None else t + bias.to(f).view(heads, rank, nstate)

    k, q = per_head(B, B_bias), per_head(C, C_bias)
    if angle is not None and angle.shape[-1]:
        theta = _cumulative_angle(delta, angle.to(f), resets, None if initial_state is None else initial_state.angle)
        k, q = rotate_pairs(k, theta.unsqueeze(3)), rotate_pairs(q, theta.unsqueeze(3))
        p.theta_last = theta[:, -1]
    else:
        p.theta_last = x.new_zeros(batch, heads, 0, dtype=f)
    p.k, p.q = k, q
    p.v = x.to(f).unsqueeze(3) if mimo_x is None else x.to(f).unsqueeze(3) * mimo_x.to(f)
    p.k_last, p.v_last = p.k[:, -1], p.v[:, -1]
    p.S0 = None
    if initial_state is not None:
        prev = torch.einsum("bhrp,bhrn->bhpn", initial_state.x.to(f), initial_state.B.to(f))
        p.S0 = initial_state.ssm.to(f) + second[:, 0, :, None, None] * prev
    return p


def finish(y, v, z, D, mimo_z, mimo_o, dtype):
    """Core output y (b, l, h, R, p) -> (b, l, h, p): ``sum_r mimo_o_r (y_r + D v_r) silu(z mimo_z_r)``."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None, None] * v
    if z is not None:
        zr = z.to(y.dtype).unsqueeze(3)
        if mimo_z is not None:
            zr = zr * mimo_z.to(y.dtype)
        y = y * F.silu(zr)
    if mimo_o is not None:
        y = y * mimo_o.to(y.dtype)
    y = y.squeeze(3) if y.shape[3] == 1 else y.sum(3)
    return y.to(dtype)


def final_state(p: Prepared, ssm) -> Mamba3State:
    """The state after the last position of a non-empty sequence, from the core's final ``ssm``."""
    return Mamba3State(ssm, p.theta_last, p.k_last, p.v_last)
