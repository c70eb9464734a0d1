"""Depthwise causal 1-D convolution, ``causal_conv1d``, and its decoding step ``causal_conv1d_step``.

``naive.py`` is the specification, ``chunked.py`` the CPU path and decoding step (the "torch" backend), ``triton``
the GPU kernels; ``rawseq.kernels.library`` registers the fast backends as one custom op.
"""

from __future__ import annotations

import torch

from rawseq.kernels import library
from rawseq.kernels.causal_conv1d.chunked import causal_conv1d_step_torch
from rawseq.kernels.causal_conv1d.naive import causal_conv1d_naive, causal_conv1d_step_naive
from rawseq.kernels.common import TensorArgs, resolve_backend, step_function
from rawseq.kernels.common.checks import INT_DTYPES

__all__ = ["causal_conv1d", "causal_conv1d_step"]

_BACKENDS = ("naive", "torch", "triton")
_ACTIVATIONS = (None, "silu")
# The window holds the width - 1 inputs before the current one; ``_check_window`` ties the two axes.
_ARGS = TensorArgs(
    {"x": "batch length channels", "weight": "channels width", "bias": "channels",
     "initial_state": "batch channels window", "seq_idx": "batch length"},
    optional=("bias", "initial_state", "seq_idx"), dtypes={"seq_idx": INT_DTYPES}, nonzero=("channels", "width"),
)
_STEP_ARGS = _ARGS.without("length", state="batch channels window", initial_state="", seq_idx="")
_WINDOW, _WIDTH = (_STEP_ARGS.axis_names.index(a) for a in ("window", "width"))
_STEPS = {"naive": causal_conv1d_step_naive, "torch": causal_conv1d_step_torch}


def _check_window(spec: TensorArgs, sizes: list, name: str, state, activation) -> None:
    """The window's length is the width less one, and the activation is known; a no-op when both hold."""
    window, width = sizes[spec.axis_names.index("window")], sizes[spec.axis_names.index("width")]
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {_ACTIVATIONS}")
    if window is not None and window != width - 1:
        batch, channels = state.shape[:2]
        raise ValueError(f"{name} has shape {tuple(state.shape)}, expected (batch, channels, width - 1) = "
                         f"({batch}, {channels}, {width - 1})")


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
    sizes, device = _ARGS.check(x, weight, bias, initial_state, seq_idx)
    _check_window(_ARGS, sizes, "initial_state", initial_state, activation)
    backend = resolve_backend(backend, device, op="causal_conv1d", available=_BACKENDS, dtype=x.dtype)
    args = (x, weight, bias, activation, initial_state, seq_idx)
    y, state = causal_conv1d_naive(*args) if backend == "naive" else library.causal_conv1d(*args, backend)
    return (y, state) if return_final_state else y


def causal_conv1d_step(
    state: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str = "auto",
    check: bool = True,
) -> torch.Tensor:
    """Advance decoding streams by one input, shifting ``state`` (batch, channels, width - 1) in place.

    Args:
        state: (batch, channels, width - 1) the previous inputs, modified in place.
        x: (batch, channels). weight: (channels, width). bias: (channels,) or None.
        check: False skips the argument checks for CPU tensors (for callers that build them, as layers do).

    Returns:
        y: (batch, channels) in ``x.dtype``.
    """
    device = x.device
    if check or device.type != "cpu":
        sizes, device = _STEP_ARGS.check(state, x, weight, bias)
        if sizes[_WINDOW] != sizes[_WIDTH] - 1 or activation not in _ACTIVATIONS:
            _check_window(_STEP_ARGS, sizes, "state", state, activation)
    return step_function("causal_conv1d", backend, device, x.dtype, _STEPS)(state, x, weight, bias, activation)
