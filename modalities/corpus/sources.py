"""Finding the files of a corpus: paths, folders and globs -> regular files, each once, in a stable order.

Rules (docs/modalities.md, "Sources"):

- Folders are walked recursively in sorted order (a folder's files, then its sub-folders), skipping hidden entries
  (names starting with ``.``: version control, editor files, our own temporary build folders).
- Only regular files are documents. A FIFO, socket or device is skipped with its reason; nothing is opened to find
  out, so a FIFO without a writer cannot hang a build.
- Each file is read once: files are identified by ``(st_dev, st_ino)``, so a hard link, a symbolic link to a file
  already listed or a folder reached twice (``self -> .``) adds nothing. Symbolic links to folders are followed,
  and a folder already visited is not walked again, so a link cycle ends.
- ``exclude`` names folders or files (the training run's output folder, the cache) that are never read, and a
  folder holding an ``OUTPUT_MARKER`` file (every rawseq run folder has one) is never entered: a run's
  checkpoints, weights and plots are not data, wherever they are.
- A glob's ``**`` matches any number of folders under the same rules.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .. import audio as _audio
from .. import image as _image
from .._io import file_type

_GLOB_CHARS = frozenset("*?[")
Skipped = list[tuple[str, str]]

# A file that marks a folder as output (a training run's folder): walks never enter such a folder.
OUTPUT_MARKER = ".rawseq-output"


@dataclass(frozen=True)
class SourceFile:
    """A file to read: absolute ``path``, and ``size`` and ``mtime_ns`` for the cache key."""

    path: str
    size: int
    mtime_ns: int

    def key(self) -> list:
        return [self.path, self.size, self.mtime_ns]


def file_kind(path: str, modality: str) -> str:
    """How a file is read: ``modality`` itself, or with ``"auto"`` its extension's (audio, image, else text)."""
    if modality != "auto":
        return modality
    ext = os.path.splitext(path)[1].lower()
    if ext in _audio.AUDIO_EXTENSIONS:
        return "audio"
    if ext in _image.IMAGE_EXTENSIONS:
        return "image"
    return "text"


