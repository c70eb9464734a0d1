"""A small SC09-like set of spoken digits synthesised with espeak-ng: nothing is downloaded.

Every digit word ("zero" .. "nine") is spoken by several espeak-ng voices at several speeds and pitches, resampled
to 16 kHz, trimmed of leading and trailing silence, peak-normalised and placed in a one-second clip (at a
deterministic offset drawn per clip). espeak-ng is a Debian package (``apt-get install espeak-ng``); without it
:func:`build` raises :class:`EspeakNotFoundError`, which tests use to skip.

Clips are cached as 16-bit WAV files with an ``index.json``; a second :func:`build` with the same settings reads
them back instead of running espeak-ng again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import audio

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
VARIANTS = ("", "+f3")  # espeak-ng voice variants: the default (male) voice and a female one
SPEEDS = (130, 165, 200)  # words per minute
PITCHES = (30, 55, 80)  # 0..99
SAMPLE_RATE = 16000
INSTALL_HINT = "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)"


class EspeakNotFoundError(RuntimeError):
    """espeak-ng is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class Clip:
    digit: int
    voice: str
    speed: int
    pitch: int
    path: Path
    waveform: torch.Tensor  # (1, clip_samples) float32 in [-1, 1] at 16 kHz


def espeak_binary() -> str | None:
    """Path of the espeak-ng executable, or None when it is not installed."""
    return shutil.which("espeak-ng")


def synthesize(word: str, voice: str = "en-us", speed: int = 160, pitch: int = 50,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Speak ``word`` with espeak-ng and return float32 ``(1, time)`` at ``sample_rate``.

    Raises:
        EspeakNotFoundError: espeak-ng is missing. RuntimeError: espeak-ng failed (the message holds its stderr).
    """
    exe = espeak_binary()
    if exe is None:
        raise EspeakNotFoundError(f"espeak-ng is not installed; {INSTALL_HINT}")
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "word.wav")
        # Its --stdout WAV header declares a bogus data size, so espeak-ng writes a file instead.
        proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav, word],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not os.path.exists(wav):
            raise RuntimeError(f"espeak-ng -v {voice} failed ({proc.returncode}): {proc.stderr.strip()}")
        return audio.load(wav, sample_rate=sample_rate, mono=True)


def _place(wave: torch.Tensor, length: int, rng: np.random.Generator, threshold: float = 0.02) -> torch.Tensor:
    """Trim silence, peak-normalise to 0.9 and put the word at a random offset in a clip of ``length`` samples."""
    loud = torch.nonzero(wave[0].abs() > threshold * wave.abs().max()).flatten()
    if len(loud):
        wave = wave[:, int(loud[0]) : int(loud[-1]) + 1]
    wave = wave * (0.9 / wave.abs().max().clamp_min(1e-6))
    if wave.shape[1] >= length:
        start = (wave.shape[1] - length) // 2
        return wave[:, start : start + length].contiguous()
    out = torch.zeros(1, length)
    offset = int(rng.integers(0, length - wave.shape[1] + 1))
    out[:, offset : offset + wave.shape[1]] = wave
    return out


def build(
    directory: str | os.PathLike,
    *,
    voices: tuple[str, ...] = VOICES,
    variants: tuple[str, ...] = VARIANTS,
    speeds: tuple[int, ...] = SPEEDS,
    pitches: tuple[int, ...] = PITCHES,
    digits: tuple[int, ...] = tuple(range(10)),
    clip_seconds: float = 1.0,
    seed: int = 0,
    workers: int = 4,
) -> list[Clip]:
    """Synthesise (or read back from ``directory``) every digit x voice x variant x speed x pitch clip.

    With the defaults: 10 digits x 6 voices x 2 variants x 3 speeds x 3 pitches = 1,080 one-second clips at 16 kHz.

    Returns:
        the clips in a fixed order (digit, voice, variant, speed, pitch).

    Raises:
        EspeakNotFoundError: espeak-ng is missing and the clips are not cached.
    """
    directory = Path(directory)
    settings = {"voices": list(voices), "variants": list(variants), "speeds": list(speeds),
                "pitches": list(pitches), "digits": list(digits), "clip_seconds": clip_seconds, "seed": seed,
                "sample_rate": SAMPLE_RATE}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    index_path = directory / "index.json"
    jobs = [(d, v + var, s, p) for d in digits for v in voices for var in variants for s in speeds for p in pitches]
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("key") == key and all((directory / r["file"]).is_file() for r in index["clips"]):
            return [Clip(r["digit"], r["voice"], r["speed"], r["pitch"], directory / r["file"],
                         audio.load(directory / r["file"], sample_rate=SAMPLE_RATE)) for r in index["clips"]]
    if espeak_binary() is None:
        raise EspeakNotFoundError(f"the spoken-digit set needs espeak-ng, which is not installed; {INSTALL_HINT}")
    length = round(clip_seconds * SAMPLE_RATE)

    def make(i_job):
        i, (digit, voice, speed, pitch) = i_job
        rng = np.random.default_rng([seed, i])
        return _place(synthesize(DIGITS[digit], voice, speed, pitch), length, rng)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        waves = list(pool.map(make, enumerate(jobs)))
    directory.mkdir(parents=True, exist_ok=True)
    clips, records = [], []
    for (digit, voice, speed, pitch), wave in zip(jobs, waves):
        name = f"{digit}_{DIGITS[digit]}_{voice.replace('+', '-')}_s{speed}_p{pitch}.wav"
        audio.save(directory / name, wave, SAMPLE_RATE)
        # Read back what was written, so a fresh build and a cached one give the same 16-bit samples.
        clips.append(Clip(digit, voice, speed, pitch, directory / name, audio.load(directory / name)))
        records.append({"digit": digit, "voice": voice, "speed": speed, "pitch": pitch, "file": name})
    index_path.write_text(json.dumps({"key": key, "settings": settings, "clips": records}, indent=1) + "\n")
    return clips
