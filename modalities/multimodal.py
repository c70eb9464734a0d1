"""One symbol stream for text, audio and images, interleaved, in the ByteLM vocabulary.

Ids 0..255 are bytes; the special symbols follow from 256. A sequence is::

    BOS  segment*  EOS
    segment = TEXT  payload END
            | AUDIO codec channels rate[3]  payload END      (header: 5 bytes)
            | IMAGE height[2] width[2] channels  payload END  (header: 5 bytes)

Header fields are plain bytes (multi-byte fields big-endian), so a model writes a header the same way it
writes any other symbol. ``codec`` is 0 = mulaw8, 1 = linear8, 2 = pcm16; the audio payload is
:func:`rawseq.modalities.audio. encode` output (channels interleaved), the image payload
:func:`rawseq.modalities.image.to_bytes` output (raster order, ``height * width * channels`` symbols).
:func:`unpack` checks every header and length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import audio as _audio
from . import image as _image
from .errors import DecodeError
from .symbols import N_SYMBOLS

BOS = N_SYMBOLS
EOS = N_SYMBOLS + 1
PAD = N_SYMBOLS + 2
TEXT = N_SYMBOLS + 3
AUDIO = N_SYMBOLS + 4
IMAGE = N_SYMBOLS + 5
END = N_SYMBOLS + 6
NUM_SPECIAL = 7
VOCAB_SIZE = N_SYMBOLS + NUM_SPECIAL
SPECIAL_NAMES = {BOS: "BOS", EOS: "EOS", PAD: "PAD", TEXT: "TEXT", AUDIO: "AUDIO", IMAGE: "IMAGE", END: "END"}

AUDIO_CODEC_IDS = {"mulaw8": 0, "linear8": 1, "pcm16": 2}
_AUDIO_CODEC_NAMES = {v: k for k, v in AUDIO_CODEC_IDS.items()}
HEADER_LEN = {TEXT: 0, AUDIO: 5, IMAGE: 5}
_MAX_RATE = (1 << 24) - 1

log = logging.getLogger("rawseq.modalities")


@dataclass
class TextSegment:
    """Raw bytes of text (any encoding). ``truncated``: the sequence ended before the segment's END."""

    data: bytes
    truncated: bool = False

    @property
    def text(self) -> str:
        """The bytes as UTF-8, with invalid sequences replaced (model output need not be valid UTF-8)."""
        return self.data.decode("utf-8", errors="replace")


@dataclass
class AudioSegment:
    """A waveform: float ``(channels, time)`` in [-1, 1], its rate in Hz, and the codec used to pack it."""

    waveform: torch.Tensor
    sample_rate: int
    codec: str = "mulaw8"
    truncated: bool = False


@dataclass
class ImageSegment:
    """A uint8 image ``(channels, height, width)``; a truncated one keeps only its complete rows."""

    image: torch.Tensor
    truncated: bool = False


Segment = TextSegment | AudioSegment | ImageSegment


def audio_header(channels: int, sample_rate: int, codec: str) -> bytes:
    """The 5 header bytes of an audio segment: codec id, channels, rate (3 bytes, big-endian).

    Raises:
        ValueError: channels outside 1..255, a rate outside 1..16 777 215 Hz or an unknown codec.
    """
    rate = int(sample_rate)
    if not 1 <= channels < N_SYMBOLS:  # one header byte
        raise ValueError(f"audio segment needs 1..{N_SYMBOLS - 1} channels, got {channels}")
    if not 1 <= rate <= _MAX_RATE:
        raise ValueError(f"sample rate must be in 1..{_MAX_RATE}, got {rate}")
    if codec not in AUDIO_CODEC_IDS:
        raise ValueError(f"unknown audio codec {codec!r}")
    return bytes([AUDIO_CODEC_IDS[codec], channels]) + rate.to_bytes(3, "big")


def _segment_array(segment: Segment | str | bytes) -> np.ndarray:
    if isinstance(segment, (str, bytes, bytearray)):
        segment = TextSegment(segment.encode("utf-8") if isinstance(segment, str) else bytes(segment))
    if isinstance(segment, TextSegment):
        payload, header = np.frombuffer(bytes(segment.data), dtype=np.uint8), b""
        marker = TEXT
    elif isinstance(segment, AudioSegment):
        w = torch.as_tensor(segment.waveform)
        w = w.unsqueeze(0) if w.dim() == 1 else w
        header = audio_header(w.shape[0], segment.sample_rate, segment.codec)
        payload = _audio.encode(w, segment.codec).numpy()
        marker = AUDIO
    elif isinstance(segment, ImageSegment):
        c, h, w = segment.image.shape
        if not (1 <= h <= 65535 and 1 <= w <= 65535 and 1 <= c <= 4):
            raise ValueError(f"image segment must be 1..4 x 1..65535 x 1..65535, got {tuple(segment.image.shape)}")
        header = h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([c])
        payload = _image.to_bytes(segment.image).numpy()
        marker = IMAGE
    else:
        raise TypeError(f"cannot pack {type(segment).__name__}; use TextSegment, AudioSegment, ImageSegment or str")
    out = np.empty(2 + len(header) + payload.size, dtype=np.uint16)
    out[0] = marker
    out[1 : 1 + len(header)] = np.frombuffer(header, dtype=np.uint8)
    out[1 + len(header) : -1] = payload
    out[-1] = END
    return out


