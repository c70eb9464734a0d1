"""Building and loading the native C kernels: cache, atomic builds, clear failures and the PyTorch fallback."""

from __future__ import annotations

import ctypes

import pytest

from rawseq.kernels.common import native

needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C compiler")

SOURCE = "int twice(int x) { return 2 * x; }\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh build cache and no remembered libraries."""
    monkeypatch.setenv("RAWSEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_LIBRARIES", {})
    return tmp_path / "cache"


def _source(tmp_path, text=SOURCE, name="twice.c"):
    path = tmp_path / name
    path.write_text(text)
    return path


@needs_compiler
def test_build_is_cached_and_keyed_by_the_source(cache, tmp_path, monkeypatch):
    source = _source(tmp_path)
    library = native.build(source)
    assert library.parent == cache and library.name.startswith("twice-")
    assert ctypes.CDLL(str(library)).twice(21) == 42

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(native.subprocess, "run", no_compiler)
    assert native.build(source) == library  # from the cache
    source.write_text(SOURCE.replace("2 * x", "3 * x"))
    with pytest.raises(AssertionError, match="compiled again"):
        native.build(source)  # a changed source is a new library
    assert [p.name for p in cache.iterdir()] == [library.name]  # nothing half-written left behind


@needs_compiler
def test_compiler_error_names_the_file_and_leaves_no_partial_library(cache, tmp_path):
    source = _source(tmp_path, "int broken( {\n", "broken.c")
    with pytest.raises(RuntimeError, match=r"failed on broken\.c") as error:
        native.build(source)
    assert "error" in str(error.value)
    assert not any(cache.iterdir())


def test_load_library_warns_once_and_falls_back(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "rawseq-no-such-compiler")
    monkeypatch.setattr(native, "_compiler", lambda: None)
    source = _source(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"twice\.c is unavailable.*no C compiler found"):
        assert native.load_library(source) is None
    assert native.load_library(source) is None  # remembered: no second attempt, no second warning


def test_disabled_by_environment(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("RAWSEQ_NATIVE", "0")

    def refuse(source):
        raise AssertionError("tried to build")

    monkeypatch.setattr(native, "build", refuse)
    assert native.load_library(_source(tmp_path)) is None


@needs_compiler
def test_load_library_returns_the_built_library(cache, tmp_path):
    library = native.load_library(_source(tmp_path))
    assert library is not None and library.twice(5) == 10
