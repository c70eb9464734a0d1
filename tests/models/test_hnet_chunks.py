"""rawseq.chunks: the cuts of an HNet on text and audio."""

from __future__ import annotations

import math

import pytest
import torch

import rawseq
from rawseq import chunks

FIELDS = {"layout": ["m1", ["m1", ["m1"], "m1"], "m1"], "d_model": [32, 32, 32], "ratio": [2.0, 2.0], "headdim": 16,
          "d_state": 8, "chunk_size": 8}


def _model(**changes):
    torch.manual_seed(0)
    return rawseq.HNet(rawseq.HNetConfig(**{**FIELDS, **changes})).eval()


def test_mark_text_puts_the_deepest_mark_before_each_chunk():
    data = b"hello world"
    cuts = torch.zeros(2, len(data), dtype=torch.bool)
    cuts[0, [0, 5, 6]] = True
    cuts[1, [0, 6]] = True
    assert chunks.mark_text(data, cuts) == "hello| ‖world"
    assert chunks.mark_text(data, cuts[0]) == "hello| |world"
    # a cut inside a two-byte character marks the character
    data = "aéb".encode()
    cut = torch.tensor([True, False, True, True])
    assert chunks.mark_text(data, cut) == "a|é|b" and chunks.mark_text(data, torch.tensor([1, 1, 0, 0]).bool()) \
        == "a|éb"
    with pytest.raises(ValueError, match="positions"):
        chunks.mark_text(b"abc", torch.ones(1, 2, dtype=torch.bool))


def test_boundaries_match_the_forward_and_nest(monkeypatch):
    model = _model()
    data = bytes(range(40, 140))
    probs, cuts = chunks.boundaries(model, data)
    out = model(torch.tensor([list(data)]))
    assert probs.shape == cuts.shape == (2, 100)
    torch.testing.assert_close(probs, torch.stack([p[0] for p in out.boundary_probs]))
    assert bool(cuts[:, 0].all()) and bool((cuts[1] <= cuts[0]).all())
    assert int(cuts[0].sum()) == round(100 / float(out.bytes_per_chunk[0]))
    # windows that continue each other's states give the same cuts as one pass
    monkeypatch.setattr(chunks, "_WINDOW", 17)
    probs2, cuts2 = chunks.boundaries(model, data)
    torch.testing.assert_close(probs2, probs, atol=1e-5, rtol=0)
    assert torch.equal(cuts2, cuts)
    with pytest.raises(ValueError, match="HNet"):
        chunks.boundaries(rawseq.ByteLM(rawseq.ByteLMConfig(d_model=32, n_layers=1, headdim=16)), data)


def test_show_chunks_on_a_saved_text_model(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "m")
    text = "def f(x):\n    return x + 1\n"
    shown = chunks.show_chunks(tmp_path / "m", text)
    for mark in chunks.MARKERS:
        shown = shown.replace(mark, "")
    assert shown == text
    (tmp_path / "t.txt").write_text(text)
    assert chunks.show_chunks(model, str(tmp_path / "t.txt")) == chunks.show_chunks(model, text)


def test_show_chunks_draws_an_audio_model_cuts(tmp_path):
    pytest.importorskip("matplotlib")
    model = _model(modality="audio")
    t = torch.arange(1600) / 16000
    wave = torch.sin(2 * math.pi * 440 * t) * torch.linspace(0, 1, 1600)
    message = chunks.show_chunks(model, wave.numpy(), out=tmp_path / "a.png")
    assert "stage 0" in message and "1600 samples" in message
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
