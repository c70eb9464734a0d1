"""Initialisations shared by the selective SSM layers."""

from __future__ import annotations

import math

import torch


def inverse_softplus_dt(n: int, *, dt_min: float, dt_max: float, dt_floor: float, device=None) -> torch.Tensor:
    """Biases ``b`` such that ``softplus(b)`` is log-uniform in ``[dt_min, dt_max]`` (clamped below at ``dt_floor``)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = torch.rand(n, device=device, dtype=torch.float32)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
    # softplus^{-1}(dt) = dt + log(1 - exp(-dt)), written with expm1 to stay accurate for small dt.
    return dt + torch.log(-torch.expm1(-dt))
