"""Every selective-scan kernel specialization worth compiling ahead of time, for ``python -m rawseq.kernels.aot``.

The launchers' CUDA blocks for state sizes 16 (T=32) and 128 (T=16), in each input dtype. Flags that only add or
drop loads (D, z, dt_bias, softplus) are on; seq_idx, reverse and state storing are listed in the combinations that
change the code most. Strides are typed i64 (the strides of tensors past 2**31 elements).
"""

from __future__ import annotations

import torch

from rawseq.kernels.common.triton_utils import AotVariant, aot_variant, tl_dtype_name
from rawseq.kernels.selective_scan.triton.kernels import (
    _selective_scan_bwd_kernel,
    _selective_scan_chunk_state_kernel,
    _selective_scan_fwd_kernel,
    _selective_scan_state_passing_kernel,
    _selective_scan_step_kernel,
)
from rawseq.kernels.selective_scan.triton.launch import block_config, step_blocks

__all__ = ["AOT_VARIANTS"]

_INPUT_POINTERS = ("x_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr", "dy_ptr", "dx_ptr", "ddt_ptr", "dz_ptr")


def _aot_variants() -> list[AotVariant]:
    cuda = torch.device("cuda")
    variants = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = tl_dtype_name(dtype)
        ptrs = {k: "*" + name for k in _INPUT_POINTERS}
        ptrs["seq_ptr"] = "*i32"
        flags = {"HAS_D": True, "HAS_Z": True, "HAS_DT_BIAS": True, "DT_SOFTPLUS": True}
        for nstate in (16, 128):
            t, block_d, block_n, warps = block_config(cuda, nstate, 1 << 12)
            blocks = {"T": t, "BLOCK_D": block_d, "BLOCK_N": block_n}
            tag = f"{name}-T{t}-D{block_d}-N{block_n}"
            for seq, rev, store in ((False, False, False), (True, True, True)):
                cx = {**flags, **blocks, "HAS_SEQ": seq, "HAS_INIT": True, "REVERSE": rev, "STORE_STATES": store}
                variants.append(aot_variant(f"fwd-{tag}-seq{int(seq)}-rev{int(rev)}-store{int(store)}",
                                            _selective_scan_fwd_kernel, cx, ptrs, num_warps=warps))
            cx = {"HAS_DT_BIAS": True, "HAS_SEQ": True, "DT_SOFTPLUS": True, "REVERSE": False, **blocks}
            variants.append(aot_variant(f"chunk_state-{tag}", _selective_scan_chunk_state_kernel, cx, ptrs,
                                        num_warps=warps))
            t, block_d, block_n, warps = block_config(cuda, nstate, 1 << 12, backward=True)
            cx = {**flags, "T": t, "BLOCK_D": block_d, "BLOCK_N": block_n, "HAS_SEQ": True, "HAS_INIT": True,
                  "HAS_DFINAL": True, "REVERSE": True}
            variants.append(aot_variant(f"bwd-{name}-T{t}-D{block_d}-N{block_n}-seq1-rev1",
                                        _selective_scan_bwd_kernel, cx, ptrs, num_warps=warps))
            step_d, _ = step_blocks(nstate, 1 << 12)
            cx = {**flags, "BLOCK_D": step_d, "BLOCK_N": block_n}
            variants.append(aot_variant(f"step-{name}-D{step_d}-N{block_n}", _selective_scan_step_kernel, cx, ptrs))
    for nstate in (16, 128):
        _, block_d, block_n, _ = block_config(cuda, nstate, 1 << 12)
        cx = {"HAS_INIT": True, "BLOCK_D": block_d, "BLOCK_N": block_n}
        variants.append(aot_variant(f"state_passing-D{block_d}-N{block_n}", _selective_scan_state_passing_kernel, cx))
    return variants


AOT_VARIANTS = _aot_variants()
