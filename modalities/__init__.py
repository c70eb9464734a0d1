"""Tokenizer-free modality pipelines: text bytes, audio samples and pixels as symbols 0-255, alone or
interleaved.

Codecs are imported by module (``rawseq.modalities.text``, ``.audio``, ``.image``, ``.multimodal``); the
corpus and window classes, the window rule, the error type and the two shared constants (``N_SYMBOLS``,
``IGNORE_INDEX``) are re-exported here.

The encoders (``AudioEncoder``, ``ImageEncoder``, ``TextEncoder``, ``Encoder``, ``EncoderConfig``,
``ClassificationHead``) are models, defined in :mod:`rawseq.models.encoders`; they are importable from here for
convenience but loaded only on first use, so the data pipeline never imports the model stack.
"""

from __future__ import annotations

from . import audio, image, multimodal, text
from .corpus import ByteCorpus, CorpusView, split
from .errors import DecodeError
from .symbols import IGNORE_INDEX, N_SYMBOLS
from .windows import RandomWindows, SequentialWindows, read_window

_ENCODERS = ("AudioEncoder", "ClassificationHead", "Encoder", "EncoderConfig", "ImageEncoder", "TextEncoder")


def __getattr__(name: str):
    if name in _ENCODERS:
        from rawseq.models import encoders

        return getattr(encoders, name)
    raise AttributeError(f"module 'rawseq.modalities' has no attribute {name!r}")


__all__ = [
    "AudioEncoder",
    "ByteCorpus",
    "ClassificationHead",
    "Encoder",
    "EncoderConfig",
    "ImageEncoder",
    "TextEncoder",
    "CorpusView",
    "DecodeError",
    "IGNORE_INDEX",
    "N_SYMBOLS",
    "RandomWindows",
    "SequentialWindows",
    "audio",
    "image",
    "multimodal",
    "read_window",
    "split",
    "text",
]
