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


DOCS = [[5, 1, 2, 7, 3], [2, 16]]  # per row: document lengths (single-position documents included)


def _doc_runs(conv, x, weight, bias, init, docs):
    """Outputs, final windows and gradients of ``conv`` with every document of every row run alone (the first with
    the initial state), and the same for one packed call; the loss weights are shared."""
    seq_idx = torch.stack([torch.repeat_interleave(torch.arange(len(d)), torch.tensor(d)) for d in docs])
    gen = torch.Generator().manual_seed(5)
    wy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    wf = torch.randn(init.shape, generator=gen, dtype=torch.float64)

    def leaves():
        return [t.detach().clone().requires_grad_() for t in (x, weight, bias, init)]

    packed = leaves()
    y, final = conv(*packed, seq_idx)
    loss = (y.double() * wy).sum() + (final.double() * wf).sum()
    packed_grads = torch.autograd.grad(loss, packed)

    alone = leaves()
    ys, finals, loss = [], [], 0.0
    for r, lengths in enumerate(docs):
        row_y, start = [], 0
        for k, n in enumerate(lengths):
            part_init = alone[3][r : r + 1] if k == 0 else None
            y_doc, f_doc = conv(alone[0][r : r + 1, start : start + n], alone[1], alone[2], part_init, None)
            loss = loss + (y_doc.double() * wy[r : r + 1, start : start + n]).sum()
            row_y.append(y_doc)
            start += n
        loss = loss + (f_doc.double() * wf[r : r + 1]).sum()
        ys.append(torch.cat(row_y, dim=1))
        finals.append(f_doc)
    alone_grads = torch.autograd.grad(loss, alone)
    return (y, final, packed_grads), (torch.cat(ys), torch.cat(finals), alone_grads)


def check_resets(conv, width, dtype=torch.float64):
    """Every position after a document start equals a fresh run of its document, forward and backward."""
    x, weight, bias, init = _inputs(2, 18, 5, width, dtype)
    weight, bias = weight.to(dtype), bias.to(dtype)
    (y, final, grads), (y_ref, final_ref, grads_ref) = _doc_runs(conv, x, weight, bias, init, DOCS)
    for r, lengths in enumerate(DOCS):
        start = 0
        for k, n in enumerate(lengths):
            for t in range(start, start + n):  # position by position, so that a failure names it
                torch.testing.assert_close(y[r, t], y_ref[r, t], msg=f"row {r}, document {k}, position {t}")
            start += n
    torch.testing.assert_close(final, final_ref, msg="final window")
    for name, g, g_ref in zip(("x", "weight", "bias", "initial_state"), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=f"grad of {name}")


def _public(backend):
    def conv(x, weight, bias, init, seq_idx):
        return causal_conv1d(x, weight, bias, "silu", init, True, seq_idx, backend=backend)

    return conv


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("backend", ["naive", "torch", "triton"])
def test_state_resets_at_every_document_start(backend, width):
    dtype = torch.float32 if backend == "triton" else torch.float64
    check_resets(_public(backend), width, dtype)


@pytest.mark.parametrize("width", [3, 4])
def test_reset_check_catches_a_reset_missed_at_the_second_position(width):
    """A convolution that resets the window at a document's first position but lets its second position still
    read the previous document must fail ``check_resets``."""

    def buggy(x, weight, bias, init, seq_idx):
        y, final = causal_conv1d(x, weight, bias, "silu", init, True, seq_idx, backend="naive")
        if seq_idx is None:
            return y, final
        y_stale = causal_conv1d(x, weight, bias, "silu", init, False, None, backend="naive")
        second = torch.zeros(seq_idx.shape, dtype=torch.bool)
        second[:, 2:] = (seq_idx[:, 1:-1] != seq_idx[:, :-2]) & (seq_idx[:, 2:] == seq_idx[:, 1:-1])
        return torch.where(second[..., None], y_stale, y), final

    with pytest.raises(AssertionError, match="position"):
        check_resets(buggy, width)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("activation", [None, "silu"], ids=["linear", "silu"])
def test_torch_step_matches_the_naive_step(dtype, bias, activation):
    b, d, w = 3, 8, 4
    state = torch.randn(b, d, w - 1).to(dtype)
    weight = torch.randn(d, w).to(dtype)
    bias_t = torch.randn(d).to(dtype) if bias else None
    ref_state = state.clone()
    for _ in range(3):  # the window shifts: later steps read what earlier ones wrote
        x = torch.randn(b, d).to(dtype)
        y = causal_conv1d_step(state, x, weight, bias_t, activation, backend="torch")
        y_ref = causal_conv1d_step(ref_state, x, weight, bias_t, activation, backend="naive")
        assert y.dtype == y_ref.dtype == dtype
        assert_close(y.float(), y_ref.float(), dtype, "y")
        assert_close(state.float(), ref_state.float(), torch.float32, "state")


def test_unchecked_step_is_the_checked_step():
    """``check=False`` (what the layers pass) skips only the argument checks: the same outputs and windows."""
    state, weight, bias = torch.randn(2, 8, 3), torch.randn(8, 4), torch.randn(8)
    unchecked = state.clone()
    for _ in range(3):
        x = torch.randn(2, 8)
        assert torch.equal(causal_conv1d_step(state, x, weight, bias, "silu"),
                           causal_conv1d_step(unchecked, x, weight, bias, "silu", check=False))
        assert torch.equal(state, unchecked)
