"""Images as symbols: 8-bit pixels in raster order, channels interleaved per pixel, exactly invertible.

Decoding goes through ``torchvision.io.decode_image`` (PNG, JPEG, GIF, WebP). Images are uint8 tensors
``(channels, height, width)`` as in torchvision; modes are ``"L"`` (1 channel), ``"LA"`` (2), ``"RGB"`` (3)
and ``"RGBA"`` (4). Every input (a file, a PIL image, an array) reaches a mode through :func:`convert_mode`,
whose grey level is PIL's ITU-R 601-2 luma, so the same picture gives the same symbols whatever form it came in.

A file's size is read from its header and checked against :data:`MAX_IMAGE_PIXELS` before anything is decoded.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
import torchvision.io as tio
import torchvision.transforms.v2.functional as TF
import torchvision.utils

from ._image_header import read_header, sniff
from ._io import as_byte_array, open_regular, os_error
from .errors import DecodeError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MODES",
    "convert_mode",
    "decode",
    "from_bytes",
    "load",
    "pixels",
    "resize",
    "save",
    "save_grid",
    "to_bytes",
    "to_symbols",
]

MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
# Largest canvas (width x height) decoded when no ``max_pixels`` is given: Pillow's decompression-bomb threshold
# (``PIL.Image.MAX_IMAGE_PIXELS``, about 89.5 million pixels: 256 MB of RGB). A few header bytes can declare far
# more; set this module attribute, or pass ``max_pixels``, to allow larger images.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
_MAX_BYTES_PER_PIXEL = 8  # 16-bit RGBA, the largest uncompressed pixel a PNG can hold


def _limit(max_pixels: int | None) -> int:
    return MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)


def _check_pixels(kind: str, width: int, height: int, source: str, max_pixels: int | None) -> None:
    limit = _limit(max_pixels)
    if width * height > limit:
        raise DecodeError(
            source,
            f"{kind} of {width}x{height} pixels ({width * height:,}) is over the limit of {limit:,} pixels "
            "(raise it with max_pixels= or rawseq.modalities.image.MAX_IMAGE_PIXELS)",
        )


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown image mode {mode!r}; expected one of {sorted(MODES)}")


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """(3, h, w) uint8 -> (1, h, w): PIL's ``convert("L")``, L = (19595 R + 38470 G + 7471 B + 2**15) >> 16."""
    r, g, b = rgb.to(torch.int32).unbind(0)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(0)


def convert_mode(image: torch.Tensor, mode: str) -> torch.Tensor:
    """Change the channels of a uint8 ``(c, h, w)`` image (c = 1 L, 2 LA, 3 RGB, 4 RGBA) to ``mode``, as PIL does.

    Grey from colour is PIL's luma (exactly, in integers); colour from grey repeats it; alpha is kept, dropped,
    or added as 255 (opaque).
    """
    _check_mode(mode)
    if image.dim() != 3 or not 1 <= image.shape[0] <= 4 or image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 (channels 1-4, height, width), got {image.dtype} {tuple(image.shape)}")
    have, want = image.shape[0], MODES[mode]
    if have == want:
        return image
    color = image[:3] if have >= 3 else image[:1]
    alpha = image[-1:] if have in (2, 4) else torch.full_like(image[:1], 255)
    if want in (1, 2):
        color = _luma(color) if color.shape[0] == 3 else color
    else:
        color = color.expand(3, -1, -1) if color.shape[0] == 1 else color
    return (color if want in (1, 3) else torch.cat([color, alpha])).contiguous()


def resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Scale a ``(c, h, w)`` image so it covers ``size`` (``s`` or ``(h, w)``), antialiased, and crop the centre:
    no stretching, no borders."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    _, in_h, in_w = image.shape
    if (in_h, in_w) == (h, w):
        return image
    scale = max(h / in_h, w / in_w)
    new_h, new_w = max(h, round(in_h * scale)), max(w, round(in_w * scale))
    image = TF.resize(image, [new_h, new_w], antialias=True)
    return TF.center_crop(image, [h, w])


