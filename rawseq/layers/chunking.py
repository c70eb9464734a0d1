"""Dynamic chunking (Hwang, Wang and Gu 2025, "Dynamic Chunking for End-to-End Hierarchical Sequence Modeling").

A hierarchy stage cuts its input sequence where consecutive encoder outputs differ, runs its main network on the
chunks only, and spreads the main network's outputs back over every position:

    routing      p_t = (1 - cos(W_q h_t, W_k h_{t-1})) / 2, p = 1 where a sequence or document starts
                 b_t = [p_t >= 0.5]                                      (b, l) -> (b, l) bool
    downsample   the positions with b_t = 1 (ragged per row; the model packs them with seq_idx)
    smoothing    z_j = P_j x_j + (1 - P_j) z_{j-1} over the chunks, P_j the p of chunk j's first position
    upsample     every position takes the z of the chunk it lies in, times the straight-through confidence
                 c_t = p_t if b_t else 1 - p_t (forward value exactly 1; the gradient reaches p)
    ratio loss   N / (N - 1) * ((N - 1) F G + (1 - F)(1 - G)), F the share of boundaries, G the mean of p

The smoothing is a scan with one scalar decay per position, so it runs through the Mamba-2 SSD op
(:func:`rawseq.kernels.ssd`): one head of width d, state size 1, ``A = -1``, ``dt = -log(1 - P)`` (so the decay
``exp(dt A)`` is ``1 - P``), ``B = C = 1`` and ``x = P z / dt`` (so ``dt x B = P z``), with P clamped into
``[P_MIN, 1 - P_MIN]`` to keep ``dt`` finite. The Triton kernels serve it on GPUs and the chunked CPU scan on CPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rawseq.kernels import ssd
from rawseq.kernels.common import resets_from_seq_idx

__all__ = [
    "P_MIN",
    "RoutingModule",
    "confidence",
    "plug_back",
    "ratio_loss",
    "smooth",
    "smooth_naive",
    "smooth_step",
]

P_MIN = 1e-4
"""The smoothing weights P are clamped into [P_MIN, 1 - P_MIN]."""


def _float(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class RoutingModule(nn.Module):
    """Boundary probabilities from the cosine similarity of each position's query with the previous position's key.

    ``W_q`` and ``W_k`` start as the identity, so at initialisation a boundary falls where consecutive encoder
    outputs point in different directions. Decoding state: ``{"key": (b, d) float32, the normalised key of the
    last position; "started": (b,) bool, whether the stream has seen a position}``.
    """

    def __init__(self, d_model: int, *, device=None, dtype=None):
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        self.k_proj = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            for proj in (self.q_proj, self.k_proj):
                proj.weight.copy_(torch.eye(d_model, device=device, dtype=dtype))

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> dict:
        device = self.q_proj.weight.device if device is None else device
        return {
            "key": torch.zeros(batch, self.q_proj.out_features, dtype=torch.float32, device=device),
            "started": torch.zeros(batch, dtype=torch.bool, device=device),
        }

    def _qk(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(self.q_proj(hidden).float(), dim=-1)
        k = F.normalize(self.k_proj(hidden).float(), dim=-1)
        return q, k

    def forward(self, hidden: torch.Tensor, seq_idx: torch.Tensor | None = None, state: dict | None = None,
                return_state: bool = False):
        """Boundary probabilities of a batch of sequences.

        Args:
            hidden: (b, l, d) encoder outputs.
            seq_idx: (b, l) document ids: p = 1 wherever the id changes.
            state: a routing state to continue from (its last key, and whether the stream had started); without
                one every row starts at position 0.
            return_state: also return the state after the last position.

        Returns:
            p (b, l) float32 in [0, 1], and with ``return_state`` the new state.
        """
        q, k = self._qk(hidden)  # (b, l, d) each
        batch, length = hidden.shape[:2]
        prev = k.new_zeros(batch, 1, k.shape[-1]) if state is None else state["key"][:, None].to(k.dtype)
        cos = (q * torch.cat([prev, k[:, :-1]], dim=1)).sum(-1)  # (b, l)
        p = ((1 - cos) / 2).clamp(0.0, 1.0)
        starts = torch.zeros(batch, length, dtype=torch.bool, device=hidden.device)
        starts[:, 0] = True if state is None else ~state["started"]
        resets = resets_from_seq_idx(seq_idx)
        if resets is not None:
            starts = starts | resets
        p = torch.where(starts, torch.ones_like(p), p)
        if not return_state:
            return p
        return p, {"key": k[:, -1].detach().float(), "started": torch.ones(batch, dtype=torch.bool,
                                                                             device=hidden.device)}

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One position: hidden (b, d) -> p (b,) float32; ``state`` is updated in place."""
        q, k = self._qk(hidden)
        p = ((1 - (q * state["key"]).sum(-1)) / 2).clamp(0.0, 1.0)
        p = torch.where(state["started"], p, torch.ones_like(p))
        state["key"].copy_(k)
        state["started"].fill_(True)
        return p


class _StraightThroughOne(torch.autograd.Function):
    """Forward: ones. Backward: the incoming gradient, unchanged."""

    @staticmethod
    def forward(ctx, c):
        return torch.ones_like(c)

    @staticmethod
    def backward(ctx, grad):
        return grad


