"""Audio as symbols: read anything libsndfile reads, resample, and quantise each sample to one or two bytes.

Codecs (each sample of each channel; channels are interleaved per time step, like pixels in an image):

- ``"mulaw8"``: 8-bit mu-law (mu = 255), the WaveNet/SaShiMi standard; one symbol per sample.
- ``"linear8"``: 8-bit linear, offset binary as in 8-bit WAV (128 is silence); one symbol per sample.
- ``"pcm16"``: 16-bit two's complement, high byte first; two symbols per sample, lossless for 16-bit audio.
"""

from __future__ import annotations

import io
import math
import os
import struct

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ._io import as_byte_array, read_file
from .errors import DecodeError

CODECS = ("mulaw8", "linear8", "pcm16")
# Extensions a directory walk treats as audio; anything libsndfile reads can still be loaded by name.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".aif",
        ".aiff",
        ".au",
        ".caf",
        ".w64",
        ".rf64",
        ".mp3",
    }
)
_MU = 255


def symbols_per_sample(codec: str) -> int:
    """Symbols per sample of one channel: 1 for ``mulaw8``/``linear8``, 2 for ``pcm16``."""
    _check_codec(codec)
    return 2 if codec == "pcm16" else 1


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown audio codec {codec!r}; expected one of {CODECS}")


def _check_wav_length(data: bytes, source: str) -> None:
    """Reject a RIFF/WAVE file whose data chunk is shorter than its header says.

    libsndfile quietly shortens such a file to the bytes present, which would put a cut-off recording into a
    corpus without a word; a truncated download is exactly this case.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk_id == b"data":
            available = len(data) - offset - 8
            # 0 and 0xFFFFFFFF mark a stream written without knowing its length.
            if size not in (0, 0xFFFFFFFF) and size > available:
                raise DecodeError(source, f"truncated WAV: data chunk declares {size} bytes, {available} present")
            return
        offset += 8 + size + (size & 1)


def read(source: str | os.PathLike | bytes, *, name: str | None = None) -> tuple[torch.Tensor, int]:
    """Decode an audio file or an in-memory encoded file at its own sample rate.

    Args:
        source: a path, or the bytes of a file (WAV, FLAC, OGG/Vorbis, anything libsndfile reads).
        name: how errors name the source when ``source`` is bytes (default ``"<memory>"``).

    Returns:
        ``(waveform, sample_rate)``: float32 tensor of shape ``(channels, time)`` with values in [-1, 1], and
        Hz.

    Raises:
        DecodeError: missing, unreadable, zero-length, truncated, corrupt or unsupported input.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<memory>"
        data = bytes(source)
        if not data:
            raise DecodeError(label, "zero-length audio data")
    else:
        label = os.fspath(source)
        data = read_file(source)
    _check_wav_length(data, label)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            frames, sample_rate = f.frames, f.samplerate
            samples = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError, struct.error) as e:
        raise DecodeError(label, f"not a readable audio file ({e})") from None
    if samples.shape[0] == 0:
        raise DecodeError(label, "audio file holds no samples")
    if 0 < frames < 2**62 and samples.shape[0] < frames:
        raise DecodeError(label, f"truncated audio: header declares {frames} frames, {samples.shape[0]} decoded")
    if sample_rate <= 0:
        raise DecodeError(label, f"invalid sample rate {sample_rate}")
    if not np.isfinite(samples).all():
        raise DecodeError(label, "audio holds NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(samples.T)), int(sample_rate)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling through ``torchaudio.functional.resample``; shape ``(..., time)`` is kept."""
    if orig_rate == new_rate:
        return waveform
    return AF.resample(waveform, orig_freq=int(orig_rate), new_freq=int(new_rate))


def load(path: str | os.PathLike | bytes, sample_rate: int | None = 16000, mono: bool = True) -> torch.Tensor:
    """Read an audio file, mix or keep its channels, and resample it.

    Args:
        path: a file path (or the bytes of an encoded file).
        sample_rate: target rate in Hz; ``None`` keeps the file's own rate (see :func:`read` to learn it).
        mono: average all channels into one; ``False`` keeps them.

    Returns:
        float32 tensor ``(channels, time)``; ``channels`` is 1 when ``mono``.
    """
    waveform, rate = read(path)
    if mono and waveform.shape[0] > 1:
        waveform = waveform.mean(dim=0, keepdim=True)
    if sample_rate is not None:
        waveform = resample(waveform, rate, sample_rate)
    return waveform


def _as_channels_time(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    w = torch.as_tensor(waveform)
    if w.dim() == 1:
        w = w.unsqueeze(0)
    if w.dim() != 2:
        raise ValueError(f"waveform must be (time,) or (channels, time), got shape {tuple(w.shape)}")
    if w.dtype == torch.int16:
        # Exact: every int16 divided by 2**15 is a float32.
        return w.to(torch.float32) / 32768.0
    if not w.is_floating_point():
        raise ValueError(f"waveform must be float (or int16), got {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("waveform holds NaN or infinite values")
    return w


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
        y = torch.sign(x) * torch.log1p(_MU * x.abs()) / math.log1p(_MU)
        q = torch.floor((y + 1) / 2 * _MU + 0.5)
        return q.to(torch.uint8)
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
        y = b.astype(np.float64) / _MU * 2 - 1
        x = np.sign(y) * np.expm1(np.abs(y) * math.log1p(_MU)) / _MU
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
