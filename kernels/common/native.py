"""Small C kernels for the CPU, compiled on first use with the system's C compiler and called through ctypes.

At batch 1 a decoding step of a few thousand multiply-adds costs its number of tensor operations (a few
microseconds each from Python), not its arithmetic; a step written as one C function over the whole state pays one
call. The kernels are plain C99 with no dependency besides libm, so they build in about a second with ``cc``.

Builds are cached under ``$RAWSEQ_CACHE_DIR`` (default ``$XDG_CACHE_HOME/rawseq`` or ``~/.cache/rawseq``), keyed by a
hash of the source, the compiler and its flags, and written atomically (a build in another process never leaves a
half-written library behind). Where no compiler works, or with ``RAWSEQ_NATIVE=0``, :func:`load_library` returns None
and the caller uses its PyTorch path; the first failure is reported once as a warning with the compiler's message.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

# -fopenmp-simd honours the kernels' `#pragma omp simd` (vectorised reductions) without linking an OpenMP runtime
FLAGS = ("-O3", "-fopenmp-simd", "-shared", "-fPIC", "-std=c99")

_LIBRARIES: dict[Path, ctypes.CDLL | None] = {}


def enabled() -> bool:
    """Whether native kernels may be used: not on Windows, and not turned off with ``RAWSEQ_NATIVE=0``."""
    return os.environ.get("RAWSEQ_NATIVE", "1") != "0" and sys.platform != "win32"


def cache_dir() -> Path:
    root = os.environ.get("RAWSEQ_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rawseq"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def build(source: Path) -> Path:
    """Compile ``source`` (a C file) into a shared library in the cache, unless it is there already.

    Raises:
        RuntimeError: no C compiler was found, or it failed (its message is included).
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (looked for $CC, cc, gcc and clang)")
    source = source.resolve()  # the kernels include themselves by their own path
    key = hashlib.sha256(source.read_bytes())
    key.update(repr((shutil.which(compiler), FLAGS, sys.platform, os.uname().machine)).encode())
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", prefix=f".{source.stem}-", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", partial, str(source), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip()[-2000:]
            raise RuntimeError(f"{compiler} failed on {source.name} (exit {done.returncode}):\n{message}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def load_library(source: Path) -> ctypes.CDLL | None:
    """The compiled library of ``source``, built on first use; None where native kernels are off or cannot be
    built (warned once per source). The result is kept for the life of the process."""
    if source in _LIBRARIES:
        return _LIBRARIES[source]
    library = None
    if enabled():
        try:
            library = ctypes.CDLL(str(build(source)))
        except (OSError, RuntimeError) as error:
            warnings.warn(f"rawseq: the native CPU kernel {source.name} is unavailable, using the PyTorch path "
                          f"instead ({error}); set RAWSEQ_NATIVE=0 to skip the attempt", RuntimeWarning, stacklevel=3)
    _LIBRARIES[source] = library
    return library
