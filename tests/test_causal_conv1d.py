"""causal_conv1d and causal_conv1d_step against the float64 naive specification."""

from __future__ import annotations

import pytest
import torch
from _scan_cases import assert_close

from rawseq.kernels import causal_conv1d, causal_conv1d_step


def _inputs(b, l, d, w, dtype, seed=0, bias=True, init=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, d, generator=g, dtype=torch.float64).to(dtype)
    weight = torch.randn(d, w, generator=g, dtype=torch.float64).float()
    bias_t = torch.randn(d, generator=g, dtype=torch.float64).float() if bias else None
    init_t = torch.randn(b, d, w - 1, generator=g, dtype=torch.float64).to(dtype) if init else None
    return x, weight, bias_t, init_t


def _grads(backend, x, weight, bias, init, activation, seq_idx, dtype):
    ins = [t if t is None else t.detach().to(dtype if dtype == torch.float64 else t.dtype).requires_grad_()
           for t in (x, weight, bias, init)]
    y, state = causal_conv1d(*ins[:2], ins[2], activation, ins[3], True, seq_idx, backend=backend)
    gen = torch.Generator().manual_seed(3)
    loss = (y.double() * torch.randn(y.shape, generator=gen, dtype=torch.float64)).sum()
    loss = loss + (state.double() * torch.randn(state.shape, generator=gen, dtype=torch.float64)).sum()
    live = [t for t in ins if t is not None]
    return y, state, torch.autograd.grad(loss, live)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", [None, "silu"], ids=["linear", "silu"])
@pytest.mark.parametrize("l, w", [(1, 4), (63, 4), (1000, 3), (5, 1)], ids=["L1-W4", "L63-W4", "L1000-W3", "L5-W1"])
@pytest.mark.parametrize("packed", [False, True], ids=["single", "packed"])
def test_torch_matches_reference(dtype, activation, l, w, packed):
    x, weight, bias, init = _inputs(2, l, 6, w, dtype)
    seq_idx = None
    if packed:
        seq_idx = torch.zeros(2, l, dtype=torch.long)
        seq_idx[:, l // 2:] = 1
        seq_idx[1, (3 * l) // 4:] = 5
    y, s, g = _grads("torch", x, weight, bias, init, activation, seq_idx, dtype)
    y_ref, s_ref, g_ref = _grads("naive", x, weight, bias, init, activation, seq_idx, torch.float64)
    assert y.dtype == dtype and s.dtype == dtype
    assert_close(y, y_ref, dtype, "y")
    if w > 1:
        assert_close(s, s_ref, dtype, "final state")
    for k, (a, b) in enumerate(zip(g, g_ref)):
        assert_close(a, b, dtype, f"grad {k}")


def test_packed_equals_separate_documents():
    x, weight, bias, init = _inputs(1, 30, 4, 4, torch.float64)
    seq_idx = torch.tensor([[0] * 10 + [1] * 2 + [2] * 18])
    for backend in ("naive", "torch"):
        y, s = causal_conv1d(x, weight, bias, "silu", init, True, seq_idx, backend=backend)
        y0 = causal_conv1d(x[:, :10], weight, bias, "silu", init, backend=backend)
        y1 = causal_conv1d(x[:, 10:12], weight, bias, "silu", backend=backend)
        y2, s2 = causal_conv1d(x[:, 12:], weight, bias, "silu", None, True, backend=backend)
        assert_close(y, torch.cat([y0, y1, y2], 1), torch.float64, backend)
        assert_close(s, s2, torch.float64, backend)
    # The final window of a short last document holds zeros, not the previous document's inputs.
    _, s_short = causal_conv1d(x, weight, None, None, None, True, torch.tensor([[0] * 29 + [1]]), backend="torch")
    assert (s_short[..., :2] == 0).all() and (s_short[..., 2] == x[:, -1]).all()


def test_step_equals_forward_and_chaining():
    x, weight, bias, init = _inputs(3, 17, 5, 4, torch.float32)
    y, s = causal_conv1d(x, weight, bias, "silu", init, True)
    state = init.clone()
    ys = [causal_conv1d_step(state, x[:, t], weight, bias, "silu") for t in range(17)]
    assert_close(torch.stack(ys, 1), y, torch.float32, "stepped")
    assert_close(state, s, torch.float32, "stepped state")
    y1, s1 = causal_conv1d(x[:, :7], weight, bias, "silu", init, True)
    y2, s2 = causal_conv1d(x[:, 7:], weight, bias, "silu", s1, True)
    assert_close(torch.cat([y1, y2], 1), y, torch.float32, "chained")
    assert_close(s2, s, torch.float32, "chained state")


@pytest.mark.parametrize("bias, init", [(False, True), (True, False), (False, False)],
                         ids=["no-bias", "no-init", "bare"])
def test_torch_gradients_without_optional_inputs(bias, init):
    x, weight, bias_t, init_t = _inputs(2, 40, 6, 4, torch.float32, bias=bias, init=init)
    y, s, g = _grads("torch", x, weight, bias_t, init_t, "silu", None, torch.float32)
    y_ref, s_ref, g_ref = _grads("naive", x, weight, bias_t, init_t, "silu", None, torch.float64)
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(s, s_ref, torch.float32, "final state")
    assert len(g) == len(g_ref) == 2 + bias + init
    for k, (a, b) in enumerate(zip(g, g_ref)):
        assert_close(a, b, torch.float32, f"grad {k}")
