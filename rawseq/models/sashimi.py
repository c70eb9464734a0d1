"""SaShiMi-style multi-scale causal backbone for raw audio (Goel et al. 2022, "It's Raw! Audio Generation with
State-Space Models"), with Mamba / Mamba-2 blocks at every resolution.

    level 0 (width d, every sample)  : blocks -> skip -> down-pool by p0 ------------------.
    level 1 (width d*e, every p0)    :   blocks -> skip -> down-pool by p1 ----------.     |
    level 2 (width d*e^2, every p0p1):     center blocks                             |     |
    level 1                          :   up-pool (shifted one coarse step) + skip -> blocks
    level 0                          : up-pool (shifted one coarse step) + skip -> blocks -> out

Down-pooling folds ``p`` consecutive positions into one: ``(b, l, w) -> (b, l / p, p * w) -> Linear -> (b, l / p,
w * e)``; coarse step ``j`` has read fine positions ``jp .. jp + p - 1``. Up-pooling unfolds a coarse step into ``p``
fine ones, ``Linear -> (b, l / p, p * w) -> (b, l, w)``, and shifts them right by one coarse step, so coarse step
``j`` feeds fine positions ``(j + 1) p .. (j + 2) p - 1``, all after every position it read: the whole stack stays
causal.

Decoding runs the same computation one sample at a time: level i buffers its last ``p`` inputs, runs its coarse
level once every ``p`` steps and replays that level's unfolded output over the next ``p`` steps. Each stream keeps its
own phase, so prompts of different lengths can decode together. The state holds the blocks' SSM states, one buffer
of ``p`` vectors per pool and a phase counter per level: its size never depends on how many samples were seen.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rawseq.config import option
from rawseq.layers.state import concat_states, keep_rows, map_states
from rawseq.models.backbone import Backbone
from rawseq.models.bytelm import ByteLM
from rawseq.models.config import ByteLMConfig
from rawseq.models.registry import register


@dataclass
class SashimiConfig(ByteLMConfig):
    """A :class:`ByteLMConfig` for :class:`SashimiLM`: ``n_layers`` blocks per stage, and the multi-scale settings."""

    model_type: ClassVar[str] = "sashimi"

    pools: list[int] = option(default_factory=lambda: [4, 4], help="fold factor from each level to the next",
                              min=1, max=4096)
    width_expand: int = option(2, help="each coarser level is this many times wider", min=1, max=16)

    def validate(self) -> None:
        super().validate()
        if not self.pools:
            self.fail("pools", "must list at least one pooling factor")
        if self.bidirectional:
            self.fail("bidirectional", "SaShiMi is causal; bidirectional models are encoders")
        if self.attention_every or self.layers is not None:
            self.fail("layers", "SaShiMi levels are pure SSM stacks (no attention_every or layers)")

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        extra = data.pop("extra", None) or {}
        for key in ("pools", "width_expand"):
            if key in extra:
                data.setdefault(key, extra.pop(key))
        return super().upgrade({**data, "extra": extra})


class DownPool(nn.Module):
    """(b, l, w) -> (b, l / p, w_out): each coarse step is a linear map of ``p`` consecutive fine positions."""

    def __init__(self, width: int, width_out: int, pool: int, *, device=None, dtype=None):
        super().__init__()
        self.pool = pool
        self.proj = nn.Linear(pool * width, width_out, device=device, dtype=dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(rearrange(hidden, "b (l p) w -> b l (p w)", p=self.pool))

    def step(self, window: torch.Tensor) -> torch.Tensor:
        """window (b, p, w) of the last ``p`` fine inputs -> (b, w_out)."""
        return self.proj(rearrange(window, "b p w -> b (p w)"))


class UpPool(nn.Module):
    """(b, l / p, w_in) -> (b, l, w): unfold every coarse step into ``p`` fine ones, delayed by one coarse step."""

    def __init__(self, width_in: int, width: int, pool: int, *, device=None, dtype=None):
        super().__init__()
        self.pool = pool
        self.proj = nn.Linear(width_in, pool * width, device=device, dtype=dtype)

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        fine = self.proj(coarse)  # (b, l / p, w_in) -> (b, l / p, p * w)
        fine = F.pad(fine[:, :-1], (0, 0, 1, 0))  # shift right one coarse step: causal
        return rearrange(fine, "b l (p w) -> b (l p) w", p=self.pool)

    def step(self, coarse: torch.Tensor) -> torch.Tensor:
        """coarse (b, w_in) -> (b, p, w): the next ``p`` fine positions' inputs."""
        return rearrange(self.proj(coarse), "b (p w) -> b p w", p=self.pool)


