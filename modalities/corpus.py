"""The on-disk corpus: every document as symbols in one memory-mapped array, plus a document index.

Layout of a cache directory (see docs/modalities.md)::

    symbols.bin    all documents back to back, uint8 (byte corpora) or uint16 (multimodal corpora, ids >= 256)
    index.npy      int64 (num_docs + 1,) offsets: document i is symbols[index[i]:index[i + 1]]
    manifest.json  format version, options, source fingerprints, counts, skipped sources

A build writes into a hidden temporary directory beside the cache, fsyncs it and renames it into place, so a
build that dies half way leaves nothing that :meth:`ByteCorpus.open` accepts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import audio as _audio
from . import image as _image
from . import multimodal as _mm
from ._io import open_raw, read_file
from .errors import DecodeError

FORMAT = "rawseq-corpus"
FORMAT_VERSION = 1
_SYMBOLS, _INDEX, _MANIFEST = "symbols.bin", "index.npy", "manifest.json"
_KINDS = ("text", "bytes", "audio", "image")
_GLOB_CHARS = set("*?[")
_STAGE = 16 << 20  # staging buffer of the symbols writer
_BATCH = 64 << 20  # in-memory documents are joined into batches of about this many symbols
_ALIGN = 4096  # O_DIRECT offset and size alignment

log = logging.getLogger("rawseq.modalities")


@dataclass
class _Item:
    """One document to write: a file (``path``) or an in-memory value, and how to read it."""

    name: str
    kind: str
    path: str | None = None
    value: Any = None


def _file_kind(path: str, modality: str) -> str:
    if modality != "auto":
        return modality
    ext = os.path.splitext(path)[1].lower()
    if ext in _audio.AUDIO_EXTENSIONS:
        return "audio"
    if ext in _image.IMAGE_EXTENSIONS:
        return "image"
    return "text"


def _walk(directory: str, exclude: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(directory):
        # Hidden entries are skipped: version-control folders, editor files and our own temporary build
        # folders.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(root, d) != exclude)
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return files


def _expand_paths(sources: Sequence[str | os.PathLike], exclude: str) -> tuple[list[str], list[tuple[str, str]]]:
    files: list[str] = []
    missing: list[tuple[str, str]] = []
    for src in sources:
        p = os.fspath(src)
        if os.path.isdir(p):
            found = _walk(p, exclude)
            if not found:
                missing.append((p, "directory holds no files"))
            files += found
        elif os.path.lexists(p):
            files.append(p)
        elif _GLOB_CHARS & set(p):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                missing.append((p, "no files match this pattern"))
            for m in matches:
                files += _walk(m, exclude) if os.path.isdir(m) else [m]
        else:
            missing.append((p, "no such file or directory"))
    files = [os.path.abspath(f) for f in files]
    files = [f for f in dict.fromkeys(files) if not f.startswith(exclude + os.sep)]
    return files, missing


def _stat_key(path: str) -> list:
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, -1, -1]


def _to_waveform(value: Any, name: str, opts: dict) -> tuple[torch.Tensor, int]:
    """An audio value from a file or a dataset cell -> (channels, time) float at the requested rate."""
    if isinstance(value, dict) and value.get("array") is not None:
        arr = np.asarray(value["array"], dtype=np.float32)
        rate = value.get("sampling_rate")
        if rate is None or arr.size == 0 or arr.ndim > 2:
            raise DecodeError(name, "audio array needs a non-empty 1-D/2-D array and a sampling_rate")
        if not np.isfinite(arr).all():
            raise DecodeError(name, "audio array holds NaN or infinite samples")
        wave = torch.from_numpy(arr.reshape(1, -1) if arr.ndim == 1 else arr)
    elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        wave, rate = _audio.read(value["bytes"], name=name) if value.get("bytes") else _audio.read(value["path"])
    elif isinstance(value, (str, os.PathLike)):
        wave, rate = _audio.read(value)
    elif isinstance(value, (bytes, bytearray)):
        wave, rate = _audio.read(value, name=name)
    else:
        raise DecodeError(name, f"cannot read audio from a {type(value).__name__}")
    if opts["mono"] and wave.shape[0] > 1:
        wave = wave.mean(dim=0, keepdim=True)
    if opts["sample_rate"] is not None:
        wave, rate = _audio.resample(wave, int(rate), opts["sample_rate"]), opts["sample_rate"]
    return wave, int(rate)


def _to_image(value: Any, name: str, opts: dict) -> torch.Tensor:
    mode, size = opts["image_mode"], opts["image_size"]
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        if value.get("bytes"):
            return _image.decode(value["bytes"], mode, size, source=name)
        return _image.load(value["path"], mode, size)
    if isinstance(value, (str, os.PathLike)):
        return _image.load(value, mode, size)
    if isinstance(value, (bytes, bytearray)):
        return _image.decode(value, mode, size, source=name)
    if hasattr(value, "convert") and hasattr(value, "mode"):
        # A PIL image from a decoding dataset column; PIL does the mode conversion torchvision would do.
        arr = np.asarray(value.convert(mode))
        img = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1).copy())
        return _image._resize(img, size) if size is not None else img
    raise DecodeError(name, f"cannot read an image from a {type(value).__name__}")


def _to_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return value["bytes"] if value.get("bytes") else read_file(value["path"])
    if isinstance(value, (np.ndarray, torch.Tensor)):
        arr = value.numpy() if isinstance(value, torch.Tensor) else value
        if arr.dtype != np.uint8:
            raise DecodeError(name, f"an in-memory document must be uint8, got {arr.dtype}")
        return arr.reshape(-1).tobytes()
    raise DecodeError(name, f"cannot take bytes from a {type(value).__name__}")


def _segment(kind: str, value: Any, name: str, opts: dict) -> _mm.Segment:
    if kind in ("text", "bytes"):
        return _mm.TextSegment(_to_bytes(value, name))
    if kind == "audio":
        wave, rate = _to_waveform(value, name, opts)
        return _mm.AudioSegment(wave, rate, opts["codec"])
    return _mm.ImageSegment(_to_image(value, name, opts))


def _symbols(kind: str, value: Any, name: str, opts: dict) -> np.ndarray:
    """One value -> the uint8 symbols a byte corpus stores for it."""
    if kind in ("text", "bytes"):
        return np.frombuffer(_to_bytes(value, name), dtype=np.uint8)
    if kind == "audio":
        return _audio.encode(_to_waveform(value, name, opts)[0], opts["codec"]).numpy()
    return _image.to_bytes(_to_image(value, name, opts)).numpy()


def _feature_kind(feature: Any) -> str | None:
    import datasets

    if isinstance(feature, datasets.Audio):
        return "audio"
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "text"
        if feature.dtype in ("binary", "large_binary"):
            return "bytes"
    if isinstance(feature, dict) and "array" in feature and "sampling_rate" in feature:
        return "audio"
    return None


def _value_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, dict) and "array" in value and "sampling_rate" in value:
        return "audio"
    if hasattr(value, "convert") and hasattr(value, "mode"):
        return "image"
    return None


def _dataset_columns(ds: Any, columns: Sequence[str] | dict[str, str] | None, first: dict | None) -> dict[str, str]:
    if isinstance(columns, dict):
        kinds = dict(columns)
    else:
        features = ds.features
        if features is not None:
            kinds = {c: _feature_kind(f) for c, f in features.items()}
        else:
            kinds = {c: _value_kind(v) for c, v in (first or {}).items()}
        if columns is not None:
            missing = [c for c in columns if c not in kinds]
            if missing:
                raise ValueError(f"columns {missing} not in the dataset (has {sorted(kinds)})")
            undetected = [c for c in columns if kinds[c] is None]
            if undetected:
                raise ValueError(
                    f"cannot tell the modality of columns {undetected}; pass columns as a dict "
                    f"{{name: kind}} with kind in {_KINDS}"
                )
            kinds = {c: kinds[c] for c in columns}
        kinds = {c: k for c, k in kinds.items() if k is not None}
    bad = {c: k for c, k in kinds.items() if k not in _KINDS}
    if bad:
        raise ValueError(f"unknown column kinds {bad}; expected one of {_KINDS}")
    if not kinds:
        raise ValueError("no text, bytes, audio or image columns found in the dataset; pass columns={name: kind}")
    return kinds


def _dataset_rows(ds: Any, columns: Sequence[str] | dict[str, str] | None) -> tuple[dict[str, str], Iterator]:
    import datasets

    rows: Iterator = iter(())
    first = None
    if ds.features is None:
        # An IterableDataset without declared features: look at the first row, then put it back.
        it = iter(ds)
        first = next(it, None)
        rows = it if first is None else _chain(first, it)
    kinds = _dataset_columns(ds, columns, first)
    if ds.features is not None:
        for c in kinds:
            # Decode audio and images ourselves (soundfile, torchvision) so errors and conversions match
            # files'.
            feature = ds.features.get(c)
            if isinstance(feature, datasets.Audio) and feature.decode:
                ds = ds.cast_column(c, datasets.Audio(decode=False))
            elif isinstance(feature, datasets.Image) and feature.decode:
                ds = ds.cast_column(c, datasets.Image(decode=False))
        rows = iter(ds)
    return kinds, rows


def _chain(first: dict, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _is_dataset(obj: Any) -> bool:
    # A Dataset can only exist if its module is loaded; importing it just to check costs seconds.
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(obj, (datasets.Dataset, datasets.IterableDataset))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path, name: str) -> None:
    """Delete temporary folders of earlier builds whose process is gone (a killed build leaves one behind)."""
    for entry in parent.glob(f".{name}.*-*-*"):
        kind, _, rest = entry.name[len(name) + 2 :].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Writer:
    """Appends documents to the symbols file through one aligned staging buffer.

    On Linux the file is written with O_DIRECT: a corpus build is one long sequential write that nobody reads
    back soon, and skipping the page cache keeps it from competing for memory (allocating cache pages is what
    limits buffered writes on small VMs) or evicting the data a training run is using. Where the file system
    refuses O_DIRECT (tmpfs, some network mounts) the same code writes through the page cache.
    """

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0  # symbols written, including staged ones
        self.offsets = [0]
        self.buf = mmap.mmap(-1, _STAGE)  # page-aligned, as O_DIRECT requires
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
            n = -(-self.pos // _ALIGN) * _ALIGN
            self.view[self.pos : n] = bytes(n - self.pos)
        elif self.direct:
            n = self.pos // _ALIGN * _ALIGN  # an unaligned tail waits for the next flush
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
            k = min(len(data), _STAGE - self.pos)
            self.view[self.pos : self.pos + k] = data[:k]
            self.pos += k
            data = data[k:]
            if self.pos == _STAGE:
                self._flush()

    def _rewind(self, start: int) -> None:
        """Forget everything after byte ``start`` (a document that failed half way)."""
        if start >= self.flushed:
            self.pos = start - self.flushed
            return
        aligned = start // _ALIGN * _ALIGN
        with open(self.path, "rb") as f:
            f.seek(aligned)
            head = f.read(start - aligned)
        self.view[: len(head)] = head
        self.flushed, self.pos = aligned, len(head)

    def add(self, arr: np.ndarray) -> None:
        if arr.size:
            self._stage(memoryview(np.ascontiguousarray(arr, dtype=self.dtype)).cast("B"))
            self.count += arr.size
            self.offsets.append(self.count)

    def add_batch(self, symbols: np.ndarray, lengths: np.ndarray) -> None:
        """Several documents at once: ``symbols`` is their concatenation, ``lengths`` (all > 0) their sizes."""
        self._stage(memoryview(np.ascontiguousarray(symbols, dtype=self.dtype)).cast("B"))
        self.offsets.extend((self.count + np.cumsum(lengths)).tolist())
        self.count += symbols.size

    def add_file(self, path: str) -> None:
        # A text file is read straight into the staging buffer: no per-byte Python, no extra copy, and never
        # the whole file in memory.
        assert self.dtype.itemsize == 1
        start = self.flushed + self.pos
        with open_raw(path) as src:
            try:
                while True:
                    if self.pos == _STAGE:
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
        self.count += n
        self.offsets.append(self.count)

    def close(self) -> None:
        try:
            self._flush(final=True)
            os.ftruncate(self.fd, self.count * self.dtype.itemsize)
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.view.release()
            self.buf.close()


class _DocSequence:
    """Documents laid end to end; subclasses say where each one lives in the symbols file."""

    corpus: ByteCorpus
    _vstart: np.ndarray  # (num_docs + 1,) start of each document in this sequence, then the total
    _pstart: np.ndarray  # (num_docs,) start of each document in the symbols file

    @property
    def num_docs(self) -> int:
        """Number of documents."""
        return self._pstart.size

    @property
    def num_symbols(self) -> int:
        """Total symbols over all documents."""
        return int(self._vstart[-1])

    def __len__(self) -> int:
        return self.num_docs

    def doc_lengths(self) -> np.ndarray:
        """int64 ``(num_docs,)`` symbols per document."""
        return np.diff(self._vstart)

    def doc(self, i: int) -> torch.Tensor:
        """Document ``i`` as an int64 tensor ``(length,)``."""
        if not -self.num_docs <= i < self.num_docs:
            raise IndexError(f"document {i} out of range for {self.num_docs} documents")
        i %= self.num_docs
        start, length = int(self._pstart[i]), int(self._vstart[i + 1] - self._vstart[i])
        return torch.from_numpy(self.corpus.symbols[start : start + length].astype(np.int64))

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Symbols ``[start, stop)`` of the concatenated documents and the document each comes from.

        Returns:
            ``(ids, docs)``: int64 arrays ``(stop - start,)``; ``docs`` holds document numbers in this
            sequence.
        """
        if not 0 <= start <= stop <= self.num_symbols:
            raise IndexError(f"range [{start}, {stop}) outside 0..{self.num_symbols}")
        pos = np.arange(start, stop, dtype=np.int64)
        docs = np.searchsorted(self._vstart, pos, side="right") - 1
        phys = self._pstart[docs] + (pos - self._vstart[docs])
        sym = self.corpus.symbols
        if phys.size and phys[-1] - phys[0] == phys.size - 1:
            ids = np.asarray(sym[phys[0] : phys[-1] + 1], dtype=np.int64)
        else:
            ids = np.asarray(sym[phys], dtype=np.int64)
        return ids, docs


