"""A deterministic train/validation split of a corpus by document."""

from __future__ import annotations

import numpy as np

from .reader import ByteCorpus, CorpusView


def split(corpus: ByteCorpus, val_fraction: float, seed: int = 0) -> tuple[CorpusView, CorpusView]:
    """Split a corpus by document into train and validation, the same way every time.

    Document ``i`` goes to validation when the ``i``-th draw of a generator seeded with ``seed`` is below
    ``val_fraction``, so adding documents at the end never moves existing ones. Each side gets at least one
    document when ``0 < val_fraction < 1`` and the corpus has two or more.

    Returns:
        ``(train, val)`` views, each in corpus order.
    """
    if not 0 <= val_fraction <= 1:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    u = np.random.default_rng(seed).random(corpus.num_docs)
    is_val = u < val_fraction
    if 0 < val_fraction < 1 and corpus.num_docs >= 2:
        if not is_val.any():
            is_val[np.argmin(u)] = True
        if is_val.all():
            is_val[np.argmax(u)] = False
    ids = np.arange(corpus.num_docs)
    return CorpusView(corpus, ids[~is_val]), CorpusView(corpus, ids[is_val])
