"""What an encoded image declares before any pixel is decoded: format, size, alpha, and where the first frame ends.

Read from the header bytes alone, so a file that declares a gigantic canvas is refused before a decoder allocates
it, and so a damaged header is a DecodeError naming the file rather than whatever the decoder makes of it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import DecodeError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: 0xC0..0xCF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


@dataclass(frozen=True)
class Header:
    """``kind`` (``"png"``, ``"jpeg"``, ``"gif"``, ``"webp"``), ``width`` and ``height`` of the canvas,
    ``alpha`` (the file carries transparency), ``end`` (bytes up to the end of the first frame; GIF only)."""

    kind: str
    width: int
    height: int
    alpha: bool = False
    end: int | None = None


def sniff(data: bytes) -> str | None:
    """The format by its signature: ``"png"``, ``"jpeg"``, ``"gif"``, ``"webp"``, or None."""
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def read_header(data: bytes, kind: str, source: str) -> Header:
    """Parse the header of ``data`` (of format ``kind``, from :func:`sniff`).

    Raises:
        DecodeError: a missing or damaged header, a zero width or height, an animated WebP, or (JPEG) image data
            without the end-of-image marker after it.
    """
    head = {"png": _png, "jpeg": _jpeg, "gif": _gif, "webp": _webp}[kind](data, source)
    if head.width < 1 or head.height < 1:
        raise DecodeError(source, f"{kind.upper()} declares an unusable size {head.width}x{head.height}")
    return head


def _png(data: bytes, source: str) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise DecodeError(source, "corrupt PNG: missing IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    alpha = data[25] in (4, 6)  # grey + alpha, RGBA
    pos = 8
    while not alpha and pos + 8 <= len(data):
        length, chunk = struct.unpack(">I", data[pos : pos + 4])[0], data[pos + 4 : pos + 8]
        if chunk in (b"IDAT", b"IEND"):
            break
        alpha = chunk == b"tRNS"  # palette or colour-key transparency
        pos += 12 + length
    return Header("png", width, height, alpha)


def _jpeg(data: bytes, source: str) -> Header:
    # Entropy-coded JPEG data escapes every 0xFF, so an end-of-image marker after the first start-of-scan is the
    # real end; without it the decoder would fill the missing rows with grey and say nothing.
    sos = data.find(b"\xff\xda")
    if sos < 0 or data.rfind(b"\xff\xd9") < sos:
        raise DecodeError(source, "truncated JPEG: no end-of-image marker after the image data")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise DecodeError(source, f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return Header("jpeg", width, height)
        if marker in (0xDA, 0xD9):
            raise DecodeError(source, "corrupt JPEG: image data before the frame header")
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    raise DecodeError(source, "corrupt JPEG: no frame header")


def _skip_sub_blocks(data: bytes, pos: int, source: str) -> int:
    while True:
        if pos >= len(data):
            raise DecodeError(source, "truncated GIF: data ends inside a block")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _gif(data: bytes, source: str) -> Header:
    if len(data) < 13:
        raise DecodeError(source, "corrupt GIF: missing screen descriptor")
    width, height, flags = struct.unpack("<HHB", data[6:11])
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table
    while pos < len(data):
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2, source)
        elif block == 0x2C:  # image descriptor: the first frame
            if pos + 11 > len(data):
                break
            left, top, frame_w, frame_h, local = struct.unpack("<HHHHB", data[pos + 1 : pos + 10])
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1  # + LZW minimum code size
            # A frame reaching beyond the screen enlarges the image (as Pillow decodes it): count that size.
            width, height = max(width, left + frame_w), max(height, top + frame_h)
            return Header("gif", width, height, end=_skip_sub_blocks(data, pos, source))
        elif block == 0x3B:
            raise DecodeError(source, "GIF holds no image")
        else:
            raise DecodeError(source, f"corrupt GIF: unknown block 0x{block:02x} at byte {pos}")
    raise DecodeError(source, "truncated GIF: no complete image")


def _webp(data: bytes, source: str) -> Header:
    chunk, payload = data[12:16], data[20:40]
    if chunk == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", payload[6:10])
        return Header("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        bits = struct.unpack("<I", payload[1:5])[0]
        return Header("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, alpha=bool(bits >> 28 & 1))
    if chunk == b"VP8X" and len(payload) >= 10:
        if payload[0] & 0x02:
            raise DecodeError(source, "animated WebP is not supported")
        width = int.from_bytes(payload[4:7], "little") + 1
        height = int.from_bytes(payload[7:10], "little") + 1
        return Header("webp", width, height, alpha=bool(payload[0] & 0x10))
    raise DecodeError(source, "corrupt WebP: no VP8, VP8L or VP8X header")
