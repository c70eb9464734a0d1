"""Every Mamba-3 kernel specialization the launchers can choose, for ``python -m rawseq.kernels.aot``.

Products in each input dtype (fp32 with exact or TF32 products, fp16, bf16), fp32 everything else (log-decays,
tap weights, states, outputs, gradients), int32 document starts, and i32 sizes and strides, as the JIT types them
below 2**31 (the offsets that can pass 2**31 are formed in int64 inside the kernels); innermost strides are 1, as the
launchers ensure. Optional inputs and flags are on: the largest code of each kernel.
"""

from __future__ import annotations

import torch

from rawseq.kernels.common.triton_utils import AotVariant, aot_variant, tl_dtype_name
from rawseq.kernels.mamba3.triton.kernels import (
    _mamba3_chunk_bwd_kernel,
    _mamba3_chunk_out_fwd_kernel,
    _mamba3_chunk_walk_kernel,
    _mamba3_step_kernel,
)
from rawseq.kernels.mamba3.triton.launch import (
    BLOCK_P,
    CHUNK_ROWS,
    MAX_NSTATE,
    RANKS,
    SEQ_BLOCK_N,
    STAGES,
    STEP_BLOCK_P,
    WARPS,
    block_n,
    block_p,
    step_block_h,
)

__all__ = ["AOT_VARIANTS"]

# Pointers to tensors in the products' dtype; every other pointer is fp32 (or int32 for document starts).
_DOT_POINTERS = ("v_ptr", "q_ptr", "k_ptr", "gy_ptr")
# Pointers to the step's slices of the input projection and its output, in the model's dtype.
_STEP_POINTERS = ("x_ptr", "dt_ptr", "B_ptr", "C_ptr", "lam_ptr", "z_ptr", "y_ptr")
_UNIT_STRIDES = ("stride_vp", "stride_kn", "stride_stn", "stride_yp", "stride_sn", "stride_thm", "stride_Bpn",
                 "stride_xpp", "stride_xp", "stride_Bn", "stride_Cn", "stride_angm", "stride_zp")
_FLAGS = {"HAS_SEQ": True, "HAS_INIT": True, "HAS_DFINAL": True, "HAS_ANGLE": True, "HAS_D": True, "HAS_Z": True,
          "HAS_DT_BIAS": True, "HAS_BC_BIAS": True, "HAS_MIMO": True, "DT_SOFTPLUS": True}


def _variant(name, fn, dtype, kind, dtype_pointers, **constexprs) -> AotVariant:
    params = set(fn.arg_names)
    pointers = {p: f"*{tl_dtype_name(dtype)}" for p in dtype_pointers if p in params}
    pointers["reset_ptr"] = "*i32"
    flags = {k: v for k, v in _FLAGS.items() if k in params}
    return aot_variant(name, fn, {**flags, **constexprs}, pointers, "*fp32", WARPS[kind], STAGES[kind],
                       stride_type="i32", unit_strides=tuple(s for s in _UNIT_STRIDES if s in params))


def _aot_variants() -> list[AotVariant]:
    """Every (kernel, dtype, rank, block sizes) the launchers can choose (see ``launch.block_n``)."""
    variants = []
    for dtype, ieee in ((torch.float32, True), (torch.float32, False), (torch.float16, False),
                        (torch.bfloat16, False)):
        dname = tl_dtype_name(dtype) + ("-tf32" if dtype == torch.float32 and not ieee else "")
        for R in RANKS:
            Q = CHUNK_ROWS // R
            for kind, reverse in (("state", False), ("adjoint", True)):
                variants.append(_variant(f"{kind}-{dname}-R{R}-P{BLOCK_P}-N{SEQ_BLOCK_N}", _mamba3_chunk_walk_kernel,
                                         dtype, kind, _DOT_POINTERS, REVERSE=reverse, Q=Q, R=R, BLOCK_P=BLOCK_P,
                                         BLOCK_N=SEQ_BLOCK_N, IEEE=ieee))
            for n in (64, MAX_NSTATE):  # every nstate up to MAX_NSTATE takes one of these two (block_n, block_p)
                bn, bp = block_n(n), block_p(n)
                for kind, fn in (("out", _mamba3_chunk_out_fwd_kernel), ("bwd", _mamba3_chunk_bwd_kernel)):
                    variants.append(_variant(f"{kind}-{dname}-R{R}-P{bp}-N{bn}", fn, dtype, kind, _DOT_POINTERS,
                                             Q=Q, R=R, BLOCK_P=bp, BLOCK_N=bn, IEEE=ieee))
            if not dname.endswith("tf32"):  # the step kernel has no products
                for bh in sorted({step_block_h(n) for n in (1, MAX_NSTATE)}):
                    variants.append(_variant(f"step-{dname}-R{R}-P{STEP_BLOCK_P}-H{bh}", _mamba3_step_kernel, dtype,
                                             "step", _STEP_POINTERS, R=R, BLOCK_P=STEP_BLOCK_P, BLOCK_H=bh))
    return variants


AOT_VARIANTS = _aot_variants()
