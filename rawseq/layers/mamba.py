"""Mamba-1 block (Gu & Dao 2023): input projection, causal conv, selective scan with data-dependent dt/B/C.

    x, z    = in_proj(u)                               (b, l, d_model) -> 2 x (b, l, d_inner)
    x       = silu(conv1d(x))                          depthwise causal convolution of width d_conv
    dt, B, C = x_proj(x)                               (b, l, d_inner) -> (b, l, dt_rank), 2 x (b, l, d_state)
    dt      = dt_proj(dt)                              (b, l, dt_rank) -> (b, l, d_inner); its bias is dt_bias
    y       = selective_scan(x, dt, -exp(A_log), B, C, D, z)
    out     = out_proj(y)

Parameter names follow mamba_ssm (``in_proj``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), with the
depthwise convolution stored as ``conv_weight`` (d_inner, d_conv) and ``conv_bias`` (d_inner,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rawseq.kernels import selective_scan, selective_scan_step
from rawseq.layers._init import inverse_softplus_dt
from rawseq.layers.mixer import SSMMixer, linear


class Mamba(SSMMixer):
    """Mamba-1 sequence mixer.

    State for decoding: ``{"conv": (b, d_inner, d_conv - 1), "ssm": (b, d_inner, d_state) float32}``, a size
    that does not depend on how many positions were seen.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None,
        dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
        conv_bias: bool = True, bias: bool = False,
        backend: str = "auto", device=None, dtype=None,
    ):
        super().__init__()
        self._set_sizes(d_model, d_state, expand)
        self.d_conv = d_conv
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.backend = backend
        kw = {"device": device, "dtype": dtype}
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias, **kw)
        self._make_conv(d_inner, d_conv, conv_bias, **kw)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, **kw))
        self.D = nn.Parameter(torch.ones(d_inner, **kw))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **kw)

        self._reset_conv()
        with torch.no_grad():
            std = self.dt_rank**-0.5 * dt_scale
            self.dt_proj.weight.uniform_(-std, std)
            self.dt_proj.bias.copy_(
                inverse_softplus_dt(d_inner, dt_min=dt_min, dt_max=dt_max, dt_floor=dt_init_floor, device=device)
            )
            # S4D-real: A = -(1, 2, ..., d_state) for every channel.
            A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).expand(d_inner, d_state)
            self.A_log.copy_(torch.log(A))
        self.dt_proj.bias._no_weight_decay = True
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def _ssm_state_shape(self) -> tuple[int, ...]:
        return (self.d_inner, self.d_state)

    def _mix(self, hidden, seq_idx, initial_state, return_state):
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, l, d_model) -> 2 x (b, l, d_inner)
        x, conv_final = self._conv(x, initial_state, seq_idx)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, l, dt_rank) -> (b, l, d_inner); bias goes in as dt_bias
        # (b, l, d_state) -> (b, l, 1, d_state): one group. Slices of the projections are made contiguous, which
        # makes the CPU scan's elementwise work about 10% faster.
        B, C, z = B.unsqueeze(2).contiguous(), C.unsqueeze(2).contiguous(), z.contiguous()
        y, ssm_final = selective_scan(
            x, dt, self._decay(), B, C, self.D, z,
            dt_bias=self.dt_proj.bias, dt_softplus=True, return_final_state=True, seq_idx=seq_idx,
            initial_state=None if initial_state is None else initial_state["ssm"], backend=self.backend,
        )
        return self.out_proj(y), ({"conv": conv_final, "ssm": ssm_final} if return_state else None)

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One position: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place.

        Decoding time at batch 1 is mostly per-call overhead, so the projections are called functionally, their
        outputs are sliced rather than split, and parameters are read from the module's dicts.
        """
        d, r, n = self.d_inner, self.dt_rank, self.d_state
        modules = self._modules
        xz = linear(modules["in_proj"], hidden)  # (b, 2 d_inner)
        x = self._conv_step(xz[:, :d], state)
        dbc = linear(modules["x_proj"], x)  # (b, dt_rank + 2 d_state)
        # In float32 the dt bias joins the matmul (one op fewer); in lower precision it is added in float32.
        dt_proj = modules["dt_proj"]._parameters
        fold = dt_proj["weight"].dtype == torch.float32
        dt = F.linear(dbc[:, :r], dt_proj["weight"], dt_proj["bias"] if fold else None)
        y = selective_scan_step(state["ssm"], x, dt, self._decay(), dbc[:, None, r : r + n], dbc[:, None, r + n :],
                                self._parameters["D"], xz[:, d:], None if fold else dt_proj["bias"], True,
                                backend=self.backend, check=False)
        return linear(modules["out_proj"], y)
