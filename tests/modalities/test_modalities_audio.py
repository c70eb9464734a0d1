from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rawseq.modalities import DecodeError, audio


def _sine(freq: float, rate: int, seconds: float, amp: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    ref, est = ref.double(), est.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - est).pow(2).sum()))


@pytest.fixture
def stereo_files(tmp_path):
    left, right = _sine(440, 22050, 0.5, 0.6), _sine(660, 22050, 0.5, 0.3)
    data = np.stack([left, right], axis=1)
    paths = {}
    for fmt, ext in [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")]:
        paths[ext] = tmp_path / f"tone.{ext}"
        sf.write(paths[ext], data, 22050, format=fmt)
    return paths, data


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_load_resamples_and_mixes(stereo_files, ext):
    paths, data = stereo_files
    mono = audio.load(paths[ext], sample_rate=16000)
    assert mono.dtype == torch.float32 and mono.shape[0] == 1
    assert abs(mono.shape[1] - data.shape[0] * 16000 / 22050) <= 1
    both = audio.load(paths[ext], sample_rate=16000, mono=False)
    assert both.shape == (2, mono.shape[1])
    torch.testing.assert_close(mono, both.mean(0, keepdim=True))
    if ext != "ogg":  # lossy Vorbis is checked only for shape
        wav, rate = audio.read(paths[ext])
        expect = AF.resample(wav, rate, 16000)
        torch.testing.assert_close(both, expect, atol=1e-6, rtol=0)
        torch.testing.assert_close(wav.T, torch.from_numpy(data), atol=1 / 32768, rtol=0)


def test_load_keeps_native_rate(stereo_files):
    paths, data = stereo_files
    wav = audio.load(paths["flac"], sample_rate=None, mono=False)
    assert wav.shape == (2, data.shape[0])


def test_mulaw_full_scale_snr_and_matches_torchaudio():
    x = torch.from_numpy(_sine(441, 16000, 1.0, 1.0))
    sym = audio.encode(x, "mulaw8")
    assert sym.dtype == torch.uint8 and sym.shape == x.shape
    assert torch.equal(sym.long(), AF.mu_law_encoding(x, 256).long())
    y = audio.decode(sym, "mulaw8")
    assert y.shape == (1, x.numel())
    assert _snr_db(x, y[0]) >= 30.0


def test_linear8_error_bound():
    x = torch.linspace(-1, 1, 4001)
    y = audio.decode(audio.encode(x, "linear8"), "linear8")[0]
    assert (x - y).abs().max() <= 1 / 128 + 1e-7
    assert audio.encode(torch.zeros(1), "linear8").item() == 128


def test_pcm16_is_exact_and_high_byte_first():
    ints = torch.randint(-32768, 32768, (2, 777), dtype=torch.int32).to(torch.int16)
    ints[0, :3] = torch.tensor([-32768, 32767, 0x1234], dtype=torch.int16)
    sym = audio.encode(ints, "pcm16")
    assert sym.shape == (2 * 777 * 2,)
    assert sym[8:10].tolist() == [0x12, 0x34]  # frame 2, channel 0
    back = audio.decode(sym, "pcm16", channels=2)
    assert torch.equal((back.double() * 32768).round().to(torch.int16), ints)
    assert torch.equal(audio.encode(back, "pcm16"), sym)


def test_channels_interleave_per_time_step():
    w = torch.tensor([[0.0, 0.5], [-0.5, 1.0]])  # (c=2, t=2)
    sym = audio.encode(w, "linear8")
    assert sym.tolist() == [128, 64, 192, 255]
    torch.testing.assert_close(audio.decode(sym, "linear8", channels=2), torch.tensor([[0.0, 0.5], [-0.5, 127 / 128]]))


def test_encode_clips_and_rejects_nan():
    assert audio.encode(torch.tensor([3.0, -3.0]), "pcm16").tolist() == [0x7F, 0xFF, 0x80, 0x00]
    with pytest.raises(ValueError, match="NaN"):
        audio.encode(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="codec"):
        audio.encode(torch.zeros(3), "mp3")


def test_decode_rejects_partial_frames_and_non_bytes():
    with pytest.raises(DecodeError, match="frames"):
        audio.decode(torch.zeros(5, dtype=torch.uint8), "pcm16")
    with pytest.raises(DecodeError, match="frames"):
        audio.decode(torch.zeros(5, dtype=torch.uint8), "mulaw8", channels=2)
    with pytest.raises(DecodeError, match="not a byte"):
        audio.decode(torch.tensor([1, 256]), "mulaw8")


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_save_round_trip_exact(tmp_path, ext):
    ints = torch.randint(-32768, 32768, (2, 500), dtype=torch.int32).to(torch.int16)
    w = ints.float() / 32768
    audio.save(tmp_path / f"o.{ext}", w, 8000)
    back, rate = audio.read(tmp_path / f"o.{ext}")
    assert rate == 8000 and torch.equal(back, w)
    with pytest.raises(ValueError, match="cannot save"):
        audio.save(tmp_path / "o.mp4", w, 8000)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_files_raise(stereo_files, ext, cut):
    paths, _ = stereo_files
    data = paths[ext].read_bytes()
    bad = paths[ext].with_name(f"cut.{ext}")
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DecodeError) as e:
        audio.load(bad)
    assert str(bad) in str(e.value)


def test_flipped_flac_raises(stereo_files):
    paths, _ = stereo_files
    data = bytearray(paths["flac"].read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    bad = paths["flac"].with_name("flip.flac")
    bad.write_bytes(bytes(data))
    with pytest.raises(DecodeError, match="flip.flac"):
        audio.load(bad)


def test_float_wav_with_nan_rejected(tmp_path):
    data = np.zeros(100, dtype=np.float32)
    data[50] = np.nan
    sf.write(tmp_path / "nan.wav", data, 8000, subtype="FLOAT")
    with pytest.raises(DecodeError, match="NaN"):
        audio.load(tmp_path / "nan.wav")


def _check_decoded_or_error(data: bytes) -> None:
    try:
        wav, rate = audio.read(data)
    except DecodeError as e:
        assert e.source == "<memory>"
        return
    # If random bytes happen to form audio, the result must still be a sane waveform.
    assert wav.dim() == 2 and wav.shape[1] > 0 and rate > 0 and torch.isfinite(wav).all()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    _check_decoded_or_error(data)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([b"RIFF\x00\x10\x00\x00WAVEfmt ", b"fLaC\x00\x00\x00\x22", b"OggS\x00\x02"]),
    st.binary(max_size=400),
)
def test_fuzz_headers_with_random_tails(head, tail):
    _check_decoded_or_error(head + tail)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.sampled_from(["mulaw8", "linear8", "pcm16"]))
def test_fuzz_symbol_decode(data, codec):
    try:
        wav = audio.decode(data, codec)
    except DecodeError:
        assert len(data) % audio.symbols_per_sample(codec)
        return
    assert torch.isfinite(wav).all() and wav.abs().max() <= 1
    assert torch.equal(audio.encode(wav, codec), torch.frombuffer(bytearray(data), dtype=torch.uint8))