class ByteCorpus(_DocSequence):
    """A corpus cache on disk, memory-mapped, never loaded whole into RAM.

    Build with :meth:`build` (files, folders, globs, ``datasets``) or :meth:`from_documents` (in-memory),
    reopen with :meth:`open`. Attributes: ``path``, ``manifest`` (the parsed manifest.json), ``dtype`` (uint8
    or uint16), ``multimodal``, ``skipped`` (``[(source, reason)]`` of inputs left out), ``built`` (whether
    this call wrote the cache rather than reusing it).
    """

    def __init__(self, path: str | os.PathLike, manifest: dict, offsets: np.ndarray, *, built: bool = False) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.multimodal = bool(manifest["options"]["multimodal"])
        self.skipped = [tuple(s) for s in manifest["skipped"]]
        self.built = built
        self.offsets = offsets
        self.corpus = self
        self._vstart = offsets
        self._pstart = offsets[:-1]
        self._symbols: np.memmap | None = None

    @property
    def symbols(self) -> np.memmap:
        """All symbols, memory-mapped read-only (opened lazily, so each DataLoader worker maps its own)."""
        if self._symbols is None:
            self._symbols = np.memmap(self.path / _SYMBOLS, dtype=self.dtype, mode="r", shape=(self.num_symbols,))
        return self._symbols

    @property
    def vocab_size(self) -> int:
        """Smallest vocabulary that covers the stored ids: 256, or the multimodal ``VOCAB_SIZE``."""
        return _mm.VOCAB_SIZE if self.multimodal else 256

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_symbols"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"ByteCorpus({str(self.path)!r}, docs={self.num_docs}, symbols={self.num_symbols}, "
            f"dtype={self.dtype.name}, skipped={len(self.skipped)})"
        )

    @classmethod
    def open(cls, cache_dir: str | os.PathLike) -> ByteCorpus:
        """Open a finished cache.

        Raises:
            DecodeError: no cache there, or one that is incomplete, of another format version, or damaged.
        """
        path = Path(cache_dir)
        try:
            manifest = json.loads((path / _MANIFEST).read_text())
        except FileNotFoundError:
            raise DecodeError(path, "no corpus cache here (manifest.json missing)") from None
        except (OSError, ValueError) as e:
            raise DecodeError(path, f"unreadable manifest ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not manifest.get("complete"):
            raise DecodeError(path, "not a complete rawseq corpus cache")
        if manifest.get("version") != FORMAT_VERSION:
            raise DecodeError(path, f"cache format version {manifest.get('version')}, expected {FORMAT_VERSION}")
        try:
            n, docs, itemsize = (
                int(manifest["num_symbols"]),
                int(manifest["num_docs"]),
                np.dtype(manifest["dtype"]).itemsize,
            )
            size = (path / _SYMBOLS).stat().st_size
            offsets = np.load(path / _INDEX, allow_pickle=False)
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise DecodeError(path, f"damaged cache ({e})") from None
        if size != n * itemsize:
            raise DecodeError(path, f"damaged cache: symbols file has {size} bytes, manifest says {n * itemsize}")
        if (
            offsets.dtype != np.int64
            or offsets.shape != (docs + 1,)
            or offsets[0] != 0
            or offsets[-1] != n
            or np.any(np.diff(offsets) <= 0)
        ):
            raise DecodeError(path, "damaged cache: document index does not match the symbols")
        return cls(path, manifest, offsets)

    @classmethod
    def build(
        cls,
        sources: Any,
        cache_dir: str | os.PathLike,
        *,
        modality: str = "auto",
        codec: str = "mulaw8",
        sample_rate: int | None = 16000,
        mono: bool = True,
        image_mode: str = "RGB",
        image_size: int | tuple[int, int] | None = None,
        multimodal: bool = False,
        columns: Sequence[str] | dict[str, str] | None = None,
        strict: bool = False,
        rebuild: bool = False,
        fingerprint: str | None = None,
        progress: bool = False,
        num_workers: int = 0,
    ) -> ByteCorpus:
        """Build (or reuse) a corpus cache.

        Args:
            sources: a path, folder or glob (``str``/``PathLike``), a list of them, a list of ``bytes``
                documents, or a ``datasets.Dataset``/``IterableDataset``. A ``str`` is always a path; pass
                in-memory text through :meth:`from_documents`. Folders are walked recursively in sorted order,
                skipping hidden entries.
            cache_dir: the cache folder; its parent must be writable (the build is staged beside it).
            modality: for files: ``"auto"`` (by extension: audio, image, else raw bytes), ``"text"`` (every
                file's raw bytes), ``"audio"`` or ``"image"`` (every file must decode as one).
            codec, sample_rate, mono: how audio becomes symbols (see :mod:`rawseq.modalities.audio`);
                ``sample_rate=None`` keeps each file's rate.
            image_mode, image_size: how images are decoded (see :func:`rawseq.modalities.image.load`).
            multimodal: store each document as a :func:`rawseq.modalities.multimodal.pack` sequence (BOS, a
                modality marker and shape header, payload, END, EOS) in uint16, instead of bare uint8 symbols.
                For a dataset, each row becomes one document holding its columns as segments in column order.
            columns: dataset columns to use, as names (kinds detected from the features) or ``{name: kind}``
                with kind in ``"text"``, ``"bytes"``, ``"audio"``, ``"image"``. Default: every column of those
                kinds.
            strict: raise the first :class:`DecodeError` instead of skipping bad inputs.
            rebuild: rebuild even if the cache is up to date.
            fingerprint: identifies an ``IterableDataset``'s content (it has none of its own); without it such
                a corpus is rebuilt on every call.
            progress: show a tqdm bar.
            num_workers: decode audio and image files in this many processes (0: in this process). Text
                files are always copied by this process, straight from disk into the cache.

        Returns:
            the opened corpus; ``built`` tells whether it was written now. Sources that failed are in
            ``skipped`` and logged as a warning.

        Raises:
            DecodeError: with ``strict``, the first bad source.
            ValueError: nothing usable in ``sources``.
        """
        opts = dict(
            modality=modality,
            codec=codec,
            sample_rate=sample_rate,
            mono=mono,
            image_mode=image_mode,
            image_size=list(image_size) if isinstance(image_size, tuple) else image_size,
            multimodal=multimodal,
        )
        cache_dir = Path(cache_dir).absolute()
        if modality not in ("auto", "text", "audio", "image"):
            raise ValueError(f"modality must be auto, text, audio or image, got {modality!r}")
        _audio.symbols_per_sample(codec)
        if image_mode not in _image.MODES:
            raise ValueError(f"unknown image mode {image_mode!r}")
        skipped: list[tuple[str, str]] = []
        if _is_dataset(sources):
            kinds, rows = _dataset_rows(sources, columns)
            opts["columns"] = kinds
            ds_fp = fingerprint or getattr(sources, "_fingerprint", None)
            if fingerprint is None and type(sources).__name__ == "IterableDataset":
                ds_fp = None
            source_key = {"dataset": ds_fp} if ds_fp else None
            items = _dataset_items(rows, kinds, multimodal)
        else:
            if isinstance(sources, (str, os.PathLike)):
                sources = [sources]
            sources = list(sources)
            paths = [s for s in sources if isinstance(s, (str, os.PathLike))]
            docs = [s for s in sources if not isinstance(s, (str, os.PathLike))]
            if paths and docs:
                raise ValueError("mix of paths and in-memory documents; build them as separate corpora")
            if docs:
                return cls.from_documents(
                    docs,
                    cache_dir,
                    rebuild=rebuild,
                    **{k: v for k, v in opts.items() if k != "modality"},
                    strict=strict,
                )
            files, missing = _expand_paths(paths, str(cache_dir))
            for name, reason in missing:
                if strict:
                    raise DecodeError(name, reason)
                skipped.append((name, reason))
            source_key = {"files": [_stat_key(f) for f in files]}
            items = (_Item(f, _file_kind(f, modality), path=f) for f in files)
        return cls._build(items, cache_dir, opts, source_key, skipped, strict, rebuild, progress, num_workers)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[Any],
        cache_dir: str | os.PathLike,
        *,
        codec: str = "mulaw8",
        sample_rate: int | None = 16000,
        mono: bool = True,
        image_mode: str = "RGB",
        image_size: int | tuple[int, int] | None = None,
        multimodal: bool = False,
        strict: bool = False,
        rebuild: bool = False,
        progress: bool = False,
    ) -> ByteCorpus:
        """Build (or reuse) a corpus from in-memory documents.

        Args:
            documents: each a ``str`` (UTF-8), ``bytes``, a uint8 array/tensor (symbols as they are), or a
                multimodal segment (``TextSegment``, ``AudioSegment``, ``ImageSegment``) or list of segments,
                which are packed as one document (needs ``multimodal=True``).
            Other arguments as in :meth:`build`.

        Returns:
            the opened corpus. The cache is reused while the documents' content (hashed) and options are
            unchanged.
        """
        opts = dict(
            modality="documents",
            codec=codec,
            sample_rate=sample_rate,
            mono=mono,
            image_mode=image_mode,
            image_size=list(image_size) if isinstance(image_size, tuple) else image_size,
            multimodal=multimodal,
        )
        skipped: list[tuple[str, str]] = []
        batches = list(_document_batches(documents, multimodal, strict, skipped))
        digest = hashlib.sha256()
        for symbols, lengths in batches:
            digest.update(lengths.tobytes())
            digest.update(memoryview(symbols).cast("B"))
        items = (_Item("<documents>", "batch", value=batch) for batch in batches)
        return cls._build(
            items,
            Path(cache_dir).absolute(),
            opts,
            {"documents": digest.hexdigest()},
            skipped,
            strict,
            rebuild,
            progress,
            0,
        )

    @classmethod
    def _build(
        cls,
        items: Iterable[_Item],
        cache_dir: Path,
        opts: dict,
        source_key: dict | None,
        skipped: list[tuple[str, str]],
        strict: bool,
        rebuild: bool,
        progress: bool,
        num_workers: int,
    ) -> ByteCorpus:
        key = None
        if source_key is not None:
            blob = json.dumps({"version": FORMAT_VERSION, "options": opts, "sources": source_key}, sort_keys=True)
            key = hashlib.sha256(blob.encode()).hexdigest()
        if key is not None and not rebuild:
            try:
                existing = cls.open(cache_dir)
            except DecodeError:
                existing = None
            if existing is not None and existing.manifest.get("key") == key:
                return existing
        parent = cache_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(parent, cache_dir.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-{os.getpid()}-", dir=parent))
        try:
            dtype = np.uint16 if opts["multimodal"] else np.uint8
            writer = _Writer(tmp / _SYMBOLS, dtype)
            converted = results = _converted(items, opts, num_workers)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, desc=f"building {cache_dir.name}", unit="doc")
            try:
                with _one_thread():
                    for item, symbols, error in results:
                        try:
                            if error is not None:
                                raise error
                            if isinstance(symbols, str):
                                writer.add_file(item.path)
                            elif isinstance(symbols, tuple):
                                writer.add_batch(*symbols)
                            elif symbols is not None:
                                writer.add(symbols)
                        except DecodeError as e:
                            if strict:
                                raise
                            skipped.append((e.source, e.reason))
            finally:
                converted.close()  # stops worker processes at once if the build fails
                writer.close()
            if writer.count == 0:
                raise ValueError(
                    f"no documents to build {cache_dir} from"
                    + (f"; skipped {len(skipped)}: {skipped[:5]}" if skipped else "")
                )
            offsets = np.asarray(writer.offsets, dtype=np.int64)
            with open(tmp / _INDEX, "wb") as f:
                np.save(f, offsets)
                f.flush()
                os.fsync(f.fileno())
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "complete": True,
                "key": key,
                "dtype": np.dtype(dtype).name,
                "num_docs": offsets.size - 1,
                "num_symbols": writer.count,
                "options": opts,
                "sources": source_key,
                "skipped": [list(s) for s in skipped],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            with open(tmp / _MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            old = None
            if os.path.lexists(cache_dir):
                old = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.old-{os.getpid()}-", dir=parent))
                os.rename(cache_dir, old / "cache")
            try:
                os.rename(tmp, cache_dir)
            except OSError:
                # Another process finished the same cache between our two renames; theirs is as good.
                if not os.path.isdir(cache_dir):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            _fsync_dir(parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if skipped:
            listed = "; ".join(f"{s}: {r}" for s, r in skipped[:20])
            more = f" (and {len(skipped) - 20} more, see corpus.skipped)" if len(skipped) > 20 else ""
            log.warning("corpus %s: skipped %d source(s): %s%s", cache_dir, len(skipped), listed, more)
        # Reopen from disk: this checks what was written and describes the cache that is actually in place.
        corpus = cls.open(cache_dir)
        if corpus.manifest.get("key") != key:
            raise RuntimeError(f"{cache_dir} was replaced by a concurrent build with other sources or options")
        corpus.built = True
        return corpus


def _document_batches(
    documents: Iterable[Any], multimodal: bool, strict: bool, skipped: list[tuple[str, str]]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """In-memory documents joined into large batches ``(symbols, lengths)``: one write and one hash update per
    batch instead of per document, which is what decides the speed for many short documents."""
    dtype = np.uint16 if multimodal else np.uint8
    parts: list[Any] = []
    lengths: list[int] = []
    size = 0
    for i, doc in enumerate(documents):
        try:
            if not multimodal and isinstance(doc, str):
                part = doc.encode("utf-8")
            elif not multimodal and isinstance(doc, bytes):
                part = doc
            else:
                part = _document_array(doc, f"<document {i}>", multimodal)
        except DecodeError as e:
            if strict:
                raise
            skipped.append((e.source, e.reason))
            continue
        if len(part):
            parts.append(part)
            lengths.append(len(part))
            size += len(part)
        if size >= _BATCH:
            yield _join(parts, dtype), np.asarray(lengths, dtype=np.int64)
            parts, lengths, size = [], [], 0
    if parts:
        yield _join(parts, dtype), np.asarray(lengths, dtype=np.int64)


def _join(parts: list[Any], dtype: type) -> np.ndarray:
    if dtype is np.uint8:
        return np.frombuffer(b"".join(parts), dtype=np.uint8)
    return np.concatenate(parts).astype(dtype, copy=False)


def _document_array(doc: Any, name: str, multimodal: bool) -> np.ndarray:
    segment_types = (_mm.TextSegment, _mm.AudioSegment, _mm.ImageSegment)
    is_segments = isinstance(doc, segment_types) or (
        isinstance(doc, (list, tuple)) and doc and all(isinstance(s, segment_types) for s in doc)
    )
    if is_segments:
        if not multimodal:
            raise ValueError("multimodal segments need ByteCorpus.from_documents(..., multimodal=True)")
        return _mm.pack_array([doc] if isinstance(doc, segment_types) else doc)
    data = np.frombuffer(_to_bytes(doc, name), dtype=np.uint8)
    if multimodal:
        return _mm.pack_array([_mm.TextSegment(data.tobytes())])
    return data


def _dataset_items(rows: Iterator, kinds: dict[str, str], multimodal: bool) -> Iterator[_Item]:
    for r, row in enumerate(rows):
        if multimodal:
            yield _Item(f"<dataset row {r}>", "row", value=(row, kinds))
            continue
        for col, kind in kinds.items():
            value = row.get(col)
            if value is None:
                continue
            path = value.get("path") if isinstance(value, dict) else None
            yield _Item(f"<dataset row {r}>.{col}" + (f" ({path})" if path else ""), kind, value=value)


_COPY = "copy"  # the writer copies this item's file itself


def _item_symbols(item: _Item, opts: dict) -> np.ndarray | str | None:
    """One item -> the symbols to store (uint8, or uint16 packed segments), ``_COPY``, or None for nothing."""
    multimodal = opts["multimodal"]
    if item.kind == "batch":
        return item.value
    if item.kind == "row":
        row, kinds = item.value
        segments = [_segment(k, row[c], f"{item.name}.{c}", opts) for c, k in kinds.items() if row.get(c) is not None]
        segments = [s for s in segments if not (isinstance(s, _mm.TextSegment) and not s.data)]
        return _mm.pack_array(segments) if segments else None
    if item.path is not None:
        if item.kind == "text" and not multimodal:
            return _COPY
        value = read_file(item.path) if item.kind == "text" else item.path
    else:
        value = item.value
    if multimodal:
        seg = _segment(item.kind, value, item.name, opts)
        # Empty dataset cells (blank lines of a text dataset, say) are simply not documents.
        return None if isinstance(seg, _mm.TextSegment) and not seg.data else _mm.pack_array([seg])
    return _symbols(item.kind, value, item.name, opts)


def _convert(job: tuple[_Item, dict]) -> tuple[_Item, np.ndarray | str | None, DecodeError | None]:
    item, opts = job
    try:
        return item, _item_symbols(item, opts), None
    except DecodeError as e:
        return item, None, e


def _worker_init() -> None:
    torch.set_num_threads(1)


def _converted(items: Iterable[_Item], opts: dict, num_workers: int) -> Iterator[tuple]:
    """Items with their symbols, in order; decoding runs in ``num_workers`` processes when asked."""
    jobs = ((item, opts) for item in items)
    if num_workers <= 0:
        yield from map(_convert, jobs)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(num_workers, initializer=_worker_init) as pool:
        yield from pool.imap(_convert, jobs, chunksize=4)


@contextlib.contextmanager
def _one_thread():
    # Decoding one file is a handful of small tensor ops; intra-op threads cost more than they give, and on a
    # loaded machine they cost a lot (resampling measured 20x slower with 2 threads than with 1).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CorpusView(_DocSequence):
    """A subset of a corpus's documents, in corpus order; reads go to the same memory map.

    Attributes: ``corpus`` (the parent :class:`ByteCorpus`), ``doc_ids`` (int64, the parent's document
    numbers).
    """

    def __init__(self, corpus: ByteCorpus, doc_ids: Sequence[int] | np.ndarray) -> None:
        ids = np.asarray(doc_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= corpus.num_docs):
            raise IndexError(f"document ids outside 0..{corpus.num_docs - 1}")
        self.corpus = corpus
        self.doc_ids = ids
        lengths = corpus.offsets[ids + 1] - corpus.offsets[ids]
        self._pstart = corpus.offsets[ids]
        self._vstart = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    @property
    def vocab_size(self) -> int:
        return self.corpus.vocab_size

    def __repr__(self) -> str:
        return f"CorpusView({self.corpus!r}, docs={self.num_docs}, symbols={self.num_symbols})"


def split(corpus: ByteCorpus, val_fraction: float, seed: int = 0) -> tuple[CorpusView, CorpusView]:
    """Split a corpus by document into train and validation, the same way every time.

    Document ``i`` goes to validation when the ``i``-th draw of a generator seeded with ``seed`` is below
    ``val_fraction``, so adding documents at the end never moves existing ones. Each side gets at least one
    document when ``0 < val_fraction < 1`` and the corpus has two or more.

    Returns:
        ``(train, val)`` views, each in corpus order.
    """
    if not 0 <= val_fraction <= 1:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    u = np.random.default_rng(seed).random(corpus.num_docs)
    is_val = u < val_fraction
    if 0 < val_fraction < 1 and corpus.num_docs >= 2:
        if not is_val.any():
            is_val[np.argmin(u)] = True
        if is_val.all():
            is_val[np.argmax(u)] = False
    ids = np.arange(corpus.num_docs)
    return CorpusView(corpus, ids[~is_val]), CorpusView(corpus, ids[is_val])
