"""Triton backend of the causal conv: ``kernels.py`` (the jit kernels), ``launch.py`` (launchers, autograd, entry
points), ``variants.py`` (the ahead-of-time compile table read by ``python -m rawseq.kernels.aot``)."""

from rawseq.kernels.causal_conv1d.triton.launch import (
    CausalConv1dFunction,
    causal_conv1d_bwd,
    causal_conv1d_fwd,
    causal_conv1d_step_triton,
    causal_conv1d_triton,
)

__all__ = [
    "CausalConv1dFunction",
    "causal_conv1d_bwd",
    "causal_conv1d_fwd",
    "causal_conv1d_step_triton",
    "causal_conv1d_triton",
]
