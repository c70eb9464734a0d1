"""image.to_symbols / image.pixels: every input form, PIL-identical mode conversion, and the pixel limit."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TVF
from PIL import Image

from rawseq.modalities import ByteCorpus, DecodeError, image

MODES = ["L", "LA", "RGB", "RGBA"]


@pytest.fixture
def rgba():
    return np.random.default_rng(3).integers(0, 256, (9, 11, 4), dtype=np.uint8)  # (h, w, c), PIL's layout


def _encoded(pil: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", MODES)
def test_every_form_gives_the_same_symbols(tmp_path, rgba, mode):
    pil = Image.fromarray(rgba, "RGBA")
    pil.save(tmp_path / "a.png")
    expect = torch.from_numpy(np.asarray(pil.convert(mode)).reshape(-1).copy())  # PIL's own conversion
    chw = torch.from_numpy(rgba).permute(2, 0, 1).contiguous()
    forms = [tmp_path / "a.png", str(tmp_path / "a.png"), (tmp_path / "a.png").read_bytes(), pil, rgba, chw,
             TVF.to_tensor(pil), TVF.to_tensor(pil).permute(1, 2, 0).numpy()]
    for form in forms:
        got = image.to_symbols(form, mode=mode)
        assert got.dtype == torch.uint8 and torch.equal(got, expect), type(form)


def test_grey_and_colour_layouts(rgba):
    grey = rgba[:, :, 0]
    for form in (grey, grey[:, :, None], torch.from_numpy(grey), torch.from_numpy(grey)[None]):
        assert torch.equal(image.pixels(form, mode="L"), torch.from_numpy(grey)[None])
        assert torch.equal(image.pixels(form, mode="RGB"), torch.from_numpy(grey)[None].expand(3, -1, -1))
    assert image.pixels(rgba, mode="RGB", size=4).shape == (3, 4, 4)


def test_luma_is_pils_on_every_colour():
    v = torch.arange(1 << 24, dtype=torch.int32)
    rgb = torch.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255]).to(torch.uint8).reshape(3, 4096, 4096)
    ours = image.convert_mode(rgb, "L")[0].numpy()
    pil = np.asarray(Image.fromarray(rgb.permute(1, 2, 0).numpy()).convert("L"))
    assert np.array_equal(ours, pil)


def _palette(rgba, transparency=None) -> Image.Image:
    pal = Image.fromarray(rgba[:, :, :3]).quantize(16)
    if transparency is not None:
        pal.info["transparency"] = transparency
    return pal


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind",
    ["png-L", "png-LA", "png-RGB", "png-RGBA", "png-P", "png-P-trns", "gif", "gif-trns", "webp-lossless", "webp-alpha"],
)
def test_lossless_files_decode_as_pil_converts_them(rgba, kind, mode):
    pil = {
        "png-L": lambda: Image.fromarray(rgba[:, :, 0]),
        "png-LA": lambda: Image.fromarray(rgba, "RGBA").convert("LA"),
        "png-RGB": lambda: Image.fromarray(rgba[:, :, :3]),
        "png-RGBA": lambda: Image.fromarray(rgba, "RGBA"),
        "png-P": lambda: _palette(rgba),
        "png-P-trns": lambda: _palette(rgba, transparency=0),
        "gif": lambda: _palette(rgba),
        "gif-trns": lambda: _palette(rgba, transparency=0),
        "webp-lossless": lambda: Image.fromarray(rgba[:, :, :3]),
        "webp-alpha": lambda: Image.fromarray(rgba, "RGBA"),
    }[kind]()
    fmt = kind.split("-")[0].upper()
    data = _encoded(pil, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    expect = np.array(Image.open(io.BytesIO(data)).convert(mode))
    got = image.decode(data, mode)
    assert torch.equal(got, torch.from_numpy(expect.reshape(expect.shape[0], expect.shape[1], -1)).permute(2, 0, 1))


def test_animated_gif_decodes_only_its_first_frame():
    frames = [Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)) for i in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    got = image.decode(buf.getvalue(), "RGB")
    assert got.shape == (3, 6, 5) and torch.equal(got, torch.zeros(3, 6, 5, dtype=torch.uint8))
    # The limit counts the canvas, not the frames: four 30-pixel frames pass a 30-pixel limit.
    assert image.decode(buf.getvalue(), "RGB", max_pixels=30).shape == (3, 6, 5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 3, 8, 8), dtype=np.uint8), r"shape \(4, 3, 8, 8\) is a batch; pass a list"),
        (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), r"shape \(4, 3, 8, 8\) is a batch; pass a list"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), r"tensor must be \(h, w\) or \(c, h, w\).*\(8, 8, 3\)"),
        (np.zeros((8, 8, 5), dtype=np.uint8), r"numpy array must be \(h, w\) or \(h, w, c\).*\(8, 8, 5\)"),
        (torch.full((3, 4, 4), 1.5), r"\[0, 1\]"),
        (torch.full((3, 4, 4), float("nan")), "NaN"),
        (np.zeros((4, 4), dtype=np.int64), "uint8, or float"),
        (np.zeros((0, 4), dtype=np.uint8), "no pixels"),
    ],
    ids=["np-batch", "tensor-batch", "hwc-tensor", "5-channels", "range", "nan", "int64", "empty"],
)
def test_bad_arrays_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        image.to_symbols(bad, mode="RGB")


def test_other_types_and_modes():
    with pytest.raises(TypeError, match="list"):
        image.to_symbols([1, 2, 3])
    with pytest.raises(ValueError, match="mode"):
        image.to_symbols(np.zeros((2, 2), dtype=np.uint8), mode="CMYK")


def _png_header(width: int, height: int, depth: int = 16, color: int = 0, body: int = 2 << 20) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", os.urandom(body)) + chunk(b"IEND", b"")


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(16383, 16383))  # 2 MB on disk, 537 MB of 16-bit pixels once decoded
    assert 2 << 20 < bomb.stat().st_size < 3 << 20

    def never(*args, **kwargs):
        raise AssertionError("the decoder must not run")

    monkeypatch.setattr(image.tio, "decode_image", never)
    for call in (lambda: image.load(bomb), lambda: image.to_symbols(bomb), lambda: image.decode(bomb.read_bytes())):
        with pytest.raises(DecodeError, match=r"16383x16383 pixels .*over the limit of 89,478,485") as e:
            call()
        assert e.value.source.endswith("bomb.png") or e.value.source == "<memory>"
    corpus_dir = tmp_path / "data"
    corpus_dir.mkdir()
    os.replace(bomb, corpus_dir / "bomb.png")
    (corpus_dir / "ok.txt").write_text("fine")
    c = ByteCorpus.build(corpus_dir, tmp_path / "cache")
    assert c.num_docs == 1 and [(os.path.basename(s), "16383x16383" in r) for s, r in c.skipped] == [("bomb.png", True)]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_limit_applies_to_every_format_and_is_configurable(tmp_path, monkeypatch, fmt):
    pil = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    data = _encoded(pil, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    (tmp_path / "a.img").write_bytes(data)
    assert image.load(tmp_path / "a.img", max_pixels=600).shape == (3, 20, 30)
    with pytest.raises(DecodeError, match=r"a.img: .*30x20 pixels \(600\) is over the limit of 599"):
        image.load(tmp_path / "a.img", max_pixels=599)
    monkeypatch.setattr(image, "MAX_IMAGE_PIXELS", 599)
    with pytest.raises(DecodeError, match="over the limit of 599"):
        image.to_symbols(data)
    with pytest.raises(DecodeError, match="over the limit of 599"):
        image.to_symbols(pil)  # a PIL image is checked before PIL decodes it
    assert image.to_symbols(data, max_pixels=600).numel() == 20 * 30 * 3


def _huge_jpeg(d: bytes) -> bytes:
    sof = d.find(b"\xff\xc0")
    return d[: sof + 5] + struct.pack(">HH", 60000, 60000) + d[sof + 9 :]


@pytest.mark.parametrize(
    "fmt, patch",
    [
        ("JPEG", _huge_jpeg),
        ("GIF", lambda d: d[:6] + struct.pack("<HH", 65535, 65535) + d[10:]),
        ("WEBP", lambda d: d[:21] + (0x3FFF | 0x3FFF << 14).to_bytes(4, "little") + d[25:]),
    ],
)
def test_huge_headers_of_other_formats(fmt, patch):
    lossless = {"lossless": True} if fmt == "WEBP" else {}
    data = _encoded(Image.fromarray(np.zeros((4, 4, 3), np.uint8)), fmt, **lossless)
    with pytest.raises(DecodeError, match="over the limit"):
        image.decode(patch(data))


def test_file_larger_than_any_allowed_image_is_not_read_whole(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(_png_header(4, 4, body=3 << 20))
    with pytest.raises(DecodeError, match="larger .* than any image within the pixel limit"):
        image.load(big, max_pixels=16)
