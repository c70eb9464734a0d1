from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.io as tio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rawseq.modalities import DecodeError, image


@pytest.fixture
def rgb():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 21, 34), dtype=torch.uint8, generator=g)


def test_png_round_trip_exact(tmp_path, rgb):
    tio.write_png(rgb, str(tmp_path / "a.png"))
    img = image.load(tmp_path / "a.png")
    assert img.dtype == torch.uint8 and torch.equal(img, rgb)
    image.save(tmp_path / "b.png", img)
    assert torch.equal(image.load(tmp_path / "b.png"), rgb)


def test_jpeg_loads_close(tmp_path):
    smooth = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(3, 48, 64).contiguous()
    tio.write_jpeg(smooth, str(tmp_path / "a.jpg"), quality=95)
    img = image.load(tmp_path / "a.jpg")
    assert img.shape == (3, 48, 64)
    assert (img.int() - smooth.int()).abs().float().mean() < 3


def test_modes_convert(tmp_path, rgb):
    gray = rgb[:1].clone()
    tio.write_png(gray, str(tmp_path / "g.png"))
    assert torch.equal(image.load(tmp_path / "g.png", mode="RGB"), gray.expand(3, -1, -1))
    rgba = torch.cat([rgb, torch.full_like(rgb[:1], 200)])
    image.save(tmp_path / "a.png", rgba)
    assert torch.equal(image.load(tmp_path / "a.png", mode="RGB"), rgb)
    assert torch.equal(image.load(tmp_path / "a.png", mode="RGBA"), rgba)
    assert image.load(tmp_path / "a.png", mode="L").shape == (1, 21, 34)
    assert image.load(tmp_path / "a.png", mode="LA").shape == (2, 21, 34)
    with pytest.raises(ValueError, match="mode"):
        image.load(tmp_path / "a.png", mode="CMYK")


def test_palette_png(tmp_path):
    pixels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    pal = Image.fromarray(pixels, mode="P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    pal.save(tmp_path / "p.png")
    img = image.load(tmp_path / "p.png")
    expect = torch.tensor([[[255, 0], [0, 0]], [[0, 255], [0, 255]], [[0, 0], [255, 0]]], dtype=torch.uint8)
    assert torch.equal(img, expect)


def test_16bit_png_keeps_high_byte(tmp_path):
    values = (np.arange(6 * 5).reshape(6, 5) * 2000 + 7).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    img = image.load(tmp_path / "d.png", mode="L")
    assert img.dtype == torch.uint8
    assert torch.equal(img[0], torch.from_numpy((values >> 8).astype(np.uint8)))


def test_resize_and_center_crop(tmp_path, rgb):
    tio.write_png(rgb, str(tmp_path / "a.png"))
    assert image.load(tmp_path / "a.png", size=16).shape == (3, 16, 16)
    assert image.load(tmp_path / "a.png", size=(10, 30)).shape == (3, 10, 30)
    assert torch.equal(image.load(tmp_path / "a.png", size=(21, 34)), rgb)
    # A flat image stays flat: no borders from the crop.
    flat = torch.full((3, 20, 40), 77, dtype=torch.uint8)
    tio.write_png(flat, str(tmp_path / "f.png"))
    assert (image.load(tmp_path / "f.png", size=(32, 32)) == 77).all()


def test_to_bytes_raster_order(rgb):
    c, h, w = rgb.shape
    sym = image.to_bytes(rgb)
    assert sym.shape == (h * w * c,)
    for y, x, ch in [(0, 0, 0), (0, 1, 2), (5, 7, 1), (h - 1, w - 1, 2)]:
        assert sym[(y * w + x) * c + ch] == rgb[ch, y, x]
    assert torch.equal(image.from_bytes(sym, h, w, c), rgb)
    assert torch.equal(image.from_bytes(sym.long(), h, w, c), rgb)


def test_from_bytes_rejects_wrong_length():
    with pytest.raises(DecodeError, match="2x2x3"):
        image.from_bytes(torch.zeros(11, dtype=torch.uint8), 2, 2, 3)
    with pytest.raises(DecodeError, match="not a byte"):
        image.from_bytes(torch.full((12,), 300), 2, 2, 3)


def test_save_grid(tmp_path, rgb):
    imgs = [rgb, rgb.flip(1), rgb.flip(2)]
    image.save_grid(tmp_path / "g.png", imgs, nrow=2, padding=2)
    grid = image.load(tmp_path / "g.png")
    assert grid.shape == (3, 2 * 21 + 3 * 2, 2 * 34 + 3 * 2)
    assert torch.equal(grid[:, 2:23, 2:36], rgb)
    assert torch.equal(grid[:, 2:23, 38:72], rgb.flip(1))
    image.save_grid(tmp_path / "gray.png", torch.stack([rgb[:1], rgb[1:2]]), nrow=2)
    assert image.load(tmp_path / "gray.png", mode="L")[0, 2:23, 2:36].equal(rgb[0])


def _encoded(rgb):
    return {"png": bytes(tio.encode_png(rgb).numpy()), "jpg": bytes(tio.encode_jpeg(rgb).numpy())}


@pytest.mark.parametrize("kind", ["png", "jpg"])
@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_raise(tmp_path, rgb, kind, cut):
    data = _encoded(rgb)[kind]
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DecodeError) as e:
        image.load(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("where", [0.2, 0.5, 0.8])
def test_flipped_png_raises(tmp_path, rgb, where):
    # PNG carries CRCs and an Adler-32, so any flipped byte is caught.
    data = bytearray(_encoded(rgb)["png"])
    data[int(len(data) * where)] ^= 0x5A
    (tmp_path / "f.png").write_bytes(bytes(data))
    with pytest.raises(DecodeError, match="f.png"):
        image.load(tmp_path / "f.png")


def _check(data: bytes) -> None:
    try:
        img = image.decode(data)
    except DecodeError:
        return
    assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _check(data)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["png", "jpg"]), st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
def test_fuzz_damaged_real_images(kind, pos, junk):
    rgb = torch.arange(3 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(3, 8, 8)
    data = bytearray(_encoded(rgb)[kind])
    pos %= len(data)
    data[pos : pos + len(junk)] = junk
    _check(bytes(data))


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=100), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4))
def test_fuzz_from_bytes(data, h, w, c):
    try:
        img = image.from_bytes(data, h, w, c)
    except DecodeError:
        assert len(data) != h * w * c
        return
    assert image.to_bytes(img).numpy().tobytes() == data
