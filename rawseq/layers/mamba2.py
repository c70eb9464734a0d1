"""Mamba-2 block (Dao & Gu 2024): multi-head SSD with grouped B/C and a gated RMSNorm before the output.

    z, xBC, dt = in_proj(u)                 (b, l, d_model) -> (b, l, d_inner), (b, l, d_inner + 2 g n), (b, l, h)
    xBC        = silu(conv1d(xBC))          depthwise causal convolution over x, B and C together
    x, B, C    = xBC                        (b, l, h, p), (b, l, g, n), (b, l, g, n)
    y          = ssd(x, dt, -exp(A_log), B, C, D, dt_bias)
    out        = out_proj(GatedRMSNorm(y, z))

``in_proj`` lays its outputs out as (z, x, B, C, dt), as mamba_ssm and transformers do.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from rawseq.kernels import ssd, ssd_step
from rawseq.kernels.common import softplus
from rawseq.layers._init import inverse_softplus_dt
from rawseq.layers.mixer import SSMMixer, linear
from rawseq.layers.norm import GatedRMSNorm


class Mamba2(SSMMixer):
    """Mamba-2 sequence mixer.

    State for decoding: ``{"conv": (b, d_inner + 2 g n, d_conv - 1), "ssm": (b, h, p, n) float32}``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64, n_groups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] | None = None,
        chunk_size: int | None = None, conv_bias: bool = True, bias: bool = False, norm_eps: float = 1e-5,
        backend: str = "auto", device=None, dtype=None,
    ):
        super().__init__()
        self._set_sizes(d_model, d_state, expand, headdim, n_groups)
        self.d_conv = d_conv
        self.dt_limit = None if dt_limit is None else (float(dt_limit[0]), float(dt_limit[1]))
        self.chunk_size = chunk_size
        self.backend = backend
        self.conv_dim = self.d_inner + 2 * n_groups * d_state
        kw = {"device": device, "dtype": dtype}

        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias, **kw)
        self._make_conv(self.conv_dim, d_conv, conv_bias, **kw)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, **kw))
        self.A_log = nn.Parameter(torch.empty(self.nheads, **kw))
        self.D = nn.Parameter(torch.ones(self.nheads, **kw))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // n_groups, eps=norm_eps, **kw)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)

        self._reset_conv()
        with torch.no_grad():
            self.dt_bias.copy_(
                inverse_softplus_dt(self.nheads, dt_min=dt_min, dt_max=dt_max, dt_floor=dt_init_floor, device=device)
            )
            lo, hi = A_init_range
            if not 0 < lo <= hi:
                raise ValueError(f"A_init_range={A_init_range} must satisfy 0 < low <= high")
            A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(lo, hi)
            self.A_log.copy_(torch.log(A))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

    def _ssm_state_shape(self) -> tuple[int, ...]:
        return (self.nheads, self.headdim, self.d_state)

    def _chunk_size(self, hidden: torch.Tensor) -> int:
        """The chunk length of the SSD algorithm: a speed knob only (results agree to rounding).

        Left unset, 64 on CPU, where the chunk-local matrix products are the cost, and 256 on GPUs.
        """
        if self.chunk_size is not None:
            return self.chunk_size
        return 256 if hidden.device.type == "cuda" else 64

    def _dt(self, dt: torch.Tensor):
        """(dt, dt_bias, dt_softplus) for the kernels; with ``dt_limit`` the clamped step is computed here."""
        if self.dt_limit is None:
            return dt, self._parameters["dt_bias"], True
        dt = softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)
        return dt, None, False

    def _mix(self, hidden, seq_idx, initial_state, return_state):
        gn = self.n_groups * self.d_state
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC, conv_final = self._conv(xBC, initial_state, seq_idx)
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        dt, dt_bias, dt_softplus = self._dt(dt)
        y, ssm_final = ssd(
            rearrange(x, "b l (h p) -> b l h p", p=self.headdim),
            dt,
            self._decay(),
            rearrange(B, "b l (g n) -> b l g n", g=self.n_groups),
            rearrange(C, "b l (g n) -> b l g n", g=self.n_groups),
            self.D,
            dt_bias=dt_bias, dt_softplus=dt_softplus, return_final_state=True, seq_idx=seq_idx,
            initial_state=None if initial_state is None else initial_state["ssm"],
            chunk_size=self._chunk_size(hidden), backend=self.backend,
        )
        out = self.out_proj(self.norm(rearrange(y, "b l h p -> b l (h p)"), z))
        return out, ({"conv": conv_final, "ssm": ssm_final} if return_state else None)

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One position: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place.

        Decoding time at batch 1 is mostly per-call overhead, so the projections and the norm are called
        functionally, their outputs are sliced rather than split, and parameters are read from the module's dicts.
        """
        batch = hidden.shape[0]
        d, h, p, g, n = self.d_inner, self.nheads, self.headdim, self.n_groups, self.d_state
        conv_end = d + self.conv_dim
        modules = self._modules
        zxbcdt = linear(modules["in_proj"], hidden)  # (b, d_inner + conv_dim + h)
        xBC = self._conv_step(zxbcdt[:, d:conv_end], state)
        dt, dt_bias, dt_softplus = self._dt(zxbcdt[:, conv_end:])
        y = ssd_step(state["ssm"], xBC[:, :d].view(batch, h, p), dt, self._decay(),
                     xBC[:, d : d + g * n].view(batch, g, n), xBC[:, d + g * n :].view(batch, g, n),
                     self._parameters["D"], None, dt_bias, dt_softplus, backend=self.backend, check=False)
        return linear(modules["out_proj"], modules["norm"].forward(y.view(batch, d), zxbcdt[:, :d]))
