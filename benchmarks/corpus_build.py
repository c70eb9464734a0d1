"""Corpus build speed: text bytes into the cache (MB/s), audio files decoded, resampled and quantised (files/s), and
one long recording streamed block by block (seconds of audio per second, and the memory it took).

    python benchmarks/corpus_build.py                 # ~256 MB of text, 200 audio files, 30 min of audio; ~2 min
    python benchmarks/corpus_build.py --text-mb 64 --audio-files 50 --long-minutes 5

Inputs are generated locally (Python standard-library sources for text, sine mixtures for audio), nothing is
downloaded. Every row is checked against its inputs before it is printed; a row whose check fails reports FAILED
instead of a speed. A plain file copy of the same bytes runs alongside as the ceiling for text.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from rawseq.modalities import ByteCorpus, audio

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import options  # noqa: E402


def _stdlib_text(total: int) -> bytes:
    parts, size = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        data = p.read_bytes()
        parts.append(data)
        size += len(data)
        if size >= 32 << 20:
            break
    blob = b"".join(parts)
    return (blob * (total // len(blob) + 1))[:total]


def _write_text_files(folder: Path, total_mb: int, files: int) -> list[Path]:
    folder.mkdir(parents=True)
    blob = _stdlib_text(total_mb << 20)
    step = len(blob) // files
    paths = []
    for i in range(files):
        p = folder / f"part{i:04d}.txt"
        p.write_bytes(blob[i * step : (i + 1) * step])
        paths.append(p)
    return paths


def _write_audio_files(folder: Path, n: int, seconds: float, rate: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    paths = []
    for i in range(n):
        freqs = rng.uniform(100, 3000, size=(2, 3))
        wave = 0.25 * np.sin(2 * np.pi * freqs[:, :, None] * t).sum(1).T  # (time, 2)
        p = folder / f"clip{i:04d}.{'flac' if i % 2 else 'wav'}"
        sf.write(p, wave.astype(np.float32), rate, format="FLAC" if i % 2 else "WAV", subtype="PCM_16")
        paths.append(p)
    return paths


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_text(work: Path, total_mb: int, files: int) -> list[tuple[str, str, str]]:
    paths = _write_text_files(work / "text", total_mb, files)
    nbytes = sum(p.stat().st_size for p in paths)
    rows = []

    def copy_all():
        dst = work / "copy"
        dst.mkdir(exist_ok=True)
        for p in paths:
            shutil.copyfile(p, dst / p.name)
        return dst

    _, t_copy = _timed(copy_all)
    rows.append(("text: shutil.copyfile (ceiling, no fsync)", f"{nbytes / t_copy / 1e6:,.0f} MB/s", f"{t_copy:.2f} s"))
    corpus, t_build = _timed(lambda: ByteCorpus.build(work / "text", work / "cache_text", rebuild=True))
    ok = (
        corpus.num_symbols == nbytes
        and corpus.num_docs == files
        and bytes(corpus.symbols[:4096]) == paths[0].read_bytes()[:4096]
        and bytes(corpus.symbols[-4096:]) == paths[-1].read_bytes()[-4096:]
    )
    speed = f"{nbytes / t_build / 1e6:,.0f} MB/s" if ok else "FAILED check"
    rows.append((f"text: ByteCorpus.build, {files} files, {nbytes / 1e6:,.0f} MB (fsync)", speed, f"{t_build:.2f} s"))
    _, t_reuse = _timed(lambda: ByteCorpus.build(work / "text", work / "cache_text"))
    rows.append(("text: ByteCorpus.build again (cache up to date)", "-", f"{t_reuse * 1e3:.1f} ms"))

    lines = _stdlib_text(64 << 20).split(b"\n")
    docs = [b"\n".join(lines[i : i + 40]) for i in range(0, len(lines), 40)]
    mem_bytes = sum(len(d) for d in docs)
    corpus, t_mem = _timed(lambda: ByteCorpus.from_documents(docs, work / "cache_mem", rebuild=True))
    ok = corpus.num_symbols == mem_bytes and bytes(corpus.symbols[: len(docs[0])]) == docs[0]
    speed = f"{mem_bytes / t_mem / 1e6:,.0f} MB/s" if ok else "FAILED check"
    rows.append(
        (f"text: from_documents, {len(docs):,} in-memory docs, {mem_bytes / 1e6:,.0f} MB", speed, f"{t_mem:.2f} s")
    )
    return rows


def bench_audio(work: Path, n: int, seconds: float, rate: int, workers: int) -> list[tuple[str, str, str]]:
    paths = _write_audio_files(work / "audio", n, seconds, rate)
    rows = []
    for codec in ("mulaw8", "pcm16"):
        corpus, t = _timed(
            lambda codec=codec: ByteCorpus.build(
                work / "audio",
                work / f"cache_{codec}",
                codec=codec,
                sample_rate=16000,
                rebuild=True,
                num_workers=workers,
            )
        )
        first = audio.encode(audio.load(paths[0], 16000), codec).numpy()
        ok = corpus.num_docs == n and not corpus.skipped and np.array_equal(corpus.doc(0).numpy(), first)
        speed = f"{n / t:,.1f} files/s ({n * seconds / t:,.0f} s audio/s)" if ok else "FAILED check"
        rows.append(
            (
                f"audio: {n} x {seconds:g} s stereo {rate} Hz WAV/FLAC -> 16 kHz mono {codec}, {workers} workers",
                speed,
                f"{t:.2f} s",
            )
        )
    # Where the time goes: decode alone, and resampling alone, on the same files.
    _, t_dec = _timed(lambda: [audio.read(p) for p in paths])
    rows.append(("audio: decode only (soundfile)", f"{n / t_dec:,.1f} files/s", f"{t_dec:.2f} s"))
    wave = torch.from_numpy(np.zeros((1, int(seconds * rate)), dtype=np.float32))
    threads = torch.get_num_threads()
    for n_threads in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n_threads)
        _, t_rs = _timed(lambda: [audio.resample(wave, rate, 16000) for _ in range(n)])
        rows.append(
            (f"audio: resample only (torchaudio, {n_threads} thread(s))", f"{n / t_rs:,.1f} files/s", f"{t_rs:.2f} s")
        )
    torch.set_num_threads(threads)
    return rows


_LONG_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from rawseq.modalities import ByteCorpus

    def memory(key):  # MB, from /proc/self/status: VmRSS now, VmHWM the peak since the last reset
        return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith(key)) / 1024

    def build(path, cache, **kw):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak, so it measures this build alone
        before = memory("VmRSS:")
        t0 = time.perf_counter()
        corpus = ByteCorpus.build(path, cache, rebuild=True, **kw)
        return corpus, time.perf_counter() - t0, memory("VmHWM:") - before

    warm, path, cache = sys.argv[1:4]
    _, _, short = build(warm, cache + "-warm")
    corpus, seconds, long = build(path, cache, sample_rate=16000)
    print(json.dumps({"seconds": seconds, "short_mb": short, "long_mb": long,
                      "symbols": int(corpus.num_symbols), "head": corpus.symbols[: 16000 * 10].tolist()}))
""")




