"""Audio users, end to end through the documented commands: train on WAV files of mixed rates and channels, then
generate a second from a prompt clip (rate, length, a spectrogram that is not blank) and score the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from _commands import run_rawseq

from rawseq.modalities import audio, image

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.ssm=mamba2", "--model.headdim=16", "--model.d_state=8",
        "--model.chunk_size=32", "--seq_len=256", "--batch_size=2", "--steps=3", "--warmup_steps=1",
        "--eval_batches=1", "--progress=false"]


def write_wavs(folder: Path) -> float:
    """Tones at 22.05 kHz stereo and 11.025 kHz mono, half a second each; returns their total seconds."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    total = 0.0
    for i, (rate, channels) in enumerate([(22050, 2), (11025, 1), (22050, 2), (11025, 1)]):
        t = np.arange(rate // 2) / rate
        tone = 0.4 * np.sin(2 * np.pi * rng.uniform(200, 800) * t)
        audio.save(folder / f"clip_{i}.wav", np.stack([tone] * channels), rate)
        total += 0.5
    return total


def test_audio_users_train_generate_and_score(tmp_path):
    seconds = write_wavs(tmp_path / "wavs")
    out = run_rawseq("train", "--preset=tiny-audio", "--data=wavs", "--sample_rate=8000", "--out_dir=run", *TINY,
                 cwd=tmp_path)
    assert "run folder: run" in out
    config = json.loads((tmp_path / "run/model/config.json").read_text())
    assert {k: config[k] for k in ("modality", "codec", "sample_rate", "channels")} == \
        {"modality": "audio", "codec": "mulaw8", "sample_rate": 8000, "channels": 1}

    out = run_rawseq("generate", "audio", "run/model", "--prompt=wavs/clip_0.wav", "--seconds=1", "--out=gen/cont.wav",
                 "--progress=false", "--threads=1", cwd=tmp_path)
    assert "1.50 s at 8000 Hz" in out and "continuing clip_0.wav" in out
    info = sf.info(str(tmp_path / "gen/cont.wav"))
    assert (info.samplerate, info.channels, info.frames) == (8000, 1, 4000 + 8000)  # the prompt, then 1 s
    spectrogram = image.load(tmp_path / "gen/cont.png", "L").float()
    assert spectrogram.shape[1] == 129 and spectrogram.shape[2] > 40 and float(spectrogram.std()) > 5

    out = run_rawseq("eval", "run/model", "--data=wavs", "--progress=false", "--cache_dir=caches", cwd=tmp_path)
    assert f"over {int(seconds * 8000):,} symbols (mulaw8 samples at 8000 Hz" in out  # samples, not file bytes
    assert sorted(p.name for p in (tmp_path / "run/model").iterdir()) == ["config.json", "model.safetensors"]
