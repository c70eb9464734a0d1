"""``HNet``: a language model over a learned hierarchy of chunks (dynamic chunking; Hwang, Wang and Gu 2025).

    ids (b, l) -> embed -> stage 0 -> logits (b, l, vocab)

    stage i:  encoder_i -> route (p, b) -> chunks (packed, seq_idx) -> main_i -> smooth -> plug back * confidence
              + skip(encoder_i output) -> decoder_i
    main_i:   stage i + 1, or the innermost network

Every encoder, main and decoder network ends with an RMSNorm (the outermost decoder's is the output norm). The
chunks of all rows are packed with document ids (consecutive rows sharing a row of the innermost main network while
they fit, :func:`_grid`), so the main network pays only for the chunks; with decoding states (prefill, carried
training states) each row's chunks run as their own row, since a state belongs to one row. Routing, smoothing,
upsampling and the ratio loss are in :mod:`rawseq.layers.chunking`; the config in :mod:`rawseq.models.hnet_config`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rawseq.layers import RMSNorm, concat_states
from rawseq.layers.chunking import RoutingModule, confidence, plug_back, ratio_loss, smooth, smooth_step
from rawseq.modalities.symbols import IGNORE_INDEX
from rawseq.models.backbone import Backbone
from rawseq.models.config import ByteLMConfig
from rawseq.models.hnet_config import HNetConfig, parse_layers
from rawseq.models.pretrained import PretrainedModel
from rawseq.models.registry import register

__all__ = ["HNet", "HNetConfig", "HNetOutput"]


class HNetOutput(NamedTuple):
    """What :meth:`HNet.forward` returns. Per-stage values are (stages,) tensors, outermost stage first."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None  # prediction loss (nats) + ratio_loss_weight * sum of the ratio losses
    bits_per_byte: torch.Tensor | None = None  # prediction only
    states: dict | None = None
    ratio_loss: torch.Tensor | None = None  # (stages,)
    bytes_per_chunk: torch.Tensor | None = None  # (stages,) input symbols per chunk of stage i
    p_mid_share: torch.Tensor | None = None  # (stages,) share of boundary probabilities in [0.4, 0.6]
    boundary_probs: list[torch.Tensor] | None = None  # per stage (b, l): p of stage i at the symbols it saw, else 0

    def metrics(self) -> dict[str, float]:
        """Scalars for training logs: ``ratio_loss`` (the sum) and, per stage i, ``ratio_loss_i``,
        ``bytes_per_chunk_i`` and ``p_mid_share_i``."""
        out = {"ratio_loss": float(self.ratio_loss.detach().sum())}
        for i in range(len(self.ratio_loss)):
            out[f"ratio_loss_{i}"] = float(self.ratio_loss[i].detach())
            out[f"bytes_per_chunk_{i}"] = float(self.bytes_per_chunk[i])
            out[f"p_mid_share_{i}"] = float(self.p_mid_share[i])
        return out


def _tensors_only(state: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in state.values())


def _take(state, rows: torch.Tensor):
    """The rows ``rows`` (a 1-D index) of nested decoding states (a new copy)."""
    if isinstance(state, dict):
        return {k: _take(v, rows) for k, v in state.items()}
    if isinstance(state, list):
        return [_take(v, rows) for v in state]
    return state.index_select(0, rows)


def _put(state, rows: torch.Tensor, part) -> None:
    """Write ``part`` (from :func:`_take`, then advanced) back into ``state``'s rows ``rows``, in place. A tensor
    that grew in the part (an attention cache) is zero-padded in ``state`` first."""
    for key in state.keys() if isinstance(state, dict) else range(len(state)):
        full, new = state[key], part[key]
        if not isinstance(full, torch.Tensor):
            _put(full, rows, new)
            continue
        if full.shape[1:] != new.shape[1:]:
            grow = [max(a, b) - a for a, b in zip(full.shape[1:], new.shape[1:], strict=True)]
            full = F.pad(full, [x for g in reversed(grow) for x in (0, g)])
            state[key] = full
            grow = [a - b for a, b in zip(full.shape[1:], new.shape[1:], strict=True)]
            new = F.pad(new, [x for g in reversed(grow) for x in (0, g)])
        full.index_copy_(0, rows, new.to(full.dtype))


def _cat(states: list):
    """Nested decoding states of several batches, stacked along the batch axis."""
    first = states[0]
    if isinstance(first, dict):
        if _tensors_only(first):
            return concat_states(states)
        return {k: _cat([s[k] for s in states]) for k in first}
    return [_cat([s[i] for s in states]) for i in range(len(first))]