def _tone(start: int, n: int, rate: int) -> np.ndarray:
    t = (start + np.arange(n)) / rate
    return (0.3 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 331 * t)], 1)).astype(np.float32)


def bench_long_audio(work: Path, minutes: float, rate: int = 44100) -> list[tuple[str, str, str]]:
    """One long stereo recording into a 16 kHz mono mulaw8 corpus, in a fresh process so its peak memory is its own
    (measured with Linux's resettable peak RSS)."""
    frames = int(minutes * 60 * rate)
    path, warm = work / "long.flac", work / "warm.flac"
    sf.write(warm, _tone(0, rate, rate), rate, format="FLAC", subtype="PCM_16")
    with sf.SoundFile(path, "w", rate, 2, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, frames, 1 << 20):
            f.write(_tone(start, min(1 << 20, frames - start), rate))
    proc = subprocess.run([sys.executable, "-c", _LONG_SCRIPT, str(warm), str(path), str(work / "cache_long")],
                          capture_output=True, text=True)
    name = f"audio: one {minutes:g} min stereo {rate} Hz FLAC -> 16 kHz mono mulaw8, streamed"
    if proc.returncode:
        return [(name, "FAILED: " + proc.stderr.strip().splitlines()[-1], "-")]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Check: the symbol count, and the first 10 s against whole-signal processing of the file's first 11 s.
    head = sf.read(path, frames=11 * rate, dtype="float32", always_2d=True)[0]
    whole = audio.encode(audio.resample(torch.from_numpy(head.T.copy()).mean(0, keepdim=True), rate, 16000))
    diff = np.abs(np.asarray(out["head"]) - whole[: 16000 * 10].numpy().astype(np.int64))
    ok = out["symbols"] == -(-frames * 16000 // rate) and diff.max() <= 1 and (diff > 0).mean() < 1e-3
    naive_mb = frames * 2 * 4 / 2**20
    speed = f"{minutes * 60 / out['seconds']:,.0f} s audio/s" if ok else "FAILED check"
    memory = (f"peak RSS growth {out['long_mb']:,.0f} MB (a 1 s file: {out['short_mb']:,.0f} MB; "
              f"the recording decoded whole: {naive_mb:,.0f} MB)")
    return [(name, speed, f"{out['seconds']:.2f} s, {memory}")]


def main() -> None:
    parser = options(__doc__.splitlines()[0], text_mb=256, text_files=64, audio_files=200, audio_seconds=2.0,
                     audio_rate=44100, audio_workers=(0, "num_workers for the audio builds"),
                     long_minutes=(30.0, "length of the streamed recording (0: skip)"))
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rawseq-bench-", dir=args.workdir))
    try:
        rows = bench_text(root, args.text_mb, args.text_files)
        rows += bench_audio(root, args.audio_files, args.audio_seconds, args.audio_rate, args.audio_workers)
        if args.long_minutes > 0:
            rows += bench_long_audio(root, args.long_minutes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':<{width}}  {'speed':<34}  time")
    for name, speed, t in rows:
        print(f"{name:<{width}}  {speed:<34}  {t}")


if __name__ == "__main__":
    main()
