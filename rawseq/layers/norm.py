"""RMSNorm, and the gated, grouped RMSNorm that Mamba-2 applies before its output projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rawseq.kernels.common.math import constant


def rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of float32 rows x (b, d) with weight (d,) in six small ops, for decoding steps."""
    scale = torch.linalg.vecdot(x, x).mul_(constant(1.0 / x.shape[-1], x)).add_(constant(eps, x)).rsqrt_()
    return (x * scale.unsqueeze(-1)).mul_(weight)


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, computed in float32 and returned in ``x.dtype``."""

    def __init__(self, dim: int, *, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._parameters["weight"]  # without nn.Module's attribute lookup: decoding calls this per layer
        if x.dtype == weight.dtype == torch.float32:
            if x.dim() == 2:  # one position per row (decoding)
                return rms_norm_rows(x, weight, self.eps)
            return F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x * silu(gate))`` with the mean of squares taken over groups of ``group_size`` channels, or with
    ``norm_before_gate`` ``RMSNorm(x) * silu(gate)``.

    Mamba-2 normalises each of its ``n_groups`` channel groups separately, so that the layer's output does not
    depend on how many groups share a tensor-parallel shard; Mamba-3's output norm normalises each head before the
    gate.
    """

    def __init__(self, dim: int, *, group_size: int | None = None, eps: float = 1e-5, norm_before_gate: bool = False,
                 device=None, dtype=None):
        super().__init__()
        group_size = dim if group_size is None else group_size
        if dim % group_size:
            raise ValueError(f"dim={dim} must be divisible by group_size={group_size}")
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """x, gate (..., dim) -> (..., dim) in ``x.dtype``."""
        weight = self._parameters["weight"]  # without nn.Module's attribute lookup: decoding calls this per layer
        if self.norm_before_gate:
            return self._norm_then_gate(x, gate)
        if x.dim() == 2 and gate is not None and self.group_size == x.shape[-1] and \
                x.dtype == gate.dtype == weight.dtype == torch.float32:  # one position per row (decoding)
            return rms_norm_rows(x * F.silu(gate), weight, self.eps)
        xf = x.float()
        if gate is not None:
            # The gate is often a slice of a wider projection; SiLU's CPU backward is slower on strided input.
            xf = xf * F.silu(gate.float().contiguous())
        if self.group_size == xf.shape[-1] and x.dtype == self.weight.dtype == torch.float32:
            return F.rms_norm(xf, (self.group_size,), self.weight, eps=self.eps)
        groups = xf.unflatten(-1, (-1, self.group_size))  # (..., d) -> (..., d / group_size, group_size)
        groups = F.rms_norm(groups, (self.group_size,), eps=self.eps)
        return self.weight * groups.flatten(-2).to(x.dtype)

    def _norm_then_gate(self, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        f = torch.float64 if x.dtype == torch.float64 else torch.float32  # at least float32
        groups = F.rms_norm(x.to(f).unflatten(-1, (-1, self.group_size)), (self.group_size,), eps=self.eps)
        y = groups.flatten(-2) * self.weight.to(f)
        if gate is not None:
            y = y * F.silu(gate.to(f))
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        before = ", norm_before_gate=True" if self.norm_before_gate else ""
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}{before}"
