"""Causal multi-head attention with rotary positions, grouped-query heads, an optional sliding window and a KV cache.

Documents packed into one row (``seq_idx``) never attend to each other, and rotary positions restart at each
document's first position, so a packed document sees exactly what it would see alone.

Decoding state: ``{"k": (b, cap, kv_heads, head_dim), "v": (b, cap, kv_heads, head_dim), "length": (b,) int64}``.
``length`` counts the positions cached per row (rows may differ). The key of position ``p`` lives in slot
``p % cap``: with a sliding window ``cap`` is the window, a ring buffer of constant size; without one the cache grows
(doubling) before it would wrap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rawseq.kernels.common import resets_from_seq_idx
from rawseq.layers.mixer import Mixer


def _rotate(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (GPT-NeoX half split). x (b, l, h, d), pos (b, l) -> (b, l, h, d)."""
    angles = pos.to(inv_freq.dtype)[..., None] * inv_freq  # (b, l, d / 2)
    cos = angles.cos()[:, :, None, :].to(x.dtype)
    sin = angles.sin()[:, :, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _doc_starts(seq_idx: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """(b, l) index of the first position of each position's document within this chunk."""
    idx = torch.arange(length, device=device).expand(batch, length)
    if seq_idx is None:
        return torch.zeros_like(idx)
    resets = resets_from_seq_idx(seq_idx)
    return torch.where(resets, idx, torch.zeros_like(idx)).cummax(dim=1).values


class Attention(Mixer):
    """Scaled-dot-product attention through ``F.scaled_dot_product_attention``.

    Args:
        d_model: model width.
        n_heads: query heads.
        n_kv_heads: key/value heads (grouped-query attention); defaults to ``n_heads``.
        head_dim: defaults to ``d_model // n_heads``; must be even (rotary pairs).
        window: sliding window (a query sees itself and ``window - 1`` earlier positions), or None.
        rope_base: rotary base frequency.
        causal: False for an encoder (bidirectional) layer, which attends within each whole document.
    """

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int | None = None,
        rope_base: float = 10000.0,
        causal: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_heads={n_kv_heads}")
        head_dim = d_model // n_heads if head_dim is None else head_dim
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for rotary positions")
        if window is not None and window < 1:
            raise ValueError(f"window={window} must be a positive int or None")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.window = window
        self.causal = causal
        kw = {"device": device, "dtype": dtype}
        self.qkv_proj = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias, **kw)
        inv_freq = 1.0 / rope_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def allocate_inference_state(self, batch: int, dtype: torch.dtype | None = None, device=None,
                                 capacity: int = 64) -> dict:
        """Empty KV cache for ``batch`` streams (``capacity`` slots; a sliding-window layer uses the window)."""
        dtype = self.qkv_proj.weight.dtype if dtype is None else dtype
        device = self.qkv_proj.weight.device if device is None else device
        cap = self.window if self.window is not None else max(1, capacity)
        shape = (batch, cap, self.n_kv_heads, self.head_dim)
        return {
            "k": torch.zeros(shape, dtype=dtype, device=device),
            "v": torch.zeros(shape, dtype=dtype, device=device),
            "length": torch.zeros(batch, dtype=torch.long, device=device),
        }

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One position: hidden (b, d_model) -> (b, d_model); the KV cache in ``state`` is updated in place.

        The new key and value are written into their slots first, then the query attends over the cache with a
        (b, cap) validity mask: no concatenation of the cache and no (query x key) position arithmetic, which
        :meth:`forward` needs for chunks and packed documents, and which dominates the cost of a batch-1 step on CPU.
        """
        if not self.causal:
            self._no_decoding()
        batch = hidden.shape[0]
        h, kvh = self.n_heads, self.n_kv_heads
        qkv = self.qkv_proj(hidden).view(batch, 1, h + 2 * kvh, self.head_dim)  # (b, 1, h + 2 kvh, hd)
        length = state["length"]  # (b,) positions cached so far: the new one is position ``length``
        qk = _rotate(qkv[:, :, : h + kvh], length[:, None], self.inv_freq)[:, 0]  # (b, h + kvh, hd)
        ck, cv = state["k"], state["v"]
        cap = ck.shape[1]
        new_length = length + 1
        if self.window is None and int(new_length.max()) > cap:  # grow (doubling) before a slot would be reused
            pad = (0, 0, 0, 0, 0, cap)
            ck, cv = F.pad(ck, pad), F.pad(cv, pad)
            cap *= 2
        rows = torch.arange(batch, device=hidden.device)
        slots = length % cap
        ck[rows, slots] = qk[:, h:]
        cv[rows, slots] = qkv[:, 0, h + kvh :]
        state.update(k=ck, v=cv, length=new_length)
        # Slots below the new length hold positions that the query sees; a full ring buffer holds exactly the window.
        mask = torch.arange(cap, device=hidden.device) < new_length[:, None]  # (b, cap)
        y = F.scaled_dot_product_attention(
            qk[:, :h, None],  # (b, h, 1, hd)
            ck.transpose(1, 2),  # (b, kvh, cap, hd)
            cv.transpose(1, 2),
            attn_mask=mask[:, None, None, :],
            enable_gqa=h != kvh,
        )
        return self.out_proj(y.reshape(batch, h * self.head_dim))

    def _mix(self, hidden, seq_idx, state, want_state):
        """Attend over a batch of sequences (b, l, d_model), continuing from the KV cache ``state`` if one is given;
        only the chunk's first document continues it, and the returned cache holds only the last document's keys."""
        batch, length, _ = hidden.shape
        device = hidden.device
        qkv = self.qkv_proj(hidden).unflatten(-1, (-1, self.head_dim))  # (b, l, d) -> (b, l, h + 2 kvh, hd)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)

        idx = torch.arange(length, device=device)
        starts = _doc_starts(seq_idx, batch, length, device)  # (b, l)
        first_doc = starts == 0
        offset = state["length"] if state is not None else torch.zeros(batch, dtype=torch.long, device=device)
        pos = idx - starts + offset[:, None] * first_doc  # (b, l) rotary positions, restarting per document
        q = _rotate(q, pos, self.inv_freq)
        k = _rotate(k, pos, self.inv_freq)

        plain = seq_idx is None and self.window is None and state is None
        if plain:
            mask = None
        else:
            same_doc = starts[:, :, None] == starts[:, None, :]  # (b, l, l)
            mask = same_doc
            if self.causal:
                mask = mask & (idx[None, :, None] >= idx[None, None, :])
            if self.window is not None:
                mask = mask & (idx[None, :, None] - idx[None, None, :] < self.window)
        keys, values = k, v
        if state is not None:
            cap = state["k"].shape[1]
            slots = torch.arange(cap, device=device)
            cached = offset[:, None]  # (b, 1)
            valid = slots[None, :] < cached  # (b, cap)
            slot_pos = slots + cap * torch.div(cached - 1 - slots, cap, rounding_mode="floor")  # (b, cap)
            cache_mask = valid[:, None, :] & first_doc[:, :, None]  # (b, l, cap)
            if self.window is not None:
                cache_mask = cache_mask & (pos[:, :, None] - slot_pos[:, None, :] < self.window)
            mask = torch.cat([cache_mask, mask], dim=-1)
            keys = torch.cat([state["k"], k], dim=1)
            values = torch.cat([state["v"], v], dim=1)

        # (b, l, h, hd) -> (b, h, l, hd); grouped kv heads are shared by n_heads / n_kv_heads query heads.
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=None if mask is None else mask[:, None],
            is_causal=plain and self.causal,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )
        y = self.out_proj(y.transpose(1, 2).flatten(2))
        if not want_state:
            return y, None
        return y, self._update_cache(state, k, v, seq_idx, starts, offset)

    def _update_cache(self, state, k, v, seq_idx, starts, offset):
        """A new cache holding ``state``'s positions and these keys and values (``state`` is not modified)."""
        batch, length = k.shape[:2]
        if state is None:
            state = self.allocate_inference_state(batch, k.dtype, k.device, capacity=length)
            offset = state["length"]
        ck, cv = state["k"], state["v"]
        if seq_idx is None:
            new_length = offset + length
        else:
            last = starts[:, -1]  # where each row's last document starts
            new_length = torch.where(last > 0, length - last, offset + length)
        cap = ck.shape[1]
        if self.window is None and int(new_length.max()) > cap:
            grow = max(int(new_length.max()), 2 * cap) - cap
            pad = (0, 0, 0, 0, 0, grow)
            ck, cv = F.pad(ck, pad), F.pad(cv, pad)
            cap += grow
        else:
            ck, cv = ck.clone(), cv.clone()
        if seq_idx is None:
            keep = min(length, cap)
            pos = offset[:, None] + torch.arange(length - keep, length, device=k.device)  # (b, keep)
            rows = torch.arange(batch, device=k.device)[:, None]
            ck[rows, pos % cap] = k[:, length - keep:]
            cv[rows, pos % cap] = v[:, length - keep:]
        else:
            for r, (s, n) in enumerate(zip(starts[:, -1].tolist(), new_length.tolist())):
                keep = min(length - s, cap)
                first = n - keep  # position of the first kept key
                slots = torch.arange(first, n, device=k.device) % cap
                ck[r, slots] = k[r, length - keep:]
                cv[r, slots] = v[r, length - keep:]
        return {"k": ck, "v": cv, "length": new_length}