def _documents(seq_idx: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """(b, l) document numbers, increasing over the whole batch in row order (each row starts a new one)."""
    starts = torch.zeros(batch, length, dtype=torch.bool, device=device)
    starts[:, 0] = True
    if seq_idx is not None:
        starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts.flatten().long().cumsum(0).view(batch, length) - 1


def _grid(counts: torch.Tensor, cap: int):
    """Where the packed chunks of rows with ``counts`` (b,) chunks each go in a grid of rows of at most ``cap``
    positions: consecutive rows share a grid row while they fit, so attention compares about ``cap`` positions with
    each other rather than every chunk of the batch with every other. Returns (grid row (n,), column (n,), shape)."""
    group, fill, groups, bases = 0, 0, [], []
    for n in counts.tolist():
        if fill and fill + n > cap:
            group, fill = group + 1, 0
        groups.append(group)
        bases.append(fill)
        fill += n
    device = counts.device
    rows = torch.repeat_interleave(torch.tensor(groups, device=device), counts)
    first = torch.repeat_interleave(counts.cumsum(0) - counts, counts)  # packed index of each row's first chunk
    cols = torch.repeat_interleave(torch.tensor(bases, device=device), counts) + torch.arange(
        len(rows), device=device) - first
    width = int(cols.max()) + 1
    return rows, cols, (group + 1, width)


class _Network(nn.Module):
    """The layers of one layout string at one width, then an RMSNorm. Runs of layers with and without an MLP are
    each a :class:`Backbone`; the decoding state is the list of every layer's state."""

    def __init__(self, cfg: HNetConfig, stage: int, text: str, *, device=None, dtype=None):
        super().__init__()
        width = cfg.d_model[stage]
        runs: list[tuple[list[str], bool]] = []
        for kind, mlp in parse_layers(text):
            if runs and runs[-1][1] == mlp:
                runs[-1][0].append(kind)
            else:
                runs.append(([kind], mlp))
        spec = cfg.layer_spec()
        self.parts = nn.ModuleList(
            Backbone(ByteLMConfig(**{**spec, "d_mlp": cfg.mlp_hidden(stage) if mlp else 0}, d_model=width,
                                  layers=kinds), device=device, dtype=dtype)
            for kinds, mlp in runs
        )
        self.norm = RMSNorm(width, eps=cfg.norm_eps, device=device, dtype=dtype)
        self.has_attention = any(kind == "attention" for kinds, _ in runs for kind in kinds)

    def residual_adds(self) -> int:
        return sum(len(p.layers) * (1 if p.layers[0].mlp is None else 2) for p in self.parts)

    def _split(self, state):
        out, i = [], 0
        for part in self.parts:
            out.append(None if state is None else state[i : i + len(part.layers)])
            i += len(part.layers)
        return out

    def allocate_inference_state(self, batch: int, dtype=None, device=None) -> list:
        return [s for part in self.parts for s in part.allocate_inference_state(batch, dtype, device)]

    def forward(self, hidden, seq_idx=None, state=None, return_state=False):
        """(b, l, width) -> (b, l, width), and the new state (None unless ``return_state``)."""
        new = []
        for part, init in zip(self.parts, self._split(state), strict=True):
            out = part(hidden, seq_idx=seq_idx, initial_states=init, return_states=return_state)
            hidden, states = out if return_state else (out, [])
            new += states
        return self.norm(hidden), (new if return_state else None)

    def step(self, hidden: torch.Tensor, state: list) -> torch.Tensor:
        """(b, width) -> (b, width); ``state`` is updated in place."""
        for part, st in zip(self.parts, self._split(state), strict=True):
            hidden = part.step(hidden, st)
        return self.norm(hidden)


class _Stage(nn.Module):
    """One chunking stage: encoder, routing, main network (a network or the next stage), smoothing, decoder.

    Decoding state: ``{"encoder": [...], "route": {...}, "main": [...] or the next stage's dict,
    "smooth": {"z": (b, d) float32, the smoothed output of the current chunk}, "decoder": [...]}``.
    """

    def __init__(self, cfg: HNetConfig, stage: int, layout: list, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        encoder, inner, decoder = layout
        self.width, inner_width = cfg.d_model[stage], cfg.d_model[stage + 1]
        self.chunk_size, self.backend = cfg.chunk_size, cfg.backend
        self.encoder = _Network(cfg, stage, encoder, **kw)
        self.router = RoutingModule(self.width, **kw)
        nested = len(inner) == 3
        self.main = _Stage(cfg, stage + 1, inner, **kw) if nested else _Network(cfg, stage + 1, inner[0], **kw)
        self.depth = 1 + (self.main.depth if nested else 0)
        # The main network's wider input: the chunk's vector, then a learned vector (the main network's output is
        # read back from its first ``width`` channels).
        self.pad = nn.Parameter(torch.zeros(inner_width - self.width, **kw)) if inner_width > self.width else None
        self.skip = nn.Linear(self.width, self.width, bias=False, **kw)
        nn.init.zeros_(self.skip.weight)
        self.decoder = _Network(cfg, stage, decoder, **kw)

    def networks(self) -> list[_Network]:
        inner = self.main.networks() if isinstance(self.main, _Stage) else [self.main]
        return [self.encoder, self.decoder, *inner]

    def _widen(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        return torch.cat([x, self.pad.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)

    def allocate_inference_state(self, batch: int, dtype=None, device=None) -> dict:
        device = self.skip.weight.device if device is None else device
        return {
            "encoder": self.encoder.allocate_inference_state(batch, dtype, device),
            "route": self.router.allocate_inference_state(batch, dtype, device),
            "main": self.main.allocate_inference_state(batch, dtype, device),
            "smooth": {"z": torch.zeros(batch, self.width, dtype=torch.float32, device=device)},
            "decoder": self.decoder.allocate_inference_state(batch, dtype, device),
        }

    def _chunks(self, x, docs, p, main_state, z0, keep, rows=None):
        """The main network and the smoothing over one row of packed chunks: x (1, n, inner width), docs and p
        (1, n) -> z (1, n, width), the main network's state, the last z (1, width) and the inner routes. With
        ``rows`` (from :func:`_grid`), an innermost main network runs on the chunks laid out in that grid."""
        if x.shape[1] == 0:  # a continued row without a new chunk: nothing changes
            empty = p.new_zeros(0)
            return x.new_zeros(1, 0, self.width), main_state, z0, [(empty, empty.bool())] * (self.depth - 1)
        if isinstance(self.main, _Stage):
            out, main_state, routes = self.main(x, docs, main_state, keep)
        elif rows is not None:
            r, c, shape = rows
            grid = x.new_zeros(*shape, x.shape[-1]).index_put_((r, c), x[0])
            grid_docs = docs.new_full(shape, int(docs.max()) + 1).index_put_((r, c), docs[0])  # tails: one more doc
            out, routes = self.main(grid, grid_docs)[0][r, c][None], []
        else:
            (out, main_state), routes = self.main(x, docs, main_state, keep), []
        chunk_size = self.chunk_size or (256 if x.device.type == "cuda" else 64)
        z = smooth(out[..., : self.width], p, docs, z0, chunk_size=chunk_size, backend=self.backend)
        return z, main_state, z[:, -1], routes

    def forward(self, hidden, seq_idx=None, state=None, return_state=False):
        """hidden (b, l, width) -> (b, l, width), the new state (None unless ``return_state``), and the routing of
        this stage and the inner ones: a list of (p, boundary), each flattened over that stage's positions."""
        batch, length = hidden.shape[:2]
        keep = return_state
        st = state or {}
        enc, enc_state = self.encoder(hidden, seq_idx, st.get("encoder"), keep)
        p = self.router(enc, seq_idx, st.get("route"), keep)
        p, route_state = p if keep else (p, None)
        boundary = p >= 0.5
        x = self._widen(enc[boundary])  # (n, inner width), rows one after another
        docs = _documents(seq_idx, batch, length, hidden.device)[boundary]  # (n,)
        pb = p[boundary]
        if state is None and not keep:  # the chunks of every row packed together
            # Attention compares every chunk of a row with every other, so an attention main network gets the
            # chunks in grid rows of about ``length``; SSM layers take all of them as one packed row (no padding).
            use_grid = isinstance(self.main, _Network) and self.main.has_attention
            grid = _grid(boundary.sum(1), length) if use_grid else None
            z, main_state, _, routes = self._chunks(x[None], docs[None], pb[None], None, None, False, grid)
            z, z_last = z[0], None
        else:  # each row continues its own state
            zs, main_states, lasts, per_row = [], [], [], []
            starts = [0, *boundary.sum(1).cumsum(0).tolist()]
            for r in range(batch):
                piece = slice(starts[r], starts[r + 1])
                rows = torch.tensor([r], device=hidden.device)
                main_r = None if state is None else _take(st["main"], rows)
                z0 = None if state is None else st["smooth"]["z"][r : r + 1]
                z_r, main_r, last_r, routes_r = self._chunks(x[None, piece], docs[None, piece], pb[None, piece],
                                                             main_r, z0, keep)
                zs.append(z_r[0])
                main_states.append(main_r)
                lasts.append(last_r)
                per_row.append(routes_r)
            z = torch.cat(zs)
            main_state, z_last = (_cat(main_states), torch.cat(lasts)) if keep else (None, None)
            routes = [tuple(torch.cat(parts) for parts in zip(*(rr[i] for rr in per_row), strict=True))
                      for i in range(self.depth - 1)]
        carried = None if state is None else st["smooth"]["z"]
        up = plug_back(z, boundary, carried)  # (b, l, width)
        mixed = up * confidence(p, boundary)[..., None] + self.skip(enc)
        out, dec_state = self.decoder(mixed, seq_idx, st.get("decoder"), keep)
        new = None
        if keep:
            new = {"encoder": enc_state, "route": route_state, "main": main_state, "smooth": {"z": z_last},
                   "decoder": dec_state}
        return out, new, [(p.flatten(), boundary.flatten()), *routes]

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One symbol: hidden (b, width) -> (b, width). The main network steps only for rows at a boundary."""
        enc = self.encoder.step(hidden, state["encoder"])
        p = self.router.step(enc, state["route"])
        boundary = p >= 0.5
        z = state["smooth"]["z"]
        if bool(boundary.any()):
            rows = boundary.nonzero().squeeze(1)
            x = self._widen(enc.index_select(0, rows))
            if len(rows) == len(boundary):
                out = self.main.step(x, state["main"])
            else:
                part = _take(state["main"], rows)
                out = self.main.step(x, part)
                _put(state["main"], rows, part)
            full = z.new_zeros(z.shape).index_copy_(0, rows, out[:, : self.width].to(z.dtype))
            smooth_step(z, full, p, boundary)
        # The straight-through confidence is exactly 1 in the forward pass.
        return self.decoder.step(z + self.skip(enc), state["decoder"])


class HNet(PretrainedModel):
    """A hierarchical language model whose chunk boundaries are learned; see :class:`HNetConfig` and docs/hnet.md.

    Same contract as :class:`rawseq.ByteLM`: ``model(ids, targets, seq_idx=..., initial_states=...,
    return_states=...)``, ``prefill``, ``prefill_ragged``, ``step``, ``generate``, ``save_pretrained``.
    """

    config_class = HNetConfig

    def __init__(self, config: HNetConfig, *, device=None, dtype=None):
        super().__init__()
        if not isinstance(config, HNetConfig):
            raise TypeError(f"HNet needs an HNetConfig, got {type(config).__name__}")
        self.config = config
        kw = {"device": device, "dtype": dtype}
        vocab, width = config.total_vocab, config.d_model[0]
        self.embed = nn.Embedding(vocab, width, **kw)
        self.stage = _Stage(config, 0, config.layout, **kw)
        self.lm_head = None if config.tie_embeddings else nn.Linear(width, vocab, bias=False, **kw)
        self._init_weights()
        self._set_lr_scales()

    @torch.no_grad()
    def _init_weights(self):
        std = self.config.initializer_range
        nn.init.normal_(self.embed.weight, std=std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)
        for net in self.stage.networks():  # scale what writes into each network's residual stream
            scale = 1 / math.sqrt(net.residual_adds())
            for name, p in net.named_parameters():
                if name.endswith("out_proj.weight") or name.endswith("mlp.w_out.weight"):
                    p *= scale
        stage = self.stage
        while isinstance(stage, _Stage):
            # Weight decay would shrink W_q, W_k towards zero; the cosine only sees their directions.
            for p in stage.router.parameters():
                p._no_weight_decay = True
            stage = stage.main

    def _set_lr_scales(self):
        """``_lr_scale`` of every parameter: its depth's ``lr_multiplier``, times ``routing_lr_multiplier`` for the
        routing projections. Those act only through a cosine, so their length never matters and Adam's steps turn
        them by a fixed angle; a larger rate lets the routing settle on decisive cuts instead of trailing the
        encoder it reads (docs/hnet.md)."""
        mult = self.config.lr_multiplier or [1.0] * len(self.config.d_model)
        for p in self.parameters():
            p._lr_scale = float(mult[0])
        stage, i = self.stage, 0
        while isinstance(stage, _Stage):
            for p in stage.main.parameters():
                p._lr_scale = float(mult[i + 1])
            if stage.pad is not None:
                stage.pad._lr_scale = float(mult[i + 1])
            for p in stage.router.parameters():
                p._lr_scale = float(mult[i]) * self.config.routing_lr_multiplier
            stage, i = stage.main, i + 1

    @property
    def vocab_size(self) -> int:
        return self.embed.num_embeddings

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden.to(weight.dtype), weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        seq_idx: torch.Tensor | None = None,
        initial_states: dict | None = None,
        return_states: bool = False,
    ) -> HNetOutput:
        """Logits for every position, the routing statistics, and the loss when ``targets`` are given.

        Args:
            input_ids: (b, l) symbol ids, l >= 1.
            targets: (b, l) the id that follows each input; ``IGNORE_INDEX`` and ``pad_id`` are ignored.
            seq_idx: (b, l) document ids of packed rows; documents never see each other, and each starts a chunk.
            initial_states: states to continue from (from ``return_states``, :meth:`prefill` or
                :meth:`allocate_inference_state`).
            return_states: also return the states after the last position.

        Returns:
            :class:`HNetOutput`; ``loss`` = prediction loss + ``ratio_loss_weight`` * sum of the stages' ratio
            losses, ``bits_per_byte`` the prediction loss alone in bits.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, length) with length >= 1, got {tuple(input_ids.shape)}")
        if seq_idx is not None and seq_idx.shape != input_ids.shape:
            raise ValueError(f"seq_idx {tuple(seq_idx.shape)} must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}")
        hidden, states, routes = self.stage(self.embed(input_ids), seq_idx, initial_states, return_states)
        logits = self._logits(hidden)
        ratios = torch.stack([ratio_loss(p, b, n) for (p, b), n in zip(routes, self.config.ratio, strict=True)])
        with torch.no_grad():
            chunks = torch.stack([b.sum() for _, b in routes]).float()
            bytes_per_chunk = input_ids.numel() / chunks
            mid = torch.stack([((p >= 0.4) & (p <= 0.6)).float().mean() for p, _ in routes])
            probs, seen = [], torch.ones_like(input_ids, dtype=torch.bool)
            for p, b in routes:
                probs.append(torch.zeros(input_ids.shape, device=p.device).masked_scatter(seen, p.detach()))
                seen = seen.masked_scatter(seen, b)
        loss = bpb = None
        if targets is not None:
            if self.config.pad_id is not None:
                targets = targets.masked_fill(targets == self.config.pad_id, IGNORE_INDEX)
            ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
            bpb = ce / math.log(2)
            loss = ce + self.config.ratio_loss_weight * ratios.sum()
        return HNetOutput(logits, loss, bpb, states, ratios, bytes_per_chunk, mid, probs)

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> dict:
        """Empty decoding states for ``batch`` streams (nested: see ``_Stage``)."""
        return self.stage.allocate_inference_state(batch, dtype, device)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None = None,
                states: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Run prompts of equal length in parallel: logits of the last position (b, vocab) and the states."""
        out = self(input_ids, seq_idx=seq_idx, initial_states=states, return_states=True)
        return out.logits[:, -1], out.states

    @torch.no_grad()
    def prefill_ragged(self, prompts: list[list[int]]) -> tuple[torch.Tensor, dict]:
        """Prefill prompts of different lengths (those of one length together); rows in the order of ``prompts``."""
        device = self.embed.weight.device
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {i} is empty; give at least one symbol (for example bos_id)")
            groups.setdefault(len(prompt), []).append(i)
        order, logits, states = [], [], []
        for rows in groups.values():
            group_logits, group_states = self.prefill(torch.tensor([prompts[i] for i in rows], device=device))
            order += rows
            logits.append(group_logits)
            states.append(group_states)
        inverse = torch.empty(len(order), dtype=torch.long, device=device)
        inverse[torch.tensor(order, device=device)] = torch.arange(len(order), device=device)
        return torch.cat(logits).index_select(0, inverse), _take(_cat(states), inverse)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, states: dict) -> torch.Tensor:
        """Advance every stream by one symbol: input_ids (b,) -> logits (b, vocab); ``states`` change in place."""
        return self._logits(self.stage.step(self.embed(input_ids), states))

    def generate(self, prompts, max_new_bytes: int | None = None, **kwargs):
        """Sample continuations; see :func:`rawseq.generation.generate` for the arguments."""
        from rawseq.generation import generate

        return generate(self, prompts, max_new_bytes, **kwargs)


register(HNetConfig, HNet)
