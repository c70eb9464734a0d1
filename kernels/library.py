"""The sequence ops registered with ``torch.library``, so that ``torch.compile`` sees each as one node.

Each op is a custom op for the forward (``rawseq::selective_scan``, ``rawseq::ssd``, ``rawseq::causal_conv1d`` and
``rawseq::mamba3_core``, Mamba-3's chunked core after its differentiable discretization) and one for the backward
(``..._backward``), joined by ``register_autograd`` and given fake (meta) implementations that know every output's
shape without running anything. The backend is a string argument: ``"torch"`` runs the chunked CPU code
(``kernels/<op>/chunked.py``: ``<op>_forward`` and ``<op>_backward``, for Mamba-3 ``mamba3_core_forward`` and
``mamba3_core_backward``), ``"triton"`` the launch functions of the GPU kernels, which have no autograd of their own
(``kernels/<op>/triton``: ``<op>_fwd`` and ``<op>_bwd``), through small adapters that give both the same arguments.
The public functions (``rawseq.kernels.selective_scan`` and the others) check their arguments and call
:func:`selective_scan`, :func:`ssd`, :func:`causal_conv1d` or :func:`mamba3_core` here; the ``naive`` backend is
plain PyTorch that autograd differentiates, and does not come here.

A forward returns, besides the op's outputs, what its backward needs that is not an input (the states entering each
chunk, an output before its gate or activation): a custom op cannot keep anything else between the two. The
backward recomputes the rest from the inputs, as the chunked backward always has.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from rawseq.kernels.common import float_dtype_of

__all__ = ["causal_conv1d", "mamba3_core", "selective_scan", "ssd"]

_Optional = Tensor | None


def _module(op: str, backend: str):
    """``kernels/<op>/chunked.py`` for ``"torch"``, the op's triton module for ``"triton"``."""
    return importlib.import_module(f"rawseq.kernels.{op}.{'chunked' if backend == 'torch' else 'triton'}")


def _impl(op: str, kind: str, backend: str):
    """``<op>_<kind>`` of the op's chunked module for "torch", or the Triton adapter below of the same arguments."""
    if backend == "torch":
        return getattr(_module(op, backend), f"{op}_{kind}")
    if backend == "triton":
        return _TRITON[op, kind]
    raise ValueError(f"backend={backend!r}: the registered ops run 'torch' or 'triton'")


def _empty(t: Tensor) -> Tensor:
    return t.new_empty(0)


def _grads_or_empty(grads, x):
    """Backward ops return a tensor per input: an empty one stands for an absent input's gradient."""
    return tuple(_empty(x) if g is None else g.contiguous() for g in grads)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _fake_grads(inputs, x):
    return tuple(x.new_empty(0) if t is None else t.new_empty(t.shape) for t in inputs)


def _contiguous(outputs) -> tuple:
    """Every output of an op contiguous, as its fake implementation describes it."""
    return tuple(t.contiguous() for t in outputs)



@torch.library.custom_op("rawseq::selective_scan", mutates_args=())
def _selective_scan_op(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: _Optional, z: _Optional, dt_bias: _Optional,
    initial_state: _Optional, seq_idx: _Optional, dt_softplus: bool, reverse: bool, chunk_size: int, backend: str,
    for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, final state, states kept for the backward, y before gating or an empty tensor)."""
    # The chunked scan keeps its chunk states anyway; the Triton forward stores its tile states only when asked.
    last = for_backward if backend == "triton" else chunk_size
    return _contiguous(_impl("selective_scan", "forward", backend)(x, dt, A, B, C, D, z, dt_bias, initial_state,
                                                                   seq_idx, dt_softplus, reverse, last))


@_selective_scan_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse, chunk_size, backend,
      for_backward):
    batch, length, channels = x.shape
    groups, n = B.shape[2], B.shape[3]
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    if backend == "triton":
        tiles = 0
        if for_backward:
            rows = _module("selective_scan", "triton").launch.block_config(x.device, n, channels // groups)[0]
            tiles = -(-length // rows)
        return (x.new_empty(x.shape), x.new_empty(batch, channels, n, dtype=torch.float32),
                x.new_empty(batch, tiles, channels, n, dtype=torch.float32), _empty(x))
    p = channels // groups
    ypre = x.new_empty(length, batch, groups, p, dtype=f) if z is not None else x.new_empty(0, dtype=f)
    return (x.new_empty(x.shape), x.new_empty(batch, channels, n, dtype=f),
            x.new_empty(-(-length // chunk_size), batch, groups, p, n, dtype=f), ypre)


@torch.library.custom_op("rawseq::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(
    gy: Tensor, gfinal: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: _Optional, z: _Optional,
    dt_bias: _Optional, initial_state: _Optional, seq_idx: _Optional, states: Tensor, ypre: Tensor, dt_softplus: bool,
    reverse: bool, chunk_size: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (x, dt, A, B, C, D, z, dt_bias, initial_state); an empty tensor for an absent input."""
    return _grads_or_empty(_impl("selective_scan", "backward", backend)(
        gy, gfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states, ypre, dt_softplus, reverse,
        chunk_size), x)


