"""Launcher-side helpers shared by every op's Triton code: block sizes, device facts, the TF32 switch, gradient
products in torch and the records of ``python -m rawseq.kernels.aot``.

The ``@triton.jit`` math the kernels share lives in :mod:`rawseq.kernels.common.tl_math`. Importing this module
needs triton but no GPU.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import triton

TORCH_TO_TL = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}


def tl_dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``: the pointer element name used in AOT signatures."""
    return TORCH_TO_TL[dtype]


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else triton.next_power_of_2(n)


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


def reject_float64(op: str, *tensors) -> None:
    """ValueError if any tensor is float64: the Triton kernels compute in float32."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            raise ValueError(f"the triton {op} computes in float32; use backend='torch' for float64 inputs")


def last_dim_contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` itself when its innermost stride is 1 (the kernels assume it), else a contiguous copy."""
    return None if t is None else (t if t.stride(-1) == 1 else t.contiguous())


def grad_mul(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g * v`` for a gradient ``g``, exactly 0 where ``g`` is 0 even if ``v`` is not finite (the torch side of
    :func:`rawseq.kernels.common.tl_math.grad_mul`)."""
    return torch.where(g == 0, torch.zeros((), dtype=g.dtype, device=g.device), g * v)


@dataclass(frozen=True)
class AotVariant:
    """One kernel specialization for ``python -m rawseq.kernels.aot`` (see that module's docstring).

    Attributes:
        name: row label, unique within the op, e.g. ``"fwd-bf16-T32-D16-N16"``.
        fn: the ``@triton.jit`` function.
        signature: every argument of ``fn`` by name -> triton type string: ``"*fp32"``, ``"*bf16"``, ``"*i32"``
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


def _constexpr_params(fn) -> set[str]:
    """Parameters of a ``@triton.jit`` function annotated ``tl.constexpr`` (read from the Python function: the
    interpreter's wrapper has no ``params``)."""
    params = inspect.signature(getattr(fn, "fn", fn)).parameters.values()
    return {p.name for p in params if "constexpr" in str(p.annotation)}


def aot_variant(name: str, fn, constexprs: dict, pointers: dict | None = None, default_pointer: str = "*fp32",
                num_warps: int = 4, num_stages: int = 1, *, stride_type: str = "i64",
                unit_strides: tuple[str, ...] = ()) -> AotVariant:
    """An :class:`AotVariant` whose signature follows the argument names of ``fn``.

    ``*_ptr`` arguments are pointers typed by ``pointers`` (default ``default_pointer``); ``stride_*`` arguments
    are ``stride_type``, except those in ``unit_strides``, which are constexpr 1 (the JIT specializes an integer
    argument equal to 1 that way); arguments in ``constexprs`` are ``constexpr`` and the rest ``i32``.

    Raises:
        ValueError: a ``tl.constexpr`` parameter of ``fn`` has no value in ``constexprs``.
    """
    pointers = pointers or {}
    constexprs = {**constexprs, **{s: 1 for s in unit_strides}}
    missing = _constexpr_params(fn) - set(constexprs)
    if missing:
        raise ValueError(f"AOT variant {name!r} of {fn.__name__} gives no value for constexpr {sorted(missing)}")
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = pointers.get(arg, default_pointer)
        elif arg.startswith("stride_"):
            signature[arg] = stride_type
        else:
            signature[arg] = "i32"
    return AotVariant(name, fn, signature, constexprs, num_warps, num_stages)
