"""File reading, durable writes and symbol checks shared by the codecs and the corpus.

Every read goes through :func:`open_regular`, which refuses anything but a regular file without blocking: a FIFO
with no writer, a socket or a device (``/dev/zero`` never ends) named as a source must fail fast, not hang or fill
memory. OS failures become DecodeErrors naming the source.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

import numpy as np
import torch

from .errors import DecodeError
from .symbols import N_SYMBOLS

_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def os_error(path: str | os.PathLike, e: OSError) -> DecodeError:
    """The DecodeError for an OS failure on ``path``, with the reason in plain words."""
    if isinstance(e, FileNotFoundError):
        return DecodeError(path, "no such file")
    if isinstance(e, IsADirectoryError):
        return DecodeError(path, "is a directory, not a file")
    if isinstance(e, PermissionError):
        return DecodeError(path, "permission denied")
    return DecodeError(path, f"cannot read ({e.strerror or e})")


def file_type(mode: int) -> str:
    """What a ``st_mode`` describes, in words (``"a regular file"``, ``"a FIFO"``, ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")


def not_regular(path: str | os.PathLike, mode: int) -> DecodeError:
    """The DecodeError for a source that exists but is not a regular file."""
    if stat.S_ISDIR(mode):
        return DecodeError(path, "is a directory, not a file")
    return DecodeError(path, f"is {file_type(mode)}, not a regular file; skipped")


def open_regular(path: str | os.PathLike):
    """Open a regular file for unbuffered binary reading, never blocking on a FIFO or a device.

    The file is opened non-blocking (so a FIFO without a writer returns at once) and checked with ``fstat`` on the
    open descriptor, so a file swapped for a FIFO after an earlier ``stat`` is refused too.

    Raises:
        DecodeError: missing, unreadable, or not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket: say so rather than "no such device or address"
            try:
                mode = os.stat(path).st_mode
            except OSError:
                mode = stat.S_IFREG
            if not stat.S_ISREG(mode):
                raise not_regular(path, mode) from None
        raise os_error(path, e) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=0)


def read_file(path: str | os.PathLike, *, allow_empty: bool = False) -> bytes:
    """Read a whole regular file, mapping every OS failure to a DecodeError that names the path."""
    with open_regular(path) as f:
        try:
            data = f.readall()
        except OSError as e:
            raise os_error(path, e) from None
    if not data and not allow_empty:
        raise DecodeError(path, "zero-length file")
    return data


def fsync_file(f) -> None:
    """Flush a file object's buffers and fsync it, so its content survives a crash."""
    f.flush()
    os.fsync(f.fileno())


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory by name (a directory: so the names created or renamed in it survive a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        bad = np.flatnonzero((arr < 0) | (arr >= N_SYMBOLS))
        if bad.size:
            i = int(bad[0])
            raise DecodeError(source, f"symbol {int(arr[i])} at position {i} is not a byte value (0-{N_SYMBOLS - 1})")
    return arr.astype(np.uint8)


def uint8_symbols(item, source: str) -> torch.Tensor | None:
    """A uint8 array or tensor that already holds symbols, as a 1-D CPU tensor; None for anything else.

    Raises:
        ValueError: a uint8 array or tensor that is not 1-D (symbols are a sequence; flattening a 2-D array would
            silently pick an order).
    """
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        t = torch.from_numpy(item.copy())
    elif isinstance(item, torch.Tensor) and item.dtype == torch.uint8:
        t = item.detach().cpu()
    else:
        return None
    if t.dim() != 1:
        raise ValueError(f"{source}: uint8 symbols must be 1-D, got shape {tuple(t.shape)}")
    return t


def to_uint8_tensor(data: bytes | bytearray | memoryview | np.ndarray) -> torch.Tensor:
    """Bytes to a 1-D uint8 tensor that owns its memory."""
    arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return torch.from_numpy(arr.copy())
