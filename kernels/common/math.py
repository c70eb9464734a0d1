"""Small pieces of the discretization shared by every backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) = log(1 + exp(x)), linear above 20 as in every Mamba implementation."""
    return F.softplus(x, beta=1.0, threshold=20.0)


def resets_from_seq_idx(seq_idx: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, length) ints -> (batch, length) bool, True where a new document starts (never at position 0).

    The state is zeroed before such a position, so packed documents never see each other.
    """
    if seq_idx is None:
        return None
    resets = torch.zeros(seq_idx.shape, dtype=torch.bool, device=seq_idx.device)
    resets[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return resets
