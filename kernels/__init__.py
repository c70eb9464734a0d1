"""rawseq.kernels: the scan and convolution primitives (selective scan, SSD, Mamba-3, causal convolution), one
folder per op.

Every op has a ``naive`` backend (the executable specification), a ``torch`` backend (the fast CPU path) and a
``triton`` backend (GPU kernels); ``backend="auto"`` picks Triton for CUDA tensors and torch otherwise.
"""

from rawseq.kernels.causal_conv1d import causal_conv1d, causal_conv1d_step
from rawseq.kernels.mamba3 import Mamba3State, mamba3, mamba3_step
from rawseq.kernels.selective_scan import selective_scan, selective_scan_step
from rawseq.kernels.ssd import ssd, ssd_step

__all__ = ["Mamba3State", "causal_conv1d", "causal_conv1d_step", "mamba3", "mamba3_step", "selective_scan",
           "selective_scan_step", "ssd", "ssd_step"]