def _decode_gif(data: bytes, alpha: bool, source: str) -> torch.Tensor:
    """GIF through Pillow: torchvision's GIF decoder writes outside its output for a frame placed beyond the
    canvas (a damaged or hostile descriptor), and ignores transparency; Pillow clips the frame and keeps it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as im:
            rgb = np.asarray(im.convert("RGBA" if alpha else "RGB"))
    except Exception as e:  # Pillow reports damage as OSError, ValueError, EOFError, SyntaxError, ...
        raise DecodeError(source, f"corrupt or truncated GIF ({type(e).__name__}: {e})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)  # (h, w, c) -> (c, h, w)


def decode(
    data: bytes,
    mode: str = "RGB",
    size: int | tuple[int, int] | None = None,
    *,
    source: str = "<memory>",
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Decode an encoded image held in memory; arguments as in :func:`load`, ``source`` names it in errors."""
    _check_mode(mode)
    data = bytes(data)
    if not data:
        raise DecodeError(source, "zero-length image data")
    kind = sniff(data)
    if kind is None:
        raise DecodeError(source, "unsupported or unrecognised image format (expected PNG, JPEG, GIF or WebP)")
    head = read_header(data, kind, source)
    _check_pixels(kind.upper(), head.width, head.height, source, max_pixels)
    alpha = MODES[mode] in (2, 4)
    if kind == "gif":
        image = _decode_gif(data[: head.end] + b";", alpha, source)  # the first frame only, then the trailer
    else:
        # Decode to colour, then convert: torchvision's own grey and alpha conversions differ between formats
        # (libpng's grey weights; WebP ignoring the mode; a made-up alpha for palette PNGs without one).
        read = tio.ImageReadMode.RGB_ALPHA if head.alpha and alpha else tio.ImageReadMode.RGB
        try:
            image = tio.decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read)
        except (RuntimeError, ValueError, TypeError) as e:
            raise DecodeError(source, f"corrupt or truncated {kind.upper()} ({str(e).splitlines()[0]})") from None
    if image.dim() == 4:
        image = image[0]
    if image.dtype != torch.uint8:
        # 16-bit PNG: keep the high byte, the standard reduction to 8 bits.
        image = TF.to_dtype(image, torch.uint8, scale=True)
    if image.dim() != 3 or image.shape[0] not in (3, 4) or image.shape[1] == 0 or image.shape[2] == 0:
        raise DecodeError(source, f"decoder returned an unusable image of shape {tuple(image.shape)}")
    image = convert_mode(image, mode)
    return resize(image, size).contiguous() if size is not None else image.contiguous()


