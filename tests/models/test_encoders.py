"""Encoders: packing never leaks between items, every input type gives the same symbols, save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rawseq.modalities import audio, image
from rawseq.models.encoders import AudioEncoder, Encoder, EncoderConfig, ImageEncoder, TextEncoder

TINY = {"d_model": 16, "n_layers": 2, "headdim": 8, "d_state": 8, "chunk_size": 8}


def _close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("ssm", ["mamba", "mamba2"])
def test_text_batch_of_different_lengths_equals_one_by_one(ssm):
    enc = TextEncoder(**TINY, ssm=ssm)
    texts = ["a longer sentence with some bytes in it", "short", "mid-length text!"]
    batch = enc.encode(texts)
    for i, t in enumerate(texts):
        alone = enc.encode([t])
        _close(batch.pooled[i], alone.pooled[0])
        _close(batch.features[i], alone.features[0])
        assert batch.features[i].shape == (len(t.encode()), 16)


def test_neighbour_content_does_not_leak():
    enc = TextEncoder(**TINY)
    a = enc.encode(["target", "x" * 50]).pooled[0]
    b = enc.encode(["target", "completely different neighbour"]).pooled[0]
    c = enc.encode(["y" * 7, "target"]).pooled[1]
    _close(a, b)
    _close(a, c)


def test_pooled_is_the_mean_of_each_items_features():
    enc = TextEncoder(**TINY)
    out = enc.encode(["abc", "defghij"])
    for f, p in zip(out.features, out.pooled):
        _close(f.mean(0), p)


def test_packed_forward_equals_stacked_forward():
    enc = TextEncoder(**TINY).eval()
    ids = torch.randint(0, 256, (3, 20))
    stacked = enc(ids)
    packed = enc(ids.reshape(1, -1), lengths=[20, 20, 20])
    _close(packed.features.reshape(3, 20, -1), stacked.features)
    _close(packed.pooled, stacked.pooled)


def test_audio_front_end_stride_and_packing():
    enc = AudioEncoder(**TINY, frontend_strides=[4, 2])
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (1000, 333, 8)]
    batch = enc.encode(waves)
    assert [f.shape[0] for f in batch.features] == [125, 42, 1]  # ceil(n / 8)
    for i, w in enumerate(waves):
        _close(batch.pooled[i], enc.encode(w).pooled)


def test_audio_inputs_agree(tmp_path):
    enc = AudioEncoder(**TINY, frontend_strides=[4])
    rng = np.random.default_rng(1)
    wave = (rng.uniform(-0.5, 0.5, 800) * 32767).astype(np.int16)
    path = tmp_path / "a.wav"
    audio.save(path, wave, 16000)
    as_float = wave.astype(np.float32) / 32768
    symbols = audio.encode(torch.from_numpy(as_float), "mulaw8")
    outs = [enc.encode(x).pooled for x in
            (path, str(path), as_float, torch.from_numpy(as_float), torch.from_numpy(wave), symbols,
             np.stack([as_float, as_float]))]
    for o in outs[1:]:
        _close(o, outs[0])


def test_audio_resamples_files_to_the_config_rate(tmp_path):
    enc = AudioEncoder(**TINY, sample_rate=8000)
    audio.save(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    assert enc.encode(tmp_path / "a.wav").features.shape[0] == 800


def test_image_inputs_agree(tmp_path):
    from PIL import Image

    enc = ImageEncoder(**TINY, image_mode="L", n_positions=64)
    pixels = np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8)
    image.save(tmp_path / "a.png", torch.from_numpy(pixels).unsqueeze(0))
    rgb = np.repeat(pixels[:, :, None], 3, axis=2)
    inputs = [pixels, torch.from_numpy(pixels), torch.from_numpy(pixels).unsqueeze(0), Image.fromarray(pixels),
              tmp_path / "a.png", Image.fromarray(rgb), rgb]
    outs = [enc.encode(x).pooled for x in inputs]
    for o in outs[1:]:
        _close(o, outs[0])
    batch = enc.encode([pixels, pixels[:4]])  # a smaller image in the same batch changes nothing
    _close(batch.pooled[0], outs[0])


def test_image_resize_and_positions():
    enc = ImageEncoder(**TINY, image_mode="RGB", image_size=4, n_positions=48)
    out = enc.encode(np.zeros((10, 12, 3), dtype=np.uint8))
    assert out.features.shape == (48, 16)
    with pytest.raises(ValueError, match="n_positions"):
        ImageEncoder(**TINY, image_mode="RGB", n_positions=48).encode(np.zeros((10, 12, 3), dtype=np.uint8))


def test_text_inputs_agree(tmp_path):
    enc = TextEncoder(**TINY)
    (tmp_path / "t.txt").write_bytes("héllo".encode())
    outs = [enc.encode(x).pooled for x in
            ("héllo", "héllo".encode(), tmp_path / "t.txt", torch.tensor(list("héllo".encode()), dtype=torch.uint8))]
    for o in outs[1:]:
        _close(o, outs[0])


def test_max_length_truncates():
    enc = TextEncoder(**TINY, max_length=4)
    _close(enc.encode("abcdefgh").pooled, enc.encode("abcd").pooled)


def test_head_loss_and_gradients():
    enc = TextEncoder(**TINY, n_classes=3)
    out = enc(torch.randint(0, 256, (1, 30)), lengths=[10, 20], labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters() if p.requires_grad)


@pytest.mark.parametrize("cls, kw", [(TextEncoder, {}), (AudioEncoder, {"frontend_strides": [2]}),
                                     (ImageEncoder, {"n_positions": 16, "n_classes": 2, "labels": ["a", "b"]})])
def test_save_and_load_round_trip(tmp_path, cls, kw):
    enc = cls(**TINY, **kw)
    x = np.random.default_rng(3).integers(0, 256, 16, dtype=np.uint8)
    if cls is ImageEncoder:
        x = x.reshape(4, 4)
    enc.save_pretrained(tmp_path / "m")
    for loader in (cls, Encoder):
        loaded = loader.from_pretrained(tmp_path / "m")
        assert type(loaded) is cls
        _close(loaded.encode(x).pooled, enc.encode(x).pooled, atol=0)
    if cls is ImageEncoder:
        assert enc.classify(x) in ("a", "b")
    other = TextEncoder if cls is not TextEncoder else AudioEncoder
    with pytest.raises(ValueError, match="modality"):
        other.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("make, match", [
    (lambda: EncoderConfig.from_dict({"d_modle": 8}), "'d_modle' \\(did you mean 'd_model'\\?\\); valid: d_model"),
    (lambda: EncoderConfig.from_dict({"d_model": "8"}), "type"),
    (lambda: EncoderConfig(modality="video"), "modality"),
    (lambda: EncoderConfig(n_classes=2, labels=["one"]), "labels"),
], ids=["unknown-key", "wrong-type", "modality", "labels"])
def test_config_rejects_unknown_keys_and_bad_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        TextEncoder(**TINY).encode(["ok", ""])


def test_encoders_are_reexported_from_modalities_without_upward_imports():
    import ast
    from pathlib import Path

    import rawseq.modalities as m
    from rawseq.models import encoders

    assert m.AudioEncoder is encoders.AudioEncoder and m.TextEncoder is encoders.TextEncoder
    # The data pipeline sits below the models: no module-level import of rawseq.models/train in modalities/.
    for path in Path(m.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith(("rawseq.models", "rawseq.train")) for n in names), (path, names)


def test_soundfile_layout_and_sampling_rate(tmp_path):
    enc = AudioEncoder(**TINY, sample_rate=8000)
    rng = np.random.default_rng(4)
    stereo = rng.uniform(-0.5, 0.5, (1600, 2)).astype(np.float32)  # soundfile.read's (frames, channels)
    out = enc.encode(stereo, sampling_rate=8000)
    assert out.features.shape[0] == 1600  # frames, not channels
    _close(out.pooled, enc.encode(stereo.mean(1), sampling_rate=8000).pooled)
    audio.save(tmp_path / "s.wav", stereo.T, 16000)
    import soundfile

    data, rate = soundfile.read(tmp_path / "s.wav", dtype="float32")
    from_array = enc.encode(data, sampling_rate=rate)
    assert from_array.features.shape[0] == 800  # 16 kHz resampled to the encoder's 8 kHz
    _close(from_array.pooled, enc.encode(tmp_path / "s.wav").pooled)


def test_image_batches_and_float_images():
    enc = ImageEncoder(**TINY, image_mode="RGB", n_positions=192)
    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"\(4, 3, 8, 8\) is a batch; pass a list"):
        enc.encode(batch)
    floats = batch.float() / 255  # torchvision's ToTensor
    _close(enc.encode(list(floats)).pooled, enc.encode(list(batch)).pooled, atol=0)


def test_padded_output_and_attention_mask_match_packing():
    enc = TextEncoder(**TINY).eval()
    texts = ["a longer piece of text", "short", "medium text"]
    packed = enc(**enc.collate(texts), padded=True)
    padded_batch = enc.collate(texts, padded=True)
    assert padded_batch["input_ids"].shape == (3, 22) and padded_batch["attention_mask"].sum(1).tolist() == [22, 5, 11]
    from_padding = enc(**padded_batch, padded=True)
    _close(from_padding.pooled, packed.pooled)
    _close(from_padding.padded, packed.padded)
    assert torch.equal(packed.mask, padded_batch["attention_mask"])
    for i, t in enumerate(texts):
        n = len(t)
        _close(packed.padded[i, :n], enc.encode(t).features)
        assert bool((packed.padded[i, n:] == 0).all())
    out = enc.encode(texts, padded=True)
    assert out.features.shape == (3, 22, 16) and torch.equal(out.mask, packed.mask)
    with pytest.raises(ValueError, match="prefix"):
        enc(padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"].flip(1))


def test_fine_tuning_through_a_padded_batch_gets_gradients():
    enc = AudioEncoder(**TINY, frontend_strides=[2], n_classes=2)
    rng = np.random.default_rng(5)
    waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (300, 120, 77)]
    batch = enc.collate(waves, labels=[0, 1, 1], padded=True)
    out = enc(**batch, padded=True)
    pooled = (out.padded * out.mask[..., None]).sum(1) / out.mask.sum(1, keepdim=True)
    _close(pooled, out.pooled)
    (out.loss + pooled.square().mean()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and bool(p.grad.abs().sum() > 0), name
    enc.zero_grad()
    kept = enc.encode(waves, grad=True)
    kept.pooled.sum().backward()
    assert enc.embed.weight.grad is not None and not enc.encode(waves).pooled.requires_grad
