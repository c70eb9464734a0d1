"""Per-modality conversion of one corpus item (a file, a dataset cell or row, in-memory documents) into symbols.

:func:`convert` returns what the writer stores for an item: a symbol array, :class:`CopyFile` (a text file the
writer copies itself), :class:`Batch` (many in-memory documents), :class:`Blocks` (one long document in pieces:
an audio recording decoded block by block, a large text file in a multimodal corpus), or None (nothing to store).
Byte corpora hold uint8 symbols; multimodal corpora hold uint16 :func:`~rawseq.modalities.multimodal.pack` ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import audio as _audio
from .. import image as _image
from .. import multimodal as _mm
from .._io import open_regular, os_error, read_file
from ..errors import DecodeError

KINDS = ("text", "bytes", "audio", "image")
BATCH_SYMBOLS = 64 << 20  # in-memory documents are joined into batches of about this many symbols
READ_CHUNK = 16 << 20  # bytes of a text file read at once when it is streamed


@dataclass
class Item:
    """One thing to convert: a file (``path``) or an in-memory ``value``, and its ``kind`` (a modality, ``"row"``
    for a multimodal dataset row, ``"batch"`` for joined in-memory documents)."""

    name: str
    kind: str
    path: str | None = None
    value: Any = None


@dataclass
class CopyFile:
    """A file whose raw bytes are the document; the writer copies it straight into the cache."""

    path: str
    remove: bool = False  # a temporary file, deleted once copied


@dataclass
class Batch:
    """Several documents at once: ``symbols`` is their concatenation, ``lengths`` (all > 0) their sizes."""

    symbols: np.ndarray
    lengths: np.ndarray


@dataclass
class Blocks:
    """One document in pieces, produced while it is written (so it is never whole in memory)."""

    blocks: Iterable[np.ndarray]
    source: str


def _wrap_value_error(name: str, fn, *args, **kwargs):
    """Call ``fn``; a plain ValueError about an in-memory value becomes a DecodeError naming ``name``."""
    try:
        return fn(*args, **kwargs)
    except DecodeError:
        raise
    except (ValueError, TypeError) as e:
        raise DecodeError(name, str(e)) from None


def _unwrap(value: Any) -> Any:
    """A ``datasets`` ``{"bytes", "path"}`` cell -> its bytes or path; anything else as it is."""
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return value["bytes"] if value.get("bytes") else value["path"]
    return value


def _is_encoded_file(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview))


def _audio_stream(value: Any, name: str, opts: dict) -> _audio.AudioStream:
    value = _unwrap(value)
    label = os.fspath(value) if isinstance(value, (str, os.PathLike)) else name
    return _audio.AudioStream(value, sample_rate=opts["sample_rate"], mono=opts["mono"], name=label)


def _waveform(value: Any, name: str, opts: dict) -> tuple[torch.Tensor, int]:
    """An audio value -> ``(waveform (channels, time), rate)`` in memory (dataset rows of a multimodal corpus)."""
    value = _unwrap(value)
    if _is_encoded_file(value):
        stream = _audio_stream(value, name, opts)
        return torch.cat(list(stream), dim=1), stream.sample_rate
    if not isinstance(value, dict):
        raise DecodeError(name, f"cannot read audio from a {type(value).__name__}")
    wave = _wrap_value_error(name, _audio.waveform, value, sample_rate=opts["sample_rate"], mono=opts["mono"])
    rate = opts["sample_rate"] or value.get("sampling_rate")
    return wave, int(rate)


def _pixels(value: Any, name: str, opts: dict) -> torch.Tensor:
    value = _unwrap(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _image.decode(value, opts["image_mode"], opts["image_size"], source=name)
    return _wrap_value_error(name, _image.pixels, value, mode=opts["image_mode"], size=opts["image_size"])


def _bytes(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    value = _unwrap(value)
    if isinstance(value, (str, os.PathLike)):
        return read_file(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        arr = value.numpy() if isinstance(value, torch.Tensor) else value
        if arr.dtype != np.uint8:
            raise DecodeError(name, f"an in-memory document must be uint8, got {arr.dtype}")
        return arr.reshape(-1).tobytes()
    raise DecodeError(name, f"cannot take bytes from a {type(value).__name__}")


def _segment(kind: str, value: Any, name: str, opts: dict) -> _mm.Segment:
    if kind in ("text", "bytes"):
        return _mm.TextSegment(_bytes(value, name))
    if kind == "audio":
        wave, rate = _waveform(value, name, opts)
        return _mm.AudioSegment(wave, rate, opts["codec"])
    return _mm.ImageSegment(_pixels(value, name, opts))


def _audio_blocks(stream: _audio.AudioStream, codec: str, header: bytes | None) -> Iterator[np.ndarray]:
    """Symbols of a recording block by block; with a multimodal ``header``, wrapped in BOS AUDIO header ... END
    EOS."""
    if header is not None:
        yield np.concatenate([[_mm.BOS, _mm.AUDIO], np.frombuffer(header, dtype=np.uint8)]).astype(np.uint16)
    for block in stream:
        yield _audio.encode(block, codec).numpy()
    if header is not None:
        yield np.array([_mm.END, _mm.EOS], dtype=np.uint16)


def _text_file_blocks(path: str) -> Iterator[np.ndarray]:
    """A text file as one multimodal document, read in chunks: BOS TEXT bytes... END EOS."""
    with open_regular(path) as f:
        first = True
        while True:
            try:
                chunk = f.read(READ_CHUNK)
            except OSError as e:
                raise os_error(path, e) from None
            if not chunk:
                break
            if first:
                yield np.array([_mm.BOS, _mm.TEXT], dtype=np.uint16)
                first = False
            yield np.frombuffer(chunk, dtype=np.uint8)
        if first:
            raise DecodeError(path, "zero-length file")
        yield np.array([_mm.END, _mm.EOS], dtype=np.uint16)


def convert(item: Item, opts: dict) -> np.ndarray | CopyFile | Batch | Blocks | None:
    """One item -> what the writer stores for it (see the module docstring).

    Raises:
        DecodeError: the item cannot be read or decoded (the build skips it, or stops with ``strict``).
    """
    multimodal = opts["multimodal"]
    if item.kind == "batch":
        return Batch(*item.value)
    if item.kind == "row":
        row, kinds = item.value
        segments = [_segment(k, row[c], f"{item.name}.{c}", opts) for c, k in kinds.items() if row.get(c) is not None]
        segments = [s for s in segments if not (isinstance(s, _mm.TextSegment) and not s.data)]
        return _wrap_value_error(item.name, _mm.pack_array, segments) if segments else None
    value = item.path if item.path is not None else item.value
    if item.path is not None and item.kind == "text":
        return Blocks(_text_file_blocks(item.path), item.path) if multimodal else CopyFile(item.path)
    if item.kind == "audio" and _is_encoded_file(_unwrap(value)):
        stream = _audio_stream(value, item.name, opts)
        header = None
        if multimodal:  # checked now, so a rate the header cannot hold skips the file like any bad input
            try:
                header = _wrap_value_error(stream.source, _mm.audio_header, stream.channels, stream.sample_rate,
                                           opts["codec"])
            except DecodeError:
                stream.close()
                raise
        return Blocks(_audio_blocks(stream, opts["codec"], header), stream.source)
    if multimodal:
        seg = _segment(item.kind, value, item.name, opts)
        # Empty dataset cells (blank lines of a text dataset, say) are simply not documents.
        if isinstance(seg, _mm.TextSegment) and not seg.data:
            return None
        return _wrap_value_error(item.name, _mm.pack_array, [seg])
    if item.kind in ("text", "bytes"):
        return np.frombuffer(_bytes(value, item.name), dtype=np.uint8)
    if item.kind == "audio":
        return _audio.encode(_waveform(value, item.name, opts)[0], opts["codec"]).numpy()
    return _image.to_bytes(_pixels(value, item.name, opts)).numpy()


def _document_array(doc: Any, name: str, multimodal: bool) -> np.ndarray:
    segment_types = (_mm.TextSegment, _mm.AudioSegment, _mm.ImageSegment)
    is_segments = isinstance(doc, segment_types) or (
        isinstance(doc, (list, tuple)) and doc and all(isinstance(s, segment_types) for s in doc)
    )
    if is_segments:
        if not multimodal:
            raise ValueError("multimodal segments need ByteCorpus.from_documents(..., multimodal=True)")
        return _mm.pack_array([doc] if isinstance(doc, segment_types) else doc)
    data = np.frombuffer(_bytes(doc, name), dtype=np.uint8)
    if multimodal:
        return _mm.pack_array([_mm.TextSegment(data.tobytes())])
    return data


def _join(parts: list[Any], dtype: type) -> np.ndarray:
    if dtype is np.uint8:
        return np.frombuffer(b"".join(parts), dtype=np.uint8)
    return np.concatenate(parts).astype(dtype, copy=False)


def document_batches(
    documents: Iterable[Any], multimodal: bool, strict: bool, skipped: list[tuple[str, str]]
) -> Iterator[Batch]:
    """In-memory documents joined into large batches: one write and one hash update per batch instead of per
    document, which is what decides the speed for many short documents."""
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
        if size >= BATCH_SYMBOLS:
            yield Batch(_join(parts, dtype), np.asarray(lengths, dtype=np.int64))
            parts, lengths, size = [], [], 0
    if parts:
        yield Batch(_join(parts, dtype), np.asarray(lengths, dtype=np.int64))
