"""The SSM layers' causal convolution followed by SiLU."""

from __future__ import annotations

import torch.nn.functional as F

from rawseq.kernels import causal_conv1d


def causal_conv_silu(x, weight, bias, initial_state, seq_idx, backend):
    """``silu(causal_conv1d(x))`` and the final conv window; x (b, l, d) -> (b, l, d).

    Off the GPU the SiLU is applied here to a contiguous (b, l, d) copy: the torch backend's output is a transposed
    view, and SiLU's backward with mismatched strides is about 4x slower than with contiguous tensors (measured:
    17% of a Mamba-1 and 24% of a Mamba-2 training step on CPU). Triton fuses the activation into the kernel.
    """
    fused = backend == "triton" or (backend == "auto" and x.device.type == "cuda")
    y, final = causal_conv1d(x, weight, bias, activation="silu" if fused else None, initial_state=initial_state,
                             return_final_state=True, seq_idx=seq_idx, backend=backend)
    return (y if fused else F.silu(y.contiguous())), final


