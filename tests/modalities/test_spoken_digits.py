"""espeak-ng spoken digits: a tiny build, its cache, and a clear error without espeak-ng."""

from __future__ import annotations

import pytest
import torch

from rawseq.modalities import spoken_digits


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(spoken_digits.shutil, "which", lambda name: None)
    with pytest.raises(spoken_digits.EspeakNotFoundError, match="apt-get install espeak-ng"):
        spoken_digits.build(tmp_path, digits=(1,), voices=("en-us",), variants=("",), speeds=(160,), pitches=(50,))
    with pytest.raises(spoken_digits.EspeakNotFoundError):
        spoken_digits.synthesize("one")


@pytest.mark.skipif(spoken_digits.espeak_binary() is None, reason="espeak-ng is not installed")
def test_build_small_set_and_read_it_back(tmp_path, monkeypatch):
    kw = {"digits": (3, 7), "voices": ("en-us",), "variants": ("", "+f3"), "speeds": (160,), "pitches": (50,)}
    clips = spoken_digits.build(tmp_path, **kw)
    assert [(c.digit, c.voice) for c in clips] == [(3, "en-us"), (3, "en-us+f3"), (7, "en-us"), (7, "en-us+f3")]
    for c in clips:
        assert c.waveform.shape == (1, 16000) and c.waveform.dtype == torch.float32
        assert 0.85 < c.waveform.abs().max() <= 0.91  # peak-normalised to 0.9 (16-bit rounding aside)
        assert c.path.is_file()
    assert not torch.equal(clips[0].waveform, clips[2].waveform)
    # The second build reads the cache: it works even with espeak-ng gone.
    monkeypatch.setattr(spoken_digits.shutil, "which", lambda name: None)
    again = spoken_digits.build(tmp_path, **kw)
    for a, b in zip(clips, again):
        assert torch.equal(a.waveform, b.waveform)
    with pytest.raises(spoken_digits.EspeakNotFoundError):
        spoken_digits.build(tmp_path, **{**kw, "pitches": (60,)})  # other settings: not cached


@pytest.mark.skipif(spoken_digits.espeak_binary() is None, reason="espeak-ng is not installed")
def test_synthesize_resamples_to_16k():
    wave = spoken_digits.synthesize("five", "en-gb", 175, 50)
    assert wave.dim() == 2 and wave.shape[0] == 1
    assert 0.2 * 16000 < wave.shape[1] < 2 * 16000  # one word: a fraction of a second to a couple of seconds


def test_place_trims_silence_normalises_and_pads():
    import numpy as np

    wave = torch.zeros(1, 3000)
    wave[0, 1000:1500] = 0.25 * torch.sin(torch.arange(500) * 0.3) + 0.26
    out = spoken_digits._place(wave, 4000, np.random.default_rng(0))
    assert out.shape == (1, 4000)
    assert out.abs().max() == pytest.approx(0.9)
    loud = torch.nonzero(out[0]).flatten()
    assert int(loud[-1] - loud[0]) + 1 == 500  # the word alone, moved somewhere inside the clip
    long = spoken_digits._place(torch.ones(1, 5000), 4000, np.random.default_rng(0))
    assert long.shape == (1, 4000)
