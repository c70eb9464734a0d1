"""Triton backend of SSD: ``kernels.py`` (the jit kernels), ``launch.py`` (launchers and entry points),
``variants.py`` (the ahead-of-time compile table read by ``python -m rawseq.kernels.aot``)."""

from .launch import ssd_bwd, ssd_fwd, ssd_step_triton, ssd_triton

__all__ = ["ssd_bwd", "ssd_fwd", "ssd_step_triton", "ssd_triton"]