def _level_config(cfg: ByteLMConfig, width: int) -> ByteLMConfig:
    d_mlp = cfg.d_mlp * width // cfg.d_model if cfg.d_mlp else 0
    return dataclasses.replace(cfg, d_model=width, d_mlp=d_mlp, attention_every=0, layers=None)


class SashimiBackbone(nn.Module):
    """Causal multi-resolution stack; ``pools[i]`` folds level i into level i + 1, ``width_expand`` widens each.

    Every level runs ``cfg.n_layers`` blocks of ``cfg.ssm`` on the way down and ``cfg.n_layers`` on the way up; the
    coarsest level runs ``cfg.n_layers`` centre blocks. ``forward`` maps (b, l, d) -> (b, l, d) for any l (the end is
    zero-padded to a multiple of ``prod(pools)``, which causality keeps out of every earlier output).
    """

    def __init__(self, cfg: SashimiConfig, *, device=None, dtype=None):
        super().__init__()
        self.pools = list(cfg.pools)
        pools = self.pools
        kw = {"device": device, "dtype": dtype}
        widths = [cfg.d_model * cfg.width_expand**i for i in range(len(pools) + 1)]
        self.widths = widths
        self.down = nn.ModuleList(Backbone(_level_config(cfg, w), **kw) for w in widths[:-1])
        self.center = Backbone(_level_config(cfg, widths[-1]), **kw)
        self.up = nn.ModuleList(Backbone(_level_config(cfg, w), **kw) for w in widths[:-1])
        self.down_pool = nn.ModuleList(DownPool(widths[i], widths[i + 1], p, **kw) for i, p in enumerate(pools))
        self.up_pool = nn.ModuleList(UpPool(widths[i + 1], widths[i], p, **kw) for i, p in enumerate(pools))

    @property
    def layers(self) -> list[nn.Module]:
        """Every residual block, all levels together (for initialisation by depth)."""
        return [block for stack in (*self.down, self.center, *self.up) for block in stack.layers]

    @property
    def total_pool(self) -> int:
        return math.prod(self.pools)

    def forward(self, hidden: torch.Tensor, seq_idx=None, initial_states=None, return_states: bool = False):
        """hidden (b, l, d) -> (b, l, d), every sequence from its start (decode with :meth:`step`).

        With ``seq_idx`` (b, l), every document of a packed row runs as a sequence of its own (its pools start at
        its first position), so a packed row gives what its documents give apart.
        """
        if initial_states is not None or return_states:
            raise ValueError("SashimiBackbone.forward runs whole sequences from their start: no initial_states or "
                             "return_states (decode with allocate_inference_state and step)")
        if seq_idx is not None:
            return self._documents(hidden, seq_idx)
        length = hidden.shape[1]
        hidden = F.pad(hidden, (0, 0, 0, -length % self.total_pool))
        return self._level(0, hidden)[:, :length]

    def _documents(self, hidden: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
        """Run each document of each row as its own sequence: (b, l, d) -> (b, l, d)."""
        b, length, _ = hidden.shape
        change = torch.ones(b, length, dtype=torch.bool, device=seq_idx.device)
        change[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
        pieces = []  # (row, start, stop) of every document
        for row, starts in enumerate(change.cpu().tolist()):
            cuts = [t for t, new in enumerate(starts) if new] + [length]
            pieces += [(row, a, z) for a, z in zip(cuts[:-1], cuts[1:])]
        longest = max(z - a for _, a, z in pieces)
        docs = torch.stack([F.pad(hidden[row, a:z], (0, 0, 0, longest - (z - a))) for row, a, z in pieces])
        out = self.forward(docs)  # (documents, longest, d)
        rows = [[] for _ in range(b)]
        for k, (row, a, z) in enumerate(pieces):
            rows[row].append(out[k, : z - a])
        return torch.stack([torch.cat(parts) for parts in rows])

    def _level(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        if i == len(self.pools):
            return self.center(hidden)
        skip = self.down[i](hidden)
        coarse = self._level(i + 1, self.down_pool[i](skip))  # (b, l, w_i) -> (b, l / p_i, w_{i+1})
        return self.up[i](skip + self.up_pool[i](coarse))

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> dict:
        """Zero decoding state for ``batch`` streams at position 0; its size is fixed."""
        param = self.down_pool[0].proj.weight
        dtype = param.dtype if dtype is None else dtype
        device = param.device if device is None else device
        levels = []
        for i, p in enumerate(self.pools):
            w = self.widths[i]
            levels.append({
                "down": self.down[i].allocate_inference_state(batch, dtype, device),
                "up": self.up[i].allocate_inference_state(batch, dtype, device),
                "window": torch.zeros(batch, p, w, dtype=dtype, device=device),
                "unfolded": torch.zeros(batch, p, w, dtype=dtype, device=device),
                "phase": torch.zeros(batch, dtype=torch.long, device=device),
            })
        return {"levels": levels, "center": self.center.allocate_inference_state(batch, dtype, device)}

    def step(self, hidden: torch.Tensor, states: dict) -> torch.Tensor:
        """hidden (b, d) -> (b, d) at each stream's next position; ``states`` are updated in place."""
        return self._level_step(0, hidden, states)

    def _level_step(self, i: int, hidden: torch.Tensor, states: dict) -> torch.Tensor:
        if i == len(self.pools):
            return self.center.step(hidden, states["center"])
        level = states["levels"][i]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        phase = level["phase"]
        skip = self.down[i].step(hidden, level["down"])
        out = self.up[i].step(skip + level["unfolded"][rows, phase].to(skip.dtype), level["up"])
        level["window"][rows, phase] = skip.to(level["window"].dtype)
        fire = phase == self.pools[i] - 1  # this stream completed a coarse step
        if bool(fire.any()):
            deeper = None if bool(fire.all()) else map_states(torch.Tensor.clone, self._deeper(i, states))
            coarse = self._level_step(i + 1, self.down_pool[i].step(level["window"].to(skip.dtype)), states)
            unfolded = self.up_pool[i].step(coarse).to(level["unfolded"].dtype)
            if deeper is None:
                level["unfolded"].copy_(unfolded)
            else:
                # Streams at another phase keep their coarse state and their unfolded output untouched.
                keep_rows(fire, self._deeper(i, states), deeper)
                keep_rows(fire, unfolded, level["unfolded"])
                level["unfolded"].copy_(unfolded)
        level["phase"].copy_((phase + 1) % self.pools[i])
        return out

    def _deeper(self, i: int, states: dict) -> dict:
        return {"levels": states["levels"][i + 1 :], "center": states["center"]}


class SashimiLM(ByteLM):
    """A :class:`rawseq.ByteLM` over a :class:`SashimiBackbone`: the same forward, loss, step, generation and
    save/load, for sample-level audio models. Configure it with :class:`SashimiConfig`."""

    config_class = SashimiConfig

    @staticmethod
    def build_backbone(config: SashimiConfig, *, device=None, dtype=None) -> nn.Module:
        return SashimiBackbone(config, device=device, dtype=dtype)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, seq_idx=None, states=None):
        """Feed prompts (b, l) one position at a time; returns the last logits (b, vocab) and the states."""
        if seq_idx is not None:
            raise ValueError("SashimiLM.prefill takes one prompt per row (no seq_idx)")
        if states is None:
            states = self.allocate_inference_state(input_ids.shape[0])
        logits = None
        for t in range(input_ids.shape[1]):
            logits = self.step(input_ids[:, t], states)
        return logits, states

    @torch.no_grad()
    def prefill_ragged(self, prompts: list[list[int]]):
        """Prefill prompts of different lengths (each stream keeps its own phase); rows in prompt order."""
        device = self.embed.weight.device
        logits, states = [], []
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty; give at least one symbol (for example bos_id)")
            row_logits, row_states = self.prefill(torch.tensor([p], dtype=torch.long, device=device))
            logits.append(row_logits)
            states.append(row_states)
        return torch.cat(logits), concat_states(states)


register(SashimiConfig, SashimiLM)

__all__ = ["DownPool", "SashimiBackbone", "SashimiConfig", "SashimiLM", "UpPool"]
