"""A stack of residual blocks built from a layer pattern: pure Mamba, Mamba-2 or Mamba-3, or SSM/attention hybrids."""

from __future__ import annotations

import math

import torch
from torch import nn

from rawseq.layers import Attention, Bidirectional, Block, GatedMLP, Mamba, Mamba2, Mamba3
from rawseq.models.config import ByteLMConfig


def _make_mixer(kind: str, cfg: ByteLMConfig, *, device=None, dtype=None) -> nn.Module:
    kw = {"device": device, "dtype": dtype}
    ssm_kw = {
        "d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand, "dt_min": cfg.dt_min,
        "dt_max": cfg.dt_max, "dt_init_floor": cfg.dt_init_floor, "conv_bias": cfg.conv_bias,
        "bias": cfg.proj_bias, "backend": cfg.backend,
    }
    if kind == "mamba":
        return Mamba(cfg.d_model, dt_rank=cfg.dt_rank, **ssm_kw, **kw)
    if kind == "mamba2":
        return Mamba2(cfg.d_model, headdim=cfg.headdim, n_groups=cfg.n_groups, chunk_size=cfg.chunk_size,
                      dt_limit=cfg.dt_limit, norm_eps=cfg.norm_eps, **ssm_kw, **kw)
    if kind == "mamba3":
        return Mamba3(cfg.d_model, d_state=cfg.d_state, expand=cfg.expand, headdim=cfg.headdim, n_groups=cfg.n_groups,
                      mimo_rank=cfg.mimo_rank, rope_fraction=cfg.rope_fraction, outproj_norm=cfg.outproj_norm,
                      A_bias=cfg.A_bias, d_conv=cfg.d_conv if cfg.mamba3_conv else 0, conv_bias=cfg.conv_bias,
                      dt_min=cfg.dt_min, dt_max=cfg.dt_max,
                      dt_init_floor=cfg.dt_init_floor, norm_eps=cfg.norm_eps, chunk_size=cfg.chunk_size,
                      bias=cfg.proj_bias, backend=cfg.backend, **kw)
    if kind == "attention":
        return Attention(cfg.d_model, n_heads=cfg.attn_heads, n_kv_heads=cfg.attn_kv_heads, window=cfg.attn_window,
                         rope_base=cfg.rope_base, causal=not cfg.bidirectional, **kw)
    raise ValueError(f"unknown layer kind {kind!r}")


class Backbone(nn.Module):
    """Residual blocks in the order of ``cfg.layer_kinds()``.

    With ``cfg.bidirectional`` every SSM layer is the sum of a forward and a reverse scan (separate weights) and
    attention is non-causal within each document: an encoder, which cannot decode step by step.
    """

    def __init__(self, cfg: ByteLMConfig, *, device=None, dtype=None):
        super().__init__()
        self.kinds = cfg.layer_kinds()
        self.bidirectional = cfg.bidirectional
        blocks = []
        for kind in self.kinds:
            mixer = _make_mixer(kind, cfg, device=device, dtype=dtype)
            if cfg.bidirectional and kind != "attention":
                mixer = Bidirectional(mixer, _make_mixer(kind, cfg, device=device, dtype=dtype))
            mlp = GatedMLP(cfg.d_model, d_hidden=cfg.d_mlp, device=device, dtype=dtype) if cfg.d_mlp else None
            blocks.append(Block(cfg.d_model, mixer, mlp=mlp, norm_eps=cfg.norm_eps,
                                residual_in_fp32=cfg.residual_in_fp32, device=device, dtype=dtype))
        self.layers = nn.ModuleList(blocks)

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> list[dict]:
        """Zero decoding state of every layer for ``batch`` streams."""
        if self.bidirectional:
            raise ValueError("a bidirectional backbone cannot decode step by step")
        return [layer.allocate_inference_state(batch, dtype, device) for layer in self.layers]

    def forward(
        self,
        hidden: torch.Tensor,
        seq_idx: torch.Tensor | None = None,
        initial_states: list[dict] | None = None,
        return_states: bool = False,
    ):
        """hidden (b, l, d_model) -> (b, l, d_model), and with ``return_states`` the list of per-layer states."""
        states = []
        for i, layer in enumerate(self.layers):
            init = None if initial_states is None else initial_states[i]
            out = layer(hidden, seq_idx=seq_idx, initial_state=init, return_state=return_states)
            if return_states:
                hidden, state = out
                states.append(state)
            else:
                hidden = out
        return (hidden, states) if return_states else hidden

    def step(self, hidden: torch.Tensor, states: list[dict]) -> torch.Tensor:
        """hidden (b, d_model) -> (b, d_model); each layer's state is updated in place."""
        for layer, state in zip(self.layers, states, strict=True):
            hidden = layer.step(hidden, state)
        return hidden


@torch.no_grad()
def scale_residual_writes(backbone: nn.Module) -> None:
    """GPT-2 / mamba_ssm initialisation: divide the projections that write into the residual stream (each mixer's
    ``out_proj``, each MLP's ``w_out``) by sqrt(number of residual additions) of ``backbone.layers``."""
    adds = sum(1 if block.mlp is None else 2 for block in backbone.layers)
    for name, p in backbone.named_parameters():
        if name.endswith(("out_proj.weight", "mlp.w_out.weight")):
            p /= math.sqrt(adds)
