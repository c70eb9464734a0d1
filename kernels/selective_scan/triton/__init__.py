"""Triton backend of the selective scan: ``kernels.py`` (the jit kernels), ``launch.py`` (launchers and entry
points), ``variants.py`` (the ahead-of-time compile table read by ``python -m rawseq.kernels.aot``)."""

from .launch import selective_scan_bwd, selective_scan_fwd, selective_scan_step_triton, selective_scan_triton

__all__ = ["selective_scan_bwd", "selective_scan_fwd", "selective_scan_step_triton", "selective_scan_triton"]