def _is_magic(part: str) -> bool:
    return bool(_GLOB_CHARS & set(part))


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class _Finder:
    def __init__(self, exclude: Iterable[str | os.PathLike]) -> None:
        self.files: list[SourceFile] = []
        self.skipped: Skipped = []
        self._seen: set[tuple[int, int]] = set()  # files taken
        self._excluded: set[tuple[int, int]] = set()
        self._excluded_prefixes: list[str] = []
        for p in exclude:
            try:
                self._excluded.add(_identity(os.stat(p)))
            except OSError:
                continue  # nothing there, so nothing to keep out
            self._excluded_prefixes.append(os.path.realpath(p) + os.sep)

    def _stat(self, path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError as e:
            if os.path.islink(path):
                self.skipped.append((path, "broken symbolic link"))
            elif isinstance(e, FileNotFoundError):
                self.skipped.append((path, "no such file or directory"))
            else:
                self.skipped.append((path, f"cannot read ({e.strerror or e})"))
            return None

    def _take(self, path: str, st: os.stat_result) -> int:
        """Add one non-folder entry; returns 1 when it names a file (even one already taken)."""
        if not stat.S_ISREG(st.st_mode):
            self.skipped.append((os.path.abspath(path), f"is {file_type(st.st_mode)}, not a regular file; skipped"))
            return 0
        key = _identity(st)
        if key not in self._seen and key not in self._excluded:
            self._seen.add(key)
            self.files.append(SourceFile(os.path.abspath(path), st.st_size, st.st_mtime_ns))
        return 1

    def _entries(self, folder: str) -> Iterator[tuple[str, os.stat_result]]:
        """The visible entries of ``folder`` in name order, with their (link-following) stat."""
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            self.skipped.append((os.path.abspath(folder), f"cannot list folder ({e.strerror or e})"))
            return
        for name in names:
            if not name.startswith("."):
                path = os.path.join(folder, name)
                st = self._stat(path)
                if st is not None and not (stat.S_ISDIR(st.st_mode) and os.path.lexists(os.path.join(path,
                                                                                                OUTPUT_MARKER))):
                    yield path, st

    def _enter(self, st: os.stat_result, visited: set[tuple[int, int]]) -> bool:
        """Whether to go into a folder: not excluded and not visited yet by this walk (a link cycle ends here)."""
        key = _identity(st)
        if key in visited or key in self._excluded:
            return False
        visited.add(key)
        return True

    def walk(self, top: str, st: os.stat_result) -> int:
        """Take every file under the folder ``top``; returns how many files it holds (taken before or not)."""
        found, visited = 0, set()
        stack = [top] if self._enter(st, visited) else []
        while stack:
            folder = stack.pop()
            subfolders = []
            for path, entry in self._entries(folder):
                if stat.S_ISDIR(entry.st_mode):
                    if self._enter(entry, visited):
                        subfolders.append(path)
                else:
                    found += self._take(path, entry)
            stack.extend(reversed(subfolders))  # depth first, in name order: a folder's files, then its folders
        return found

    def _matches(
        self, folder: str, st: os.stat_result, parts: Sequence[str], visited: set[tuple[int, int]]
    ) -> Iterator[tuple[str, os.stat_result]]:
        """Entries under ``folder`` that match the remaining pattern components ``parts``; ``visited`` holds the
        folders this glob's ``**`` went into."""
        head, rest = parts[0], parts[1:]
        if head == "**":
            if not rest:
                yield folder, st  # everything below: the caller walks it
                return
            yield from self._matches(folder, st, rest, visited)
            for path, entry in self._entries(folder):
                if stat.S_ISDIR(entry.st_mode) and self._enter(entry, visited):
                    yield from self._matches(path, entry, parts, visited)
            return
        if not _is_magic(head):
            path = os.path.join(folder, head)
            if os.path.lexists(path):
                st = self._stat(path)
                if st is not None and not rest:
                    yield path, st
                elif st is not None and stat.S_ISDIR(st.st_mode):
                    yield from self._matches(path, st, rest, visited)
            return
        if head.startswith("."):
            names = sorted(n for n in _listdir(folder) if fnmatch.fnmatchcase(n, head))
            entries = ((os.path.join(folder, n), self._stat(os.path.join(folder, n))) for n in names)
        else:
            entries = ((p, st) for p, st in self._entries(folder) if fnmatch.fnmatchcase(os.path.basename(p), head))
        for path, st in entries:
            if st is None:
                continue
            if not rest:
                yield path, st
            elif stat.S_ISDIR(st.st_mode):
                yield from self._matches(path, st, rest, visited)

    def glob(self, pattern: str) -> int | None:
        """Take the files a glob names; returns how many it matched, or None when it matched nothing."""
        parts = pattern.split(os.sep)
        i = next((k for k, part in enumerate(parts) if _is_magic(part)), len(parts))
        root = os.sep.join(parts[:i]) or (os.sep if pattern.startswith(os.sep) else os.curdir)
        try:
            root_stat = os.stat(root)
        except OSError:
            return None
        if not stat.S_ISDIR(root_stat.st_mode):
            return None
        visited = {_identity(root_stat)}
        matches = sorted(self._matches(root, root_stat, parts[i:], visited), key=lambda m: m[0])
        if not matches:
            return None
        found = 0
        for path, st in matches:
            found += self.walk(path, st) if stat.S_ISDIR(st.st_mode) else self._take(path, st)
        return found

    def add(self, source: str) -> None:
        if not os.path.lexists(source) and _is_magic(source):
            if not self.glob(source):
                self.skipped.append((source, "no files match this pattern"))
            return
        st = self._stat(source)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            if self.walk(os.path.abspath(source), st) == 0 and _identity(st) not in self._excluded:
                self.skipped.append((source, "directory holds no files"))
        elif not any(os.path.realpath(source).startswith(p) for p in self._excluded_prefixes):
            self._take(source, st)


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def find_files(
    sources: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()
) -> tuple[list[SourceFile], Skipped]:
    """Expand paths, folders and globs into the files to read.

    Args:
        sources: file paths, folders and glob patterns (``**`` for any depth).
        exclude: folders and files never to read (their content, wherever it is reached from).

    Returns:
        ``(files, skipped)``: the regular files in order, each once; and ``(source, reason)`` for every source
        that named nothing readable (missing, an empty folder, a FIFO or device, a broken link).
    """
    finder = _Finder(exclude)
    for source in sources:
        finder.add(os.fspath(source))
    return finder.files, finder.skipped