@_selective_scan_backward_op.register_fake
def _(gy, gfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states, ypre, dt_softplus, reverse,
      chunk_size, backend):
    return _fake_grads((x, dt, A, B, C, D, z, dt_bias, initial_state), x)


def _selective_scan_setup(ctx, inputs, output):
    x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse, chunk_size, backend, _ = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, output[2], output[3])
    ctx.options = (dt_softplus, reverse, chunk_size, backend)
    ctx.mark_non_differentiable(output[2], output[3])


def _selective_scan_backward(ctx, gy, gfinal, *_):
    x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states, ypre = ctx.saved_tensors
    grads = _selective_scan_backward_op(gy, gfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states,
                                        ypre, *ctx.options)
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_state)
    return (*(None if t is None else g for g, t in zip(grads, inputs)), None, None, None, None, None, None)


_selective_scan_op.register_autograd(_selective_scan_backward, setup_context=_selective_scan_setup)


def selective_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse, chunk, backend):
    """The registered op for a checked call of :func:`rawseq.kernels.selective_scan`, with ``chunk`` the CPU scan's
    time chunk; returns (y, final_state)."""
    keep = _needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_state)
    y, final, _, _ = _selective_scan_op(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse,
                                        chunk, backend, keep)
    return y, final


def _selective_scan_triton_forward(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse,
                                   for_backward):
    y, final, states = _module("selective_scan", "triton").selective_scan_fwd(
        x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse, store_states=for_backward)
    return y, final, states, _empty(x)


def _selective_scan_triton_backward(gy, gfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states,
                                    ypre, dt_softplus, reverse, chunk_size):
    return _module("selective_scan", "triton").selective_scan_bwd(
        gy, gfinal, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse, states)



@torch.library.custom_op("rawseq::ssd", mutates_args=())
def _ssd_op(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: _Optional, z: _Optional, dt_bias: _Optional,
    initial_state: _Optional, seq_idx: _Optional, dt_softplus: bool, reverse: bool, chunk_size: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, final state, states entering each chunk)."""
    return _contiguous(_impl("ssd", "forward", backend)(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx,
                                                        dt_softplus, reverse, chunk_size))


@_ssd_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse, chunk_size, backend):
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2], B.shape[3]
    if backend == "triton":
        chunks = -(-length // _module("ssd", "triton").launch.CHUNK)
        return (x.new_empty(x.shape), x.new_empty(batch, heads, headdim, n, dtype=torch.float32),
                x.new_empty(batch, heads, chunks, headdim, n))
    f = float_dtype_of(x, dt, A, B, C, D, z, dt_bias, initial_state)
    Q = min(chunk_size, max(1, length))
    chunks = max(1, -(-length // Q))
    return (x.new_empty(x.shape), x.new_empty(batch, heads, headdim, n, dtype=f),
            x.new_empty(batch, chunks, groups, heads // groups, headdim, n, dtype=f))


@torch.library.custom_op("rawseq::ssd_backward", mutates_args=())
def _ssd_backward_op(
    gy: Tensor, gfinal: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: _Optional, z: _Optional,
    dt_bias: _Optional, initial_state: _Optional, seq_idx: _Optional, states: Tensor, dt_softplus: bool,
    reverse: bool, chunk_size: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (x, dt, A, B, C, D, z, dt_bias, initial_state); an empty tensor for an absent input."""
    return _grads_or_empty(_impl("ssd", "backward", backend)(gy, gfinal, x, dt, A, B, C, D, z, dt_bias, initial_state,
                                                             seq_idx, states, dt_softplus, reverse, chunk_size), x)


@_ssd_backward_op.register_fake
def _(gy, gfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states, dt_softplus, reverse, chunk_size,
      backend):
    return _fake_grads((x, dt, A, B, C, D, z, dt_bias, initial_state), x)


def _ssd_setup(ctx, inputs, output):
    x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse, chunk_size, backend = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, output[2])
    ctx.options = (dt_softplus, reverse, chunk_size, backend)
    ctx.mark_non_differentiable(output[2])


