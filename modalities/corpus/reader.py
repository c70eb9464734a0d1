"""The on-disk corpus: every document as symbols in one memory-mapped array, plus a document index.

Layout of a cache directory (see docs/modalities.md)::

    symbols.bin    all documents back to back, uint8 (byte corpora) or uint16 (multimodal corpora, ids >= 256)
    index.npy      int64 (num_docs + 1,) offsets: document i is symbols[index[i]:index[i + 1]]
    manifest.json  format version, options, source fingerprints, counts, skipped sources
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import multimodal as _mm
from ..errors import DecodeError
from ..symbols import N_SYMBOLS
from .build import FORMAT, FORMAT_VERSION, INDEX, MANIFEST, SYMBOLS, build_from_documents, build_from_sources, options

_DTYPES = ("uint8", "uint16")


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


def _load_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise DecodeError(path, "no corpus cache here (manifest.json missing)") from None
    except (OSError, ValueError) as e:
        raise DecodeError(path, f"unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("complete") is not True:
        raise DecodeError(path, "not a complete rawseq corpus cache")
    if manifest.get("version") != FORMAT_VERSION:
        raise DecodeError(path, f"cache format version {manifest.get('version')}, expected {FORMAT_VERSION}")
    fields = {"num_symbols": int, "num_docs": int, "dtype": str, "options": dict, "skipped": list}
    for name, kind in fields.items():
        if not isinstance(manifest.get(name), kind) or isinstance(manifest.get(name), bool):
            raise DecodeError(path, f"damaged cache: manifest field {name!r} is missing or not a {kind.__name__}")
    if manifest["dtype"] not in _DTYPES or min(manifest["num_symbols"], manifest["num_docs"]) < 0:
        raise DecodeError(path, "damaged cache: manifest dtype or counts out of range")
    if not all(isinstance(s, list) and len(s) == 2 for s in manifest["skipped"]):
        raise DecodeError(path, "damaged cache: manifest field 'skipped' is not a list of (source, reason)")
    return manifest


def _load_index(path: Path, num_docs: int, num_symbols: int) -> np.ndarray:
    try:
        # Memory-mapped first: a damaged header cannot make us allocate what it declares.
        mapped = np.load(path / INDEX, mmap_mode="r", allow_pickle=False)
        valid = mapped.dtype == np.int64 and mapped.shape == (num_docs + 1,)
        offsets = np.array(mapped) if valid else None
        del mapped
    except Exception as e:  # a damaged .npy header fails in numpy's parser with assorted exception types
        raise DecodeError(path, f"damaged cache ({type(e).__name__}: {e})") from None
    if (
        offsets is None
        or offsets[0] != 0
        or offsets[-1] != num_symbols
        or (num_docs and np.any(np.diff(offsets) <= 0))
    ):
        raise DecodeError(path, "damaged cache: document index does not match the symbols")
    return offsets


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
        self.multimodal = bool(manifest["options"].get("multimodal"))
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
            self._symbols = np.memmap(self.path / SYMBOLS, dtype=self.dtype, mode="r", shape=(self.num_symbols,))
        return self._symbols

    @property
    def vocab_size(self) -> int:
        """Smallest vocabulary that covers the stored ids: ``N_SYMBOLS``, or the multimodal ``VOCAB_SIZE``."""
        return _mm.VOCAB_SIZE if self.multimodal else N_SYMBOLS

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
        manifest = _load_manifest(path)
        n, docs = manifest["num_symbols"], manifest["num_docs"]
        expected = n * np.dtype(manifest["dtype"]).itemsize
        try:
            size = (path / SYMBOLS).stat().st_size
        except OSError as e:
            raise DecodeError(path, f"damaged cache ({e})") from None
        if size != expected:
            raise DecodeError(path, f"damaged cache: symbols file has {size} bytes, manifest says {expected}")
        return cls(path, manifest, _load_index(path, docs, n))

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
        exclude: Sequence[str | os.PathLike] = (),
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
                skipping hidden entries; only regular files are read, each once (see docs/modalities.md).
            cache_dir: the cache folder; its parent must be writable (the build is staged beside it). It is
                never read as a source.
            modality: for files: ``"auto"`` (by extension: audio, image, else raw bytes), ``"text"`` (every
                file's raw bytes), ``"audio"`` or ``"image"`` (every file must decode as one).
            codec, sample_rate, mono: how audio becomes symbols (see :mod:`rawseq.modalities.audio`);
                ``sample_rate=None`` keeps each file's rate. Files are decoded block by block.
            image_mode, image_size: how images are decoded (see :func:`rawseq.modalities.image.load`; the pixel
                limit is ``image.MAX_IMAGE_PIXELS``).
            multimodal: store each document as a :func:`rawseq.modalities.multimodal.pack` sequence (BOS, a
                modality marker and shape header, payload, END, EOS) in uint16, instead of bare uint8 symbols.
                For a dataset, each row becomes one document holding its columns as segments in column order.
            columns: dataset columns to use, as names (kinds detected from the features) or ``{name: kind}``
                with kind in ``"text"``, ``"bytes"``, ``"audio"``, ``"image"``. Default: every column of those
                kinds.
            exclude: folders and files never read as sources (a training run's output folder, other caches),
                however they are reached.
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
        opts = options(
            modality=modality, codec=codec, sample_rate=sample_rate, mono=mono, image_mode=image_mode,
            image_size=image_size, multimodal=multimodal,
        )
        return build_from_sources(
            cls, sources, Path(cache_dir).absolute(), opts, columns=columns, strict=strict, rebuild=rebuild,
            fingerprint=fingerprint, progress=progress, num_workers=num_workers, exclude=exclude,
        )

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
        opts = options(
            modality="documents", codec=codec, sample_rate=sample_rate, mono=mono, image_mode=image_mode,
            image_size=image_size, multimodal=multimodal,
        )
        return build_from_documents(cls, documents, Path(cache_dir).absolute(), opts, strict, rebuild, progress)


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
