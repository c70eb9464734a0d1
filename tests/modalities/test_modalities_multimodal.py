from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rawseq.modalities import DecodeError
from rawseq.modalities import multimodal as mm


@pytest.fixture
def segments():
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=g)
    pcm = torch.randint(-32768, 32768, (2, 30), dtype=torch.int32, generator=g).to(torch.int16)
    wav = pcm.float() / 32768
    return [
        mm.TextSegment("a caption: ünïcode".encode()),
        mm.AudioSegment(wav, 44100, "pcm16"),
        mm.ImageSegment(img),
        "trailing text",
    ]


def test_vocabulary_constants():
    specials = [mm.BOS, mm.EOS, mm.PAD, mm.TEXT, mm.AUDIO, mm.IMAGE, mm.END]
    assert sorted(specials) == list(range(256, 256 + mm.NUM_SPECIAL))
    assert mm.VOCAB_SIZE == 256 + mm.NUM_SPECIAL


def test_layout_of_headers():
    img = torch.zeros(1, 2, 300, dtype=torch.uint8)
    ids = mm.pack([mm.ImageSegment(img)], bos=False, eos=False).tolist()
    assert ids[:6] == [mm.IMAGE, 0, 2, 1, 44, 1] and ids[-1] == mm.END and len(ids) == 6 + 600 + 1
    ids = mm.pack([mm.AudioSegment(torch.zeros(3, 4), 16000, "mulaw8")], bos=False, eos=False).tolist()
    assert ids[:6] == [mm.AUDIO, 0, 3, 0, 0x3E, 0x80] and len(ids) == 6 + 12 + 1


def test_round_trip(segments):
    ids = mm.pack(segments)
    assert ids.dtype == torch.int64 and ids[0] == mm.BOS and ids[-1] == mm.EOS
    assert ids.min() >= 0 and ids.max() < mm.VOCAB_SIZE
    out = mm.unpack(ids, strict=True)
    assert [type(s) for s in out] == [mm.TextSegment, mm.AudioSegment, mm.ImageSegment, mm.TextSegment]
    assert out[0].data == segments[0].data and out[3].text == "trailing text"
    assert out[1].sample_rate == 44100 and out[1].codec == "pcm16"
    assert torch.equal(out[1].waveform, segments[1].waveform)
    assert torch.equal(out[2].image, segments[2].image)
    assert not any(s.truncated for s in out)


def test_mulaw_audio_segment_decodes_close():
    wav = torch.sin(torch.linspace(0, 60, 800)).unsqueeze(0) * 0.9
    (seg,) = mm.unpack(mm.pack([mm.AudioSegment(wav, 16000)]), strict=True)
    assert seg.codec == "mulaw8" and seg.waveform.shape == wav.shape
    assert (seg.waveform - wav).abs().max() < 0.03


def test_every_truncation_is_tolerated(segments):
    full = mm.pack(segments)
    complete = mm.unpack(full)
    for cut in range(len(full) + 1):
        out = mm.unpack(full[:cut], strict=True)
        assert len(out) <= len(complete)
        for got, ref in zip(out, complete, strict=False):
            assert type(got) is type(ref)
            if isinstance(got, mm.TextSegment):
                assert ref.data.startswith(got.data)
            elif isinstance(got, mm.AudioSegment):
                n = got.waveform.shape[1]
                assert torch.equal(got.waveform, ref.waveform[:, :n])
            else:
                rows = got.image.shape[1]
                assert torch.equal(got.image, ref.image[:, :rows])
        if out and cut < len(full) - 1:
            # Only the segment the cut falls in may be marked truncated.
            assert all(not s.truncated for s in out[:-1])


def test_trailing_pad_counts_as_truncation():
    ids = mm.pack(["hello"], eos=False)[:-2]  # BOS TEXT h e l l  (no END)
    padded = torch.cat([ids, torch.full((5,), mm.PAD)])
    (seg,) = mm.unpack(padded, strict=True)
    assert seg.data == b"hell" and seg.truncated


def _with(ids: list[int], pos: int, value: int) -> list[int]:
    ids = list(ids)
    ids[pos] = value
    return ids