def confidence(p: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """The straight-through confidence of each routing decision: forward value exactly 1, gradient that of
    ``c = p where boundary else 1 - p``. p, boundary (...) -> (...)."""
    return _StraightThroughOne.apply(torch.where(boundary, p, 1 - p))


def ratio_loss(p: torch.Tensor, boundary: torch.Tensor, target: float) -> torch.Tensor:
    """Ratio loss of one stage: ``N / (N - 1) * ((N - 1) F G + (1 - F)(1 - G))``, smallest (1) at F = G = 1/N.

    Args:
        p: (...) boundary probabilities of every position of the stage.
        boundary: (...) bool, the boundaries chosen (F is their share; no gradient flows through it).
        target: N > 1, the target positions per chunk.
    """
    if not target > 1:
        raise ValueError(f"target={target} must be > 1 (positions per chunk)")
    f = boundary.float().mean()
    g = p.float().mean()
    return target / (target - 1) * ((target - 1) * f * g + (1 - f) * (1 - g))


def smooth(
    x: torch.Tensor,
    p: torch.Tensor,
    seq_idx: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> torch.Tensor:
    """``z_j = P_j x_j + (1 - P_j) z_{j-1}`` over chunks, through the SSD scan (see the module docstring).

    Args:
        x: (b, n, d) the main network's output per chunk.
        p: (b, n) the boundary probability of each chunk (clamped into [P_MIN, 1 - P_MIN] here).
        seq_idx: (b, n) document ids; z restarts from zero wherever the id changes.
        initial_state: (b, d) the z before the first chunk (zero when None).
        chunk_size, backend: passed to :func:`rawseq.kernels.ssd`.

    Returns:
        z (b, n, d) in float32 (float64 for float64 inputs). Its last position is the state to continue from.
    """
    f = _float(x)
    P = p.to(f).clamp(P_MIN, 1 - P_MIN)
    dt = -torch.log1p(-P)  # (b, n): exp(-dt) = 1 - P
    xs = x.to(f) * (P / dt)[..., None]  # dt * xs = P * x
    ones = torch.ones(*P.shape, 1, 1, dtype=f, device=x.device)  # B = C = 1: (b, n, groups 1, state 1)
    init = None if initial_state is None else initial_state.to(f)[:, None, :, None]  # (b, heads 1, d, state 1)
    z = ssd(xs[:, :, None, :], dt[..., None], -torch.ones(1, dtype=f, device=x.device), ones, ones,
            dt_softplus=False, initial_state=init, seq_idx=seq_idx, chunk_size=chunk_size, backend=backend)
    return z[:, :, 0]


def smooth_naive(x: torch.Tensor, p: torch.Tensor, seq_idx: torch.Tensor | None = None,
                 initial_state: torch.Tensor | None = None) -> torch.Tensor:
    """The specification of :func:`smooth`: a plain loop over chunks, same arguments and result."""
    f = _float(x)
    P = p.to(f).clamp(P_MIN, 1 - P_MIN)
    resets = resets_from_seq_idx(seq_idx)
    z = x.new_zeros(x.shape[0], x.shape[2], dtype=f) if initial_state is None else initial_state.to(f)
    out = []
    for j in range(x.shape[1]):
        if resets is not None:
            z = torch.where(resets[:, j, None], torch.zeros_like(z), z)
        z = P[:, j, None] * x[:, j].to(f) + (1 - P[:, j, None]) * z
        out.append(z)
    return torch.stack(out, dim=1) if out else x.new_zeros(x.shape, dtype=f)


def smooth_step(z: torch.Tensor, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One smoothing step for the rows where ``mask`` holds: z (b, d) float32, updated in place and returned;
    x (b, d) the main network's output (ignored where ``mask`` is False); p (b,)."""
    P = p.to(z.dtype).clamp(P_MIN, 1 - P_MIN)[:, None]
    z.copy_(torch.where(mask[:, None], P * x.to(z.dtype) + (1 - P) * z, z))
    return z


def plug_back(z: torch.Tensor, boundary: torch.Tensor, carried: torch.Tensor | None = None) -> torch.Tensor:
    """Upsample: every position takes the value of the chunk it lies in (the last boundary at or before it).

    Args:
        z: (n, d) the chunks of every row, packed in row order (as ``hidden[boundary]`` orders them).
        boundary: (b, l) bool with ``boundary.sum() == n``.
        carried: (b, d) the value of each row's chunk that began before this call (decoding in pieces), used for
            positions before a row's first boundary; zeros when None.

    Returns:
        (b, l, d).
    """
    batch = boundary.shape[0]
    counts = boundary.long().cumsum(1)  # (b, l) chunks begun up to and including t
    offsets = F.pad(counts[:, -1].cumsum(0)[:-1], (1, 0))  # (b,) first packed chunk of each row
    if carried is None:
        carried = z.new_zeros(batch, z.shape[-1])
    table = torch.cat([carried.to(z.dtype), z])  # row r's carried chunk is entry r; packed chunk j is b + j
    rows = torch.arange(batch, device=z.device)[:, None]
    index = torch.where(counts == 0, rows, batch + offsets[:, None] + counts - 1)
    return table[index]
