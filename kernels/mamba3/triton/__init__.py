"""Triton backend of Mamba-3: ``kernels.py`` (the jit kernels), ``launch.py`` (launchers, the core's autograd
Function, entry points), ``variants.py`` (the ahead-of-time compile table read by ``python -m rawseq.kernels.aot``)."""

from .launch import Mamba3CoreTritonFunction, mamba3_step_triton, mamba3_triton

__all__ = ["Mamba3CoreTritonFunction", "mamba3_step_triton", "mamba3_triton"]
