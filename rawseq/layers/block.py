"""Pre-norm residual block: ``h = h + mixer(norm(h))``, then optionally ``h = h + mlp(norm(h))``."""

from __future__ import annotations

import torch
from torch import nn

from rawseq.layers.norm import RMSNorm


class Block(nn.Module):
    """One residual block around a sequence mixer (Mamba, Mamba2, Attention or Bidirectional) and an optional MLP.

    With ``residual_in_fp32`` the residual stream is carried in float32 whatever the parameters' dtype; the
    normalised input of each mixer is cast back to the parameters' dtype.
    """

    def __init__(
        self,
        d_model: int,
        mixer: nn.Module,
        *,
        mlp: nn.Module | None = None,
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.norm = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype) if mlp is not None else None
        self.mlp = mlp

    def _residual(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float() if self.residual_in_fp32 else hidden

    def _normed(self, norm: RMSNorm, hidden: torch.Tensor) -> torch.Tensor:
        return norm(hidden if hidden.dtype == norm.weight.dtype else hidden.to(norm.weight.dtype))

    def _mlp(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return hidden
        return hidden + self.mlp(self._normed(self.mlp_norm, hidden))

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None, **kwargs):
        return self.mixer.allocate_inference_state(batch, dtype, device, **kwargs)

    def forward(self, hidden, seq_idx=None, initial_state=None, return_state=False):
        """hidden (b, l, d_model) -> (b, l, d_model) (float32 with ``residual_in_fp32``), and the mixer's state."""
        out = self.mixer(self._normed(self.norm, hidden), seq_idx=seq_idx, initial_state=initial_state,
                         return_state=return_state)
        state = None
        if return_state:
            out, state = out
        hidden = self._mlp(self._residual(hidden) + out)
        return (hidden, state) if return_state else hidden

    def step(self, hidden: torch.Tensor, state) -> torch.Tensor:
        """hidden (b, d_model) -> (b, d_model); the mixer's ``state`` is updated in place."""
        out = self.mixer.step(self._normed(self.norm, hidden), state)
        return self._mlp(self._residual(hidden) + out)


class Bidirectional(nn.Module):
    """Sum of a forward mixer and a mixer that reads the sequence from its end (for encoders)."""

    def __init__(self, forward_mixer: nn.Module, reverse_mixer: nn.Module):
        super().__init__()
        self.fwd = forward_mixer
        self.rev = reverse_mixer

    def forward(self, hidden, seq_idx=None, initial_state=None, return_state=False):
        if initial_state is not None or return_state:
            raise ValueError("a bidirectional layer sees the whole sequence at once and has no decoding state")
        return self.fwd(hidden, seq_idx=seq_idx) + self.rev(hidden, seq_idx=seq_idx)

    def allocate_inference_state(self, *args, **kwargs):
        raise ValueError("a bidirectional layer cannot decode step by step")

    def step(self, hidden, state):
        raise ValueError("a bidirectional layer cannot decode step by step")
