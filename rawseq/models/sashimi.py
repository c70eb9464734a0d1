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

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rawseq.layers import RMSNorm
from rawseq.models.backbone import Backbone
from rawseq.models.bytelm import ByteLM
from rawseq.models.config import ByteLMConfig

DEFAULT_POOLS = (4, 4)
DEFAULT_WIDTH_EXPAND = 2


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


def _copy_where(mask: torch.Tensor, target, source) -> None:
    """target[row] = source[row] for rows where ``mask`` is False, recursively over nested states (in place)."""
    if isinstance(target, dict):
        for k in target:
            _copy_where(mask, target[k], source[k])
    elif isinstance(target, (list, tuple)):
        for t, s in zip(target, source, strict=True):
            _copy_where(mask, t, s)
    elif isinstance(target, torch.Tensor):
        keep = mask.view(-1, *([1] * (target.dim() - 1)))
        target.copy_(torch.where(keep, target, source))


def _clone(states):
    if isinstance(states, dict):
        return {k: _clone(v) for k, v in states.items()}
    if isinstance(states, (list, tuple)):
        return type(states)(_clone(s) for s in states)
    return states.clone() if isinstance(states, torch.Tensor) else states


def cat_states(states: list) -> object:
    """Concatenate nested SaShiMi states of several batches of streams along the batch axis."""
    first = states[0]
    if isinstance(first, dict):
        return {k: cat_states([s[k] for s in states]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(cat_states([s[i] for s in states]) for i in range(len(first)))
    return torch.cat(states, dim=0)


def index_states(states, index: torch.Tensor):
    """Rows ``index`` of nested states."""
    if isinstance(states, dict):
        return {k: index_states(v, index) for k, v in states.items()}
    if isinstance(states, (list, tuple)):
        return type(states)(index_states(s, index) for s in states)
    return states.index_select(0, index)


class SashimiBackbone(nn.Module):
    """Causal multi-resolution stack; ``pools[i]`` folds level i into level i + 1, ``width_expand`` widens each.

    Every level runs ``cfg.n_layers`` blocks of ``cfg.ssm`` on the way down and ``cfg.n_layers`` on the way up; the
    coarsest level runs ``cfg.n_layers`` centre blocks. ``forward`` maps (b, l, d) -> (b, l, d) for any l (the end is
    zero-padded to a multiple of ``prod(pools)``, which causality keeps out of every earlier output).
    """

    def __init__(self, cfg: ByteLMConfig, *, pools=DEFAULT_POOLS, width_expand: int = DEFAULT_WIDTH_EXPAND,
                 device=None, dtype=None):
        super().__init__()
        if cfg.bidirectional:
            raise ValueError("SashimiBackbone is causal; bidirectional=True is for encoders")
        if not pools or any(p < 1 for p in pools):
            raise ValueError(f"pools must be a non-empty list of positive ints, got {pools}")
        self.pools = [int(p) for p in pools]
        kw = {"device": device, "dtype": dtype}
        widths = [cfg.d_model * width_expand**i for i in range(len(pools) + 1)]
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
        """hidden (b, l, d) -> (b, l, d), every sequence from its start (decode with :meth:`step`)."""
        if seq_idx is not None or initial_states is not None or return_states:
            raise ValueError("SashimiBackbone.forward runs whole sequences from their start: no seq_idx, "
                             "initial_states or return_states (use allocate_inference_state and step)")
        length = hidden.shape[1]
        hidden = F.pad(hidden, (0, 0, 0, -length % self.total_pool))
        return self._level(0, hidden)[:, :length]

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
            deeper = None if bool(fire.all()) else _clone(self._deeper(i, states))
            coarse = self._level_step(i + 1, self.down_pool[i].step(level["window"].to(skip.dtype)), states)
            unfolded = self.up_pool[i].step(coarse).to(level["unfolded"].dtype)
            if deeper is None:
                level["unfolded"].copy_(unfolded)
            else:
                # Streams at another phase keep their coarse state and their unfolded output untouched.
                _copy_where(fire, self._deeper(i, states), deeper)
                _copy_where(fire, unfolded, level["unfolded"])
                level["unfolded"].copy_(unfolded)
        level["phase"].copy_((phase + 1) % self.pools[i])
        return out

    def _deeper(self, i: int, states: dict) -> dict:
        return {"levels": states["levels"][i + 1 :], "center": states["center"]}


class SashimiLM(ByteLM):
    """A :class:`rawseq.ByteLM` over a :class:`SashimiBackbone`: the same forward, loss, step, generation and
    save/load, for sample-level audio models.

    The multi-scale settings live in ``config.extra``: ``"pools"`` (default ``[4, 4]``) and ``"width_expand"``
    (default 2); ``config.n_layers`` is the number of blocks per stage. :func:`sashimi_config` builds such a config.
    """

    def __init__(self, config: ByteLMConfig, *, device=None, dtype=None):
        nn.Module.__init__(self)
        self.config = config
        kw = {"device": device, "dtype": dtype}
        self.embed = nn.Embedding(config.total_vocab, config.d_model, **kw)
        self.backbone = SashimiBackbone(config, pools=config.extra.get("pools", DEFAULT_POOLS),
                                        width_expand=config.extra.get("width_expand", DEFAULT_WIDTH_EXPAND), **kw)
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps, **kw)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.total_vocab, bias=False,
                                                                    **kw)
        self._init_weights()

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
        return torch.cat(logits), cat_states(states)


def sashimi_config(*, pools=DEFAULT_POOLS, width_expand: int = DEFAULT_WIDTH_EXPAND, **fields) -> ByteLMConfig:
    """A ByteLMConfig for :class:`SashimiLM`: ``fields`` are ByteLMConfig fields, the pools go into ``extra``."""
    extra = {**fields.pop("extra", {}), "pools": [int(p) for p in pools], "width_expand": int(width_expand)}
    return ByteLMConfig(extra=extra, **fields)


__all__ = ["DownPool", "SashimiBackbone", "SashimiLM", "UpPool", "sashimi_config"]
