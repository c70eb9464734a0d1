"""Finding corpus files on hostile folders: FIFOs, sockets, devices, links, cycles, duplicates and excluded folders."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket

import pytest

from rawseq.modalities import ByteCorpus, DecodeError, text
from rawseq.modalities.corpus.sources import find_files


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: a blocking open of a FIFO is interrupted by the alarm."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha\n")
    (d / "sub" / "b.txt").write_text("beta\n")
    return d


def _names(files):
    return [os.path.relpath(f.path) for f in files]


def test_fifo_socket_and_device_are_skipped_without_hanging(data, tmp_path, caplog):
    os.mkfifo(data / "pipe.txt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(data / "sock.txt"))
    try:
        with _deadline(30), caplog.at_level(logging.WARNING, logger="rawseq.modalities"):
            c = ByteCorpus.build([data, "/dev/null"], tmp_path / "cache")
            with pytest.raises(DecodeError, match="pipe.txt: is a FIFO, not a regular file"):
                text.load(data / "pipe.txt")
            with pytest.raises(DecodeError, match="is a FIFO"):
                ByteCorpus.build(data, tmp_path / "strict", strict=True)
    finally:
        sock.close()
    assert [bytes(c.doc(i).numpy().astype("uint8")) for i in range(c.num_docs)] == [b"alpha\n", b"beta\n"]
    reasons = {os.path.basename(s): r for s, r in c.skipped}
    assert "FIFO" in reasons["pipe.txt"] and "socket" in reasons["sock.txt"] and "character device" in reasons["null"]
    assert "pipe.txt" in caplog.text and "sock.txt" in caplog.text


def test_each_file_once_through_links(data, tmp_path):
    os.link(data / "a.txt", data / "hard.txt")
    os.symlink(data / "a.txt", data / "soft.txt")
    os.symlink(".", data / "self")
    os.symlink("..", data / "sub" / "up")  # a cycle through the parent
    with _deadline(30):
        files, skipped = find_files([data, data / "a.txt", str(data / "**" / "*.txt")])
    assert [os.path.basename(f.path) for f in files] == ["a.txt", "b.txt"] and skipped == []
    with _deadline(30):
        c = ByteCorpus.build(str(data / "**" / "*.txt"), tmp_path / "cache")
    assert c.num_docs == 2 and c.num_symbols == len("alpha\nbeta\n")


def test_folder_links_are_followed_once(data, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.txt").write_text("gamma")
    os.symlink(outside, data / "linked")
    os.symlink(data / "missing", data / "broken.txt")
    files, skipped = find_files([data])
    # A folder's files, then its folders.
    assert [os.path.basename(f.path) for f in files] == ["a.txt", "c.txt", "b.txt"]
    assert [(os.path.basename(s), r) for s, r in skipped] == [("broken.txt", "broken symbolic link")]


def test_exclude_keeps_a_run_folder_out(data, tmp_path):
    run = data / "runs" / "exp1"
    run.mkdir(parents=True)
    (run / "checkpoint.bin").write_bytes(b"\x00" * 100)
    (data / "runs" / "notes.txt").write_text("kept")
    for sources in ([data], [str(data / "**" / "*")], [data, run / "checkpoint.bin"]):
        files, _ = find_files(sources, exclude=[run, tmp_path / "does-not-exist"])
        assert "checkpoint.bin" not in [os.path.basename(f.path) for f in files], sources
        assert "notes.txt" in [os.path.basename(f.path) for f in files]
    # Excluded however it is reached: through a link, or named relative to another folder.
    os.symlink(run, data / "alias")
    files, _ = find_files([data], exclude=[os.path.relpath(run)])
    assert "checkpoint.bin" not in [os.path.basename(f.path) for f in files]
    c = ByteCorpus.build(data, tmp_path / "cache", exclude=[run])
    assert c.num_docs == 3 and b"\x00" not in bytes(c.symbols)


def test_missing_and_empty_sources_are_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    files, skipped = find_files([tmp_path / "nope", tmp_path / "empty", str(tmp_path / "*.wav")])
    assert files == []
    reasons = [r for _, r in skipped]
    assert reasons == ["no such file or directory", "directory holds no files", "no files match this pattern"]


def test_cache_inside_the_data_folder_is_never_a_source(data):
    first = ByteCorpus.build(data, data / "cache")
    second = ByteCorpus.build(data, data / "cache")
    assert first.num_docs == 2 and not second.built
