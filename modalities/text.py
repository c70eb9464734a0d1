"""Text, or any file, as its raw bytes: the symbol is the byte, nothing to learn and nothing to lose."""

from __future__ import annotations

import os

import numpy as np
import torch

from ._io import as_byte_array, read_file, to_uint8_tensor, uint8_symbols


def encode(data: str | bytes | bytearray | memoryview) -> torch.Tensor:
    """Turn text or bytes into symbols.

    Args:
        data: a ``str`` (encoded as UTF-8) or any bytes-like object, which is taken as is.

    Returns:
        uint8 tensor of shape ``(n,)``, one symbol per byte.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"text.encode takes str or bytes, got {type(data).__name__}")
    return to_uint8_tensor(bytes(data))


def decode(symbols: torch.Tensor | np.ndarray | bytes | list[int]) -> bytes:
    """Turn symbols back into bytes.

    Args:
        symbols: 1-D sequence of integers in 0..255, shape ``(n,)``.

    Returns:
        ``n`` bytes. Use ``.decode("utf-8", errors="replace")`` for display; model output need not be valid
        UTF-8.

    Raises:
        DecodeError: a value outside 0..255 (a special symbol, for example) or a tensor that is not 1-D.
    """
    return as_byte_array(symbols, "<symbols>").tobytes()


def load(path: str | os.PathLike) -> torch.Tensor:
    """Read a file's raw bytes as symbols, whatever its encoding.

    Returns:
        uint8 tensor of shape ``(file_size,)``.

    Raises:
        DecodeError: the path is missing, a directory, unreadable or a zero-length file.
    """
    return to_uint8_tensor(read_file(path))


def to_symbols(item: str | bytes | bytearray | memoryview | os.PathLike | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any supported text input -> 1-D uint8 symbols.

    Args:
        item: a ``str`` (its UTF-8 bytes; a ``str`` is always text, never a path), bytes, a ``pathlib.Path`` or
            other ``os.PathLike`` (the file's raw bytes), or 1-D uint8 symbols (returned as they are).

    Returns:
        uint8 tensor ``(n,)``.

    Raises:
        DecodeError: a path that cannot be read. ValueError: uint8 symbols that are not 1-D. TypeError: any other
            kind of input.
    """
    symbols = uint8_symbols(item, "text symbols")
    if symbols is not None:
        return symbols
    if isinstance(item, os.PathLike):
        return load(item)
    return encode(item)
