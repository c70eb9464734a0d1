"""Small pieces of the discretization shared by every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) = log(1 + exp(x)), linear above 20 as in every Mamba implementation."""
    return F.softplus(x, beta=1.0, threshold=20.0)


def all_finite(*tensors: torch.Tensor) -> bool:
    """Whether no tensor holds a NaN or an infinity, from one sum per tensor (NaN and infinities survive any sum).

    Conservative: a sum that overflows (values near the dtype's largest) also reads as not finite, which only sends
    the caller down its slower path for non-finite inputs. One read of each tensor and no temporary of its size,
    where ``isfinite(t).all()`` makes three.
    """
    sums = [t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32) for t in tensors]
    total = sums[0] if len(sums) == 1 else torch.stack(sums).sum()
    return bool(total.isfinite())


_CONSTANTS: dict = {}


def constant(value: float, like: torch.Tensor) -> torch.Tensor | float:
    """``value`` as a 0-dim tensor of ``like``'s dtype and device, made once and kept.

    A Python number in a tensor operation is turned into a tensor on every call, which costs as much as another
    small operation; decoding steps, made of a few dozen such operations on tiny tensors, use this instead. Under
    ``torch.compile`` the number itself is returned (a kept tensor must not be made by the tracer).
    """
    if torch.compiler.is_compiling():
        return value
    key = (value, like.dtype, like.device)
    t = _CONSTANTS.get(key)
    if t is None:
        with torch.inference_mode(False):  # usable later with autograd, whatever mode made it
            t = _CONSTANTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return t


def step_sizes(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool, f: torch.dtype) -> torch.Tensor:
    """The discretization step ``softplus(dt + dt_bias)`` (without softplus if ``dt_softplus`` is False), in ``f``.

    ``dt_bias`` broadcasts against the last axes of ``dt``; no op is spent on a cast that is not needed.
    """
    dt = dt if dt.dtype == f else dt.to(f)
    if dt_bias is not None:
        dt = dt + (dt_bias if dt_bias.dtype == f else dt_bias.to(f))
    return F.softplus(dt, 1.0, 20.0) if dt_softplus else dt  # softplus() above, one call less per decoding step


def skip_and_gate(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``(y + D * x) * silu(z)``, each part only when given; ``D`` already shaped to broadcast against ``x``."""
    if D is not None:
        y = y + x * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def flip_time(t: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, length, ...) reversed along time; None stays None. A reverse scan is the forward scan of these."""
    return None if t is None else t.flip(1)


PER_POSITION_GRADS = (0, 1, 3, 4, 6)  # x, dt, B, C, z among the gradients (x, dt, A, B, C, D, z, dt_bias, init)


def scan_grads_in_position_order(grads: list, reverse: bool) -> tuple:
    """The gradients of a scan computed on time-reversed inputs, with the per-position ones flipped back."""
    if reverse:
        for i in PER_POSITION_GRADS:
            grads[i] = flip_time(grads[i])
    return tuple(grads)


def resets_from_seq_idx(seq_idx: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, length) ints -> (batch, length) bool, True where a new document starts (never at position 0).

    The state is zeroed before such a position, so packed documents never see each other.
    """
    if seq_idx is None:
        return None
    resets = torch.zeros(seq_idx.shape, dtype=torch.bool, device=seq_idx.device)
    resets[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return resets


def segments_from_seq_idx(seq_idx: torch.Tensor) -> torch.Tensor:
    """(batch, length) ints -> (batch, length) int64 document numbers within each row: 0, 0, 1, 1, 1, 2, ..."""
    return resets_from_seq_idx(seq_idx).long().cumsum(1)


def naive_recurrence(update, h: torch.Tensor, length: int, seq_idx: torch.Tensor | None, reverse: bool):
    """The time loop of the executable specifications: ``h, y_t = update(h, t)`` over the positions in scan order.

    Where ``seq_idx`` changes between consecutive scanned positions the state is replaced by zeros first (by
    selection, so that a non-finite state of one document never reaches the next). Returns the outputs stacked on
    axis 1 in position order (None when ``length`` is 0) and the final state.
    """
    ys = [None] * length
    prev = None
    for t in reversed(range(length)) if reverse else range(length):
        if seq_idx is not None and prev is not None:
            same = (seq_idx[:, t] == seq_idx[:, prev]).view(-1, *([1] * (h.dim() - 1)))
            h = torch.where(same, h, torch.zeros((), dtype=h.dtype, device=h.device))
        h, ys[t] = update(h, t)
        prev = t
    return (torch.stack(ys, dim=1) if length else None), h
