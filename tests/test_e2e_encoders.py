"""Encoder users, end to end: train an audio classifier with the command on a folder of class sub-folders (clips of
several rates, lengths and channel counts), then fine-tune the saved model in Python through a right-padded batch
and its mask, with gradients reaching every parameter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from _commands import run_rawseq

from rawseq.modalities import audio
from rawseq.models import from_pretrained
from rawseq.models.encoders import AudioEncoder


def write_classes(root: Path) -> list[tuple[Path, int]]:
    """Two classes, low and high tones, of different lengths, rates and channel counts."""
    rng = np.random.default_rng(0)
    files = []
    for label, (name, low, high) in enumerate([("low", 150, 300), ("high", 1200, 2400)]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            rate, channels = [(16000, 1), (22050, 2), (8000, 1)][i % 3]
            t = np.arange(int(rate * rng.uniform(0.1, 0.3))) / rate
            tone = 0.5 * np.sin(2 * np.pi * rng.uniform(low, high) * t)
            path = root / name / f"{i}.wav"
            audio.save(path, np.stack([tone] * channels), rate)
            files.append((path, label))
    return files


def test_encoder_users_train_a_classifier_then_fine_tune_it(tmp_path):
    files = write_classes(tmp_path / "tones")
    out = run_rawseq("train", "--task", "classify", "--data", "tones", "--modality", "audio",
           "--epochs", "1", "--batch_size", "4", "--out_dir", "run", "--progress", "false", "--model.sample_rate",
           "8000", "--model.d_model", "16", "--model.n_layers", "1", "--model.headdim", "8", "--model.d_state", "4",
           "--model.frontend_strides", "4,4", cwd=tmp_path)
    assert out.strip().splitlines()[-1].startswith("test accuracy: ")
    config = json.loads((tmp_path / "run/model/config.json").read_text())
    assert config["labels"] == ["high", "low"] and config["frontend_strides"] == [4, 4]

    enc = from_pretrained(tmp_path / "run/model")
    assert isinstance(enc, AudioEncoder)
    # soundfile's (frames, channels) arrays at their own rates, as datasets' audio dicts: each is resampled
    items = [dict(zip(("array", "sampling_rate"), sf.read(str(path), dtype="float32"))) for path, _ in files]
    labels = [1 - label for _, label in files]  # class ids follow the sorted folder names: high, low
    batch = enc.collate(items, labels=labels, padded=True)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[0] == len(files) and int(lengths.min()) < int(lengths.max())

    enc.train()
    optimizer = torch.optim.AdamW(enc.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        out = enc(**batch, padded=True)
        # A feature-level term through the padded output and its mask, beside the head's cross-entropy.
        mean = (out.padded * out.mask[..., None]).sum(1) / out.mask.sum(1, keepdim=True)
        loss = out.loss + 0.1 * mean.square().mean()
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in enc.named_parameters():
                assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
                assert float(p.grad.abs().sum()) > 0, name
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0]
    assert set(enc.classify(items[:3])) <= {"low", "high"}
