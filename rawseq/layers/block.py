"""Pre-norm residual block: ``h = h + mixer(norm(h))``, then optionally ``h = h + mlp(norm(h))``."""

from __future__ import annotations

import torch
from torch import nn

from rawseq.layers.mixer import Mixer
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
        return hidden.float() if self.residual_in_fp32 and hidden.dtype != torch.float32 else hidden

    @staticmethod
    def _as_param_dtype(norm: RMSNorm, hidden: torch.Tensor) -> torch.Tensor:
        dtype = norm._parameters["weight"].dtype
        return hidden if hidden.dtype == dtype else hidden.to(dtype)

    def _normed(self, norm: RMSNorm, hidden: torch.Tensor) -> torch.Tensor:
        return norm(self._as_param_dtype(norm, hidden))

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
        """hidden (b, d_model) -> (b, d_model); the mixer's ``state`` is updated in place.

        The submodules are read from the module's dict and the norms called through ``forward``: at batch 1 a step
        costs its count of Python-level operations.
        """
        modules = self._modules
        norm = modules["norm"]
        out = modules["mixer"].step(norm.forward(self._as_param_dtype(norm, hidden)), state)
        hidden = self._residual(hidden) + out
        mlp = modules.get("mlp")  # a None submodule is a plain attribute, not in the dict
        if mlp is None:
            return hidden
        mlp_norm = modules["mlp_norm"]
        return hidden + mlp(mlp_norm.forward(self._as_param_dtype(mlp_norm, hidden)))


class Bidirectional(Mixer):
    """Sum of a forward mixer and a mixer that reads the sequence from its end (for encoders).

    This wrapper owns the reversal: the reverse mixer is an ordinary causal mixer given the flipped sequence (and
    flipped document ids), and its output is flipped back, so that position ``t`` sees ``t`` and everything after
    it within its document.
    """

    causal = False

    def __init__(self, forward_mixer: nn.Module, reverse_mixer: nn.Module):
        super().__init__()
        self.fwd = forward_mixer
        self.rev = reverse_mixer

    def _mix(self, hidden, seq_idx, initial_state, return_state):
        flipped = None if seq_idx is None else seq_idx.flip(1)
        return self.fwd(hidden, seq_idx=seq_idx) + self.rev(hidden.flip(1), seq_idx=flipped).flip(1), None

    def allocate_inference_state(self, *args, **kwargs):
        self._no_decoding()

    def step(self, hidden, state):
        self._no_decoding()
