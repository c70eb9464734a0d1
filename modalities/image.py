"""Images as symbols: 8-bit pixels in raster order, channels interleaved per pixel, exactly invertible.

Decoding goes through ``torchvision.io.decode_image`` (PNG, JPEG, GIF, WebP). Images are uint8 tensors
``(channels, height, width)`` as in torchvision; modes are ``"L"`` (1 channel), ``"LA"`` (2), ``"RGB"`` (3)
and ``"RGBA"`` (4).
"""

from __future__ import annotations

import os
import struct

import numpy as np
import torch
import torchvision.io as tio
import torchvision.transforms.v2.functional as TF
import torchvision.utils

from ._io import as_byte_array, read_file
from .errors import DecodeError

MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_READ_MODES = {
    "L": tio.ImageReadMode.GRAY,
    "LA": tio.ImageReadMode.GRAY_ALPHA,
    "RGB": tio.ImageReadMode.RGB,
    "RGBA": tio.ImageReadMode.RGB_ALPHA,
}
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
# A few bytes can declare a 65535 x 65535 image; refuse before the decoder allocates gigabytes.
MAX_PIXELS = 1 << 28


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _check_structure(data: bytes, kind: str, source: str) -> None:
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise DecodeError(source, "corrupt PNG: missing IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        if width == 0 or height == 0 or width * height > MAX_PIXELS:
            raise DecodeError(source, f"PNG declares an unusable size {width}x{height}")
    elif kind == "jpeg":
        # Entropy-coded JPEG data escapes every 0xFF, so an end-of-image marker after the first start-of-scan
        # is the real end; without it the decoder would fill the missing rows with grey and say nothing.
        sos = data.find(b"\xff\xda")
        if sos < 0 or data.rfind(b"\xff\xd9") < sos:
            raise DecodeError(source, "truncated JPEG: no end-of-image marker after the image data")


def _resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    _, in_h, in_w = image.shape
    if (in_h, in_w) == (h, w):
        return image
    # Scale so the image covers the target, then crop the centre: no stretching, no borders.
    scale = max(h / in_h, w / in_w)
    new_h, new_w = max(h, round(in_h * scale)), max(w, round(in_w * scale))
    image = TF.resize(image, [new_h, new_w], antialias=True)
    return TF.center_crop(image, [h, w])


def decode(
    data: bytes, mode: str = "RGB", size: int | tuple[int, int] | None = None, *, source: str = "<memory>"
) -> torch.Tensor:
    """Decode an encoded image held in memory; arguments as in :func:`load`, ``source`` names it in errors."""
    if mode not in MODES:
        raise ValueError(f"unknown image mode {mode!r}; expected one of {sorted(MODES)}")
    data = bytes(data)
    if not data:
        raise DecodeError(source, "zero-length image data")
    kind = _sniff(data)
    if kind is None:
        raise DecodeError(source, "unsupported or unrecognised image format (expected PNG, JPEG, GIF or WebP)")
    _check_structure(data, kind, source)
    try:
        image = tio.decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=_READ_MODES[mode])
    except (RuntimeError, ValueError, TypeError) as e:
        raise DecodeError(source, f"corrupt or truncated {kind.upper()} ({str(e).splitlines()[0]})") from None
    if image.dim() == 4:
        # Animated GIF/WebP: the first frame is the image.
        image = image[0]
    if image.dtype != torch.uint8:
        # 16-bit PNG: keep the high byte, the standard reduction to 8 bits.
        image = TF.to_dtype(image, torch.uint8, scale=True)
    if image.dim() != 3 or image.shape[0] != MODES[mode] or image.shape[1] == 0 or image.shape[2] == 0:
        raise DecodeError(source, f"decoder returned an unusable image of shape {tuple(image.shape)}")
    if size is not None:
        image = _resize(image, size)
    return image.contiguous()


