"""Tokenizer-free modality pipelines: text bytes, audio samples and pixels as symbols 0-255, alone or
interleaved.

Codecs are imported by module (``rawseq.modalities.text``, ``.audio``, ``.image``, ``.multimodal``); the
corpus and window classes and the error type are re-exported here.
"""

from __future__ import annotations

from . import audio, image, multimodal, text
from .corpus import ByteCorpus, CorpusView, split
from .errors import DecodeError
from .windows import RandomWindows, SequentialWindows

__all__ = [
    "ByteCorpus",
    "CorpusView",
    "DecodeError",
    "RandomWindows",
    "SequentialWindows",
    "audio",
    "image",
    "multimodal",
    "split",
    "text",
]
