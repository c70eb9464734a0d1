"""Audio as symbols: read anything libsndfile reads, resample, and quantise each sample to one or two bytes.

Codecs (each sample of each channel; channels are interleaved per time step, like pixels in an image):

- ``"mulaw8"``: 8-bit mu-law (mu = 255), the WaveNet/SaShiMi standard; one symbol per sample.
- ``"linear8"``: 8-bit linear, offset binary as in 8-bit WAV (128 is silence); one symbol per sample.
- ``"pcm16"``: 16-bit two's complement, high byte first; two symbols per sample, lossless for 16-bit audio.

Files are decoded in blocks (:class:`AudioStream`): mixing, resampling and quantising happen per block, so memory
does not grow with the length of a recording.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ._io import as_byte_array, open_regular, uint8_symbols
from ._resample import BlockResampler, resample
from .errors import DecodeError
from .symbols import N_SYMBOLS

__all__ = [
    "AUDIO_EXTENSIONS",
    "BLOCK_SAMPLES",
    "CODECS",
    "MAX_CHANNELS_GUESSED",
    "AudioStream",
    "decode",
    "encode",
    "load",
    "read",
    "resample",
    "save",
    "symbols_per_sample",
    "to_symbols",
    "waveform",
]

CODECS = ("mulaw8", "linear8", "pcm16")
# Extensions a directory walk treats as audio; anything libsndfile reads can still be loaded by name.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64", ".mp3"}
)
# Samples (frames x channels) decoded per block: about a megabyte of float32, whatever the file's length.
BLOCK_SAMPLES = 1 << 18
# A 2-D array whose second axis is at most this long (and shorter than the first) is read as (frames, channels).
MAX_CHANNELS_GUESSED = 8
_SF_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError, struct.error)


def symbols_per_sample(codec: str) -> int:
    """Symbols per sample of one channel: 1 for ``mulaw8``/``linear8``, 2 for ``pcm16``."""
    _check_codec(codec)
    return 2 if codec == "pcm16" else 1


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown audio codec {codec!r}; expected one of {CODECS}")


def _check_wav_length(f, source: str) -> None:
    """Reject a RIFF/WAVE file whose data chunk is shorter than its header says.

    libsndfile quietly shortens such a file to the bytes present, which would put a cut-off recording into a
    corpus without a word; a truncated download is exactly this case. Only chunk headers are read.
    """
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= size:
        f.seek(offset)
        chunk = f.read(8)
        if len(chunk) < 8:
            return
        chunk_id, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if chunk_id == b"data":
            available = size - offset - 8
            # 0 and 0xFFFFFFFF mark a stream written without knowing its length.
            if length not in (0, 0xFFFFFFFF) and length > available:
                raise DecodeError(source, f"truncated WAV: data chunk declares {length} bytes, {available} present")
            return
        offset += 8 + length + (length & 1)


class _VirtualFile:
    """A file for libsndfile's virtual I/O: a seek that fails (to a negative offset, say, in a damaged header)
    reports -1 to libsndfile instead of raising inside its C callback, where the exception would be lost."""

    def __init__(self, f) -> None:
        self._f, self._failed = f, False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._f.seek(offset, whence)
        except (ValueError, OSError):
            self._failed = True
            return -1

    def tell(self) -> int:
        if self._failed:
            self._failed = False
            return -1
        return self._f.tell()

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def readinto(self, buf) -> int:
        return self._f.readinto(buf)


class AudioStream:
    """An audio file decoded block by block: iterate to get float32 ``(channels, k)`` blocks at ``sample_rate``.

    The blocks, concatenated along time, equal decoding the whole file, averaging its channels (``mono``) and
    resampling it with :func:`resample` (to float rounding: each block is resampled with enough of its
    neighbours that the filter sees what it would see in the whole signal). Memory stays at a few blocks
    whatever the file's length. Iteration closes the file; use ``with`` or :meth:`close` when stopping early.

    Args:
        source: a path, or the bytes of an encoded file (WAV, FLAC, OGG/Vorbis, anything libsndfile reads).
        sample_rate: rate of the blocks in Hz; ``None`` keeps the file's rate.
        mono: average all channels into one.
        name: how errors name ``source`` when it is bytes (default ``"<memory>"``).
        block_samples: samples (frames x channels) decoded per block; ``None``: :data:`BLOCK_SAMPLES`.

    Attributes: ``source`` (the name in errors), ``channels`` (of the blocks), ``sample_rate`` (of the blocks),
    ``file_rate``, ``file_channels``, ``frames`` (as the header declares; may be unknown for some formats).

    Raises:
        DecodeError: on opening (missing, unreadable, not a regular file, zero-length, truncated WAV, not audio,
            an impossible rate) and during iteration (damaged or truncated data, NaN or infinite samples).
    """

    def __init__(
        self,
        source: str | os.PathLike | bytes | bytearray | memoryview,
        *,
        sample_rate: int | None = None,
        mono: bool = True,
        name: str | None = None,
        block_samples: int | None = None,
    ) -> None:
        block_samples = BLOCK_SAMPLES if block_samples is None else int(block_samples)
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.source = name or "<memory>"
            if not len(source):
                raise DecodeError(self.source, "zero-length audio data")
            self._file = io.BytesIO(source)
        else:
            self.source = os.fspath(source)
            self._file = open_regular(source)
        self._snd = None
        try:
            if self._file.seek(0, io.SEEK_END) == 0:
                raise DecodeError(self.source, "zero-length file")
            _check_wav_length(self._file, self.source)
            self._file.seek(0)
            try:
                self._snd = sf.SoundFile(_VirtualFile(self._file))
            except _SF_ERRORS as e:
                raise DecodeError(self.source, f"not a readable audio file ({e})") from None
            self.file_rate, self.file_channels = int(self._snd.samplerate), int(self._snd.channels)
            self.frames = int(self._snd.frames)
            if self.file_rate <= 0:
                raise DecodeError(self.source, f"invalid sample rate {self.file_rate}")
            if self.file_channels < 1:
                raise DecodeError(self.source, f"invalid channel count {self.file_channels}")
            self.sample_rate = int(sample_rate) if sample_rate is not None else self.file_rate
            self.channels = 1 if mono else self.file_channels
            self._mono = mono
            self._resampler = BlockResampler(self.file_rate, self.sample_rate, self.source, block_samples)
            self._block_frames = max(1, min(block_samples // self.file_channels, self._resampler.input_block))
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._snd is None:
            raise ValueError(f"{self.source}: this stream was closed or already read")
        try:
            decoded = 0
            while True:
                try:
                    data = self._snd.read(self._block_frames, dtype="float32", always_2d=True)
                except _SF_ERRORS as e:
                    raise DecodeError(self.source, f"not a readable audio file ({e})") from None
                if data.shape[0] == 0:
                    break
                if not np.isfinite(data).all():
                    raise DecodeError(self.source, "audio holds NaN or infinite samples")
                decoded += data.shape[0]
                block = torch.from_numpy(data.T)  # (k, c) -> (c, k)
                block = block.mean(dim=0, keepdim=True) if self._mono and block.shape[0] > 1 else block.contiguous()
                yield from self._resampler.push(block)
            if decoded == 0:
                raise DecodeError(self.source, "audio file holds no samples")
            if 0 < self.frames < 2**62 and decoded < self.frames:
                raise DecodeError(
                    self.source, f"truncated audio: header declares {self.frames} frames, {decoded} decoded"
                )
            yield from self._resampler.flush()
        finally:
            self.close()

    def close(self) -> None:
        """Release the file (iteration does this at its end)."""
        if self._snd is not None:
            self._snd.close()
            self._snd = None
        self._file.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read(source: str | os.PathLike | bytes, *, name: str | None = None) -> tuple[torch.Tensor, int]:
    """Decode a whole audio file (or an in-memory encoded file) at its own sample rate.

    Args:
        source: a path, or the bytes of a file (WAV, FLAC, OGG/Vorbis, anything libsndfile reads).
        name: how errors name the source when ``source`` is bytes (default ``"<memory>"``).

    Returns:
        ``(waveform, sample_rate)``: float32 tensor of shape ``(channels, time)`` with values in [-1, 1], and
        Hz. For long files prefer :class:`AudioStream`, which never holds the whole recording.

    Raises:
        DecodeError: missing, unreadable, zero-length, truncated, corrupt or unsupported input.
    """
    stream = AudioStream(source, mono=False, name=name)
    return torch.cat(list(stream), dim=1), stream.sample_rate


def load(path: str | os.PathLike | bytes, sample_rate: int | None = 16000, mono: bool = True) -> torch.Tensor:
    """Read an audio file, mix or keep its channels, and resample it.

    Args:
        path: a file path (or the bytes of an encoded file).
        sample_rate: target rate in Hz; ``None`` keeps the file's own rate (see :func:`read` to learn it).
        mono: average all channels into one; ``False`` keeps them.

    Returns:
        float32 tensor ``(channels, time)``; ``channels`` is 1 when ``mono``.
    """
    return torch.cat(list(AudioStream(path, sample_rate=sample_rate, mono=mono)), dim=1)


def _as_channels_time(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    w = torch.as_tensor(waveform)
    if w.dim() == 1:
        w = w.unsqueeze(0)
    if w.dim() != 2:
        raise ValueError(f"waveform must be (time,) or (channels, time), got shape {tuple(w.shape)}")
    return _as_float(w)


def _as_float(w: torch.Tensor) -> torch.Tensor:
    if w.dtype == torch.int16:
        # Exact: every int16 divided by 2**15 is a float32.
        return w.to(torch.float32) / 32768.0
    if not w.is_floating_point():
        raise ValueError(f"waveform must be float (or int16), got {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("waveform holds NaN or infinite values")
    return w


def waveform(
    item: torch.Tensor | np.ndarray | dict,
    *,
    sample_rate: int | None = None,
    sampling_rate: int | None = None,
    mono: bool = True,
) -> torch.Tensor:
    """An in-memory waveform in any common layout -> float ``(channels, time)`` at ``sample_rate``.

    Args:
        item: float (in [-1, 1]) or int16 samples as a numpy array or tensor, ``(time,)``, ``(channels, time)``
            or soundfile's ``(frames, channels)`` (a 2-D array whose second axis is at most
            :data:`MAX_CHANNELS_GUESSED` long and shorter than the first is read that way); or a ``datasets``
            audio dict ``{"array": ..., "sampling_rate": ...}``.
        sample_rate: the rate wanted; ``None`` keeps the array's.
        sampling_rate: the array's own rate (a dict brings its own); ``None`` means it is already at
            ``sample_rate``.
        mono: average the channels into one.

    Returns:
        float32 tensor ``(channels, time)``; ``channels`` is 1 when ``mono``.

    Raises:
        ValueError: a layout that is none of the above, an empty array, another dtype, NaN or infinite values.
    """
    if isinstance(item, dict):
        if item.get("array") is None or item.get("sampling_rate") is None:
            raise ValueError("an audio dict needs 'array' and 'sampling_rate'")
        item, sampling_rate = item["array"], int(item["sampling_rate"])
    if isinstance(item, torch.Tensor):
        w = item.detach().cpu()
    elif isinstance(item, (np.ndarray, list, tuple)):
        w = torch.from_numpy(np.ascontiguousarray(np.asarray(item)))
    else:
        raise TypeError(f"cannot read a waveform from a {type(item).__name__}")
    if w.numel() == 0:
        raise ValueError(f"waveform of shape {tuple(w.shape)} holds no samples")
    if w.dim() == 1:
        w = w.unsqueeze(0)
    elif w.dim() == 2:
        a, b = w.shape
        if b <= MAX_CHANNELS_GUESSED and a > b:
            w = w.T  # soundfile's (frames, channels) -> (channels, time)
        elif a > MAX_CHANNELS_GUESSED:
            raise ValueError(
                f"cannot tell channels from time in a waveform of shape {(a, b)}: pass (time,), (channels, time) "
                f"or (frames, channels) with at most {MAX_CHANNELS_GUESSED} channels"
            )
    else:
        raise ValueError(
            f"waveform must be (time,), (channels, time) or (frames, channels), got shape {tuple(w.shape)}; "
            "pass a batch as a list"
        )
    w = _as_float(w).to(torch.float32)  # as files decode: the rate conversion and quantisation see float32
    if mono and w.shape[0] > 1:
        w = w.mean(dim=0, keepdim=True)
    if sampling_rate is not None and sample_rate is not None:
        w = resample(w, int(sampling_rate), int(sample_rate))
    return w.contiguous()


def to_symbols(
    item,
    *,
    codec: str,
    sample_rate: int,
    sampling_rate: int | None = None,
    mono: bool = True,
) -> torch.Tensor:
    """Any supported audio input -> 1-D uint8 symbols.

    Args:
        item: a path or an encoded file's bytes (decoded block by block and resampled to ``sample_rate``); a float
            or int16 waveform (see :func:`waveform` for the layouts); or uint8 symbols already quantised (1-D,
            returned as they are).
        codec: ``"mulaw8"``, ``"linear8"`` or ``"pcm16"``.
        sample_rate: rate of the symbols in Hz.
        sampling_rate: an array's own rate, resampled to ``sample_rate``; ``None``: the array is at
            ``sample_rate`` already. Files carry their own rate.
        mono: average the channels; ``False`` interleaves them per time step.

    Returns:
        uint8 tensor ``(time * channels * symbols_per_sample(codec),)``.

    Raises:
        DecodeError: a file that cannot be decoded. ValueError: an array in no known layout or dtype.
    """
    _check_codec(codec)
    symbols = uint8_symbols(item, "audio symbols")
    if symbols is not None:
        return symbols
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
        if sampling_rate is not None:
            raise ValueError("sampling_rate is for arrays; a file carries its own rate")
        blocks = [encode(b, codec) for b in AudioStream(item, sample_rate=sample_rate, mono=mono)]
        return torch.cat(blocks)
    return encode(waveform(item, sample_rate=sample_rate, sampling_rate=sampling_rate, mono=mono), codec)


def encode(waveform: torch.Tensor | np.ndarray, codec: str = "mulaw8") -> torch.Tensor:
    """Quantise a waveform into symbols.

    Args:
        waveform: float ``(channels, time)`` or ``(time,)`` in [-1, 1] (values beyond are clipped), or int16.
        codec: ``"mulaw8"``, ``"linear8"`` or ``"pcm16"``.

    Returns:
        uint8 tensor of shape ``(time * channels * k,)``, k = :func:`symbols_per_sample`, channels interleaved
        per time step and, for pcm16, the high byte of each sample first.
    """
    _check_codec(codec)
    x = _as_channels_time(waveform).to(torch.float64).clamp(-1.0, 1.0).T.reshape(-1)  # (c, t) -> (t * c,)
    if codec == "mulaw8":
        # torchaudio's mu-law in float64: floor((sign(x) ln(1 + 255|x|) / ln 256 + 1) / 2 * 255 + 0.5).
        return AF.mu_law_encoding(x, N_SYMBOLS).to(torch.uint8)
    if codec == "linear8":
        return (torch.round(x * 128).clamp(-128, 127) + 128).to(torch.uint8)
    s = torch.round(x * 32768).clamp(-32768, 32767).to(torch.int16).numpy()
    return torch.from_numpy(s.astype(">i2").view(np.uint8).copy())


def decode(symbols: torch.Tensor | np.ndarray | bytes, codec: str = "mulaw8", channels: int = 1) -> torch.Tensor:
    """Turn symbols back into a waveform; the inverse of :func:`encode`.

    Args:
        symbols: 1-D integers in 0..255, length a multiple of ``channels * symbols_per_sample(codec)``.
        codec: the codec used to encode.
        channels: number of interleaved channels.

    Returns:
        float32 tensor ``(channels, time)`` in [-1, 1].

    Raises:
        DecodeError: values outside 0..255 or a length that does not split into whole frames.
    """
    _check_codec(codec)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    b = as_byte_array(symbols, "<audio symbols>")
    frame = channels * symbols_per_sample(codec)
    if b.size % frame:
        raise DecodeError(
            "<audio symbols>",
            f"{b.size} symbols do not split into frames of {frame} ({codec}, {channels} channel(s))",
        )
    if codec == "mulaw8":
        # In float64: torchaudio's float32 default differs from the exact inverse in the last bit for some symbols.
        x = AF.mu_law_decoding(torch.from_numpy(b.astype(np.float64)), N_SYMBOLS).numpy()
    elif codec == "linear8":
        x = (b.astype(np.float64) - 128) / 128
    else:
        x = b.view(">i2").astype(np.float64) / 32768
    x = x.astype(np.float32).reshape(-1, channels).T  # (t * c,) -> (c, t)
    return torch.from_numpy(np.ascontiguousarray(x))


_SAVE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


def save(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write a 16-bit WAV or FLAC file, chosen by the extension.

    Args:
        path: ends in ``.wav`` or ``.flac``.
        waveform: float ``(channels, time)`` or ``(time,)`` in [-1, 1] (clipped), or int16.
        sample_rate: in Hz.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _SAVE_FORMATS:
        raise ValueError(f"cannot save audio as {ext!r}; use one of {sorted(_SAVE_FORMATS)}")
    w = _as_channels_time(waveform).clamp(-1.0, 1.0)
    # Quantise here rather than in libsndfile so a pcm16-decoded waveform is written back bit-exactly.
    s = torch.round(w.to(torch.float64) * 32768).clamp(-32768, 32767).to(torch.int16).T.contiguous().numpy()
    sf.write(os.fspath(path), s, int(sample_rate), format=_SAVE_FORMATS[ext], subtype="PCM_16")
