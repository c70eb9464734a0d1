"""Band-limited resampling through ``torchaudio.functional.resample``, whole or block by block.

torchaudio reduces the two rates by their gcd to ``o`` input and ``n`` output samples per "frame" and computes
each frame's ``n`` outputs from the inputs of that frame plus ``width`` samples on either side (a windowed sinc,
zero beyond the signal's ends). So a signal can be resampled in pieces: a piece that starts on a frame boundary
and carries at least ``width`` samples of its neighbours on both sides gives exactly the outputs of its inner
frames, and the last piece, which ends where the signal ends, gives the rest. :class:`BlockResampler` does that,
which is why a recording of any length is resampled in bounded memory with the whole-signal result.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT

from .errors import DecodeError

LOWPASS_WIDTH = 6  # zero crossings of the sinc kept on each side (torchaudio's default, passed explicitly)
ROLLOFF = 0.99
# The polyphase filter holds n * (o + 2 * width) values: a header with an odd rate (a prime like 999983 Hz) would
# otherwise ask for gigabytes before a single sample is read.
MAX_FILTER = 1 << 25
# A higher ratio turns a small file with a tiny declared rate into an enormous output.
MAX_UPSAMPLING = 64


def _plan(orig_rate: int, new_rate: int, source: str) -> tuple[int, int, int]:
    """``(o, n, width)`` for resampling ``orig_rate`` to ``new_rate``; refuses ratios with absurd costs."""
    if orig_rate < 1 or new_rate < 1:
        raise DecodeError(source, f"sample rates must be positive, got {orig_rate} Hz -> {new_rate} Hz")
    if new_rate > MAX_UPSAMPLING * orig_rate:
        raise DecodeError(
            source, f"resampling {orig_rate} Hz to {new_rate} Hz multiplies the samples by more than {MAX_UPSAMPLING}"
        )
    g = math.gcd(orig_rate, new_rate)
    o, n = orig_rate // g, new_rate // g
    width = math.ceil(LOWPASS_WIDTH * o / (min(o, n) * ROLLOFF))
    size = n * (o + 2 * width)
    if size > MAX_FILTER:
        raise DecodeError(
            source,
            f"cannot resample {orig_rate} Hz to {new_rate} Hz: the filter for the ratio {n}/{o} would hold "
            f"{size:,} values (more than {MAX_FILTER:,})",
        )
    return o, n, width


def _resample(waveform: torch.Tensor, o: int, n: int) -> torch.Tensor:
    return AF.resample(waveform, o, n, lowpass_filter_width=LOWPASS_WIDTH, rolloff=ROLLOFF)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling through ``torchaudio.functional.resample``; shape ``(..., time)`` is kept.

    Raises:
        DecodeError: a rate below 1 Hz, upsampling by more than :data:`MAX_UPSAMPLING`, or a ratio whose filter
            would be larger than :data:`MAX_FILTER` values.
    """
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return waveform
    o, n, _ = _plan(orig_rate, new_rate, "<waveform>")
    return _resample(waveform, o, n)


class BlockResampler:
    """Resample a signal that arrives in pieces of any length; the outputs, joined, equal :func:`resample` of the
    whole signal (to float rounding).

    Args:
        orig_rate, new_rate: in Hz.
        source: how errors name the signal.
        block_samples: about how many input and output samples (per channel) one emitted block spans.

    Attributes: ``input_block``, the input samples per channel that one emitted block consumes.
    """

    def __init__(self, orig_rate: int, new_rate: int, source: str, block_samples: int) -> None:
        self.identity = orig_rate == new_rate
        self.input_block = max(1, block_samples)
        self._buf: torch.Tensor | None = None  # (channels, m): inputs from sample _buf_start on
        self._buf_start = 0
        self._frame = 0  # next frame whose outputs are not emitted yet
        if self.identity:
            return
        self._o, self._n, width = _plan(orig_rate, new_rate, source)
        self._context = -(-width // self._o) + 1  # frames of neighbours a piece carries on each side
        # The filter, computed once; in float32 as torchaudio.functional.resample computes it for float32 input.
        self._filter = AT.Resample(
            self._o, self._n, lowpass_filter_width=LOWPASS_WIDTH, rolloff=ROLLOFF, dtype=torch.float32
        )
        self._frames = max(1, block_samples // max(self._o, self._n))  # frames per emitted block
        self.input_block = self._frames * self._o

    def push(self, block: torch.Tensor) -> Iterator[torch.Tensor]:
        """Add float32 ``(channels, k)`` inputs; yields the ``(channels, k')`` outputs that are now complete."""
        if self.identity:
            if block.shape[-1]:
                yield block
            return
        self._buf = block if self._buf is None else torch.cat([self._buf, block], dim=-1)
        o, n, c = self._o, self._n, self._context
        while True:
            lo, hi = max(self._frame - c, 0), self._frame + self._frames + c  # piece: frames [lo, hi)
            if self._buf_start + self._buf.shape[-1] < hi * o:
                return
            piece = self._buf[..., lo * o - self._buf_start : hi * o - self._buf_start]
            skip = (self._frame - lo) * n
            yield self._filter(piece)[..., skip : skip + self._frames * n]
            self._frame += self._frames
            drop = max(self._frame - c, 0) * o - self._buf_start
            self._buf = self._buf[..., drop:]
            self._buf_start += drop

    def flush(self) -> Iterator[torch.Tensor]:
        """The outputs left once the signal has ended."""
        if self.identity or self._buf is None:
            return
        lo = max(self._frame - self._context, 0)
        out = self._filter(self._buf[..., lo * self._o - self._buf_start :])
        out = out[..., (self._frame - lo) * self._n :]
        self._buf = None
        if out.shape[-1]:
            yield out
