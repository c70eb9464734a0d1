"""The one exception the modality pipelines raise for input they cannot turn into symbols."""

from __future__ import annotations

import os


class DecodeError(ValueError):
    """A file, buffer or symbol sequence that cannot be decoded.

    Args:
        source: what was being decoded: a file path, ``"<memory>"`` or a dataset row such as
        ``"train[3].audio"``.
        reason: why it failed, in words.

    The message is ``"<source>: <reason>"``; both parts stay available as attributes so a dataset build can
    report which files it skipped and why.
    """

    def __init__(self, source: str | os.PathLike, reason: str) -> None:
        self.source = os.fspath(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self):
        # ValueError pickles only args=(message,); rebuild from both parts so errors cross DataLoader workers.
        return (type(self), (self.source, self.reason))
