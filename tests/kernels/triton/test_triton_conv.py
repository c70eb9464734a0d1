"""Triton causal depthwise conv1d (interpreter) against the float64 naive specification."""

from __future__ import annotations

import importlib

import pytest
import torch

from rawseq.kernels import causal_conv1d, causal_conv1d_step
from rawseq.kernels.causal_conv1d.naive import causal_conv1d_naive, causal_conv1d_step_naive

cct = importlib.import_module("rawseq.kernels.causal_conv1d.triton.launch")

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _close(name, got, ref, tol):
    if ref.numel() == 0:
        assert got.shape == ref.shape, name
        return
    scale = max(1.0, ref.abs().max().item())
    err = (got.double() - ref).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3e} > {tol:.1e} * {scale:.2f}"


def _seq_idx(b, l):
    seq = torch.zeros(b, l, dtype=torch.long)
    seq[:, l // 3:] = 1
    seq[1:, (2 * l) // 3:] = 0
    return seq


def _case(b, l, d, w, dtype, **flags):
    tag = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    extra = "".join(f"-{k}" for k, v in flags.items() if v)
    return pytest.param(b, l, d, w, dtype, flags, id=f"B{b}-L{l}-D{d}-W{w}-{tag}{extra}")


CASES = [
    _case(2, 1, 8, 4, torch.float32, silu=True),
    _case(2, 2, 8, 4, torch.float32, silu=True, seq=True),
    _case(2, 17, 8, 4, torch.float32, silu=True),
    _case(2, 70, 16, 4, torch.float32, seq=True),
    _case(2, 65, 12, 3, torch.float32, silu=True, seq=True, no_init=True),
    _case(1, 9, 8, 1, torch.float32, no_bias=True),
    _case(2, 33, 8, 2, torch.float32, no_init=True),
    _case(2, 40, 16, 4, torch.bfloat16, silu=True, seq=True),
    _case(2, 17, 8, 4, torch.float16, silu=True),
]


@pytest.mark.parametrize("b, l, d, w, dtype, flags", CASES)
def test_matches_naive(b, l, d, w, dtype, flags):
    act = "silu" if flags.get("silu") else None
    x = torch.randn(b, l, d).to(dtype).requires_grad_(True)
    weight = torch.randn(d, w).to(dtype).requires_grad_(True)
    bias = None if flags.get("no_bias") else torch.randn(d).to(dtype).requires_grad_(True)
    init = None if flags.get("no_init") else torch.randn(b, d, w - 1).to(dtype).requires_grad_(True)
    seq_idx = _seq_idx(b, l) if flags.get("seq") else None
    y, final = cct.causal_conv1d_triton(x, weight, bias, act, init, seq_idx)
    assert y.dtype == dtype and final.dtype == dtype
    gy, gf = torch.randn(y.shape), torch.randn(final.shape)
    used = [t for t in (x, weight, bias, init) if t is not None]
    grads = torch.autograd.grad((y.float() * gy).sum() + (final.float() * gf).sum(), used)

    ref = [t.detach().double().requires_grad_(True) if t is not None else None for t in (x, weight, bias, init)]
    yr, fr = causal_conv1d_naive(ref[0], ref[1], ref[2], act, ref[3], seq_idx)
    grads_ref = torch.autograd.grad((yr * gy.double()).sum() + (fr * gf.double()).sum(),
                                    [t for t in ref if t is not None])
    tol = TOL[dtype]
    _close("y", y, yr, tol)
    _close("final_state", final, fr, tol)
    for name, g, gr, t in zip(("x", "weight", "bias", "initial_state"), grads, grads_ref, used):
        assert g.dtype == t.dtype, name
        _close(f"d{name}", g, gr, tol * 4)


def test_state_chaining():
    x = torch.randn(2, 30, 8)
    weight, bias = torch.randn(8, 4), torch.randn(8)
    init = torch.randn(2, 8, 3)
    y, final = causal_conv1d(x, weight, bias, "silu", init, return_final_state=True, backend="triton")
    y1, mid = causal_conv1d(x[:, :13], weight, bias, "silu", init, return_final_state=True, backend="triton")
    y2, end = causal_conv1d(x[:, 13:], weight, bias, "silu", mid, return_final_state=True, backend="triton")
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(end, final)


@pytest.mark.parametrize("width", [2, 4])
def test_step_equals_forward(width):
    x = torch.randn(3, 7, 16)
    weight, bias = torch.randn(16, width), torch.randn(16)
    init = torch.randn(3, 16, width - 1)
    y, final = causal_conv1d(x, weight, bias, "silu", init, return_final_state=True, backend="triton")
    state = init.clone()
    steps = [causal_conv1d_step(state, x[:, t], weight, bias, "silu", backend="triton") for t in range(7)]
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, final)


def test_step_matches_naive_bf16():
    state = torch.randn(2, 8, 3).to(torch.bfloat16)
    ref = state.clone()
    x, weight = torch.randn(2, 8).to(torch.bfloat16), torch.randn(8, 4).to(torch.bfloat16)
    y = causal_conv1d_step(state, x, weight, None, None, backend="triton")
    yr = causal_conv1d_step_naive(ref, x, weight, None, None)
    torch.testing.assert_close(y, yr, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(state, ref)


def test_non_contiguous_x():
    xz = torch.randn(2, 21, 16)
    x = xz[..., :8]
    weight = torch.randn(8, 4)
    y = causal_conv1d(x, weight, None, "silu", backend="triton")
    yr, _ = causal_conv1d_naive(x.double(), weight.double(), None, "silu")
    torch.testing.assert_close(y.double(), yr, rtol=1e-5, atol=1e-5)


def test_float64_is_rejected():
    with pytest.raises(ValueError, match="float64"):
        cct.causal_conv1d_triton(torch.randn(1, 4, 8, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64))
