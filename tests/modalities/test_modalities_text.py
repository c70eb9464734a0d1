from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rawseq.modalities import DecodeError, text


def test_encode_utf8_string_gives_its_bytes():
    s = "héllo, wörld — 你好 🙂"
    sym = text.encode(s)
    assert sym.dtype == torch.uint8 and sym.shape == (len(s.encode("utf-8")),)
    assert sym.tolist() == list(s.encode("utf-8"))
    assert text.decode(sym).decode("utf-8") == s


def test_non_utf8_bytes_round_trip():
    data = bytes(range(256)) + b"\xff\xfe\x00latin-1 \xe9"
    assert text.decode(text.encode(data)) == data


def test_decode_accepts_int64_model_output_and_lists():
    ids = torch.tensor([104, 105, 0, 255], dtype=torch.int64)
    assert text.decode(ids) == b"hi\x00\xff"
    assert text.decode([104, 105]) == b"hi"


@pytest.mark.parametrize("bad", [[104, 256], [-1, 5], [300]], ids=["special", "negative", "large"])
def test_decode_rejects_non_byte_symbols(bad):
    with pytest.raises(DecodeError, match="not a byte value"):
        text.decode(torch.tensor(bad))


def test_decode_rejects_2d_and_float():
    with pytest.raises(DecodeError):
        text.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(DecodeError):
        text.decode(np.array([1.5, 2.0]))


def test_load_any_file_raw(tmp_path):
    p = tmp_path / "f.bin"
    payload = os.urandom(1000)
    p.write_bytes(payload)
    assert text.decode(text.load(p)) == payload


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(DecodeError, match="no such file") as e:
        text.load(tmp_path / "missing.txt")
    assert "missing.txt" in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(DecodeError, match="directory"):
        text.load(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DecodeError, match="zero-length"):
        text.load(tmp_path / "empty.txt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_load_unreadable(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_bytes(b"x")
    p.chmod(0)
    with pytest.raises(DecodeError, match="permission denied"):
        text.load(p)


def test_decode_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(DecodeError("/a/b.wav", "truncated")))
    assert (e.source, e.reason, str(e)) == ("/a/b.wav", "truncated", "/a/b.wav: truncated")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_round_trip(data):
    assert text.decode(text.encode(data)) == data


def test_load_path_through_a_file_is_unreadable(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"x")
    with pytest.raises(DecodeError, match="cannot read") as e:
        text.load(tmp_path / "f.txt" / "child")
    assert "child" in e.value.source


def test_to_symbols_every_form(tmp_path):
    (tmp_path / "t.txt").write_bytes("héllo".encode())
    expect = torch.tensor(list("héllo".encode()), dtype=torch.uint8)
    for form in ("héllo", "héllo".encode(), bytearray("héllo".encode()), tmp_path / "t.txt", expect,
                 expect.numpy()):
        got = text.to_symbols(form)
        assert got.dtype == torch.uint8 and torch.equal(got, expect), type(form)
    # A str is always text, even when it names a file.
    assert text.to_symbols(str(tmp_path / "t.txt")).tolist() == list(str(tmp_path / "t.txt").encode())


def test_to_symbols_errors(tmp_path):
    with pytest.raises(DecodeError, match="missing.txt: no such file"):
        text.to_symbols(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="1-D"):
        text.to_symbols(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="int"):
        text.to_symbols(12)
