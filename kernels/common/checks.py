"""Argument checks that name the argument, its shape and the shape that was expected."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _fmt(shape, names: str | None) -> str:
    dims = ", ".join("?" if s is None else str(s) for s in shape)
    return f"({names}) = ({dims})" if names else f"({dims})"


def check_tensor(
    name: str,
    t,
    shape: tuple[int | None, ...],
    names: str | None = None,
    *,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    optional: bool = False,
) -> None:
    """Raise ValueError unless ``t`` is a tensor of ``shape`` (``None`` matches any size) and an allowed dtype.

    ``names`` spells the axes for the message, for example ``"batch, length, channels"``.
    """
    if t is None:
        if optional:
            return
        raise ValueError(f"{name} is required, expected a tensor of shape {_fmt(shape, names)}")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(e is not None and e != s for e, s in zip(shape, t.shape)):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {_fmt(shape, names)}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} has dtype {t.dtype}, expected one of: {allowed}")


def check_same_device(**tensors) -> torch.device:
    """Raise ValueError if the given (non-None) tensors are on different devices; return the common device."""
    device = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {device}; all inputs must share a device")
    return device


def float_dtype_of(*tensors) -> torch.dtype:
    """The dtype to accumulate in: float32 for half/bfloat16/float32 inputs, float64 if any input is float64."""
    out = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            out = torch.float64
    return out


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    if by <= 0 or value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")
