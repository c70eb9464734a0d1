"""Triton backend of the causal conv: ``kernels.py`` (the jit kernels), ``launch.py`` (launchers and entry
points), ``variants.py`` (the ahead-of-time compile table read by ``python -m rawseq.kernels.aot``)."""

from .launch import causal_conv1d_bwd, causal_conv1d_fwd, causal_conv1d_step_triton, causal_conv1d_triton

__all__ = ["causal_conv1d_bwd", "causal_conv1d_fwd", "causal_conv1d_step_triton", "causal_conv1d_triton"]
