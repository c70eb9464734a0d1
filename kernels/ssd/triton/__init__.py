"""Triton backend of SSD: ``kernels.py`` (the jit kernels), ``launch.py`` (launchers, autograd, entry points),
``variants.py`` (the ahead-of-time compile table read by ``python -m rawseq.kernels.aot``)."""

from rawseq.kernels.ssd.triton.launch import SSDFunction, ssd_bwd, ssd_fwd, ssd_step_triton, ssd_triton

__all__ = ["SSDFunction", "ssd_bwd", "ssd_fwd", "ssd_step_triton", "ssd_triton"]
