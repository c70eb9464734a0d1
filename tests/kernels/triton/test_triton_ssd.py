"""Triton SSD kernels (run by the Triton interpreter on CPU) against the float64 naive loop.

Outputs, final states and every gradient (x, dt, A, B, C, D, z, dt_bias, initial_state, through y and the final
state) are compared with ``ssd_naive`` in float64 on the same (rounded) inputs, with tolerances per dtype relative to
the largest reference value.
"""

from __future__ import annotations

import os

import pytest
import torch

from rawseq.kernels.ssd import ssd, ssd_step
from rawseq.kernels.ssd.naive import ssd_naive, ssd_step_naive
from rawseq.kernels.ssd.triton import ssd_step_triton, ssd_triton

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def _inputs(b, l, h, p, n, g, dtype, *, optional=True):
    """Inputs at typical Mamba-2 scales: dt around 0.3 after softplus, A in (-2, -0.5)."""
    x = torch.randn(b, l, h, p).to(dtype)
    dt = (torch.randn(b, l, h) * 0.5 - 1.0).to(dtype)
    A = -(torch.rand(h) * 1.5 + 0.5)
    B = torch.randn(b, l, g, n).to(dtype)
    C = torch.randn(b, l, g, n).to(dtype)
    if not optional:
        return dict(x=x, dt=dt, A=A, B=B, C=C, D=None, z=None, dt_bias=None, initial_state=None)
    return dict(x=x, dt=dt, A=A, B=B, C=C, D=torch.randn(h), z=torch.randn(b, l, h, p).to(dtype),
                dt_bias=torch.randn(h) * 0.3, initial_state=torch.randn(b, h, p, n))


def _leaves(inputs, double=False):
    out = {}
    for k, v in inputs.items():
        if v is not None:
            v = v.detach().double() if double else v.detach().clone()
            v.requires_grad_(True)
        out[k] = v
    return out


def _close(what, got, ref, tol):
    got, ref = got.double(), ref.double()
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(1.0, ref.abs().max().item())
    err = (got - ref).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def _check_against_naive(inputs, dtype, **kw):
    """Forward, final state and all gradients of the triton backend vs float64 naive, same upstream gradients."""
    tri = _leaves(inputs)
    ref = _leaves(inputs, double=True)
    y, state = ssd_triton(**tri, **kw)
    y_ref, state_ref = ssd_naive(**ref, **kw)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert state.dtype == torch.float32 and state.shape == state_ref.shape
    tol = TOL[dtype]
    _close("y", y, y_ref, tol)
    _close("final_state", state, state_ref, tol)
    gy = torch.randn(y.shape)
    gs = torch.randn(state.shape)
    torch.autograd.backward([y, state], [gy.to(dtype), gs])
    torch.autograd.backward([y_ref, state_ref], [gy.to(dtype).double(), gs.double()])
    for name in NAMES:
        if tri[name] is None:
            continue
        assert tri[name].grad is not None, f"no gradient for {name}"
        assert tri[name].grad.dtype == tri[name].dtype
        _close(f"d{name}", tri[name].grad, ref[name].grad, tol)


SHAPES = [
    pytest.param(2, 1, 2, 8, 8, 1, torch.float32, id="B2-L1-H2-P8-N8-G1-fp32"),
    pytest.param(2, 19, 2, 8, 8, 1, torch.float32, id="B2-L19-H2-P8-N8-G1-fp32"),
    pytest.param(2, 70, 4, 4, 16, 2, torch.float32, id="B2-L70-H4-P4-N16-G2-fp32"),
    pytest.param(1, 150, 2, 16, 4, 2, torch.float32, id="B1-L150-H2-P16-N4-G2-fp32"),
    # two headdim blocks of 64 (partial sums over blocks) and two nstate blocks of 64 in the backward
    pytest.param(1, 70, 2, 72, 72, 1, torch.float32, id="B1-L70-H2-P72-N72-G1-fp32"),
    pytest.param(2, 19, 2, 8, 8, 2, torch.bfloat16, id="B2-L19-H2-P8-N8-G2-bf16"),
    pytest.param(2, 70, 2, 16, 16, 1, torch.bfloat16, id="B2-L70-H2-P16-N16-G1-bf16"),
    pytest.param(2, 70, 4, 8, 8, 2, torch.float16, id="B2-L70-H4-P8-N8-G2-fp16"),
]


@pytest.mark.parametrize("b,l,h,p,n,g,dtype", SHAPES)
def test_ssd_triton_matches_naive(b, l, h, p, n, g, dtype):
    _check_against_naive(_inputs(b, l, h, p, n, g, dtype), dtype)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_ssd_triton_seq_idx(reverse):
    b, l = 2, 70
    inputs = _inputs(b, l, 4, 8, 8, 2, torch.float32)
    # documents of 5, 60 (crossing the chunk boundary at 64) and 5 positions, and different cuts in the other row
    seq_idx = torch.tensor([[0] * 5 + [1] * 60 + [2] * 5, [0] * 33 + [1] * 1 + [2] * 36])
    _check_against_naive(inputs, torch.float32, seq_idx=seq_idx, reverse=reverse)


def test_ssd_triton_reverse_bf16():
    _check_against_naive(_inputs(2, 70, 2, 8, 16, 1, torch.bfloat16), torch.bfloat16, reverse=True)


