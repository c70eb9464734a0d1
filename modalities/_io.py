"""File reading and symbol checks shared by the codecs: failures become DecodeErrors naming the source."""

from __future__ import annotations

import os

import numpy as np
import torch

from .errors import DecodeError


def os_error(path: str | os.PathLike, e: OSError) -> DecodeError:
    """The DecodeError for an OS failure on ``path``, with the reason in plain words."""
    if isinstance(e, FileNotFoundError):
        return DecodeError(path, "no such file")
    if isinstance(e, IsADirectoryError):
        return DecodeError(path, "is a directory, not a file")
    if isinstance(e, PermissionError):
        return DecodeError(path, "permission denied")
    return DecodeError(path, f"cannot read ({e.strerror or e})")


def open_raw(path: str | os.PathLike):
    """Open a file for unbuffered binary reading; OS failures become DecodeErrors naming the path."""
    try:
        return open(path, "rb", buffering=0)
    except OSError as e:
        raise os_error(path, e) from None


def read_file(path: str | os.PathLike, *, allow_empty: bool = False) -> bytes:
    """Read a whole file, mapping every OS failure to a DecodeError that names the path."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise os_error(path, e) from None
    if not data and not allow_empty:
        raise DecodeError(path, "zero-length file")
    return data


def as_byte_array(symbols: torch.Tensor | np.ndarray | bytes | bytearray | list[int], source: str) -> np.ndarray:
    """Check that ``symbols`` is a 1-D sequence of values in 0..255 and return it as a uint8 array.

    Model output usually arrives as int64; a value outside 0..255 (a special symbol, say) is an error, not
    something to wrap around silently.
    """
    if isinstance(symbols, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(symbols), dtype=np.uint8)
    if isinstance(symbols, torch.Tensor):
        arr = symbols.detach().cpu().numpy()
    else:
        arr = np.asarray(symbols)
    if arr.ndim != 1:
        raise DecodeError(source, f"expected a 1-D symbol sequence, got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DecodeError(source, f"symbols must be integers, got dtype {arr.dtype}")
    if arr.size:
        bad = np.flatnonzero((arr < 0) | (arr > 255))
        if bad.size:
            i = int(bad[0])
            raise DecodeError(source, f"symbol {int(arr[i])} at position {i} is not a byte value (0-255)")
    return arr.astype(np.uint8)


def to_uint8_tensor(data: bytes | bytearray | memoryview | np.ndarray) -> torch.Tensor:
    """Bytes to a 1-D uint8 tensor that owns its memory."""
    arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return torch.from_numpy(arr.copy())
