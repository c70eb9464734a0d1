"""The SSM layers' causal convolution followed by SiLU."""

from __future__ import annotations

from rawseq.kernels import causal_conv1d


def causal_conv_silu(x, weight, bias, initial_state, seq_idx, backend):
    """``silu(causal_conv1d(x))`` and the final conv window; x (b, l, d) -> (b, l, d).

    Every backend applies the activation itself: Triton fuses it into the kernel, and the CPU path's output is
    already a contiguous (b, l, d) tensor (SiLU's CPU backward is about 4x slower on mismatched strides).
    """
    return causal_conv1d(x, weight, bias, activation="silu", initial_state=initial_state, return_final_state=True,
                         seq_idx=seq_idx, backend=backend)