def _ssd_backward(ctx, gy, gfinal, _):
    x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states = ctx.saved_tensors
    grads = _ssd_backward_op(gy, gfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states,
                             *ctx.options)
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_state)
    return (*(None if t is None else g for g, t in zip(grads, inputs)), None, None, None, None, None)


_ssd_op.register_autograd(_ssd_backward, setup_context=_ssd_setup)


def ssd(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx, reverse, chunk_size, backend):
    """The registered op for a checked call of :func:`rawseq.kernels.ssd`; returns (y, final_state)."""
    y, final, _ = _ssd_op(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse, chunk_size,
                          backend)
    return y, final


def _ssd_triton_forward(x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, dt_softplus, reverse, chunk_size):
    return _module("ssd", "triton").ssd_fwd(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, seq_idx,
                                            reverse)


def _ssd_triton_backward(gy, gfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, seq_idx, states, dt_softplus,
                         reverse, chunk_size):
    return _module("ssd", "triton").ssd_bwd(gy, gfinal, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state,
                                            seq_idx, reverse, states)



@torch.library.custom_op("rawseq::causal_conv1d", mutates_args=())
def _causal_conv1d_op(
    x: Tensor, weight: Tensor, bias: _Optional, initial_state: _Optional, seq_idx: _Optional, activation: str | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, final window, the output before the activation or an empty tensor)."""
    return _contiguous(_impl("causal_conv1d", "forward", backend)(x, weight, bias, activation, initial_state, seq_idx))


@_causal_conv1d_op.register_fake
def _(x, weight, bias, initial_state, seq_idx, activation, backend):
    batch, length, channels = x.shape
    final = x.new_empty(batch, channels, weight.shape[1] - 1)
    if backend == "triton" or activation != "silu":
        return x.new_empty(x.shape), final, _empty(x)
    f = float_dtype_of(x, weight, bias, initial_state)
    return x.new_empty(x.shape), final, x.new_empty(batch, length, channels, dtype=f)


@torch.library.custom_op("rawseq::causal_conv1d_backward", mutates_args=())
def _causal_conv1d_backward_op(
    gy: Tensor, gfinal: Tensor, x: Tensor, weight: Tensor, bias: _Optional, initial_state: _Optional,
    seq_idx: _Optional, pre: Tensor, activation: str | None, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (x, weight, bias, initial_state); an empty tensor for an absent input."""
    return _grads_or_empty(_impl("causal_conv1d", "backward", backend)(gy, gfinal, x, weight, bias, activation,
                                                                       initial_state, seq_idx, pre), x)


@_causal_conv1d_backward_op.register_fake
def _(gy, gfinal, x, weight, bias, initial_state, seq_idx, pre, activation, backend):
    return _fake_grads((x, weight, bias, initial_state), x)


def _causal_conv1d_setup(ctx, inputs, output):
    x, weight, bias, initial_state, seq_idx, activation, backend = inputs
    ctx.save_for_backward(x, weight, bias, initial_state, seq_idx, output[2])
    ctx.options = (activation, backend)
    ctx.mark_non_differentiable(output[2])


def _causal_conv1d_backward(ctx, gy, gfinal, _):
    x, weight, bias, initial_state, seq_idx, pre = ctx.saved_tensors
    grads = _causal_conv1d_backward_op(gy, gfinal, x, weight, bias, initial_state, seq_idx, pre, *ctx.options)
    inputs = (x, weight, bias, initial_state)
    return (*(None if t is None else g for g, t in zip(grads, inputs)), None, None, None)


_causal_conv1d_op.register_autograd(_causal_conv1d_backward, setup_context=_causal_conv1d_setup)


def causal_conv1d(x, weight, bias, activation, initial_state, seq_idx, backend):
    """The registered op for a checked call of :func:`rawseq.kernels.causal_conv1d`; returns (y, final_state)."""
    y, final, _ = _causal_conv1d_op(x, weight, bias, initial_state, seq_idx, activation, backend)
    return y, final


def _causal_conv1d_triton_forward(x, weight, bias, activation, initial_state, seq_idx):
    y, final = _module("causal_conv1d", "triton").causal_conv1d_fwd(x, weight, bias, activation, initial_state,
                                                                    seq_idx)
    return y, final, _empty(x)


def _causal_conv1d_triton_backward(gy, gfinal, x, weight, bias, activation, initial_state, seq_idx, pre):
    return _module("causal_conv1d", "triton").causal_conv1d_bwd(gy, gfinal, x, weight, bias, activation,
                                                                initial_state, seq_idx)


