"""The rawseq command end to end on a tiny model: train (with torch.compile), eval, info, generate text/audio/image,
and the loss plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

TINY = ["--model.d_model=32", "--model.n_layers=2", "--model.headdim=16", "--model.d_state=8",
        "--model.chunk_size=32", "--seq_len=32", "--batch_size=2", "--progress=false", "--eval_batches=1",
        "--warmup_steps=1", "--sample_bytes=16"]


def _rawseq(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "rawseq.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    data = root / "data.txt"
    data.write_bytes(Path(subprocess.__file__).read_bytes()[:30000])
    out = _rawseq("train", f"--data={data}", f"--out_dir={root / 'run'}", f"--cache_dir={root / 'cache'}", *TINY,
                  "--steps=4", "--compile=true", "--eval_every=2", "--sample_prompt=import ")
    assert "trained 4 steps" in out and "sample:\nimport " in out
    return root


def test_train_writes_the_loss_plot(trained):
    png = trained / "run/loss.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_and_info(trained):
    out = _rawseq("eval", str(trained / "run/model"), f"--data={trained / 'data.txt'}", "--seq_len=32")
    bits = float(out.split(": ")[1].split()[0])
    assert 0.0 < bits < 9.0
    info = _rawseq("info", str(trained / "run/model"))
    assert "parameters: " in info and "fixed: it does not grow with the context" in info


def test_generate_text(trained, tmp_path):
    out = tmp_path / "t.txt"
    _rawseq("generate", "text", str(trained / "run/model"), "--prompt=def ", "--length=12", "--n=2",
            f"--out={out}", "--temperature=0")
    parts = out.read_bytes().split(b"\n\n")
    assert len(parts) == 2 and parts[0] == parts[1] and parts[0].startswith(b"def ") and len(parts[0]) == 16


def test_generate_audio_and_image(trained, tmp_path):
    _rawseq("generate", "audio", str(trained / "run/model"), "--seconds=0.01", "--sample_rate=8000",
            f"--out={tmp_path / 'clip.wav'}")
    wave, rate = sf.read(tmp_path / "clip_0.wav")
    assert rate == 8000 and len(wave) == 80  # exactly the seconds asked for
    assert (tmp_path / "clip_0.png").read_bytes()[:4] == b"\x89PNG"
    _rawseq("generate", "image", str(trained / "run/model"), "--height=4", "--width=5", "--channels=1", "--n=3",
            f"--out={tmp_path / 'grid.png'}")
    from torchvision.io import decode_image, read_file

    grid = decode_image(read_file(str(tmp_path / "grid.png")))
    assert grid.dtype == torch.uint8 and grid.shape[-2] >= 4 and grid.shape[-1] >= 3 * 5
