"""Backend selection, shared by every op's public function."""

from __future__ import annotations

import importlib
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


def step_function(op: str, backend: str, device: torch.device, dtype: torch.dtype, steps: dict):
    """The decoding step of ``op`` for ``backend`` and tensors on ``device``: ``steps["naive"]`` or
    ``steps["torch"]``, or the op's Triton step (imported on first use).

    Called once per layer and position, so the choice is kept in ``steps`` per (backend, device type, float64)
    after the first call; an explicit "triton" is resolved every time, since whether it may run on CPU tensors
    depends on ``TRITON_INTERPRET``.
    """
    key = (backend, device.type, dtype == torch.float64)
    step = steps.get(key)
    if step is None:
        resolved = resolve_backend(backend, device, op=f"{op}_step", available=("naive", "torch", "triton"),
                                   dtype=dtype)
        step = steps.get(resolved)
        if step is None:
            step = getattr(importlib.import_module(f"rawseq.kernels.{op}.triton"), f"{op}_step_triton")
        if backend != "triton":
            steps[key] = step
    return step
