"""Corpus caches: many files, datasets or in-memory documents as one memory-mapped symbol array.

- :mod:`.sources` finds the files (regular files only, each once, ``exclude`` honoured);
- :mod:`.hf_datasets` reads Hugging Face ``datasets`` columns;
- :mod:`.decode` turns one item into symbols per modality (long recordings block by block);
- :mod:`.writer` appends symbols to the cache file; :mod:`.build` ties them together and writes atomically;
- :mod:`.reader` opens a cache (:class:`ByteCorpus`, :class:`CorpusView`); :mod:`.split` splits it by document.
"""

from __future__ import annotations

from .build import FORMAT, FORMAT_VERSION
from .reader import ByteCorpus, CorpusView
from .split import split

__all__ = ["FORMAT", "FORMAT_VERSION", "ByteCorpus", "CorpusView", "split"]
