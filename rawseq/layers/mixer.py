"""What every sequence mixer shares: the ``forward`` contract, and for the selective SSMs the conv and state plumbing.

A mixer implements ``_mix(hidden, seq_idx, initial_state, return_state) -> (out, state or None)``, ``step`` and
``allocate_inference_state``; :class:`Mixer` gives it the public ``forward`` and the one refusal of a decoding state
for non-causal mixers. :class:`SSMMixer` adds what Mamba and Mamba-2 share: the depthwise causal convolution with its
decoding step, the ``{"conv", "ssm"}`` state and the decay rates kept between decoding steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rawseq.kernels import causal_conv1d, causal_conv1d_step


def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` without nn.Module's call and attribute overhead, for decoding steps (at batch 1 a step costs
    its count of Python-level operations, and every layer makes several of these calls per position)."""
    params = module._parameters
    return F.linear(x, params["weight"], params["bias"])


class Mixer(nn.Module):
    """Base of the sequence mixers. ``causal`` is False for mixers that see the whole sequence (encoders)."""

    causal = True

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
            seq_idx: (b, l) document ids; no document sees another.
            initial_state: a state from :meth:`allocate_inference_state`, a previous call or :meth:`step`; it is not
                modified.
            return_state: also return the state after the last position.

        Returns:
            (b, l, d_model), and with ``return_state`` the state after the last position (a new one).
        """
        if not self.causal and (initial_state is not None or return_state):
            self._no_decoding()
        out, state = self._mix(hidden, seq_idx, initial_state, return_state)
        return (out, state) if return_state else out

    def _mix(self, hidden, seq_idx, initial_state, return_state):
        raise NotImplementedError

    def _set_sizes(self, d_model: int, d_state: int, expand: float, headdim: int | None = None,
                   n_groups: int = 1) -> None:
        """The sizes an SSM mixer is built from: ``d_model``, ``d_state`` and ``d_inner = expand * d_model``, and
        for a multi-head SSM (``headdim`` given) ``headdim``, ``nheads = d_inner / headdim`` and ``n_groups``, with
        a ValueError naming the size that does not divide."""
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        if headdim is None:
            return
        if headdim < 1 or self.d_inner % headdim:
            raise ValueError(f"headdim={headdim} must divide d_inner = expand * d_model = {self.d_inner}")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if n_groups < 1 or self.nheads % n_groups:
            raise ValueError(f"n_groups={n_groups} must divide the number of heads {self.nheads}")
        self.n_groups = n_groups

    def _no_decoding(self):
        raise ValueError(f"a non-causal (bidirectional) {type(self).__name__} layer sees the whole sequence at once: "
                         "it has no decoding state and cannot decode step by step")


class SSMMixer(Mixer):
    """A selective SSM mixer with a depthwise causal convolution (``conv_weight`` (conv_dim, d_conv), ``conv_bias``)
    before the scan and a decay ``A = -exp(A_log)``. Subclasses set ``conv_dim``, ``d_conv``, ``backend`` and
    ``A_log`` and give the SSM state's shape per stream in ``_ssm_state_shape``."""

    def _make_conv(self, conv_dim: int, d_conv: int, bias: bool, device, dtype) -> None:
        """The convolution's parameters, filled by :meth:`_reset_conv`."""
        self.conv_weight = nn.Parameter(torch.empty(conv_dim, d_conv, device=device, dtype=dtype))
        self.conv_bias = nn.Parameter(torch.zeros(conv_dim, device=device, dtype=dtype)) if bias else None

    @torch.no_grad()
    def _reset_conv(self) -> None:
        # nn.Conv1d's default: kaiming-uniform over a fan-in of d_conv (one input channel per group).
        bound = 1.0 / math.sqrt(self.conv_weight.shape[1])
        self.conv_weight.uniform_(-bound, bound)
        if self.conv_bias is not None:
            self.conv_bias.uniform_(-bound, bound)

    def _ssm_state_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> dict:
        """Zero state for ``batch`` decoding streams: conv window in ``dtype``, SSM state in float32."""
        weight = self.conv_weight
        dtype = weight.dtype if dtype is None else dtype
        device = weight.device if device is None else device
        return {
            "conv": torch.zeros(batch, weight.shape[0], weight.shape[1] - 1, dtype=dtype, device=device),
            "ssm": torch.zeros(batch, *self._ssm_state_shape(), dtype=torch.float32, device=device),
        }

    def _conv(self, x: torch.Tensor, initial_state: dict | None, seq_idx: torch.Tensor | None):
        """``silu(causal_conv1d(x))`` over (b, l, conv_dim) and the final window (every backend fuses the SiLU)."""
        window = None if initial_state is None else initial_state["conv"]
        return causal_conv1d(x, self.conv_weight, self.conv_bias, activation="silu", initial_state=window,
                             return_final_state=True, seq_idx=seq_idx, backend=self.backend)

    def _conv_step(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        """One position of the convolution and SiLU: (b, conv_dim) -> (b, conv_dim); the window shifts in place."""
        params = self._parameters
        return causal_conv1d_step(state["conv"], x, params["conv_weight"], params.get("conv_bias"), "silu",
                                  backend=self.backend, check=False)

    def _decay(self) -> torch.Tensor:
        """``-exp(A_log)`` in float32. Kept between decoding steps while ``A_log`` is unchanged (its in-place version
        counter and storage identify it), so that a step does not recompute it; recomputed whenever autograd may
        need it."""
        A_log = self._parameters["A_log"]
        if torch.is_grad_enabled() and A_log.requires_grad:
            return -torch.exp(A_log.float())
        key = (A_log._version, A_log.data_ptr(), A_log.device, A_log.dtype)
        cache = self.__dict__.get("_decay_cache")
        if cache is None or cache[0] != key:
            cache = (key, -torch.exp(A_log.detach().float()))
            self.__dict__["_decay_cache"] = cache
        return cache[1]
