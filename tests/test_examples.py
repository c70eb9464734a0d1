"""The examples run end to end with tiny models and a few steps, and write valid text, WAV, PNG and unpacked files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import soundfile as sf
import torch

from rawseq import ByteLM, ByteLMConfig
from rawseq.modalities import image
from rawseq.modalities import multimodal as mm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--steps=3", "--batch_size=2", "--seq_len=64", "--warmup_steps=1", "--eval_batches=1", "--progress=false",
        "--model.d_model=32", "--model.n_layers=1", "--model.headdim=16", "--model.d_state=8",
        "--model.chunk_size=32"]


def _run(script: str, out: Path, *args: str) -> str:
    cmd = [sys.executable, str(EXAMPLES / script), f"--out={out}", *TINY, *args]
    proc = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_byte_lm(tmp_path):
    out = tmp_path / "lm"
    stdout = _run("train_byte_lm.py", out, "--max_corpus_bytes=50000", "--length=16")
    assert "bits per byte" in stdout
    samples = (out / "samples.txt").read_text().split("\n\n")
    assert [s[:4] for s in samples[:3]] == ["def ", "impo", "clas"]
    assert ByteLM.from_pretrained(out / "model").config.d_model == 32


def test_generate_audio(tmp_path):
    out = tmp_path / "audio"
    _run("generate_audio.py", out, "--clips=3", "--n=2", "--sample_rate=8000", "--prompt_seconds=0.01",
         "--seconds=0.02")
    assert len(list((out / "wavs").glob("*.wav"))) == 3
    for i in range(2):
        info = sf.info(str(out / f"sample_{i}.wav"))
        assert (info.samplerate, info.channels, info.frames) == (8000, 1, 80 + 160)
        assert sf.read(str(out / f"sample_{i}.wav"))[0].shape == (240,)


def test_pixels(tmp_path):
    out = tmp_path / "pixels"
    _run("pixels.py", out, "--n=2")
    config = ByteLM.from_pretrained(out / "model").config  # the folder records the pixel layout
    assert (config.modality, config.image_mode, config.image_size) == ("image", "L", [8, 8])
    # Tiles are 8x8 images enlarged to 32x32 with 2 pixels between them, one symbol per (grey) pixel.
    samples = image.load(out / "samples.png", "RGB")
    assert samples.shape == (3, 2 + 34, 2 + 2 * 34) and torch.equal(samples[0], samples[2])
    grid = image.load(out / "completions.png", "RGB")
    assert grid.shape == (3, 2 + 2 * 34, 2 + 2 * 34)
    for j in range(2):  # originals on the first row, their completions below: the top halves agree
        x = 2 + 34 * j
        assert torch.equal(grid[:, 2:18, x:x + 32], grid[:, 36:52, x:x + 32])


def test_multimodal(tmp_path):
    out = tmp_path / "mm"
    _run("multimodal.py", out, "--tones=6", "--max_symbols=40", "--prompt=digit 1", "--prompt=tone 440 Hz")
    assert (out / "prompt_0_0.txt").read_bytes() == b"digit 1"
    assert (out / "prompt_1_0.txt").read_bytes() == b"tone 440 Hz"
    for path in out.glob("prompt_*.wav"):
        assert sf.info(str(path)).frames > 0
    for path in out.glob("prompt_*.png"):
        assert image.load(path, "L").numel() > 0
    assert ByteLM.from_pretrained(out / "model").config.modality == "multimodal"
    assert (out / "metrics.jsonl").is_file()  # trained by the trainer's loop


def test_multimodal_continuation_and_files(tmp_path):
    example = _example("multimodal")
    model = ByteLM(ByteLMConfig(d_model=32, n_layers=1, headdim=16, d_state=8, n_special=mm.NUM_SPECIAL)).eval()
    prompt = mm.pack(["digit 4"], eos=False).tolist()
    for seed in range(4):
        ids = example.continue_caption(model, "digit 4", 30, 1.0, seed)
        assert ids[: len(prompt)] == prompt and ids[len(prompt)] in (mm.AUDIO, mm.IMAGE)
        assert all(i < 256 for i in ids[len(prompt) + 1:-1])
        assert len(ids) <= len(prompt) + 1 + 5 + 30 + 1

    wave = torch.sin(torch.arange(400) / 5.0)[None] * 0.5
    digit = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)
    ids = mm.pack(["tone", mm.AudioSegment(wave, 8000), "digit", mm.ImageSegment(digit)])
    paths = example.write_segments(mm.unpack(ids), tmp_path / "doc")
    assert [p.name for p in paths] == ["doc_0.txt", "doc_1.wav", "doc_2.txt", "doc_3.png"]
    assert paths[0].read_bytes() == b"tone"
    assert sf.info(str(paths[1])).frames == 400
    assert torch.equal(image.load(paths[3], "L"), digit)



def test_classify_digits(tmp_path):
    out = tmp_path / "digits"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "classify_digits.py"), "--epochs=1", f"--out={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("test accuracy: ")
    assert (out / "model" / "config.json").is_file()


def test_pixels_quality_scorer_tells_digits_from_noise():
    import numpy as np

    spec = importlib.util.spec_from_file_location("pixels_quality", EXAMPLES.parent / "benchmarks/pixels_quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    clf, held_out = quality.classifier()
    real = quality.scores(clf, held_out)
    noise = quality.scores(clf, np.random.default_rng(0).integers(0, 256, (200, 8, 8)).astype(np.uint8))
    one_digit = quality.scores(clf, np.repeat(held_out[:1], 50, axis=0))  # confident, but no variety
    assert real[0] > 0.8 and real[1] > 5.5
    assert noise[0] < 0.4 and noise[1] < 1.5
    assert one_digit[0] > 0.8 and one_digit[1] < 1.01