def pack_array(segments: Iterable[Segment | str | bytes], *, bos: bool = True, eos: bool = True) -> np.ndarray:
    """:func:`pack` as a uint16 numpy array (the corpus cache stores multimodal documents this way)."""
    parts = [np.array([BOS], dtype=np.uint16)] if bos else []
    parts += [_segment_array(s) for s in segments]
    if eos:
        parts.append(np.array([EOS], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def pack(segments: Iterable[Segment | str | bytes], *, bos: bool = True, eos: bool = True) -> torch.Tensor:
    """Interleave segments into one id sequence.

    Args:
        segments: ``TextSegment``/``AudioSegment``/``ImageSegment`` objects; a ``str`` or ``bytes`` is a text
        segment.
        bos, eos: start with BOS / end with EOS.

    Returns:
        int64 tensor ``(n,)`` with ids in ``[0, VOCAB_SIZE)``.
    """
    return torch.from_numpy(pack_array(segments, bos=bos, eos=eos).astype(np.int64))


def _parse(ids: np.ndarray) -> tuple[list[Segment], list[str]]:
    segments: list[Segment] = []
    problems: list[str] = []
    n = ids.size
    special = np.flatnonzero(ids >= N_SYMBOLS)
    # The sequence may end in PAD (a padded batch); a segment that runs into that tail was cut off, not
    # malformed.
    tail = n
    while tail > 0 and ids[tail - 1] == PAD:
        tail -= 1
    i = 0
    while i < n:
        t = int(ids[i])
        if t == EOS:
            break
        if t in (BOS, PAD):
            i += 1
            continue
        nxt = special[np.searchsorted(special, i, side="right") :]
        j = int(nxt[0]) if nxt.size else n
        if t not in HEADER_LEN:
            what = "END" if t == END else "byte symbols"
            problems.append(f"position {i}: {what} outside any segment (skipped up to position {j})")
            i = j
            continue
        closed = j < n and ids[j] == END
        truncated = not closed and j >= tail
        region = ids[i + 1 : j]
        start, i = i, (j + 1 if closed else j)
        name = SPECIAL_NAMES[t]
        if not closed and not truncated:
            problems.append(f"position {start}: {name} segment interrupted by {SPECIAL_NAMES[int(ids[j])]} at {j}")
            continue
        hl = HEADER_LEN[t]
        if region.size < hl:
            if not truncated:
                problems.append(f"position {start}: {name} header has {region.size} of {hl} symbols")
            continue
        header, payload = region[:hl].astype(np.int64), region[hl:].astype(np.uint8)
        if t == TEXT:
            segments.append(TextSegment(payload.tobytes(), truncated))
        elif t == AUDIO:
            codec_id, channels = int(header[0]), int(header[1])
            rate = (int(header[2]) << 16) | (int(header[3]) << 8) | int(header[4])
            if codec_id not in _AUDIO_CODEC_NAMES or channels < 1 or rate < 1:
                problems.append(
                    f"position {start}: bad audio header (codec {codec_id}, {channels} channels, {rate} Hz)"
                )
                continue
            codec = _AUDIO_CODEC_NAMES[codec_id]
            frame = channels * _audio.symbols_per_sample(codec)
            whole = payload.size - payload.size % frame
            if whole != payload.size and not truncated:
                problems.append(
                    f"position {start}: audio payload of {payload.size} symbols is not whole frames of {frame}"
                )
                continue
            if whole == 0:
                if not truncated:
                    problems.append(f"position {start}: empty audio segment")
                continue
            wave = _audio.decode(payload[:whole], codec, channels)
            segments.append(AudioSegment(wave, rate, codec, truncated))
        else:
            h, w = (int(header[0]) << 8) | int(header[1]), (int(header[2]) << 8) | int(header[3])
            c = int(header[4])
            if h < 1 or w < 1 or not 1 <= c <= 4:
                problems.append(f"position {start}: bad image header ({h}x{w}x{c})")
                continue
            expected = h * w * c
            if payload.size > expected or (payload.size < expected and not truncated):
                problems.append(
                    f"position {start}: image payload has {payload.size} symbols, header says {h}x{w}x{c} = {expected}"
                )
                continue
            rows = payload.size // (w * c)
            if rows == 0:
                continue
            img = _image.from_bytes(payload[: rows * w * c], rows, w, c)
            segments.append(ImageSegment(img, truncated or rows < h))
    return segments, problems


def unpack(ids: torch.Tensor | np.ndarray | Sequence[int], *, strict: bool = False) -> list[Segment]:
    """Turn an id sequence (typically model output) back into text, waveforms and images.

    Args:
        ids: 1-D ids in ``[0, VOCAB_SIZE)``, shape ``(n,)``. A leading BOS is optional; parsing stops at EOS.
        strict: raise on the first malformed segment instead of skipping it.

    Returns:
        the decoded segments in order. A segment cut off by the end of ``ids`` (or by trailing PAD) is
        returned with ``truncated=True``: text keeps its bytes, audio its whole frames, an image its complete
        rows. A segment cut off before its header is complete yields nothing.

    Raises:
        DecodeError: ids outside the vocabulary or not 1-D; with ``strict``, any malformed segment (bad
            header, wrong payload length, interrupted by another marker, stray symbols between segments).
            Without ``strict`` such segments are skipped and logged as warnings on the ``rawseq.modalities``
            logger.
    """
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if arr.ndim != 1:
        raise DecodeError("<ids>", f"expected a 1-D id sequence, got shape {tuple(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DecodeError("<ids>", f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= VOCAB_SIZE))
    if bad.size:
        raise DecodeError(
            "<ids>",
            f"id {int(arr[bad[0]])} at position {int(bad[0])} is outside the vocabulary (0..{VOCAB_SIZE - 1})",
        )
    segments, problems = _parse(arr)
    if problems:
        if strict:
            raise DecodeError("<ids>", problems[0])
        log.warning("unpack skipped %d malformed part(s): %s", len(problems), "; ".join(problems[:5]))
    return segments
