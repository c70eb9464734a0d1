from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
import torchvision.io as tio

from rawseq.modalities import N_SYMBOLS, ByteCorpus, DecodeError, audio, image
from rawseq.modalities import multimodal as mm


def _tone(rate: int, n: int, channels: int = 1) -> np.ndarray:
    t = np.arange(n) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * (300 + 100 * c) * t) for c in range(channels)], 1).astype(np.float32)


@pytest.fixture
def media(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("first document\n")
    (d / "b.bin").write_bytes(b"\xff\xfe latin-1 \xe9 and raw bytes \x00\x01")
    (d / "sub" / "c.txt").write_text("nested " * 20)
    (d / ".hidden.txt").write_text("never read")
    sf.write(d / "tone.wav", _tone(22050, 3000, 2), 22050)
    sf.write(d / "tone.flac", _tone(8000, 1000), 8000, format="FLAC")
    g = torch.Generator().manual_seed(0)
    tio.write_png(torch.randint(0, 256, (3, 6, 7), dtype=torch.uint8, generator=g), str(d / "pic.png"))
    tio.write_jpeg(torch.full((3, 8, 8), 90, dtype=torch.uint8), str(d / "pic.jpg"))
    return d


def _expected(path, codec="mulaw8"):
    ext = path.suffix
    if ext in (".wav", ".flac"):
        return audio.encode(audio.load(path, 16000), codec).numpy()
    if ext in (".png", ".jpg"):
        return image.to_bytes(image.load(path)).numpy()
    return np.frombuffer(path.read_bytes(), dtype=np.uint8)


def _docs(corpus):
    return [corpus.doc(i).numpy().astype(corpus.dtype) for i in range(corpus.num_docs)]


def test_build_folder_auto(media, tmp_path):
    corpus = ByteCorpus.build(media, tmp_path / "cache")
    files = sorted(p for p in media.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = sorted(files, key=lambda p: (str(p.parent), p.name))
    assert corpus.built and corpus.num_docs == len(files) == 7 and corpus.skipped == []
    assert corpus.dtype == np.uint8 and isinstance(corpus.symbols, np.memmap)
    got = _docs(corpus)
    for path, doc in zip(files, got, strict=True):
        np.testing.assert_array_equal(doc, _expected(path), err_msg=str(path))
    assert corpus.num_symbols == sum(d.size for d in got)
    reopened = ByteCorpus.open(tmp_path / "cache")
    assert not reopened.built and [d.tolist() for d in _docs(reopened)] == [d.tolist() for d in got]


def test_build_globs_and_lists(media, tmp_path):
    c = ByteCorpus.build(str(media / "*.txt"), tmp_path / "c1")
    assert _docs(c)[0].tobytes() == b"first document\n" and c.num_docs == 1
    c = ByteCorpus.build(str(media / "**" / "*.txt"), tmp_path / "c2")
    assert c.num_docs == 2
    c = ByteCorpus.build([media / "pic.png", media / "tone.flac"], tmp_path / "c3", codec="pcm16")
    np.testing.assert_array_equal(_docs(c)[1], _expected(media / "tone.flac", "pcm16"))
    c = ByteCorpus.build([b"bytes doc", bytearray(b"more")], tmp_path / "c4")
    assert [d.tobytes() for d in _docs(c)] == [b"bytes doc", b"more"]
    with pytest.raises(ValueError, match="mix"):
        ByteCorpus.build([media / "a.txt", b"x"], tmp_path / "c5")


def test_from_documents(tmp_path):
    docs = ["héllo", b"\x00\x01", np.arange(5, dtype=np.uint8), torch.tensor([9, 8], dtype=torch.uint8), ""]
    c = ByteCorpus.from_documents(docs, tmp_path / "c")
    assert [d.tolist() for d in _docs(c)] == [list("héllo".encode()), [0, 1], [0, 1, 2, 3, 4], [9, 8]]
    assert not ByteCorpus.from_documents(docs, tmp_path / "c").built
    assert ByteCorpus.from_documents(docs[:2], tmp_path / "c").built
    with pytest.raises(ValueError, match="no documents"):
        ByteCorpus.from_documents([""], tmp_path / "empty")


def test_bad_files_skipped_and_reported(media, tmp_path, caplog):
    wav = (media / "tone.wav").read_bytes()
    (media / "broken.wav").write_bytes(wav[: len(wav) // 2])
    (media / "empty.txt").write_bytes(b"")
    (media / "notes.png").write_text("not a picture")
    (media / "cut.jpg").write_bytes((media / "pic.jpg").read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="rawseq.modalities"):
        c = ByteCorpus.build([media, media / "nope.txt"], tmp_path / "cache")
    names = sorted(os.path.basename(s) for s, _ in c.skipped)
    assert names == ["broken.wav", "cut.jpg", "empty.txt", "nope.txt", "notes.png"]
    reasons = dict((os.path.basename(s), r) for s, r in c.skipped)
    assert "truncated" in reasons["broken.wav"] and "zero-length" in reasons["empty.txt"]
    assert c.num_docs == 7
    assert "skipped 5 source(s)" in caplog.text and "broken.wav" in caplog.text
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["skipped"]
    with pytest.raises(DecodeError, match="broken.wav"):
        ByteCorpus.build(media, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".strict")]


def test_modality_audio_rejects_non_media(media, tmp_path):
    c = ByteCorpus.build(media, tmp_path / "cache", modality="audio", sample_rate=8000, codec="linear8")
    assert c.num_docs == 2
    skipped = {os.path.basename(s) for s, _ in c.skipped}
    assert skipped == {"a.txt", "b.bin", "c.txt", "pic.png", "pic.jpg"}
    with pytest.raises(DecodeError, match="no files match"):
        ByteCorpus.build(str(media / "*.mp3"), tmp_path / "none", strict=True)
    with pytest.raises(ValueError, match="no documents"):
        ByteCorpus.build(str(media / "*.mp3"), tmp_path / "none")


def test_rebuilt_only_when_sources_change(media, tmp_path):
    cache = tmp_path / "cache"
    assert ByteCorpus.build(media, cache).built
    assert not ByteCorpus.build(media, cache).built
    assert ByteCorpus.build(media, cache, rebuild=True).built
    assert ByteCorpus.build(media, cache, codec="pcm16").built
    assert not ByteCorpus.build(media, cache, codec="pcm16").built
    p = media / "a.txt"
    st = p.stat()
    p.write_text("first documenT\n")  # same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = ByteCorpus.build(media, cache, codec="pcm16")
    assert c.built and _docs(c)[0].tobytes() == b"first documenT\n"
    (media / "new.txt").write_text("added")
    c = ByteCorpus.build(media, cache, codec="pcm16")
    assert c.built and c.num_docs == 8
    (media / "new.txt").unlink()
    assert ByteCorpus.build(media, cache, codec="pcm16").num_docs == 7
    # The cache folder inside a source folder is never read as a source.
    inner = ByteCorpus.build(media, media / "cache")
    assert not ByteCorpus.build(media, media / "cache").built and inner.num_docs == 7


def test_damaged_cache_is_refused_and_rebuilt(media, tmp_path):
    cache = tmp_path / "cache"
    c = ByteCorpus.build(media, cache)
    n = c.num_symbols
    with open(cache / "symbols.bin", "r+b") as f:
        f.truncate(n - 3)
    with pytest.raises(DecodeError, match="damaged"):
        ByteCorpus.open(cache)
    assert ByteCorpus.build(media, cache).built
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["complete"] = False
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DecodeError, match="not a complete"):
        ByteCorpus.open(cache)
    (cache / "manifest.json").unlink()
    with pytest.raises(DecodeError, match="manifest.json missing"):
        ByteCorpus.open(cache)
    assert ByteCorpus.build(media, cache).num_symbols == n


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from rawseq.modalities import ByteCorpus
    from rawseq.modalities.corpus.writer import SymbolWriter

    add_file = SymbolWriter.add_file

    def copy_then_die(writer, path):
        if len(writer.offsets) == 51:
            writer._flush()
            os.kill(os.getpid(), signal.SIGKILL)
        add_file(writer, path)

    SymbolWriter.add_file = copy_then_die
    ByteCorpus.build(sys.argv[1], sys.argv[2])
""")


def test_killed_build_leaves_no_half_cache(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(100):
        (src / f"{i:03d}.txt").write_bytes(b"new corpus " * 100)
    cache = tmp_path / "cache"
    old = ByteCorpus.from_documents(["old corpus"], cache)
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(src), str(cache)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    leftovers = [tmp_path / p.name for p in tmp_path.iterdir() if p.name.startswith(".cache.tmp-")]
    assert len(leftovers) == 1, "the killed build should have been writing into a temporary folder"
    assert 0 < os.path.getsize(leftovers[0] / "symbols.bin") <= 50 * 1100
    # The half build is never accepted, and the cache it was replacing is untouched.
    with pytest.raises(DecodeError, match="manifest.json missing"):
        ByteCorpus.open(leftovers[0])
    survivor = ByteCorpus.open(cache)
    assert _docs(survivor)[0].tobytes() == b"old corpus" and survivor.num_symbols == old.num_symbols
    # The next build cleans up after the dead one.
    new = ByteCorpus.build(src, cache)
    assert new.built and new.num_docs == 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cache.")]


def test_pickle_does_not_carry_data(media, tmp_path):
    c = ByteCorpus.build(media, tmp_path / "cache")
    _ = c.symbols[:10]
    blob = pickle.dumps(c)
    assert len(blob) < 10_000
    c2 = pickle.loads(blob)
    assert c2.doc(2).tolist() == c.doc(2).tolist()


def test_dataset_text_and_bytes(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"text": ["alpha", "", "gamma"], "label": [0, 1, 2], "blob": [b"\x00\x01", b"\x02", b"\x03"]}
    )
    c = ByteCorpus.build(ds, tmp_path / "c")
    assert [d.tobytes() for d in _docs(c)] == [b"alpha", b"\x00\x01", b"\x02", b"gamma", b"\x03"]
    assert not ByteCorpus.build(ds, tmp_path / "c").built
    c = ByteCorpus.build(ds, tmp_path / "c", columns=["text"])
    assert c.built and [d.tobytes() for d in _docs(c)] == [b"alpha", b"gamma"]
    with pytest.raises(ValueError, match="not in the dataset"):
        ByteCorpus.build(ds, tmp_path / "c", columns=["nope"])


def test_load_dataset_text_and_imagefolder(media, tmp_path):
    hf = str(tmp_path / "hf")
    ds = datasets.load_dataset("text", data_files=str(media / "a.txt"), split="train", cache_dir=hf)
    c = ByteCorpus.build(ds, tmp_path / "t")
    assert _docs(c)[0].tobytes() == b"first document"
    ds = datasets.load_dataset(
        "imagefolder", data_files=[str(media / "pic.png"), str(media / "pic.jpg")], split="train", cache_dir=hf
    )
    c = ByteCorpus.build(ds, tmp_path / "i", image_size=4)
    assert c.num_docs == 2 and all(d.size == 4 * 4 * 3 for d in _docs(c))
    np.testing.assert_array_equal(_docs(c)[0], image.to_bytes(image.load(media / "pic.png", size=4)).numpy())


def test_dataset_audio_columns(media, tmp_path):
    wav_bytes = (media / "tone.wav").read_bytes()
    ds = datasets.Dataset.from_dict(
        {
            "audio": [
                {"bytes": wav_bytes, "path": "tone.wav"},
                {"bytes": None, "path": str(media / "tone.flac")},
                {"bytes": b"junk", "path": "junk.wav"},
            ]
        }
    )
    ds = ds.cast_column("audio", datasets.Audio(decode=False))  # the schema audiofolder produces
    c = ByteCorpus.build(ds, tmp_path / "a")
    assert c.num_docs == 2 and len(c.skipped) == 1 and "junk.wav" in c.skipped[0][0]
    np.testing.assert_array_equal(_docs(c)[0], _expected(media / "tone.wav"))
    np.testing.assert_array_equal(_docs(c)[1], _expected(media / "tone.flac"))
    arrays = datasets.Dataset.from_dict({"audio": [{"array": _tone(8000, 800)[:, 0], "sampling_rate": 8000}]})
    c = ByteCorpus.build(arrays, tmp_path / "b", sample_rate=16000)
    expect = audio.encode(audio.resample(torch.from_numpy(_tone(8000, 800)[:, 0])[None], 8000, 16000))
    np.testing.assert_array_equal(_docs(c)[0], expect.numpy())


def test_iterable_dataset(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["one", "two"]}).to_iterable_dataset()
    c = ByteCorpus.build(ds, tmp_path / "c")
    assert [d.tobytes() for d in _docs(c)] == [b"one", b"two"]
    assert ByteCorpus.build(ds, tmp_path / "c").built  # no fingerprint of its own: always rebuilt
    assert ByteCorpus.build(ds, tmp_path / "c", fingerprint="v1").built
    assert not ByteCorpus.build(ds, tmp_path / "c", fingerprint="v1").built

    def gen():
        yield {"raw": b"\x01\x02", "n": 1}
        yield {"raw": b"\x03", "n": 2}

    c = ByteCorpus.build(datasets.IterableDataset.from_generator(gen), tmp_path / "g")
    assert [d.tolist() for d in _docs(c)] == [[1, 2], [3]]


def test_multimodal_corpus(media, tmp_path):
    c = ByteCorpus.build(media, tmp_path / "mm", multimodal=True, codec="pcm16")
    assert c.dtype == np.uint16 and c.vocab_size == mm.VOCAB_SIZE and c.symbols.max() >= N_SYMBOLS
    kinds = [type(mm.unpack(c.doc(i), strict=True)[0]).__name__ for i in range(c.num_docs)]
    assert kinds == [
        "TextSegment",
        "TextSegment",
        "ImageSegment",
        "ImageSegment",
        "AudioSegment",
        "AudioSegment",
        "TextSegment",
    ]
    (seg,) = mm.unpack(c.doc(2), strict=True)
    assert torch.equal(seg.image, image.load(media / "pic.jpg"))
    (seg,) = mm.unpack(c.doc(4), strict=True)
    assert seg.sample_rate == 16000 and torch.equal(
        audio.encode(seg.waveform, "pcm16"), torch.from_numpy(_expected(media / "tone.flac", "pcm16"))
    )


def test_multimodal_dataset_rows(media, tmp_path):
    png = (media / "pic.png").read_bytes()
    ds = datasets.Dataset.from_dict(
        {"caption": ["a picture", "another"], "image": [{"bytes": png, "path": None}, {"bytes": png, "path": None}]}
    )
    ds = ds.cast_column("image", datasets.Image())
    c = ByteCorpus.build(ds, tmp_path / "rows", multimodal=True)
    assert c.num_docs == 2
    segs = mm.unpack(c.doc(0), strict=True)
    assert segs[0].data == b"a picture" and torch.equal(segs[1].image, image.load(media / "pic.png"))
    c = ByteCorpus.from_documents(
        [[mm.TextSegment(b"hi"), mm.ImageSegment(segs[1].image)], "plain"], tmp_path / "docs", multimodal=True
    )
    assert [len(mm.unpack(c.doc(i))) for i in range(2)] == [2, 1]


def test_build_speed_smoke(tmp_path):
    # Large text files go through chunked copies, not Python per byte: 64 MB must take well under a few seconds.
    big = tmp_path / "big.txt"
    block = os.urandom(1 << 20)
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(block)
    t0 = time.perf_counter()
    c = ByteCorpus.build(big, tmp_path / "cache")
    assert c.num_symbols == 64 << 20 and time.perf_counter() - t0 < 5
    assert bytes(c.symbols[(1 << 20) : (1 << 20) + 100]) == block[:100]


class _FailingFile:
    """A source whose read fails after ``good`` bytes, like a disk error half way through a file."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readinto(self, view) -> int:
        if self.left == 0:
            raise OSError(5, "Input/output error")
        k = min(len(view), self.left, 3 << 20)
        view[:k] = b"x" * k
        self.left -= k
        return k

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("first_mb", [1, 20], ids=["staged", "flushed"])
def test_document_failing_half_way_is_undone(tmp_path, monkeypatch, first_mb, direct):
    from rawseq.modalities.corpus import writer as writer_mod

    if not direct:
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    a = np.frombuffer(os.urandom(first_mb << 20), dtype=np.uint8)
    b = np.frombuffer(os.urandom(5000), dtype=np.uint8)
    writer = writer_mod.SymbolWriter(tmp_path / "symbols.bin", np.uint8)
    assert writer.direct == (direct and sys.platform == "linux")
    writer.add(a)
    monkeypatch.setattr(writer_mod, "open_regular", lambda path: _FailingFile(20 << 20))
    with pytest.raises(DecodeError, match="read failed"):
        writer.add_file("bad.txt")
    writer.add(b)
    writer.close()
    assert writer.offsets == [0, a.size, a.size + b.size]
    assert (tmp_path / "symbols.bin").read_bytes() == a.tobytes() + b.tobytes()


def test_worker_processes_give_the_same_corpus(media, tmp_path):
    wav = (media / "tone.wav").read_bytes()
    (media / "broken.wav").write_bytes(wav[:100])
    threads = torch.get_num_threads()
    one = ByteCorpus.build(media, tmp_path / "one")
    assert torch.get_num_threads() == threads  # the build runs single-threaded, then restores the setting
    two = ByteCorpus.build(media, tmp_path / "two", num_workers=2)
    assert one.num_docs == two.num_docs == 7 and one.skipped == two.skipped and len(one.skipped) == 1
    assert np.array_equal(np.asarray(one.symbols), np.asarray(two.symbols))
    assert np.array_equal(one.offsets, two.offsets)
    with pytest.raises(DecodeError, match="broken.wav"):
        ByteCorpus.build(media, tmp_path / "three", num_workers=2, strict=True)


def _audio_datasets_work() -> bool:
    """datasets needs torchcodec, and torchcodec needs FFmpeg's libraries, to create Audio columns."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _audio_datasets_work(), reason="torchcodec with FFmpeg is not available")
def test_load_dataset_audiofolder(tmp_path):
    import datasets
    import soundfile as sf

    from rawseq.modalities import audio as audio_codec

    folder = tmp_path / "clips"
    folder.mkdir()
    waves = []
    for i, rate in enumerate((16000, 8000)):
        wave = (0.5 * np.sin(np.arange(rate // 2) * 0.05 * (i + 1))).astype(np.float32)
        sf.write(folder / f"clip{i}.wav", wave, rate)
        waves.append(audio_codec.load(folder / f"clip{i}.wav", sample_rate=16000))
    ds = datasets.load_dataset("audiofolder", data_files=str(folder / "*.wav"), split="train")
    corpus = ByteCorpus.build(ds, tmp_path / "cache", codec="mulaw8", sample_rate=16000)
    assert corpus.num_docs == 2 and not corpus.skipped
    docs = sorted((corpus.doc(i) for i in range(2)), key=len)
    expected = sorted((audio_codec.encode(w, codec="mulaw8").long() for w in waves), key=len)
    for got, want in zip(docs, expected):
        assert torch.equal(got, want)
