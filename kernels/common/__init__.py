"""Helpers shared by every op: input checks, backend choice, discretization pieces."""

from rawseq.kernels.common.backend import BACKENDS, resolve_backend, step_function
from rawseq.kernels.common.checks import TensorArgs, check_same_device, check_tensor, float_dtype_of
from rawseq.kernels.common.math import resets_from_seq_idx, softplus

__all__ = [
    "BACKENDS",
    "TensorArgs",
    "check_same_device",
    "check_tensor",
    "float_dtype_of",
    "resets_from_seq_idx",
    "resolve_backend",
    "softplus",
    "step_function",
]