@torch.library.custom_op("rawseq::mamba3_core", mutates_args=())
def _mamba3_core_op(
    v: Tensor, q: Tensor, k: Tensor, a: Tensor, gamma: Tensor, w: Tensor, S0: _Optional, seg: _Optional,
    chunk_size: int, backend: str, dot_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-3's chunked core after discretization (``kernels/mamba3/chunked.py``): (y, final state, states entering
    each chunk)."""
    extra = (dot_dtype,) if backend == "triton" else ()
    return _contiguous(_impl("mamba3", "core_forward", backend)(v, q, k, a, gamma, w, S0, seg, chunk_size, *extra))


@_mamba3_core_op.register_fake
def _(v, q, k, a, gamma, w, S0, seg, chunk_size, backend, dot_dtype):
    batch, length, heads, rank, headdim = v.shape
    n = q.shape[-1]
    final = v.new_empty(batch, heads, headdim, n)
    if backend == "triton":
        chunks = -(-length // (_module("mamba3", "triton").launch.CHUNK_ROWS // rank))
        return v.new_empty(v.shape), final, v.new_empty(batch, heads, chunks, headdim, n, dtype=torch.float32)
    chunks = max(1, -(-length // min(chunk_size, max(1, length))))
    return v.new_empty(v.shape), final, v.new_empty(batch, chunks, heads, headdim, n)


@torch.library.custom_op("rawseq::mamba3_core_backward", mutates_args=())
def _mamba3_core_backward_op(
    gy: Tensor, gfinal: Tensor, v: Tensor, q: Tensor, k: Tensor, a: Tensor, gamma: Tensor, w: Tensor, S0: _Optional,
    seg: _Optional, states: Tensor, chunk_size: int, backend: str, dot_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (v, q, k, a, gamma, w, S0); an empty tensor for an absent S0."""
    extra = (dot_dtype,) if backend == "triton" else ()
    return _grads_or_empty(_impl("mamba3", "core_backward", backend)(gy, gfinal, v, q, k, a, gamma, w, S0, seg, states,
                                                                     chunk_size, *extra), v)


@_mamba3_core_backward_op.register_fake
def _(gy, gfinal, v, q, k, a, gamma, w, S0, seg, states, chunk_size, backend, dot_dtype):
    return _fake_grads((v, q, k, a, gamma, w, S0), v)


def _mamba3_core_setup(ctx, inputs, output):
    v, q, k, a, gamma, w, S0, seg, chunk_size, backend, dot_dtype = inputs
    ctx.save_for_backward(v, q, k, a, gamma, w, S0, seg, output[2])
    ctx.options = (chunk_size, backend, dot_dtype)
    ctx.mark_non_differentiable(output[2])


def _mamba3_core_backward(ctx, gy, gfinal, _):
    v, q, k, a, gamma, w, S0, seg, states = ctx.saved_tensors
    grads = _mamba3_core_backward_op(gy, gfinal, v, q, k, a, gamma, w, S0, seg, states, *ctx.options)
    return (*grads[:6], None if S0 is None else grads[6], None, None, None, None)


_mamba3_core_op.register_autograd(_mamba3_core_backward, setup_context=_mamba3_core_setup)


def mamba3_core(v, q, k, a, gamma, w, S0, seg, chunk_size, backend, dot_dtype=torch.float32):
    """The registered core for :func:`rawseq.kernels.mamba3.mamba3` on the torch or triton backend: (y, final
    state). ``dot_dtype``: the dtype of the Triton kernels' matrix products (ignored by the torch backend)."""
    y, final, _ = _mamba3_core_op(v, q, k, a, gamma, w, S0, seg, chunk_size, backend, dot_dtype)
    return y, final


def _mamba3_core_triton_forward(v, q, k, a, gamma, w, S0, seg, chunk_size, dot_dtype):
    return _module("mamba3", "triton").mamba3_core_fwd(v, q, k, a, gamma, w, S0, seg, dot_dtype)


def _mamba3_core_triton_backward(gy, gfinal, v, q, k, a, gamma, w, S0, seg, states, chunk_size, dot_dtype):
    return _module("mamba3", "triton").mamba3_core_bwd(gy, gfinal, v, q, k, a, gamma, w, S0, seg, states,
                                                              dot_dtype)


_TRITON = {
    ("selective_scan", "forward"): _selective_scan_triton_forward,
    ("selective_scan", "backward"): _selective_scan_triton_backward,
    ("ssd", "forward"): _ssd_triton_forward,
    ("ssd", "backward"): _ssd_triton_backward,
    ("causal_conv1d", "forward"): _causal_conv1d_triton_forward,
    ("causal_conv1d", "backward"): _causal_conv1d_triton_backward,
    ("mamba3", "core_forward"): _mamba3_core_triton_forward,
    ("mamba3", "core_backward"): _mamba3_core_triton_backward,
}
