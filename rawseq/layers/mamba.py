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

from rawseq.kernels import selective_scan
from rawseq.layers._conv import causal_conv_silu
from rawseq.layers._init import inverse_softplus_dt
from rawseq.layers._steps import conv_step, decay_rates, lean_cpu_step, mamba_step_cpu, scan_step


class Mamba(nn.Module):
    """Mamba-1 sequence mixer.

    State for decoding: ``{"conv": (b, d_inner, d_conv - 1), "ssm": (b, d_inner, d_state) float32}``, a size
    that does not depend on how many positions were seen.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
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
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.reverse = reverse
        self.backend = backend
        kw = {"device": device, "dtype": dtype}
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias, **kw)
        self.conv_weight = nn.Parameter(torch.empty(d_inner, d_conv, **kw))
        self.conv_bias = nn.Parameter(torch.zeros(d_inner, **kw)) if conv_bias else None
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, **kw))
        self.D = nn.Parameter(torch.ones(d_inner, **kw))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **kw)

        with torch.no_grad():
            # nn.Conv1d's default: kaiming-uniform over a fan-in of d_conv (one input channel per group).
            bound = 1.0 / math.sqrt(d_conv)
            self.conv_weight.uniform_(-bound, bound)
            if self.conv_bias is not None:
                self.conv_bias.uniform_(-bound, bound)
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

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> dict:
        """Zero state for ``batch`` decoding streams: conv window in ``dtype``, SSM state in float32."""
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        device = self.in_proj.weight.device if device is None else device
        return {
            "conv": torch.zeros(batch, self.d_inner, self.d_conv - 1, dtype=dtype, device=device),
            "ssm": torch.zeros(batch, self.d_inner, self.d_state, dtype=torch.float32, device=device),
        }

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
                raise ValueError("a reverse (bidirectional) Mamba layer has no decoding state")
            flip_seq = None if seq_idx is None else seq_idx.flip(1)
            return self._forward(hidden.flip(1), flip_seq, None, False).flip(1)
        return self._forward(hidden, seq_idx, initial_state, return_state)

    def _forward(self, hidden, seq_idx, initial_state, return_state):
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, l, d_model) -> 2 x (b, l, d_inner)
        conv_state = ssm_state = None
        if initial_state is not None:
            conv_state, ssm_state = initial_state["conv"], initial_state["ssm"]
        x, conv_final = causal_conv_silu(x, self.conv_weight, self.conv_bias, conv_state, seq_idx, self.backend)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, l, dt_rank) -> (b, l, d_inner); bias goes in as dt_bias
        # (b, l, d_state) -> (b, l, 1, d_state): one group. Slices of the projections are made contiguous, which
        # makes the CPU scan's elementwise work about 10% faster.
        B, C, z = B.unsqueeze(2).contiguous(), C.unsqueeze(2).contiguous(), z.contiguous()
        y, ssm_final = selective_scan(
            x, dt, -torch.exp(self.A_log.float()), B, C, self.D, z,
            dt_bias=self.dt_proj.bias, dt_softplus=True, initial_state=ssm_state, return_final_state=True,
            seq_idx=seq_idx, backend=self.backend,
        )
        out = self.out_proj(y)
        if return_state:
            return out, {"conv": conv_final, "ssm": ssm_final}
        return out

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One position: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place."""
        if self.reverse:
            raise ValueError("a reverse (bidirectional) Mamba layer cannot decode step by step")
        if lean_cpu_step(self, hidden):
            return mamba_step_cpu(self, hidden, state)
        # Decoding time at batch 1 is mostly per-call overhead, so the projections are called functionally.
        x, z = F.linear(hidden, self.in_proj.weight, self.in_proj.bias).chunk(2, dim=-1)  # -> 2 x (b, d_inner)
        x = conv_step(state["conv"], x, self.conv_weight, self.conv_bias, "silu", self.backend)
        dt, B, C = F.linear(x, self.x_proj.weight).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # In float32 the dt bias joins the matmul (one op fewer); in lower precision it is added in float32.
        fold = self.dt_proj.weight.dtype == torch.float32
        dt = F.linear(dt, self.dt_proj.weight, self.dt_proj.bias if fold else None)
        y = scan_step(state["ssm"], x, dt, decay_rates(self), B.unsqueeze(1), C.unsqueeze(1), self.D, z,
                      None if fold else self.dt_proj.bias, True, self.backend)
        return F.linear(y, self.out_proj.weight, self.out_proj.bias)
