"""Triton selective scan (interpreter) against the float64 naive specification: outputs, final states, gradients."""

from __future__ import annotations

import importlib

import pytest
import torch

from rawseq.kernels import selective_scan, selective_scan_step
from rawseq.kernels.selective_scan.naive import selective_scan_naive

sst = importlib.import_module("rawseq.kernels.selective_scan.triton.launch")

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def _inputs(b, l, d, n, g, dtype, *, init=True, gate=True):
    """Inputs in ``dtype`` (A, D, dt_bias and the initial state in float32, as a model keeps them)."""
    f = dict(dtype=dtype)
    x = torch.randn(b, l, d).to(**f)
    dt = (torch.randn(b, l, d) * 0.5 - 1.0).to(**f)
    A = -torch.rand(d, n) * 2 - 0.2
    B = torch.randn(b, l, g, n).to(**f)
    C = torch.randn(b, l, g, n).to(**f)
    D = torch.randn(d) if gate else None
    z = torch.randn(b, l, d).to(**f) if gate else None
    dt_bias = torch.randn(d) * 0.3
    h0 = torch.randn(b, d, n) if init else None
    return [x, dt, A, B, C, D, z, dt_bias, h0]


def _seq_idx(b, l):
    seq = torch.zeros(b, l, dtype=torch.long)
    seq[:, l // 3:] = 1
    seq[1:, (2 * l) // 3:] = 0  # an id that comes back is still a new document
    return seq


def _close(name, got, ref, tol):
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    err = (got.double() - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= tol * scale, f"{name}: max error {err:.3e} > {tol:.1e} * {scale:.2f}"


def _check_against_naive(ins, seq_idx, reverse, dtype, dt_softplus=True):
    ins = [t.requires_grad_(True) if t is not None else None for t in ins]
    y, h = sst.selective_scan_triton(*ins[:8], dt_softplus, ins[8], seq_idx, reverse)
    assert y.dtype == ins[0].dtype and h.dtype == torch.float32
    gy, gh = torch.randn_like(y, dtype=torch.float32), torch.randn_like(h)
    used = [t for t in ins if t is not None]
    grads = torch.autograd.grad((y.float() * gy).sum() + (h * gh).sum(), used)

    ref = [t.detach().double().requires_grad_(True) if t is not None else None for t in ins]
    yr, hr = selective_scan_naive(*ref[:8], dt_softplus, ref[8], seq_idx, reverse)
    loss_ref = (yr * gy.double()).sum() + (hr * gh.double()).sum()
    grads_ref = torch.autograd.grad(loss_ref, [t for t in ref if t is not None])
    tol = TOL[dtype]
    _close("y", y, yr, tol)
    _close("final_state", h, hr, tol)
    names = [nm for nm, t in zip(NAMES, ins) if t is not None]
    for nm, g, gr, t in zip(names, grads, grads_ref, used):
        assert g.dtype == t.dtype, nm
        _close(f"d{nm}", g, gr, tol * 4)


def _case(b, l, d, n, g, dtype, **flags):
    tag = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    extra = "".join(f"-{k}" for k, v in flags.items() if v)
    return pytest.param(b, l, d, n, g, dtype, flags, id=f"B{b}-L{l}-D{d}-N{n}-G{g}-{tag}{extra}")


CASES = [
    _case(2, 1, 8, 4, 1, torch.float32),
    _case(2, 17, 8, 4, 1, torch.float32),
    _case(2, 65, 16, 8, 2, torch.float32),
    _case(2, 33, 8, 4, 2, torch.float32, seq=True),
    _case(2, 33, 8, 4, 1, torch.float32, reverse=True),
    _case(2, 47, 16, 4, 2, torch.float32, seq=True, reverse=True),
    _case(1, 17, 8, 8, 1, torch.float32, no_init=True, no_gate=True),
    _case(2, 17, 8, 5, 1, torch.float32, no_softplus=True),
    _case(2, 33, 12, 4, 2, torch.float32),
    _case(2, 65, 8, 4, 1, torch.float32, split=True, seq=True),
    _case(2, 49, 8, 4, 2, torch.float32, split=True, reverse=True),
    _case(2, 17, 8, 4, 1, torch.bfloat16),
    _case(2, 65, 16, 8, 2, torch.bfloat16, seq=True),
    _case(2, 33, 8, 4, 1, torch.float16, reverse=True),
]


@pytest.mark.parametrize("b, l, d, n, g, dtype, flags", CASES)
def test_matches_naive(b, l, d, n, g, dtype, flags, monkeypatch):
    if flags.get("split"):
        monkeypatch.setattr(sst, "MIN_TILES_PER_SPLIT", 1)  # several length splits even at this length
    ins = _inputs(b, l, d, n, g, dtype, init=not flags.get("no_init"), gate=not flags.get("no_gate"))
    seq_idx = _seq_idx(b, l) if flags.get("seq") else None
    _check_against_naive(ins, seq_idx, bool(flags.get("reverse")), dtype, dt_softplus=not flags.get("no_softplus"))


def test_split_forward_equals_single_pass():
    ins = _inputs(2, 70, 8, 4, 1, torch.float32)
    args = (*ins[:8], True, ins[8], _seq_idx(2, 70), False)
    y1, h1, _ = sst.selective_scan_fwd(*args, store_states=False, nsplit=1)
    y3, h3, _ = sst.selective_scan_fwd(*args, store_states=False, nsplit=3)
    torch.testing.assert_close(y3, y1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h3, h1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_state_chaining(reverse):
    """Two halves with the state carried between them equal one pass over the whole sequence."""
    x, dt, A, B, C, D, z, dt_bias, h0 = _inputs(2, 40, 8, 4, 2, torch.float32)
    y, h = selective_scan(x, dt, A, B, C, D, z, dt_bias, initial_state=h0, return_final_state=True,
                          reverse=reverse, backend="triton")
    first, second = (slice(20, 40), slice(0, 20)) if reverse else (slice(0, 20), slice(20, 40))
    parts = []
    state = h0
    for sl in (first, second):
        yp, state = selective_scan(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], D, z[:, sl], dt_bias,
                                   initial_state=state, return_final_state=True, reverse=reverse, backend="triton")
        parts.append((sl, yp))
    y2 = torch.empty_like(y)
    for sl, yp in parts:
        y2[:, sl] = yp
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, h, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_step_equals_forward(dtype):
    x, dt, A, B, C, D, z, dt_bias, h0 = _inputs(2, 9, 16, 4, 2, dtype)
    y, h = selective_scan(x, dt, A, B, C, D, z, dt_bias, initial_state=h0, return_final_state=True,
                          backend="triton")
    state = h0.clone()
    steps = [selective_scan_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, z[:, t], dt_bias,
                                 backend="triton") for t in range(x.shape[1])]
    tol = TOL[dtype]
    torch.testing.assert_close(torch.stack(steps, 1).float(), y.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(state, h, rtol=1e-5, atol=1e-5)


def test_step_matches_naive_step_non_contiguous_state():
    x, dt, A, B, C, D, z, dt_bias, _ = _inputs(3, 1, 8, 4, 1, torch.float32)
    base = torch.randn(3, 4, 8).transpose(1, 2)  # (b, d, n) with non-unit stride over n
    ref = base.clone().double()
    y = sst.selective_scan_step_triton(base, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, z[:, 0], dt_bias)
    from rawseq.kernels.selective_scan.naive import selective_scan_step_naive

    yr = selective_scan_step_naive(ref, x[:, 0].double(), dt[:, 0].double(), A.double(), B[:, 0].double(),
                                   C[:, 0].double(), D.double(), z[:, 0].double(), dt_bias.double())
    torch.testing.assert_close(y.double(), yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base.double(), ref, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs():
    """x and z as halves of one projection, B and C as slices of another, as a Mamba layer produces them."""
    b, l, d, n = 2, 19, 8, 4
    xz = torch.randn(b, l, 2 * d)
    bc = torch.randn(b, l, 1, 2 * n)
    x, z = xz[..., :d], xz[..., d:]
    B, C = bc[..., :n], bc[..., n:]
    dt = torch.randn(b, d, l).transpose(1, 2)
    A = -torch.rand(d, n) - 0.5
    got = selective_scan(x, dt, A, B, C, None, z, None, backend="triton")
    ref = selective_scan_naive(x.double(), dt.double(), A.double(), B.double(), C.double(), None, z.double())[0]
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_float64_is_rejected():
    ins = _inputs(1, 4, 8, 4, 1, torch.float64)
    with pytest.raises(ValueError, match="float64"):
        sst.selective_scan_triton(*ins[:8], True, ins[8], None, False)
