"""Every file loader names the file and the problem, the same way, for every kind of bad file."""

from __future__ import annotations

import io
import os

import pytest
import torch
import torchvision.io as tio
from PIL import Image

from rawseq.modalities import DecodeError, audio, image, text


def _bitmap() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    return buf.getvalue()


def _huge_png() -> bytes:
    png = bytearray(tio.encode_png(torch.zeros(3, 2, 2, dtype=torch.uint8)).numpy().tobytes())
    png[16:24] = (60000).to_bytes(4, "big") * 2
    return bytes(png)


CASES = [
    (audio.load, "empty.wav", b"", "zero-length"),
    (audio.load, "text.wav", b"this is not audio at all, just words " * 10, "not a readable audio"),
    (audio.load, "header.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable audio"),
    (audio.load, "missing.flac", None, "no such file"),
    (image.load, "empty.png", b"", "zero-length"),
    (image.load, "notes.png", b"not an image", "unsupported"),
    (image.load, "bitmap.bmp", _bitmap(), "unsupported"),
    (image.load, "huge.png", _huge_png(), "60000x60000 pixels .* over the limit"),
    (image.load, "missing.jpg", None, "no such file"),
    (text.load, "empty.txt", b"", "zero-length"),
    (text.load, "missing.txt", None, "no such file"),
]


@pytest.mark.parametrize("load, name, content, reason", CASES, ids=[c[1] for c in CASES])
def test_bad_file_is_a_decode_error_naming_it(tmp_path, load, name, content, reason):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DecodeError, match=reason) as e:
        load(tmp_path / name)
    assert e.value.source == str(tmp_path / name)


@pytest.mark.parametrize("load", [audio.load, image.load, text.load], ids=["audio", "image", "text"])
def test_folders_fifos_and_devices_are_refused_at_once(tmp_path, load):
    os.mkfifo(tmp_path / "pipe")
    for path, reason in [(tmp_path, "is a directory"), (tmp_path / "pipe", "is a FIFO"),
                         ("/dev/zero", "is a character device")]:
        with pytest.raises(DecodeError, match=reason):
            load(path)  # a blocking open of the FIFO, or reading /dev/zero, would never return