@pytest.mark.parametrize(
    "case",
    [
        "codec",
        "channels",
        "rate",
        "height",
        "img_channels",
        "long_image",
        "short_audio_frame",
        "interrupted",
        "stray_bytes",
        "stray_end",
    ],
)
def test_malformed_segments(case, caplog):
    audio_ids = mm.pack([mm.AudioSegment(torch.zeros(1, 4), 8000, "pcm16")], bos=False, eos=False).tolist()
    img_ids = mm.pack([mm.ImageSegment(torch.zeros(1, 2, 2, dtype=torch.uint8))], bos=False, eos=False).tolist()
    text_ids = mm.pack(["ok"], bos=False, eos=False).tolist()
    bad = {
        "codec": _with(audio_ids, 1, 7),
        "channels": _with(audio_ids, 2, 0),
        "rate": audio_ids[:3] + [0, 0, 0] + audio_ids[6:],
        "height": _with(img_ids, 2, 0),
        "img_channels": _with(img_ids, 5, 5),
        "long_image": img_ids[:-1] + [9, mm.END],
        "short_audio_frame": audio_ids[:-2] + [mm.END],
        "interrupted": img_ids[:-2] + text_ids,
        "stray_bytes": [1, 2, 3],
        "stray_end": [mm.END],
    }[case]
    ids = [mm.BOS] + bad + text_ids + [mm.EOS]
    with pytest.raises(DecodeError, match="position"):
        mm.unpack(ids, strict=True)
    with caplog.at_level(logging.WARNING, logger="rawseq.modalities"):
        out = mm.unpack(ids)
    # The bad part is dropped, never returned as garbage; the good text segment after it survives.
    assert out[-1] == mm.TextSegment(b"ok")
    assert all(not isinstance(s, (mm.AudioSegment, mm.ImageSegment)) for s in out)
    assert "malformed" in caplog.text


def test_rejects_ids_outside_vocabulary():
    with pytest.raises(DecodeError, match="vocabulary"):
        mm.unpack([mm.BOS, mm.VOCAB_SIZE])
    with pytest.raises(DecodeError, match="vocabulary"):
        mm.unpack(np.array([-1]))
    with pytest.raises(DecodeError, match="1-D"):
        mm.unpack(torch.zeros(2, 2, dtype=torch.long))


def test_pack_validates():
    with pytest.raises(ValueError, match="sample rate"):
        mm.pack([mm.AudioSegment(torch.zeros(1, 2), 1 << 24)])
    with pytest.raises(TypeError):
        mm.pack([torch.zeros(3)])
    with pytest.raises(ValueError, match="image segment"):
        mm.pack([mm.ImageSegment(torch.zeros(5, 1, 1, dtype=torch.uint8))])


def test_stops_at_eos():
    ids = torch.cat([mm.pack(["one"]), mm.pack(["two"])])
    assert [s.data for s in mm.unpack(ids, strict=True)] == [b"one"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, mm.VOCAB_SIZE - 1), max_size=200))
def test_fuzz_random_ids(ids):
    try:
        out = mm.unpack(ids)
    except DecodeError:
        pytest.fail("non-strict unpack of in-vocabulary ids must not raise")
    for s in out:
        if isinstance(s, mm.AudioSegment):
            assert s.waveform.dim() == 2 and s.waveform.shape[1] > 0 and torch.isfinite(s.waveform).all()
        elif isinstance(s, mm.ImageSegment):
            assert s.image.dtype == torch.uint8 and s.image.dim() == 3 and min(s.image.shape) > 0
    try:
        mm.unpack(ids, strict=True)
    except DecodeError:
        pass


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=40), st.sampled_from([mm.TEXT, mm.AUDIO, mm.IMAGE]))
def test_fuzz_byte_payloads_after_marker(body, marker):
    # A model can emit any bytes after a marker; unpack returns a well-formed segment or reports the problem.
    ids = [mm.BOS, marker, *body, mm.END, mm.EOS]
    try:
        out = mm.unpack(ids, strict=True)
    except DecodeError as e:
        assert "position 1" in str(e)
        return
    assert len(out) == 1
    if marker == mm.IMAGE:
        c, h, w = out[0].image.shape
        assert body[:5] == [h >> 8, h & 255, w >> 8, w & 255, c] and len(body) == 5 + c * h * w
