"""Every SSD kernel specialization the launchers can choose, for ``python -m rawseq.kernels.aot``.

Inputs in each dtype (fp32 with exact or TF32 products), fp32 side tensors (dt, A, D, dt_bias, states in fp32 where
the launcher makes them so), int32 ``seq_idx``, and i32 sizes and strides, as the JIT types them below 2**31 (every
offset that can pass 2**31 is formed in int64 inside the kernels); innermost strides are 1, as the launchers ensure.
Optional inputs and flags are on (``seq_idx`` included): the largest code of each kernel.
"""

from __future__ import annotations

import torch

from rawseq.kernels.common.triton_utils import AotVariant, aot_variant, tl_dtype_name
from rawseq.kernels.ssd.triton.kernels import (
    _ssd_chunk_adjoint_bwd_kernel,
    _ssd_chunk_bwd_kernel,
    _ssd_chunk_out_fwd_kernel,
    _ssd_chunk_state_fwd_kernel,
    _ssd_step_kernel,
)
from rawseq.kernels.ssd.triton.launch import BLOCK_P, CHUNK, MAX_NSTATE, STAGES, STEP_BLOCK_P, SUB_N, WARPS

__all__ = ["AOT_VARIANTS"]

_FP32_POINTERS = ("dt_ptr", "A_ptr", "bias_ptr", "D_ptr", "init_ptr", "final_ptr", "gfinal_ptr", "ginit_ptr",
                  "gB_ptr", "gC_ptr", "ddt_ptr", "da_ptr", "gD_ptr", "state_ptr")
_UNIT_STRIDES = ("stride_xp", "stride_dth", "stride_Bn", "stride_Cn", "stride_zp", "stride_gyp", "stride_seql",
                 "stride_stn", "stride_yp", "stride_gxp", "stride_sn")
_FLAGS = {"HAS_D": True, "HAS_Z": True, "HAS_DT_BIAS": True, "HAS_SEQ": True, "HAS_INIT": True, "HAS_DFINAL": True,
          "DT_SOFTPLUS": True}


def _variant(name, fn, dtype, kind, fp32_grads=True, **constexprs) -> AotVariant:
    params = set(fn.arg_names)
    pointers = {p: "*fp32" for p in _FP32_POINTERS if fp32_grads or p not in ("gB_ptr", "gC_ptr")}
    pointers["seq_ptr"] = "*i32"
    flags = {k: v for k, v in _FLAGS.items() if k in params}
    return aot_variant(name, fn, {**flags, **constexprs}, pointers, f"*{tl_dtype_name(dtype)}", WARPS[kind],
                       STAGES[kind], stride_type="i32", unit_strides=tuple(s for s in _UNIT_STRIDES if s in params))


def _aot_variants() -> list[AotVariant]:
    """Every (kernel, dtype, block sizes) the launchers can choose (see ``launch.block_n``)."""
    variants = []
    for dtype, ieee in ((torch.float32, True), (torch.float32, False), (torch.float16, False),
                        (torch.bfloat16, False)):
        dname = tl_dtype_name(dtype) + ("-tf32" if dtype == torch.float32 and not ieee else "")
        for kind, fn in (("state", _ssd_chunk_state_fwd_kernel), ("adjoint", _ssd_chunk_adjoint_bwd_kernel)):
            variants.append(_variant(f"{kind}-{dname}-Q{CHUNK}-P{BLOCK_P}-N{SUB_N}", fn, dtype, kind, Q=CHUNK,
                                     BLOCK_P=BLOCK_P, BLOCK_N=SUB_N, IEEE=ieee))
        for bn in (64, 128, MAX_NSTATE):
            variants.append(_variant(f"out-{dname}-Q{CHUNK}-P{BLOCK_P}-N{bn}", _ssd_chunk_out_fwd_kernel, dtype, "out",
                                     Q=CHUNK, BLOCK_P=BLOCK_P, BLOCK_N=bn, IEEE=ieee))
            for fp32_grads in (True, False) if dtype != torch.float32 else (True,):
                variants.append(_variant(
                    f"bwd-{dname}-Q{CHUNK}-P{BLOCK_P}-N{bn}" + ("" if fp32_grads else "-directBC"),
                    _ssd_chunk_bwd_kernel, dtype, "bwd", fp32_grads, Q=CHUNK, BLOCK_P=BLOCK_P, BLOCK_N=bn,
                    SUB_N=SUB_N, IEEE=ieee,
                ))
            if not dname.endswith("tf32"):  # the step kernel has no products
                variants.append(_variant(f"step-{dname}-P{STEP_BLOCK_P}-N{bn}", _ssd_step_kernel, dtype, "step",
                                         BLOCK_P=STEP_BLOCK_P, BLOCK_N=bn))
    return variants


AOT_VARIANTS = _aot_variants()