def load(
    path: str | os.PathLike,
    mode: str = "RGB",
    size: int | tuple[int, int] | None = None,
    *,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Read an image file as 8-bit pixels.

    Args:
        path: PNG, JPEG, GIF or WebP file (recognised by content, not by name).
        mode: ``"L"``, ``"LA"``, ``"RGB"`` or ``"RGBA"``; grayscale, palette, alpha and 16-bit images are
            converted (:func:`convert_mode`).
        size: ``None`` keeps the size; ``s`` or ``(h, w)`` scales the image to cover ``(h, w)`` (antialiased)
            and crops the centre.
        max_pixels: largest width x height accepted; ``None``: :data:`MAX_IMAGE_PIXELS`. Checked on the header,
            before decoding.

    Returns:
        uint8 tensor ``(channels, height, width)``, channels = 1, 2, 3 or 4 by mode.

    Raises:
        DecodeError: missing, unreadable, not a regular file, zero-length, truncated, corrupt, unsupported, or
            larger than the pixel limit.
    """
    source = os.fspath(path)
    # No image within the pixel limit needs more bytes than this; reading stops there (a GIF's first frame, all
    # that is decoded, still fits).
    budget = _limit(max_pixels) * _MAX_BYTES_PER_PIXEL * 11 // 10 + (1 << 20)
    with open_regular(path) as f:
        try:
            data = f.read(budget + 1)
        except OSError as e:
            raise os_error(path, e) from None
    if not data:
        raise DecodeError(source, "zero-length file")
    if len(data) > budget and sniff(data) != "gif":
        raise DecodeError(source, f"file is larger ({len(data):,}+ bytes) than any image within the pixel limit")
    return decode(data, mode, size, source=source, max_pixels=max_pixels)


def _from_layout(item: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A numpy array in PIL's layout ``(h, w)``/``(h, w, c)`` or a tensor in torchvision's ``(h, w)``/``(c, h, w)``
    -> a ``(c, h, w)`` CPU tensor of the same dtype."""
    is_numpy = isinstance(item, np.ndarray)
    t = torch.from_numpy(np.array(item, copy=True)) if is_numpy else item.detach().cpu()
    layout = "(h, w) or (h, w, c)" if is_numpy else "(h, w) or (c, h, w)"
    if t.dim() == 4:
        raise ValueError(
            f"an image of shape {tuple(t.shape)} is a batch; pass a list of images, each {layout}"
        )
    if t.dim() == 2:
        t = t.unsqueeze(0)
    elif t.dim() == 3 and is_numpy and 1 <= t.shape[2] <= 4:
        t = t.permute(2, 0, 1)  # (h, w, c) -> (c, h, w)
    elif not (t.dim() == 3 and not is_numpy and 1 <= t.shape[0] <= 4):
        kind = "numpy array" if is_numpy else "tensor"
        raise ValueError(f"an image {kind} must be {layout} with 1-4 channels, got shape {tuple(t.shape)}")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"image of shape {tuple(item.shape)} holds no pixels")
    if t.dtype == torch.uint8:
        return t
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise ValueError("a float image holds NaN or infinite values")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"a float image must lie in [0, 1] (as from ToTensor), got values in [{lo}, {hi}]")
        return TF.to_dtype(t, torch.uint8, scale=True)
    raise ValueError(f"image pixels must be uint8, or float in [0, 1]; got {t.dtype}")


def pixels(
    item,
    *,
    mode: str = "RGB",
    size: int | tuple[int, int] | None = None,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Any supported image input -> uint8 ``(channels, height, width)`` in ``mode`` (resized when ``size``).

    Args:
        item: a path, or an encoded file's bytes; a PIL image; a numpy array in PIL's layout ``(h, w)`` or
            ``(h, w, c)``; a tensor in torchvision's layout ``(h, w)`` or ``(c, h, w)``. Arrays and tensors hold
            uint8 pixels or floats in [0, 1] (torchvision's ``ToTensor``), which become ``floor(x * 255.999)``
            (torchvision's ``to_dtype``). One image, not a batch: pass a batch as a list.
        mode, size: as in :func:`load`.
        max_pixels: the pixel limit for files, bytes and PIL images (checked before decoding).

    Raises:
        DecodeError: a file or bytes that cannot be decoded, or over the pixel limit. ValueError: an array of
            another layout, dtype or value range. TypeError: any other kind of input.
    """
    _check_mode(mode)
    if isinstance(item, (str, os.PathLike)):
        return load(item, mode, size, max_pixels=max_pixels)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode(item, mode, size, max_pixels=max_pixels)
    if type(item).__module__.startswith("PIL.") and hasattr(item, "convert"):
        width, height = item.size
        _check_pixels("image", width, height, "<PIL image>", max_pixels)
        # PIL converts its own modes (palette, CMYK, 16-bit...); its luma is the one convert_mode uses.
        item = np.asarray(item.convert(mode))
    if not isinstance(item, (np.ndarray, torch.Tensor)):
        raise TypeError(f"cannot read an image from a {type(item).__name__}")
    image = convert_mode(_from_layout(item), mode)
    return resize(image, size).contiguous() if size is not None else image.contiguous()


def to_symbols(
    item,
    *,
    mode: str = "RGB",
    size: int | tuple[int, int] | None = None,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Any supported image input -> 1-D uint8 symbols in raster order; :func:`pixels` then :func:`to_bytes`.

    Returns:
        uint8 tensor ``(height * width * channels,)``.
    """
    return to_bytes(pixels(item, mode=mode, size=size, max_pixels=max_pixels))


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


_resize = resize  # the name rawseq.models.encoders imports until it calls pixels()