def test_ssd_triton_without_optional_inputs():
    inputs = _inputs(2, 19, 2, 8, 8, 1, torch.float32, optional=False)
    inputs["dt"] = torch.rand(2, 19, 2) * 0.5 + 0.05
    _check_against_naive(inputs, torch.float32, dt_softplus=False)


def test_ssd_triton_state_chaining():
    """Two halves with the state carried (and its gradient flowing back through it) equal one pass."""
    l, cut = 70, 37
    inputs = _inputs(2, l, 2, 8, 8, 1, torch.float32)
    full = _leaves(inputs)
    y, state = ssd_triton(**full)
    halves = _leaves(inputs)
    seq = {k: halves[k] for k in ("A", "D", "dt_bias")}
    first = {k: halves[k][:, :cut] for k in ("x", "dt", "B", "C", "z")}
    second = {k: halves[k][:, cut:] for k in ("x", "dt", "B", "C", "z")}
    y1, s1 = ssd_triton(**first, **seq, initial_state=halves["initial_state"])
    y2, s2 = ssd_triton(**second, **seq, initial_state=s1)
    _close("y", torch.cat([y1, y2], 1), y, 1e-5)
    _close("state", s2, state, 1e-5)
    gy, gs = torch.randn(y.shape), torch.randn(state.shape)
    torch.autograd.backward([y, state], [gy, gs])
    torch.autograd.backward([y1, y2, s2], [gy[:, :cut], gy[:, cut:], gs])
    for name in NAMES:
        _close(f"d{name}", halves[name].grad, full[name].grad, 1e-4)


def test_ssd_triton_public_dispatch_and_chunk_size():
    inputs = _inputs(1, 19, 2, 8, 8, 1, torch.float32)
    y, state = ssd(**inputs, return_final_state=True, backend="triton", chunk_size=16)
    y2, state2 = ssd_triton(**inputs, chunk_size=256)
    assert torch.equal(y, y2) and torch.equal(state, state2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ssd_step_triton_matches_forward(dtype):
    b, l, h, p, n, g = 2, 6, 4, 8, 8, 2
    inputs = _inputs(b, l, h, p, n, g, dtype)
    y_ref, state_ref = ssd_naive(**{k: (None if v is None else v.double()) for k, v in inputs.items()})
    state = inputs["initial_state"].clone()
    state_naive = state.clone()
    common = {k: inputs[k] for k in ("A", "D", "dt_bias")}
    for t in range(l):
        step_in = {k: inputs[k][:, t] for k in ("x", "dt", "B", "C", "z")}
        y_t = ssd_step_triton(state, **step_in, **common)
        y_naive = ssd_step_naive(state_naive, **step_in, **common)
        assert y_t.dtype == dtype and y_t.shape == (b, h, p)
        _close(f"y[{t}]", y_t, y_ref[:, t], TOL[dtype])
        _close(f"y_naive[{t}]", y_t, y_naive, TOL[dtype])
    _close("state", state, state_ref, TOL[torch.float32])


def test_ssd_step_public_dispatch_no_optional():
    b, h, p, n, g = 2, 2, 16, 16, 1
    state = torch.randn(b, h, p, n)
    args = (torch.randn(b, h, p), torch.rand(b, h) + 0.1, -torch.rand(h), torch.randn(b, g, n), torch.randn(b, g, n))
    ref_state = state.clone()
    y = ssd_step(state, *args, dt_softplus=False, backend="triton")
    y_ref = ssd_step_naive(ref_state, *args, dt_softplus=False)
    _close("y", y, y_ref, 1e-5)
    _close("state", state, ref_state, 1e-5)


def test_ssd_triton_fp32_takes_tf32_products_when_torch_allows_them(monkeypatch):
    """fp32 inputs run the TF32 variant (IEEE=False) when PyTorch allows TF32 matmuls; the interpreter's products
    stay exact, so this checks the variant's code path, not TF32 rounding (that needs a GPU: ``pytest -m gpu``)."""
    import importlib

    ssd_mod = importlib.import_module("rawseq.kernels.ssd.triton.launch")
    assert ssd_mod.ieee_products(torch.float32) and not ssd_mod.ieee_products(torch.bfloat16)
    monkeypatch.setattr(ssd_mod, "tf32_allowed", lambda: True)
    assert not ssd_mod.ieee_products(torch.float32)
    _check_against_naive(_inputs(2, 70, 2, 8, 16, 1, torch.float32), torch.float32)


_TF32_PROBE = """
import torch
from rawseq.kernels.common.triton_utils import tf32_allowed
print(tf32_allowed(), end=" ")
{setting}
print(tf32_allowed())
"""


@pytest.mark.parametrize("setting, expected", [
    ("torch.set_float32_matmul_precision('high')", "False True"),
    ("torch.set_float32_matmul_precision('highest')", "False False"),
    ("torch.backends.cuda.matmul.allow_tf32 = True", "False True"),
    ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "False True"),
    ("torch.backends.fp32_precision = 'tf32'", "False True"),
], ids=["legacy-high", "legacy-highest", "allow_tf32", "matmul-fp32_precision", "global-fp32_precision"])
def test_tf32_allowed_follows_torch_matmul_settings(setting, expected):
    """In a fresh process each: torch refuses to read its legacy getter once the two APIs were mixed."""
    import subprocess
    import sys

    if "fp32_precision" in setting and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has no fp32_precision")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _TF32_PROBE.format(setting=setting)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == expected
