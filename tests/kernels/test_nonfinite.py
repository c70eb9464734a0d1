"""A NaN or inf at position t of one row stays where causality puts it, in every op and backend.

Outputs before t and every output of the other rows equal the clean run; gradients of a loss on those outputs with
respect to every per-position input before t (and anywhere in the other rows) equal the clean gradients. Masks must
select rather than multiply: ``0 * inf`` is NaN, and a matrix product over a chunk multiplies by the zeros of its
causal mask.
"""

from __future__ import annotations

import pytest
import torch
from _scan_cases import SELECTIVE_SCAN, SSD

from rawseq.kernels import causal_conv1d

T, ROW, LENGTH = 23, 1, 50


def _run(op, inputs, backend):
    if op == "causal_conv1d":
        # The naive backend is differentiated by autograd, whose SiLU backward multiplies the zero gradient of an
        # output outside the loss by silu'(inf or NaN) = NaN; the hand-written backwards pass nothing back from
        # such an output. The naive causal conv is checked without the activation.
        activation = None if backend == "naive" else "silu"
        return causal_conv1d(inputs["x"], inputs["weight"], inputs["bias"], activation, inputs["initial_state"],
                             True, backend=backend)
    fn = SELECTIVE_SCAN if op == "selective_scan" else SSD
    kw = {"chunk_size": 16} if op == "ssd" else {}
    return fn.run(inputs, backend, **kw)


def _inputs(op):
    if op == "causal_conv1d":
        gen = torch.Generator().manual_seed(0)
        return {"x": torch.randn(3, LENGTH, 6, generator=gen), "weight": torch.randn(6, 4, generator=gen),
                "bias": torch.randn(6, generator=gen), "initial_state": torch.randn(3, 6, 3, generator=gen)}
    fn = SELECTIVE_SCAN if op == "selective_scan" else SSD
    return fn.inputs(3, LENGTH, 8 if op == "selective_scan" else (4, 2), 4, 2)


PER_POSITION = {"selective_scan": ("x", "dt", "B", "C", "z"), "ssd": ("x", "dt", "B", "C", "z"),
                "causal_conv1d": ("x",)}


def _spoil(inputs, name, value):
    bad = {k: None if v is None else v.clone() for k, v in inputs.items()}
    bad[name][(ROW, T) + (0,) * (bad[name].dim() - 2)] = value
    return bad


def _cases(backward):
    cases = []
    for op, names in PER_POSITION.items():
        for backend in ("naive", "torch", "triton"):
            for name in names[:1] if backward else names:
                for value in (float("nan"), float("inf")):
                    cases.append(pytest.param(op, backend, name, value, id=f"{op}-{backend}-{name}-{value}"))
    return cases


def _other_rows(t):
    return torch.cat([t[:ROW], t[ROW + 1 :]])


def _assert_same(a, ref, what):
    assert torch.isfinite(a).all(), f"{what}: not finite"
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize("op, backend, name, value", _cases(backward=False))
def test_forward_stays_causal(op, backend, name, value):
    inputs = _inputs(op)
    y, state = _run(op, inputs, backend)
    y_bad, state_bad = _run(op, _spoil(inputs, name, value), backend)
    _assert_same(y_bad[:, :T], y[:, :T], "outputs before t")
    _assert_same(_other_rows(y_bad), _other_rows(y), "outputs of the other rows")
    _assert_same(_other_rows(state_bad), _other_rows(state), "final states of the other rows")


def _grads(op, inputs, backend):
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inputs.items()}
    y, state = _run(op, leaves, backend)
    gen = torch.Generator().manual_seed(2)
    wy = torch.randn(y.shape, generator=gen)
    ws = torch.randn(state.shape, generator=gen)
    keep = torch.zeros(y.shape[:2], dtype=torch.bool)
    keep[:, :T] = True
    keep[torch.arange(y.shape[0]) != ROW] = True
    keep = keep.view(*keep.shape, *([1] * (y.dim() - 2)))
    rows = (torch.arange(y.shape[0]) != ROW).view(-1, *([1] * (state.dim() - 1)))
    # Selection, so that the spoiled outputs take no part in the loss (0 * nan would make it NaN).
    loss = torch.where(keep, y * wy, 0.0).sum() + torch.where(rows, state * ws, 0.0).sum()
    names = [k for k in PER_POSITION[op] if leaves.get(k) is not None]
    return dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])))


@pytest.mark.parametrize("op, backend, name, value", _cases(backward=True))
def test_backward_stays_causal(op, backend, name, value):
    inputs = _inputs(op)
    clean = _grads(op, inputs, backend)
    spoiled = _grads(op, _spoil(inputs, name, value), backend)
    for k in clean:
        _assert_same(spoiled[k][:, :T], clean[k][:, :T], f"grad of {k} before t")
        _assert_same(_other_rows(spoiled[k]), _other_rows(clean[k]), f"grad of {k} in the other rows")
