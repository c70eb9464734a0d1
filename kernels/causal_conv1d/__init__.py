"""Depthwise causal 1-D convolution, ``causal_conv1d``, and its decoding step ``causal_conv1d_step``.

``naive.py`` is the specification, ``chunked.py`` the CPU path (the "torch" backend), ``triton.py`` the GPU kernels.
"""

from __future__ import annotations

import torch

from rawseq.kernels.causal_conv1d.naive import causal_conv1d_naive, causal_conv1d_step_naive
from rawseq.kernels.common import check_same_device, check_tensor, resolve_backend
from rawseq.kernels.common.checks import INT_DTYPES

__all__ = ["causal_conv1d", "causal_conv1d_step"]

_BACKENDS = ("naive", "torch", "triton")
_ACTIVATIONS = (None, "silu")


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {_ACTIVATIONS}")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    seq_idx: torch.Tensor | None = None,
    backend: str = "auto",
):
    """Depthwise causal convolution over time.

    Args:
        x: (batch, length, channels).
        weight: (channels, width); tap ``width - 1`` multiplies the current input.
        bias: (channels,) or None.
        activation: None or "silu".
        initial_state: (batch, channels, width - 1), the inputs that precede ``x``.
        return_final_state: also return the last ``width - 1`` inputs (batch, channels, width - 1).
        seq_idx: (batch, length) integer document ids; the window resets to zero wherever the id changes.
        backend: "auto", "naive", "torch" or "triton".

    Returns:
        y: (batch, length, channels) in ``x.dtype``, and with ``return_final_state`` the final window.
    """
    check_tensor("x", x, (None, None, None), "batch, length, channels")
    batch, length, channels = x.shape
    check_tensor("weight", weight, (channels, None), "channels, width")
    width = weight.shape[1]
    if width < 1:
        raise ValueError(f"weight has width {width}, expected at least 1")
    check_tensor("bias", bias, (channels,), "channels", optional=True)
    check_tensor("initial_state", initial_state, (batch, channels, width - 1), "batch, channels, width - 1",
                 optional=True)
    check_tensor("seq_idx", seq_idx, (batch, length), "batch, length", dtypes=INT_DTYPES, optional=True)
    _check_activation(activation)
    device = check_same_device(x=x, weight=weight, bias=bias, initial_state=initial_state, seq_idx=seq_idx)
    backend = resolve_backend(backend, device, op="causal_conv1d", available=_BACKENDS, dtype=x.dtype)
    args = (x, weight, bias, activation, initial_state, seq_idx)
    if backend == "naive":
        y, state = causal_conv1d_naive(*args)
    elif backend == "torch":
        from rawseq.kernels.causal_conv1d.chunked import causal_conv1d_torch

        y, state = causal_conv1d_torch(*args)
    else:
        from rawseq.kernels.causal_conv1d.triton import causal_conv1d_triton

        y, state = causal_conv1d_triton(*args)
    return (y, state) if return_final_state else y


def causal_conv1d_step(
    state: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Advance decoding streams by one input, shifting ``state`` (batch, channels, width - 1) in place.

    Args:
        state: (batch, channels, width - 1) the previous inputs, modified in place.
        x: (batch, channels). weight: (channels, width). bias: (channels,) or None.

    Returns:
        y: (batch, channels) in ``x.dtype``.
    """
    check_tensor("x", x, (None, None), "batch, channels")
    batch, channels = x.shape
    check_tensor("weight", weight, (channels, None), "channels, width")
    width = weight.shape[1]
    check_tensor("state", state, (batch, channels, width - 1), "batch, channels, width - 1")
    check_tensor("bias", bias, (channels,), "channels", optional=True)
    _check_activation(activation)
    device = check_same_device(state=state, x=x, weight=weight, bias=bias)
    backend = resolve_backend(backend, device, op="causal_conv1d_step", available=_BACKENDS, dtype=x.dtype)
    if backend == "triton":
        from rawseq.kernels.causal_conv1d.triton import causal_conv1d_step_triton

        return causal_conv1d_step_triton(state, x, weight, bias, activation)
    return causal_conv1d_step_naive(state, x, weight, bias, activation)
