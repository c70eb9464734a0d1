"""Test-wide setup.

Every float tensor made by ``torch.empty``/``empty_like``/``new_empty`` during a test is filled with NaN, so an
output that a kernel forgot to write cannot pass a comparison by luck.
"""

from __future__ import annotations

import functools
import os

# Triton kernels run on CPU tensors through the interpreter in this suite. It must be chosen before any module that
# defines @triton.jit kernels is imported, so it is set here, when the first test file has not been imported yet.
os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch


def _nan_filled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if out.is_floating_point() or out.is_complex():
            with torch.no_grad():
                out.fill_(float("nan"))
        return out

    return wrapper


@pytest.fixture(autouse=True)
def _nan_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_filled(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _nan_filled(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _nan_filled(torch.Tensor.new_empty))
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
