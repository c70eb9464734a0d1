"""Gated MLP (SwiGLU), the channel mixer that may follow a sequence mixer inside a block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedMLP(nn.Module):
    """``w_out(silu(gate) * up)`` with ``gate, up = w_in(x)``."""

    def __init__(self, d_model: int, *, d_hidden: int | None = None, bias: bool = False, device=None, dtype=None):
        super().__init__()
        if d_hidden is None:
            d_hidden = 64 * ((8 * d_model // 3 + 63) // 64)
        self.d_hidden = d_hidden
        self.w_in = nn.Linear(d_model, 2 * d_hidden, bias=bias, device=device, dtype=dtype)
        self.w_out = nn.Linear(d_hidden, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)  # (..., d) -> 2 x (..., d_hidden)
        return self.w_out(F.silu(gate) * up)
