"""Audio decoded block by block: the same result as whole-file decoding, errors after partial output, bounded memory."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from rawseq.modalities import ByteCorpus, DecodeError, audio
from rawseq.modalities._resample import BlockResampler, resample


def _noise_file(path, rate: int, frames: int, channels: int = 2, fmt: str = "WAV") -> np.ndarray:
    data = np.random.default_rng(rate + frames).uniform(-0.9, 0.9, (frames, channels)).astype(np.float32)
    sf.write(path, data, rate, format=fmt, subtype="FLOAT" if fmt == "WAV" else "PCM_24")
    return sf.read(path, dtype="float32", always_2d=True)[0]


@pytest.mark.parametrize("orig, new", [(44100, 16000), (22050, 16000), (8000, 16000), (48000, 16000), (16000, 16000)])
@pytest.mark.parametrize("block", [1000, 4096, 50000], ids=["b1000", "b4096", "b50000"])
def test_blocks_equal_whole_file(tmp_path, orig, new, block):
    frames = _noise_file(tmp_path / "n.wav", orig, 30011)  # odd length: the last block is partial
    whole = AF.resample(torch.from_numpy(frames.T.copy()).mean(0, keepdim=True), orig, new)
    stream = audio.AudioStream(tmp_path / "n.wav", sample_rate=new, block_samples=block)
    assert (stream.channels, stream.sample_rate, stream.file_rate, stream.frames) == (1, new, orig, 30011)
    blocks = list(stream)
    assert len(blocks) > 1 or block > 30011
    torch.testing.assert_close(torch.cat(blocks, 1), whole, atol=1e-6, rtol=0)
    stereo = torch.cat(list(audio.AudioStream(tmp_path / "n.wav", sample_rate=new, mono=False, block_samples=block)), 1)
    torch.testing.assert_close(stereo, AF.resample(torch.from_numpy(frames.T.copy()), orig, new), atol=1e-6, rtol=0)


def test_block_resampler_any_piece_sizes():
    g = torch.Generator().manual_seed(0)
    for orig, new in [(44100, 16000), (11025, 44100), (37800, 16000)]:
        for length in (1, 7, 441, 6000):
            x = torch.rand(2, length, generator=g) * 2 - 1
            r = BlockResampler(orig, new, "<test>", 700)
            pos, out = 0, []
            while pos < length:
                k = int(torch.randint(1, 900, (), generator=g))
                out += list(r.push(x[:, pos : pos + k]))
                pos += k
            out += list(r.flush())
            torch.testing.assert_close(torch.cat(out, -1), resample(x, orig, new), atol=1e-6, rtol=0)


def test_truncated_file_fails_after_blocks_and_the_corpus_keeps_nothing_of_it(tmp_path, monkeypatch):
    _noise_file(tmp_path / "good.flac", 16000, 40000, fmt="FLAC")
    data = (tmp_path / "good.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) * 3 // 4])
    stream = audio.AudioStream(tmp_path / "cut.flac", block_samples=4096)
    got = []
    with pytest.raises(DecodeError, match="cut.flac: truncated audio|cut.flac: not a readable"):
        for block in stream:
            got.append(block)
    assert got, "the error must come after some blocks, so that a writer has something to undo"
    monkeypatch.setattr(audio, "BLOCK_SAMPLES", 4096)
    c = ByteCorpus.build([tmp_path / "cut.flac", tmp_path / "good.flac"], tmp_path / "cache", codec="pcm16")
    assert c.num_docs == 1 and [s.endswith("cut.flac") for s, _ in c.skipped] == [True]
    expect = audio.to_symbols(tmp_path / "good.flac", codec="pcm16", sample_rate=16000)
    assert torch.equal(c.doc(0), expect.long())


def _wav_header(rate: int, frames: int) -> bytes:
    data = np.zeros(frames, dtype="<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + \
        struct.pack("<I", len(data)) + data


@pytest.mark.parametrize("rate, match", [(999983, "filter for the ratio"), (100, "more than 64")])
def test_hostile_rates_are_refused_before_decoding(rate, match):
    with pytest.raises(DecodeError, match=match):
        audio.AudioStream(_wav_header(rate, 10), sample_rate=16000, name="odd.wav")
    assert audio.load(_wav_header(rate, 10), sample_rate=None).shape == (1, 10)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    from rawseq.modalities import ByteCorpus

    def rss_kb(key):
        return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith(key))

    short, long, cache = sys.argv[1:4]
    ByteCorpus.build(short, cache + "-warm")  # first use of every op: their one-off allocations happen here
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM), so it measures the build below alone
        peak = lambda: rss_kb("VmHWM:")
        before = rss_kb("VmRSS:")
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        before = peak()
    tracemalloc.start()
    corpus = ByteCorpus.build(long, cache, sample_rate=16000)
    traced = tracemalloc.get_traced_memory()[1]
    grown = peak() - before
    symbols = corpus.symbols
    print(json.dumps({"grown_kb": grown, "traced": traced, "symbols": int(symbols.size),
                      "silent": bool((symbols == 128).all())}))
""")


def _write_silence(path, seconds: int, rate: int = 44100) -> None:
    block = np.zeros((1 << 18, 2), dtype=np.int16)
    with sf.SoundFile(path, "w", rate, 2, format="FLAC", subtype="PCM_16") as f:
        left = seconds * rate
        while left:
            f.write(block[: min(left, len(block))])
            left -= min(left, len(block))


def test_long_recording_builds_in_bounded_memory(tmp_path):
    minutes = 10
    _write_silence(tmp_path / "short.flac", 2)
    _write_silence(tmp_path / "long.flac", minutes * 60)
    naive = minutes * 60 * 44100 * 2 * 4  # the recording decoded whole as float32, before any conversion
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "short.flac"), str(tmp_path / "long.flac"),
         str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["symbols"] == minutes * 60 * 16000 and out["silent"]  # mu-law silence is 128
    assert out["traced"] < 16 << 20, out  # numpy's allocations, traced
    assert out["grown_kb"] * 1024 < naive / 4, (out, naive)  # the whole process, torch included


def test_resample_matches_torchaudio_defaults():
    x = torch.from_numpy(np.sin(np.arange(5000) * 0.01).astype(np.float32))[None]
    assert torch.equal(resample(x, 44100, 16000), AF.resample(x, 44100, 16000))
    assert math.isclose(float(resample(x, 8000, 8000).sum()), float(x.sum()))


def test_multimodal_corpus_skips_a_rate_its_header_cannot_hold(tmp_path):
    (tmp_path / "odd.wav").write_bytes(_wav_header(20_000_000, 10))  # more than the 3 header bytes hold
    (tmp_path / "ok.txt").write_text("fine")
    c = ByteCorpus.build(tmp_path, tmp_path / "cache", multimodal=True, sample_rate=None)
    assert c.num_docs == 1 and [(s.endswith("odd.wav"), "sample rate" in r) for s, r in c.skipped] == [(True, True)]
