"""Triton helpers shared by every op's ``triton.py``: math in ``tl``, block-size choice, AOT variant records.

Importing this module needs triton but no GPU. The ``@triton.jit`` helpers are inlined into the kernels that call
them, so they never appear as kernels of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

TORCH_TO_TL = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}


@dataclass(frozen=True)
class AotVariant:
    """One kernel specialization for ``python -m rawseq.kernels.aot`` (see that module's docstring).

    Attributes:
        name: row label, unique within the op, e.g. ``"fwd-bf16-T32-D16-N16"``.
        fn: the ``@triton.jit`` function.
        signature: every argument of ``fn`` by name -> triton type string: ``"*fp32"``, ``"*bf16"``, ``"*i64"``
            (pointers), ``"i32"``, ``"i64"``, ``"fp32"`` (scalars) or ``"constexpr"``.
        constexprs: value of every argument typed ``"constexpr"``.
        num_warps, num_stages: launch options, as the launcher passes them.
    """

    name: str
    fn: object
    signature: dict[str, str]
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 1


def tl_dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``: the pointer element name used in AOT signatures."""
    return TORCH_TO_TL[dtype]


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else triton.next_power_of_2(n)


def block_for(n: int, cap: int) -> int:
    """Power-of-two block covering ``n`` (at least 1) but not above ``cap``."""
    return max(1, min(next_pow2(n), cap))


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors on ``device``; a nominal 132 when not on CUDA (interpreter runs)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def tf32_allowed() -> bool:
    """Whether float32 ``tl.dot`` may run on TF32 tensor cores: PyTorch's own switch for CUDA matmuls, so the Triton
    kernels follow the model's Linear layers. True after ``torch.set_float32_matmul_precision("high")``,
    ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (or the global ``torch.backends.fp32_precision``), or
    ``torch.backends.cuda.matmul.allow_tf32 = True`` before torch 2.9; False by default (exact float32)."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch < 2.9: only the legacy flag
        return bool(matmul.allow_tf32)
    return precision == "tf32"


@triton.jit
def softplus(x):
    """log(1 + exp(x)), linear above 20 as in every Mamba implementation (and ``torch`` with threshold 20)."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def silu_grad(x):
    """d/dx [x * sigmoid(x)]."""
    s = tl.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


@triton.jit
def linear_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 then h -> a2 h + b2, for ``tl.associative_scan`` over a linear recurrence."""
    return a1 * a2, a2 * b1 + b2


def aot_variant(name: str, fn, constexprs: dict, pointers: dict | None = None, default_pointer: str = "*fp32",
                num_warps: int = 4, num_stages: int = 1) -> AotVariant:
    """An :class:`AotVariant` whose signature follows the argument names of ``fn``.

    ``*_ptr`` arguments are pointers typed by ``pointers`` (default ``default_pointer``), ``stride_*`` arguments are
    ``i64`` (the strides of large tensors), arguments in ``constexprs`` are ``constexpr`` and the rest ``i32``.
    """
    pointers = pointers or {}
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = pointers.get(arg, default_pointer)
        elif arg.startswith("stride_"):
            signature[arg] = "i64"
        else:
            signature[arg] = "i32"
    return AotVariant(name, fn, signature, dict(constexprs), num_warps, num_stages)
