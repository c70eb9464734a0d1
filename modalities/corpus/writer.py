"""The symbols file writer: documents appended through one aligned staging buffer, undone if one fails half way.

On Linux the file is written with O_DIRECT: a corpus build is one long sequential write that nobody reads back
soon, and skipping the page cache keeps it from competing for memory (allocating cache pages is what limits
buffered writes on small machines) or evicting the data a training run is using. Where the file system refuses
O_DIRECT (tmpfs, some network mounts) the same code writes through the page cache.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .._io import open_regular
from ..errors import DecodeError

STAGE_BYTES = 16 << 20  # staging buffer
ALIGN = 4096  # O_DIRECT offset and size alignment


class SymbolWriter:
    """Appends documents to ``path`` as ``dtype`` symbols and records where each ends.

    Attributes: ``count`` (symbols written, staged ones included), ``offsets`` (``[0, end of document 0, ...]``),
    ``direct`` (whether O_DIRECT is in use).
    """

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        self.offsets = [0]
        self.buf = mmap.mmap(-1, STAGE_BYTES)  # page-aligned, as O_DIRECT requires
        self.view = memoryview(self.buf)
        self.pos = 0  # bytes staged in buf
        self.flushed = 0  # bytes in the file before buf[0]
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
        self.direct = hasattr(os, "O_DIRECT")
        try:
            self.fd = os.open(path, flags | (os.O_DIRECT if self.direct else 0), 0o644)
        except OSError:
            self.direct = False
            self.fd = os.open(path, flags, 0o644)

    def _write(self, n: int) -> None:
        done = 0
        while done < n:
            try:
                done += os.pwrite(self.fd, self.view[done:n], self.flushed + done)
            except OSError as e:
                if not self.direct or e.errno != errno.EINVAL:
                    raise
                # The file system opened the file with O_DIRECT but refuses the write: fall back to buffered.
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False

    def _flush(self, final: bool = False) -> None:
        if final and self.direct:
            n = -(-self.pos // ALIGN) * ALIGN
            self.view[self.pos : n] = bytes(n - self.pos)
        elif self.direct:
            n = self.pos // ALIGN * ALIGN  # an unaligned tail waits for the next flush
        else:
            n = self.pos
        self._write(n)
        keep = max(self.pos - n, 0)
        if keep:
            self.view[:keep] = self.view[n : self.pos]
        self.flushed += n
        self.pos = keep

    def _stage(self, data: memoryview) -> None:
        while len(data):
            k = min(len(data), STAGE_BYTES - self.pos)
            self.view[self.pos : self.pos + k] = data[:k]
            self.pos += k
            data = data[k:]
            if self.pos == STAGE_BYTES:
                self._flush()

    def _stage_array(self, arr: np.ndarray) -> None:
        self._stage(memoryview(np.ascontiguousarray(arr, dtype=self.dtype)).cast("B"))

    def _rewind(self, start: int) -> None:
        """Forget everything after byte ``start`` (a document that failed half way)."""
        if start >= self.flushed:
            self.pos = start - self.flushed
            return
        aligned = start // ALIGN * ALIGN
        with open(self.path, "rb") as f:
            f.seek(aligned)
            head = f.read(start - aligned)
        self.view[: len(head)] = head
        self.flushed, self.pos = aligned, len(head)

    def _end_document(self, n: int) -> None:
        if n:
            self.count += n
            self.offsets.append(self.count)

    def add(self, arr: np.ndarray) -> None:
        """One document (an empty array adds nothing)."""
        self._stage_array(arr)
        self._end_document(arr.size)

    def add_batch(self, symbols: np.ndarray, lengths: np.ndarray) -> None:
        """Several documents at once: ``symbols`` is their concatenation, ``lengths`` (all > 0) their sizes."""
        self._stage_array(symbols)
        self.offsets.extend((self.count + np.cumsum(lengths)).tolist())
        self.count += symbols.size

    def add_blocks(self, blocks: Iterable[np.ndarray]) -> None:
        """One document arriving in pieces; if producing a piece fails, the document is undone and the error
        raised."""
        start, n = self.flushed + self.pos, 0
        try:
            for arr in blocks:
                self._stage_array(arr)
                n += arr.size
        except BaseException:
            self._rewind(start)
            raise
        self._end_document(n)

    def add_file(self, path: str) -> None:
        """One document: the raw bytes of a file, read straight into the staging buffer (no per-byte Python, no
        extra copy, and never the whole file in memory)."""
        start = self.flushed + self.pos
        with open_regular(path) as src:
            try:
                while True:
                    if self.pos == STAGE_BYTES:
                        self._flush()
                    k = src.readinto(self.view[self.pos :])
                    if not k:
                        break
                    self.pos += k
            except OSError as e:
                self._rewind(start)
                raise DecodeError(path, f"read failed ({e.strerror or e})") from None
        n = self.flushed + self.pos - start
        if n == 0:
            raise DecodeError(path, "zero-length file")
        if n % self.dtype.itemsize:
            self._rewind(start)
            raise DecodeError(path, f"{n} bytes are not whole {self.dtype.name} symbols")
        self._end_document(n // self.dtype.itemsize)

    def close(self) -> None:
        """Write what is staged, cut the file to its symbols and fsync it."""
        try:
            self._flush(final=True)
            os.ftruncate(self.fd, self.count * self.dtype.itemsize)
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.view.release()
            self.buf.close()
