"""Backend selection, shared by every op's public function."""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "naive", "torch", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(
    backend: str, device: torch.device, *, op: str, available: tuple[str, ...], dtype: torch.dtype | None = None
) -> str:
    """Turn ``backend`` into a concrete backend for tensors on ``device``.

    ``auto`` picks Triton for CUDA tensors when the op has a Triton kernel (the kernels compute in fp32 for
    fp16/bf16/fp32 inputs; float64 goes to the torch path), and the chunked torch path otherwise.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda" and dtype != torch.float64 and "triton" in available and triton_available():
            return "triton"
        return "torch"
    if backend not in available:
        raise ValueError(f"{op} has no {backend!r} backend; available: {available}")
    if backend == "triton":
        if not triton_available():
            raise ValueError(f"backend='triton' for {op} needs the triton package, which is not installed")
        if device.type != "cuda" and not interpreting():
            raise ValueError(
                f"backend='triton' for {op} needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 to run "
                "the kernels on CPU tensors for testing"
            )
    return backend
