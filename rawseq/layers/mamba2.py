"""Mamba-2 block (Dao & Gu 2024): multi-head SSD with grouped B/C and a gated RMSNorm before the output.

    z, xBC, dt = in_proj(u)                 (b, l, d_model) -> (b, l, d_inner), (b, l, d_inner + 2 g n), (b, l, h)
    xBC        = silu(conv1d(xBC))          depthwise causal convolution over x, B and C together
    x, B, C    = xBC                        (b, l, h, p), (b, l, g, n), (b, l, g, n)
    y          = ssd(x, dt, -exp(A_log), B, C, D, dt_bias)
    out        = out_proj(GatedRMSNorm(y, z))

``in_proj`` lays its outputs out as (z, x, B, C, dt), as mamba_ssm and transformers do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rawseq.kernels import ssd
from rawseq.kernels.common import softplus
from rawseq.layers._conv import causal_conv_silu
from rawseq.layers._init import inverse_softplus_dt
from rawseq.layers._steps import conv_step, decay_rates, lean_cpu_step, mamba2_step_cpu, ssd_step_fn
from rawseq.layers.norm import GatedRMSNorm


class Mamba2(nn.Module):
    """Mamba-2 sequence mixer.

    State for decoding: ``{"conv": (b, d_inner + 2 g n, d_conv - 1), "ssm": (b, h, p, n) float32}``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        n_groups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] | None = None,
        chunk_size: int | None = None,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        reverse: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim:
            raise ValueError(f"d_inner = expand * d_model = {self.d_inner} must be divisible by headdim={headdim}")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if self.nheads % n_groups:
            raise ValueError(f"heads={self.nheads} must be divisible by n_groups={n_groups}")
        self.n_groups = n_groups
        self.dt_limit = None if dt_limit is None else (float(dt_limit[0]), float(dt_limit[1]))
        self.chunk_size = chunk_size
        self.reverse = reverse
        self.backend = backend
        self.conv_dim = self.d_inner + 2 * n_groups * d_state
        kw = {"device": device, "dtype": dtype}

        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias, **kw)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv, **kw))
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_dim, **kw)) if conv_bias else None
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, **kw))
        self.A_log = nn.Parameter(torch.empty(self.nheads, **kw))
        self.D = nn.Parameter(torch.ones(self.nheads, **kw))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // n_groups, eps=norm_eps, **kw)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)

        with torch.no_grad():
            bound = 1.0 / math.sqrt(d_conv)
            self.conv_weight.uniform_(-bound, bound)
            if self.conv_bias is not None:
                self.conv_bias.uniform_(-bound, bound)
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

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> dict:
        """Zero state for ``batch`` decoding streams: conv window in ``dtype``, SSM state in float32."""
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        device = self.in_proj.weight.device if device is None else device
        return {
            "conv": torch.zeros(batch, self.conv_dim, self.d_conv - 1, dtype=dtype, device=device),
            "ssm": torch.zeros(batch, self.nheads, self.headdim, self.d_state, dtype=torch.float32, device=device),
        }

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
            return dt, self.dt_bias, True
        dt = softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)
        return dt, None, False

    def forward(
        self,
        hidden: torch.Tensor,
        seq_idx: torch.Tensor | None = None,
        initial_state: dict | None = None,
        return_state: bool = False,
    ):
        """Mix a batch of sequences.

        Args:
            hidden: (b, l, d_model).
            seq_idx: (b, l) document ids; the conv window and SSM state reset where the id changes.
            initial_state: a state from :meth:`allocate_inference_state`, a previous call or :meth:`step`.
            return_state: also return the state after the last position.

        Returns:
            (b, l, d_model), and with ``return_state`` the final state (a new dict; ``initial_state`` is unchanged).
        """
        if self.reverse:
            if initial_state is not None or return_state:
                raise ValueError("a reverse (bidirectional) Mamba2 layer has no decoding state")
            flip_seq = None if seq_idx is None else seq_idx.flip(1)
            return self._forward(hidden.flip(1), flip_seq, None, False).flip(1)
        return self._forward(hidden, seq_idx, initial_state, return_state)

    def _forward(self, hidden, seq_idx, initial_state, return_state):
        gn = self.n_groups * self.d_state
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_state = ssm_state = None
        if initial_state is not None:
            conv_state, ssm_state = initial_state["conv"], initial_state["ssm"]
        xBC, conv_final = causal_conv_silu(xBC, self.conv_weight, self.conv_bias, conv_state, seq_idx, self.backend)
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        dt, dt_bias, dt_softplus = self._dt(dt)
        y, ssm_final = ssd(
            rearrange(x, "b l (h p) -> b l h p", p=self.headdim),
            dt,
            -torch.exp(self.A_log.float()),
            rearrange(B, "b l (g n) -> b l g n", g=self.n_groups),
            rearrange(C, "b l (g n) -> b l g n", g=self.n_groups),
            self.D,
            dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=ssm_state, return_final_state=True,
            seq_idx=seq_idx, chunk_size=self._chunk_size(hidden), backend=self.backend,
        )
        y = self.norm(rearrange(y, "b l h p -> b l (h p)"), z)
        out = self.out_proj(y)
        if return_state:
            return out, {"conv": conv_final, "ssm": ssm_final}
        return out

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One position: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place."""
        if self.reverse:
            raise ValueError("a reverse (bidirectional) Mamba2 layer cannot decode step by step")
        if lean_cpu_step(self, hidden):
            return mamba2_step_cpu(self, hidden, state)
        gn = self.n_groups * self.d_state
        zxbcdt = F.linear(hidden, self.in_proj.weight, self.in_proj.bias)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = conv_step(state["conv"], xBC, self.conv_weight, self.conv_bias, "silu", self.backend)
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        dt, dt_bias, dt_softplus = self._dt(dt)
        y = ssd_step_fn(
            state["ssm"],
            x.unflatten(-1, (self.nheads, self.headdim)),  # (b, h p) -> (b, h, p)
            dt,
            decay_rates(self),
            B.unflatten(-1, (self.n_groups, self.d_state)),  # (b, g n) -> (b, g, n)
            C.unflatten(-1, (self.n_groups, self.d_state)),
            self.D,
            None,
            dt_bias,
            dt_softplus,
            self.backend,
        )
        return F.linear(self.norm(y.flatten(1), z), self.out_proj.weight, self.out_proj.bias)
