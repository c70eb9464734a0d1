"""Triton backend of Mamba-3: ``kernels.py`` (the jit kernels), ``launch.py`` (launchers, the core's forward and
backward for the op registered in ``kernels/library.py``, entry points), ``variants.py`` (the ahead-of-time compile
table read by ``python -m rawseq.kernels.aot``)."""

from .launch import mamba3_core_bwd, mamba3_core_fwd, mamba3_step_triton, mamba3_triton

__all__ = ["mamba3_core_bwd", "mamba3_core_fwd", "mamba3_step_triton", "mamba3_triton"]
