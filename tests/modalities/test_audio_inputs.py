"""audio.to_symbols and audio.waveform: every supported input form gives the same symbols; the rest a clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from rawseq.modalities import N_SYMBOLS, DecodeError, audio


def _stereo(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.6 * np.sin(2 * math.pi * 440 * t), 0.3 * np.sin(2 * math.pi * 660 * t)], 1).astype(np.float32)


def test_soundfile_stereo_layout_is_frames_channels(tmp_path):
    data = _stereo(44100, 1.0)  # (44100, 2), soundfile's layout
    sf.write(tmp_path / "s.wav", data, 44100, subtype="FLOAT")
    frames, rate = sf.read(tmp_path / "s.wav", dtype="float32")
    assert frames.shape == (44100, 2)
    from_array = audio.to_symbols(frames, codec="mulaw8", sample_rate=16000, sampling_rate=rate)
    from_file = audio.to_symbols(tmp_path / "s.wav", codec="mulaw8", sample_rate=16000)
    # Read as 44100 channels of 2 samples it would give 2 symbols after mixing; as stereo, one second at 16 kHz.
    assert from_array.shape == (16000,) and torch.equal(from_array, from_file)
    channels_first = audio.to_symbols(frames.T.copy(), codec="mulaw8", sample_rate=16000, sampling_rate=rate)
    assert torch.equal(channels_first, from_file)


def test_all_forms_agree(tmp_path):
    ints = (np.random.default_rng(0).uniform(-0.5, 0.5, 800) * 32767).astype(np.int16)
    path = tmp_path / "a.wav"
    audio.save(path, ints, 16000)
    as_float = ints.astype(np.float32) / 32768
    symbols = audio.encode(torch.from_numpy(as_float), "mulaw8")
    forms = [path, str(path), path.read_bytes(), as_float, torch.from_numpy(as_float), ints, torch.from_numpy(ints),
             symbols, symbols.numpy(), np.stack([as_float, as_float]), np.stack([as_float, as_float], 1),
             {"array": as_float, "sampling_rate": 16000}]
    for form in forms:
        got = audio.to_symbols(form, codec="mulaw8", sample_rate=16000)
        assert got.dtype == torch.uint8 and torch.equal(got, symbols), type(form)


def test_array_rate_is_resampled_and_stereo_kept():
    wave = _stereo(8000, 0.25)
    mono = audio.to_symbols(wave, codec="pcm16", sample_rate=16000, sampling_rate=8000)
    expect = audio.encode(AF.resample(torch.from_numpy(wave.T.copy()).mean(0, keepdim=True), 8000, 16000), "pcm16")
    assert torch.equal(mono, expect) and mono.numel() == 2 * 4000
    both = audio.to_symbols(wave, codec="linear8", sample_rate=8000, mono=False)
    assert torch.equal(both, audio.encode(torch.from_numpy(wave.T.copy()), "linear8"))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((100, 100), dtype=np.float32), r"cannot tell channels from time in a waveform of shape \(100, 100\)"),
        (np.zeros((2, 3, 4), dtype=np.float32), "got shape \\(2, 3, 4\\).*list"),
        (np.zeros(0, dtype=np.float32), "holds no samples"),
        (np.zeros(10, dtype=np.int32), "float \\(or int16\\)"),
        (np.array([0.0, np.nan], dtype=np.float32), "NaN"),
        (np.zeros((2, 5), dtype=np.uint8), "1-D"),
    ],
    ids=["square", "3d", "empty", "int32", "nan", "2d-symbols"],
)
def test_bad_arrays_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        audio.to_symbols(bad, codec="mulaw8", sample_rate=16000)


def test_file_errors_and_misused_rate(tmp_path):
    with pytest.raises(DecodeError, match="missing.wav: no such file"):
        audio.to_symbols(tmp_path / "missing.wav", codec="mulaw8", sample_rate=16000)
    with pytest.raises(DecodeError, match="not a readable audio file"):
        audio.to_symbols(b"not audio at all" * 10, codec="mulaw8", sample_rate=16000)
    audio.save(tmp_path / "a.wav", np.zeros(10, dtype=np.float32), 8000)
    with pytest.raises(ValueError, match="sampling_rate is for arrays"):
        audio.to_symbols(tmp_path / "a.wav", codec="mulaw8", sample_rate=16000, sampling_rate=8000)
    with pytest.raises(ValueError, match="codec"):
        audio.to_symbols(np.zeros(4, dtype=np.float32), codec="mp3", sample_rate=16000)
    with pytest.raises(TypeError, match="int"):
        audio.to_symbols(5, codec="mulaw8", sample_rate=16000)


def test_mulaw_is_torchaudio_bit_for_bit_on_every_symbol_and_random_waves():
    symbols = torch.arange(N_SYMBOLS, dtype=torch.uint8)
    decoded = audio.decode(symbols, "mulaw8")[0]
    # The exact inverse, written out: y = 2q/255 - 1, x = sign(y) (256^|y| - 1) / 255 (in float64, then float32).
    y = np.arange(N_SYMBOLS, dtype=np.float64) / 255 * 2 - 1
    exact = (np.sign(y) * np.expm1(np.abs(y) * math.log1p(255)) / 255).astype(np.float32)
    assert np.array_equal(decoded.numpy(), exact)
    assert torch.equal(audio.encode(decoded, "mulaw8"), symbols)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1 << 20, generator=g, dtype=torch.float64) * 2.2 - 1.1  # beyond [-1, 1] too: clipped
    mids = (torch.from_numpy(exact[1:]).double() + torch.from_numpy(exact[:-1]).double()) / 2  # decision edges
    for wave in (x, x.float(), mids, torch.nextafter(mids, torch.tensor(2.0, dtype=torch.float64))):
        c = wave.double().clamp(-1, 1)
        written_out = torch.floor((torch.sign(c) * torch.log1p(255 * c.abs()) / math.log1p(255) + 1) / 2 * 255 + 0.5)
        assert torch.equal(audio.encode(wave, "mulaw8"), written_out.to(torch.uint8))
