"""Property-based fuzzing of every decoder with random, truncated and damaged input.

The only exception a decoder may raise for bad data is DecodeError (a ValueError); anything it returns must be
well formed; and no input may make the process grow by more than a bound (checked per test on the peak RSS).
"""

from __future__ import annotations

import io
import resource
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rawseq.modalities import ByteCorpus, DecodeError, audio, image, text
from rawseq.modalities import multimodal as mm

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_GROWTH_LIMIT = 512 << 20


@pytest.fixture(autouse=True)
def _bounded_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grown < _GROWTH_LIMIT, f"peak memory grew by {grown >> 20} MB while fuzzing"


def _audio_files() -> dict[str, bytes]:
    wave = (0.5 * np.sin(np.arange(3000) * 0.07)).astype(np.float32)[:, None].repeat(2, 1)
    out = {}
    for fmt, subtype in [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("AIFF", "PCM_16"),
                         ("AU", "PCM_16"), ("CAF", "PCM_16"), ("W64", "PCM_16")]:
        buf = io.BytesIO()
        sf.write(buf, wave, 8000, format=fmt, subtype=subtype)
        out[fmt] = buf.getvalue()
    return out


def _image_files() -> dict[str, bytes]:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = {}
    for fmt, kw in [("PNG", {}), ("JPEG", {"quality": 90}), ("GIF", {}), ("WEBP", {"lossless": True}),
                    ("WEBP", {"quality": 80})]:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt, **kw)
        out[fmt + ("-lossy" if kw.get("quality") and fmt == "WEBP" else "")] = buf.getvalue()
    return out


AUDIO = _audio_files()
IMAGES = _image_files()


@st.composite
def damaged(draw, files: dict[str, bytes]) -> bytes:
    """A real file cut short, with some bytes overwritten, or with random bytes after its first few."""
    data = bytearray(files[draw(st.sampled_from(sorted(files)))])
    how = draw(st.sampled_from(["truncate", "flip", "tail"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    keep = draw(st.integers(4, 64))
    return bytes(data[:keep]) + draw(st.binary(max_size=512))


def _check_audio(data: bytes) -> None:
    try:
        wave, rate = audio.read(data, name="<fuzz>")
    except DecodeError as e:
        assert e.source == "<fuzz>"
        return
    assert wave.dim() == 2 and wave.shape[1] > 0 and rate > 0 and torch.isfinite(wave).all()
    try:
        symbols = audio.to_symbols(data, codec="mulaw8", sample_rate=16000)
    except DecodeError:
        return  # resampling refuses an absurd declared rate
    assert symbols.dtype == torch.uint8 and symbols.dim() == 1


@FUZZ
@given(st.one_of(damaged(AUDIO), st.binary(max_size=600)))
def test_audio_decoders(data):
    _check_audio(data)


def _check_image(data: bytes) -> None:
    for mode in ("L", "RGBA"):
        try:
            img = image.decode(data, mode, source="<fuzz>", max_pixels=1 << 20)
        except DecodeError as e:
            assert e.source == "<fuzz>"
            continue
        assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == image.MODES[mode]
        assert img.shape[1] * img.shape[2] <= 1 << 20


@FUZZ
@given(st.one_of(damaged(IMAGES), st.binary(max_size=600)))
def test_image_decoders(data):
    _check_image(data)


def _gif_frame(data: bytearray) -> int:
    """Offset of the first image descriptor of one of our own GIFs (global colour table, no extensions)."""
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[pos] == 0x21:  # skip extensions
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    assert data[pos] == 0x2C
    return pos


@FUZZ
@given(st.sampled_from([*sorted(IMAGES), "GIF-frame"]), st.integers(1, 1 << 16), st.integers(1, 1 << 16),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_image_headers_with_any_size(kind, width, height, left, top):
    """Any declared size: over the limit is refused before decoding; under it, decoded or refused as corrupt."""
    data = bytearray(IMAGES["GIF" if kind == "GIF-frame" else kind])
    if kind == "GIF-frame":  # a first frame placed and sized anywhere, also beyond the screen
        frame = _gif_frame(data)
        data[frame + 1 : frame + 9] = b"".join(
            (v & 0xFFFF).to_bytes(2, "little") for v in (left, top, width, height)
        )
    elif kind == "PNG":
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    elif kind == "GIF":
        data[6:10] = (width & 0xFFFF).to_bytes(2, "little") + (height & 0xFFFF).to_bytes(2, "little")
    elif kind == "JPEG":
        sof = data.find(b"\xff\xc0")
        data[sof + 5 : sof + 9] = (height & 0xFFFF).to_bytes(2, "big") + (width & 0xFFFF).to_bytes(2, "big")
    _check_image(bytes(data))


@FUZZ
@given(st.lists(st.integers(-(1 << 20), 1 << 20), max_size=64))
def test_text_decode(ids):
    try:
        out = text.decode(ids)
    except DecodeError:
        assert any(not 0 <= i <= 255 for i in ids)
        return
    assert list(out) == ids


@FUZZ
@given(st.lists(st.integers(-5, mm.VOCAB_SIZE + 5), max_size=120), st.booleans())
def test_multimodal_unpack(ids, strict):
    try:
        segments = mm.unpack(ids, strict=strict)
    except DecodeError:
        return
    for seg in segments:
        if isinstance(seg, mm.AudioSegment):
            assert seg.waveform.dim() == 2 and torch.isfinite(seg.waveform).all()
        elif isinstance(seg, mm.ImageSegment):
            assert seg.image.dtype == torch.uint8 and seg.image.dim() == 3


@pytest.fixture(scope="module")
def cache_dir():
    root = Path(tempfile.mkdtemp(prefix="rawseq-fuzz-"))
    ByteCorpus.from_documents(["first", b"\x00\x01\x02", "third document"], root / "cache")
    yield root / "cache"
    shutil.rmtree(root, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_corpus_reader_on_damaged_caches(cache_dir, data):
    work = Path(tempfile.mkdtemp(prefix="rawseq-fuzz-"))
    try:
        copy = work / "cache"
        shutil.copytree(cache_dir, copy)
        name = data.draw(st.sampled_from(["symbols.bin", "index.npy", "manifest.json"]))
        blob = bytearray((copy / name).read_bytes())
        how = data.draw(st.sampled_from(["truncate", "flip", "random", "grow"]))
        if how == "truncate":
            blob = blob[: data.draw(st.integers(0, max(len(blob) - 1, 0)))]
        elif how == "flip" and blob:
            for _ in range(data.draw(st.integers(1, 6))):
                blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        elif how == "random":
            blob = bytearray(data.draw(st.binary(max_size=300)))
        else:
            blob += data.draw(st.binary(min_size=1, max_size=64))
        (copy / name).write_bytes(bytes(blob))
        try:
            corpus = ByteCorpus.open(copy)
        except DecodeError:
            return
        # Accepted: then every document reads back, inside the corpus's dtype.
        assert corpus.num_docs == len(corpus.offsets) - 1 and corpus.num_symbols == int(corpus.offsets[-1])
        for i in range(corpus.num_docs):
            assert corpus.doc(i).numel() > 0
        if corpus.num_symbols > 1:
            ids, docs = corpus.read(0, corpus.num_symbols)
            assert ids.min() >= 0 and (np.diff(docs) >= 0).all()
    finally:
        shutil.rmtree(work, ignore_errors=True)