def load(path: str | os.PathLike, mode: str = "RGB", size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Read an image file as 8-bit pixels.

    Args:
        path: PNG, JPEG, GIF or WebP file (recognised by content, not by name).
        mode: ``"L"``, ``"LA"``, ``"RGB"`` or ``"RGBA"``; grayscale, palette, alpha and 16-bit images are
        converted.
        size: ``None`` keeps the size; ``s`` or ``(h, w)`` scales the image to cover ``(h, w)`` (antialiased)
            and crops the centre.

    Returns:
        uint8 tensor ``(channels, height, width)``, channels = 1, 2, 3 or 4 by mode.

    Raises:
        DecodeError: missing, unreadable, zero-length, truncated, corrupt or unsupported file.
    """
    return decode(read_file(path), mode, size, source=os.fspath(path))


def to_bytes(image: torch.Tensor) -> torch.Tensor:
    """Flatten an image into symbols in raster order: row by row, the channels of each pixel together.

    Args:
        image: uint8 ``(channels, height, width)``.

    Returns:
        uint8 tensor ``(height * width * channels,)``; symbol ``(y * width + x) * channels + c`` is pixel (y,
        x), channel c.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be (channels, height, width), got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    return image.permute(1, 2, 0).reshape(-1).contiguous()  # (c, h, w) -> (h * w * c,)


def from_bytes(symbols: torch.Tensor | np.ndarray | bytes, height: int, width: int, channels: int) -> torch.Tensor:
    """Invert :func:`to_bytes` exactly.

    Args:
        symbols: 1-D integers in 0..255 of length ``height * width * channels``.

    Returns:
        uint8 tensor ``(channels, height, width)``.

    Raises:
        DecodeError: wrong length or values outside 0..255.
    """
    if min(height, width, channels) < 1:
        raise ValueError(f"height, width and channels must be positive, got {height}, {width}, {channels}")
    b = as_byte_array(symbols, "<image symbols>")
    if b.size != height * width * channels:
        raise DecodeError("<image symbols>", f"{b.size} symbols do not make a {height}x{width}x{channels} image")
    return torch.from_numpy(b.reshape(height, width, channels).transpose(2, 0, 1).copy())  # (h*w*c,) -> (c, h, w)


def save(path: str | os.PathLike, image: torch.Tensor) -> None:
    """Write a uint8 ``(channels, height, width)`` image as PNG (lossless) or JPEG, by the extension."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if image.dim() != 3 or image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 (channels, height, width), got {image.dtype} {tuple(image.shape)}")
    if ext == ".png" and image.shape[0] in (2, 4):
        # torchvision's PNG encoder takes 1 or 3 channels; Pillow (torchvision's own dependency) writes alpha.
        from PIL import Image

        Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
    elif ext == ".png":
        tio.write_png(image.contiguous(), os.fspath(path))
    elif ext in (".jpg", ".jpeg"):
        if image.shape[0] not in (1, 3):
            raise ValueError("JPEG holds 1 or 3 channels; save RGBA/LA images as PNG")
        tio.write_jpeg(image.contiguous(), os.fspath(path), quality=95)
    else:
        raise ValueError(f"cannot save an image as {ext!r}; use .png, .jpg or .jpeg")


def save_grid(
    path: str | os.PathLike, images: list[torch.Tensor] | torch.Tensor, nrow: int = 8, padding: int = 2
) -> None:
    """Tile several samples into one image file with ``torchvision.utils.make_grid``.

    Args:
        images: uint8 ``(n, channels, height, width)`` or a list of same-shaped ``(channels, height, width)``.
        nrow: images per row.
        padding: pixels of black between images.
    """
    batch = torch.stack(list(images)) if not isinstance(images, torch.Tensor) else images
    if batch.dim() != 4 or batch.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (n, channels, height, width), got {batch.dtype} {tuple(batch.shape)}")
    channels = batch.shape[1]
    if channels == 2:
        raise ValueError("a grid of LA images is not supported; convert to L or RGBA")
    grid = torchvision.utils.make_grid(batch, nrow=nrow, padding=padding, pad_value=0)
    if channels == 1:
        # make_grid repeats one channel into three; keep grayscale grayscale.
        grid = grid[:1]
    save(path, grid.contiguous())
