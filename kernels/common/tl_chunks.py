"""Pieces shared by the chunked Triton kernels (``ssd``, ``mamba3``), as ``@triton.jit`` helpers inlined into the
kernels that call them.

A chunk holds ``ROWS`` rows; ``cs`` is the cumulative log-decay of its rows and ``seg`` the document (segment) of
each row, 0 for the document that enters the chunk. Two program layouts:

- a sequential kernel, grid (nstate blocks x headdim blocks, batch x heads), walks the chunks of one head with a
  (BLOCK_N, BLOCK_P) block of the transposed state in registers (:func:`state_block`);
- a chunk-parallel kernel, grid (chunks, headdim blocks, batch x heads), computes one chunk (:func:`chunk_block`).

Batch and head indices are int64, so that the offsets they start can pass 2**31.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def state_block(heads, headdim, nstate, stride_stn, stride_stp, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """The block of a sequential kernel: batch, head, the block's headdim and nstate offsets and masks, and its
    offsets and mask in a state tensor (strides ``stride_stn``, ``stride_stp``) and in a dense
    (batch, heads, headdim, nstate) tensor (the initial and final states and their gradients)."""
    npb = tl.cdiv(headdim, BLOCK_P)
    pid_n = tl.program_id(0) // npb
    pid_p = tl.program_id(0) % npb
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_p = offs_p < headdim
    mask_n = offs_n < nstate
    st_offs = offs_n[:, None] * stride_stn + offs_p[None, :] * stride_stp
    st_mask = mask_n[:, None] & mask_p[None, :]
    dense = (b * heads + h) * headdim * nstate + offs_n[:, None] + offs_p[None, :] * nstate
    return b, h, offs_p, offs_n, mask_p, mask_n, st_offs, st_mask, dense


@triton.jit
def chunk_block(heads, headdim, BLOCK_P: tl.constexpr):
    """The block of a chunk-parallel kernel: chunk, headdim block, batch, head, and the block's headdim offsets
    and mask."""
    c = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    return c, pid_p, b, h, offs_p, offs_p < headdim


@triton.jit
def chunk_ends(cs, seg, ROWS: tl.constexpr):
    """Decay of the entering state to each row (``ein``), to the chunk end (``e_end``) and of each row to the end
    (``to_end``), each 0 where a document starts in between; and the mask of the last row."""
    last = tl.arange(0, ROWS) == ROWS - 1
    cs_end = tl.sum(tl.where(last, cs, 0.0), 0)
    seg_end = tl.max(seg, 0)
    ein = tl.where(seg == 0, tl.exp(cs), 0.0)
    e_end = tl.where(seg_end == 0, tl.exp(cs_end), 0.0)
    to_end = tl.where(seg == seg_end, tl.exp(cs_end - cs), 0.0)
    return ein, e_end, to_end, last


@triton.jit
def pair_decay(pair, cs):
    """(ROWS, ROWS) ``exp(cs_i - cs_j)`` for the pairs ``(i, j)`` in ``pair``; an exact 0 elsewhere, selected
    before the exp (never a product of ``exp(cs_i)`` and ``exp(-cs_j)``)."""
    return tl.exp(tl.where(pair, cs[:, None] - cs[None, :], float("-inf")))
