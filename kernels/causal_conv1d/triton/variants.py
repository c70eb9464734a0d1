"""Every causal-conv kernel specialization worth compiling ahead of time, for ``python -m rawseq.kernels.aot``.

The launchers' CUDA blocks for widths 2 and 4, in each input dtype, with every flag on (``seq_idx`` on and off).
Strides are typed i64 (the strides of tensors past 2**31 elements).
"""

from __future__ import annotations

import torch

from rawseq.kernels.causal_conv1d.triton.kernels import (
    _causal_conv1d_bwd_kernel,
    _causal_conv1d_fwd_kernel,
    _causal_conv1d_step_kernel,
)
from rawseq.kernels.causal_conv1d.triton.launch import block_config
from rawseq.kernels.common.triton_utils import AotVariant, aot_variant, tl_dtype_name

__all__ = ["AOT_VARIANTS"]


def _aot_variants() -> list[AotVariant]:
    variants = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = tl_dtype_name(dtype)
        e = "*" + name
        for width in (2, 4):
            block_l, block_d, block_w, num_warps = block_config(4096, width)
            blocks = {"WIDTH": width, "BLOCK_L": block_l, "BLOCK_D": block_d, "BLOCK_W": block_w}
            tag = f"{name}-W{width}-L{block_l}-D{block_d}"
            ptrs = {"x_ptr": e, "w_ptr": e, "bias_ptr": e, "init_ptr": e, "dy_ptr": e, "y_ptr": e, "final_ptr": e,
                    "seg_ptr": "*i32"}
            for seq in (False, True):
                cx = {"HAS_BIAS": True, "HAS_INIT": True, "HAS_SEQ": seq, "SILU": True, "GRAD_PRE": False, **blocks}
                variants.append(aot_variant(f"fwd-{tag}-seq{int(seq)}", _causal_conv1d_fwd_kernel, cx, ptrs,
                                            num_warps=num_warps))
            cx = {"HAS_BIAS": True, "HAS_INIT": True, "HAS_SEQ": True, "SILU": True, "GRAD_PRE": True, **blocks}
            variants.append(aot_variant(f"grad_pre-{tag}", _causal_conv1d_fwd_kernel, cx,
                                        {**ptrs, "y_ptr": "*fp32"}, num_warps=num_warps))
            bwd_ptrs = {"g_ptr": "*fp32", "x_ptr": e, "w_ptr": e, "init_ptr": e, "seg_ptr": "*i32", "dfinal_ptr": e,
                        "dx_ptr": e}
            for seq in (False, True):
                cx = {"HAS_INIT": True, "HAS_SEQ": seq, "HAS_DFINAL": True, **blocks}
                variants.append(aot_variant(f"bwd-{tag}-seq{int(seq)}", _causal_conv1d_bwd_kernel, cx, bwd_ptrs,
                                            num_warps=num_warps))
            cx = {"HAS_BIAS": True, "SILU": True, "WIDTH": width, "BLOCK_D": block_d, "BLOCK_W": block_w}
            variants.append(aot_variant(f"step-{name}-W{width}-D{block_d}", _causal_conv1d_step_kernel, cx,
                                        {"state_ptr": e, "x_ptr": e, "w_ptr": e, "bias_ptr": e, "y_ptr": e}))
    return variants


AOT_VARIANTS = _aot_variants()
