"""Mamba-3 block (arXiv 2603.15569): trapezoidal SSM with rotated ("complex") B/C, SISO or MIMO, no convolution
(optionally, ``d_conv > 0``, a depthwise causal convolution with SiLU over x, B and C as in Mamba-2, which the
paper's layer does not have).

    z, x, B, C, dt, a, lam, w = in_proj(u)     (b, l, d_model) -> (b, l, d_inner) x 2, (b, l, g R n) x 2,
                                                (b, l, h) x 2 (x 3 with data-dependent A), (b, l, n_angles)
    x, B, C = silu(conv1d(x, B, C))            only with d_conv > 0
    B, C    = RMSNorm(B) + B_bias, RMSNorm(C) + C_bias      over nstate; per-head (and rank) biases start at 1
    A       = -max(f(a), A_floor)              f(a) = 1 + a for a >= 0, 1 / (1 - a) below (or -exp(A_log) per head);
                                               with ``A_bias`` a learned per-head offset is added to a first
    angle   = pi * tanh(w)                     rotation rates shared by the heads; the op advances by dt * angle
    y       = mamba3(x, dt, A, B, C, lam, angle, D, z, dt_bias[, mimo_x, mimo_z, mimo_o])
    out     = out_proj(y)
    or with ``outproj_norm``:
    y       = mamba3(x, dt, A, B, C, lam, angle, D, None, dt_bias[, mimo_x, mimo_o])
    out     = out_proj(RMSNorm_per_head(y) * silu(z))

``rawseq.kernels.mamba3`` holds the recurrence; this file holds the parameters. ``in_proj`` lays its outputs out as
(z, x, B, C, dt, A, lam, angle), as the reference does; the A slice is absent with a per-head A.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rawseq.kernels import causal_conv1d, causal_conv1d_step
from rawseq.kernels.common.math import constant
from rawseq.kernels.mamba3 import Mamba3State, mamba3, mamba3_step
from rawseq.layers._init import inverse_softplus_dt
from rawseq.layers.mixer import Mixer, linear
from rawseq.layers.norm import GatedRMSNorm


def decay_rate(a: torch.Tensor, floor: float) -> torch.Tensor:
    """A = -max(f(a), floor) with f(a) = 1 + a for a >= 0 and 1 / (1 - a) below: positive, continuous with its
    derivative at 0, and growing only linearly, which keeps data-dependent decays from exploding at large learning
    rates. Written as (1 + relu(a)) / (min(max(a, lo), 0) - 1), where ``lo = 1 - 1 / floor`` puts the floor."""
    lo = 1.0 - 1.0 / floor if floor > 0 else -math.inf
    one = constant(1.0, a)
    return (torch.relu(a) + one) / (a.clamp(lo, 0.0) - one)


def _float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


class Mamba3(Mixer):
    """Mamba-3 sequence mixer.

    State for decoding: ``{"ssm": (b, h, p, n), "angle": (b, h, n_angles), "B": (b, h, R, n), "x": (b, h, R, p)}``,
    all float32 (see :class:`rawseq.kernels.mamba3.Mamba3State`); ``R = 1`` for SISO; with ``d_conv > 0`` also
    ``"conv"``: (b, d_inner + 2 g R n, d_conv - 1), the convolution's last inputs, in the parameters' dtype.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64, expand: int = 2, headdim: int = 64, n_groups: int = 1, mimo_rank: int | None = None,
        rope_fraction: float = 0.5,
        data_dependent_A: bool = True, A_bias: bool = False, A_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
        bc_norm: bool = True, outproj_norm: bool = False, norm_eps: float = 1e-5, chunk_size: int | None = None,
        d_conv: int = 0, conv_bias: bool = True, bias: bool = False, backend: str = "auto", device=None, dtype=None,
    ):
        super().__init__()
        self._set_sizes(d_model, d_state, expand, headdim, n_groups)
        if mimo_rank is not None and (not isinstance(mimo_rank, int) or mimo_rank < 1):
            raise ValueError(f"mimo_rank={mimo_rank!r} must be a positive int, or None for SISO")
        if not 0.0 <= rope_fraction <= 1.0:
            raise ValueError(f"rope_fraction={rope_fraction} must lie in [0, 1]")
        self.n_angles = int(d_state * rope_fraction) // 2
        if self.n_angles and d_state % 2:
            raise ValueError(f"d_state={d_state} must be even to rotate pairs of state entries "
                             f"(rope_fraction={rope_fraction}); use an even d_state or rope_fraction=0")
        if A_floor < 0:
            raise ValueError(f"A_floor={A_floor} must be >= 0")
        if not isinstance(d_conv, int) or d_conv < 0:
            raise ValueError(f"d_conv={d_conv!r} must be an int >= 0 (0: no convolution)")
        if A_bias and not data_dependent_A:
            raise ValueError("A_bias=True offsets the data-dependent A: it needs data_dependent_A=True (a per-head A "
                             "has its own per-head value, A_log)")
        self.mimo_rank = mimo_rank
        self.rank = 1 if mimo_rank is None else mimo_rank
        self.data_dependent_A = data_dependent_A
        self.A_floor = A_floor
        self.chunk_size = chunk_size
        self.backend = backend
        kw = {"device": device, "dtype": dtype}
        h, R, n = self.nheads, self.rank, d_state
        bc = n_groups * R * d_state
        # in_proj's outputs: z, x, B and C, dt, [A,] lam, angle
        self._splits = [self.d_inner, self.d_inner, 2 * bc, h] + [h] * data_dependent_A + [h, self.n_angles]
        self.in_proj = nn.Linear(d_model, sum(self._splits), bias=bias, **kw)
        self.dt_bias = nn.Parameter(torch.empty(h, **kw))
        self.A_log = None if data_dependent_A else nn.Parameter(torch.empty(h, **kw))
        # a per-head offset of the data-dependent A's input, so that the heads start with different decay rates
        self.A_bias = nn.Parameter(torch.empty(h, **kw)) if data_dependent_A and A_bias else None
        self.D = nn.Parameter(torch.ones(h, **kw))
        # the biases of B (row 0) and C (row 1) per head (and rank); adding them here gives the op per-head B and C
        self.bc_bias = nn.Parameter(torch.ones((2, h, n) if mimo_rank is None else (2, h, R, n), **kw))
        # RMSNorm weights of B (row 0) and C (row 1), normalised together
        self.norm_eps = norm_eps
        self.bc_norm_weight = nn.Parameter(torch.ones(2, d_state, **kw)) if bc_norm else None
        self.mimo_x = self.mimo_z = self.mimo_o = None
        if mimo_rank is not None:
            # x and the output start as averages over the ranks, the gate as the plain gate
            self.mimo_x = nn.Parameter(torch.full((h, R, headdim), 1.0 / R, **kw))
            if not outproj_norm:  # with the output norm the gate is applied after the op, once per channel
                self.mimo_z = nn.Parameter(torch.ones(h, R, headdim, **kw))
            self.mimo_o = nn.Parameter(torch.full((h, R, headdim), 1.0 / R, **kw))
        # RMSNorm of each head's output before the gate (the gate then stays out of the op)
        self.norm = GatedRMSNorm(self.d_inner, group_size=headdim, eps=norm_eps, norm_before_gate=True,
                                 **kw) if outproj_norm else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)
        # the optional convolution runs over the contiguous (x, B, C) slice of in_proj's output
        self.d_conv = d_conv
        self.conv_dim = self.d_inner + 2 * bc
        self.conv_weight = self.conv_bias = None
        if d_conv:
            self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv, **kw))
            self.conv_bias = nn.Parameter(torch.empty(self.conv_dim, **kw)) if conv_bias else None

        with torch.no_grad():
            if d_conv:  # nn.Conv1d's default: kaiming-uniform over a fan-in of d_conv (one input channel per group)
                bound = 1.0 / math.sqrt(d_conv)
                self.conv_weight.uniform_(-bound, bound)
                if self.conv_bias is not None:
                    self.conv_bias.uniform_(-bound, bound)
            self.dt_bias.copy_(
                inverse_softplus_dt(h, dt_min=dt_min, dt_max=dt_max, dt_floor=dt_init_floor, device=device)
            )
            lo, hi = A_init_range
            if (self.A_log is not None or self.A_bias is not None) and not 0 < lo <= hi:
                raise ValueError(f"A_init_range={A_init_range} must satisfy 0 < low <= high")
            magnitude = torch.empty(h, dtype=torch.float32, device=device).uniform_(lo, hi)  # |A| per head
            if self.A_log is not None:
                self.A_log.copy_(torch.log(magnitude))
            if self.A_bias is not None:  # decay_rate's inverse at an input of 0 from the projection
                self.A_bias.copy_(torch.where(magnitude >= 1, magnitude - 1, 1 - 1 / magnitude))
        # per-channel scales and biases; bc_norm_weight and the MIMO weights are matrices only by layout
        for p in (self.dt_bias, self.A_log, self.A_bias, self.D, self.bc_bias, self.bc_norm_weight, self.mimo_x,
                  self.mimo_z, self.mimo_o):
            if p is not None:
                p._no_weight_decay = True

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> dict:
        """Zero state for ``batch`` decoding streams: the scan's in float32, the convolution window (with
        ``d_conv > 0``) in ``dtype`` (default: the parameters')."""
        device = self.in_proj.weight.device if device is None else device
        kw = {"dtype": torch.float32, "device": device}
        h, R = self.nheads, self.rank
        state = {
            "ssm": torch.zeros(batch, h, self.headdim, self.d_state, **kw),
            "angle": torch.zeros(batch, h, self.n_angles, **kw),
            "B": torch.zeros(batch, h, R, self.d_state, **kw),
            "x": torch.zeros(batch, h, R, self.headdim, **kw),
        }
        if self.d_conv:
            dtype = self.conv_weight.dtype if dtype is None else dtype
            state["conv"] = torch.zeros(batch, self.conv_dim, self.d_conv - 1, dtype=dtype, device=device)
        return state

    def _chunk_size(self, hidden: torch.Tensor) -> int:
        """Positions per chunk of the torch backend (a speed knob only): 32 on CPU, 64 elsewhere, unless set."""
        if self.chunk_size is not None:
            return self.chunk_size
        return 64 if hidden.device.type == "cuda" else 32

    def _xbc(self, proj: torch.Tensor) -> torch.Tensor:
        """The (x, B, C) slice of in_proj's output (.., conv_dim)."""
        return proj.narrow(-1, self.d_inner, self.conv_dim)

    def _mixer_inputs(self, proj: torch.Tensor, xbc: torch.Tensor | None = None):
        """in_proj output (.., D) -> the op's inputs, keeping the leading (b[, l]): x, z (.., h, p); B, C
        (.., h, [R,] n) normalised and biased; dt, A, lam (.., h); angle (.., 1, n_angles). ``xbc``: the
        convolved (x, B, C) slice, used in place of in_proj's."""
        z, x, bc, dt, *rest = proj.split(self._splits, dim=-1)  # one op, and one cat in the backward
        if xbc is not None:
            x, bc = xbc.split((self.d_inner, self.conv_dim - self.d_inner), dim=-1)
        z = z.unflatten(-1, (self.nheads, self.headdim))
        x = x.unflatten(-1, (self.nheads, self.headdim))
        B, C = self._bc(bc)
        if self.data_dependent_A:
            a = _float(rest[0]) if self.A_bias is None else _float(rest[0]) + _float(self.A_bias)
            A = decay_rate(a, self.A_floor)
        else:
            A = -torch.exp(_float(self.A_log))
        lam, w = rest[-2], rest[-1]
        angle = None
        if self.n_angles:
            w = _float(w)
            angle = (torch.tanh(w) * constant(math.pi, w)).unsqueeze(-2)  # shared by the heads
        return x, z, B, C, dt, A, lam, angle

    def _bc(self, bc: torch.Tensor):
        """The B and C slices (.., 2 g R n) -> B, C (.., h, [R,] n): RMSNorm over nstate, each with its own weight,
        then the per-head biases; both together, in float32. With one group B and C broadcast over the heads'
        biases directly (fewer views: a decoding step costs its op count)."""
        g, n = self.n_groups, self.d_state
        rank = () if self.mimo_rank is None else (self.rank,)
        params = self._parameters
        bias = _float(params["bc_bias"])  # (2, h, [R,] n)
        if g == 1:
            BC = _float(bc).view(*bc.shape[:-1], 2, 1, *rank, n)
        else:  # a heads-in-group axis of 1 for the biases
            BC = _float(bc).view(*bc.shape[:-1], 2, g, 1, *rank, n)
            bias = bias.view(2, g, self.nheads // g, *rank, n)
        weight = params.get("bc_norm_weight")
        if weight is None:
            BC = BC + bias
        else:
            # BC / sqrt(mean(BC^2) + eps) * weight, with the mean's 1 / n moved out of the sum: one op fewer
            scale = torch.linalg.vecdot(BC, BC).add_(constant(n * self.norm_eps, BC)).rsqrt_().unsqueeze(-1)
            weight = _float(weight).view(2, *[1] * (BC.dim() - bc.dim() - 1), n)
            BC = torch.addcmul(bias, BC, scale * weight, value=math.sqrt(n))
        if g != 1:
            BC = BC.flatten(-3 - len(rank), -2 - len(rank))  # (.., 2, g, h / g, [R,] n) -> (.., 2, h, [R,] n)
        return BC.unbind(-3 - len(rank))

    def _params(self):
        return dict(D=self.D, dt_bias=self.dt_bias, mimo_x=self.mimo_x, mimo_z=self.mimo_z, mimo_o=self.mimo_o)

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The op's output y and the gate z (.., h, p) -> (.., d_model): gated inside the op, or here after the
        per-head norm."""
        y = y.flatten(-2)
        if self.norm is not None:
            y = self.norm(y, z.flatten(-2))
        return self.out_proj(y)

    def _mix(self, hidden, seq_idx, initial_state, return_state):
        """(b, l, d_model) -> (b, l, d_model) and the final state; the state (SSM, previous input, angle) restarts
        where ``seq_idx`` changes."""
        proj = self.in_proj(hidden)
        xbc = window = None
        if self.d_conv:
            xbc, window = causal_conv1d(
                self._xbc(proj), self.conv_weight, self.conv_bias, activation="silu", return_final_state=True,
                initial_state=None if initial_state is None else initial_state["conv"], seq_idx=seq_idx,
                backend=self.backend,
            )
        x, z, B, C, dt, A, lam, angle = self._mixer_inputs(proj, xbc)
        init = None
        if initial_state is not None:
            init = Mamba3State(initial_state["ssm"], initial_state["angle"], initial_state["B"], initial_state["x"])
        y, final = mamba3(
            x, dt, A, B, C, lam, angle, z=None if self.norm is not None else z, **self._params(), initial_state=init,
            return_final_state=True, seq_idx=seq_idx, chunk_size=self._chunk_size(hidden), backend=self.backend,
        )
        if not return_state:
            return self._output(y, z), None
        state = dict(zip(("ssm", "angle", "B", "x"), final))
        if window is not None:
            state["conv"] = window
        return self._output(y, z), state

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One position: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place.

        At batch 1 a step costs its number of tensor operations (views included), not its arithmetic: the
        projections are called functionally, parameters are read from the module's dicts, and the inputs of the op
        are views of one projection wherever the forward's reshapes are not needed.
        """
        batch = hidden.shape[0]
        h, p = self.nheads, self.headdim
        params, modules = self._parameters, self._modules
        proj = linear(modules["in_proj"], hidden)
        z, x, bc, dt, *rest = proj.split(self._splits, dim=-1)
        if self.d_conv:
            xbc = causal_conv1d_step(state["conv"], self._xbc(proj), params["conv_weight"], params.get("conv_bias"),
                                     "silu", backend=self.backend, check=False)
            x, bc = xbc.split((self.d_inner, self.conv_dim - self.d_inner), dim=-1)
        B, C = self._bc(bc)
        if self.A_log is not None:
            A = -torch.exp(_float(params["A_log"]))
        else:
            A = decay_rate(_float(rest[0] if self.A_bias is None else rest[0] + params["A_bias"]), self.A_floor)
        angle = None
        if self.n_angles:  # (b, 1, n_angles): shared by the heads
            angle = torch.tanh(_float(rest[-1])).mul_(constant(math.pi, B)).unsqueeze_(1)
        gate = None if self.norm is not None else z.view(batch, h, p)
        y = mamba3_step(Mamba3State(state["ssm"], state["angle"], state["B"], state["x"]), x.view(batch, h, p), dt,
                        A, B, C, rest[-2], angle, params["D"], gate, params["dt_bias"], mimo_x=self.mimo_x,
                        mimo_z=self.mimo_z, mimo_o=self.mimo_o, backend=self.backend, check=False)
        y = y.view(batch, self.d_inner)
        if self.norm is not None:
            y = modules["norm"].forward(y, z)
        return linear(modules["out_proj"], y)
