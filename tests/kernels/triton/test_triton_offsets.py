"""Element offsets past 2**31 (interpreter).

Every input is a view into one buffer of more than 2**31 elements whose strides all stay below 2**31, so triton
passes them as int32 and only the kernels' own int64 arithmetic keeps the far rows addressable: an offset formed in
int32 wraps under the interpreter exactly as on a GPU, and the results then differ (or the read faults). Three
layouts (``LAYOUTS``): batch rows 2**30 + 4096 elements apart, and positions 2**25 + 64 or 2**27 + 1024 elements
apart. The buffer is allocated and never filled: only the pages under the views are touched, so each case costs a
few MB.

Each case runs the public function with ``backend="triton"`` on the far views and on contiguous copies of them
(small offsets) and requires identical outputs, states and gradients, and compares them with the float64 torch
backend. The decoding steps update a far state in place, which covers 64-bit offsets on the write side too; the
sequence kernels write outputs that the launchers allocate, which stay below 2**31 elements at these sizes
(``gpu_cases.py``, run by ``pytest -m gpu``, checks outputs of more than 2**31 elements on a GPU).
"""

from __future__ import annotations

import math

import pytest
import torch

from rawseq.kernels import causal_conv1d, causal_conv1d_step, selective_scan, selective_scan_step, ssd, ssd_step

FAR_ROW = 2**30 + 4096  # batch-row stride: row 2 starts at 2**31 + 8192
# (batch, length), (batch-row stride, position stride). "length": position 64 (the SSD's second chunk) starts past
# 2**31 while 63 strides stay below it (the SSD forms offsets inside a chunk in int32); "wide": position 16 starts
# past 2**31 and a 64-position chunk spans more than 2**31 elements (the SSD launcher copies such inputs).
LAYOUTS = {"batch": ((3, 5), (FAR_ROW, None)), "length": ((1, 70), (None, 2**25 + 64)),
           "wide": ((1, 17), (None, 2**27 + 1024))}


def _carve(inner: dict[str, tuple[int, ...]], outer: tuple[int, ...], outer_strides: tuple[int, ...], dtype):
    """Views ``name -> (*outer, *inner[name])`` of one buffer: contiguous inside a slot, the tensors side by side in
    the slot, consecutive outer indices ``outer_strides`` elements apart (all strides < 2**31)."""
    sizes = {name: math.prod(shape) for name, shape in inner.items()}
    slot = sum(sizes.values())
    assert slot <= min(outer_strides) and max(outer_strides) < 2**31
    end = sum((n - 1) * s for n, s in zip(outer, outer_strides)) + slot
    assert end > 2**31, "the layout must reach past 2**31 elements"
    # never filled, so untouched pages cost no memory: empty_strided, not the suite's NaN-filling torch.empty
    buf = torch.empty_strided((end,), (1,), dtype=dtype)
    views, base = {}, 0
    gen = torch.Generator().manual_seed(7)
    for name, shape in inner.items():
        strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        view = buf.as_strided((*outer, *shape), (*outer_strides, *strides), base)
        view.copy_(torch.randn(view.shape, generator=gen))
        views[name] = view
        base += sizes[name]
    return views


def _seq_views(layout: str, per_position: dict[str, tuple[int, ...]], dtype):
    """(batch, length, *shape) views for the sequence ops in ``layout``."""
    (batch, length), (row, pos) = LAYOUTS[layout]
    if layout == "batch":
        inner = {name: (length, *shape) for name, shape in per_position.items()}
        return _carve(inner, (batch,), (row,), dtype)
    slot = sum(math.prod(s) for s in per_position.values())
    assert slot and batch == 1  # a single row: its stride is never used
    return _carve(per_position, (batch, length), (pos, pos), dtype)


def _grads(out, leaves, seed=3):
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs)
    return torch.autograd.grad(loss, leaves)


def _same(name, got, want):
    assert got.shape == want.shape and torch.equal(got, want), \
        f"{name}: far views and contiguous copies disagree (max diff {(got.double() - want.double()).abs().max():.3e})"


def _close(name, got, ref, tol):
    scale = max(1.0, ref.abs().max().item())
    err = (got.double() - ref).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3e} > {tol:.1e} * {scale:.2f}"


def _compare(fn, far: dict, small: dict, tol: float):
    """``fn(**tensors)`` on the far views, on contiguous copies and in float64; grads with respect to every
    floating tensor in ``far``."""
    names = list(far)
    runs = []
    for tensors in (far, {k: v.contiguous() for k, v in far.items()}):
        leaves = {k: v.detach().requires_grad_(True) for k, v in tensors.items()}
        out = fn(**leaves, **small, backend="triton")
        runs.append((out, _grads(out, [leaves[k] for k in names])))
    (out_far, g_far), (out_near, g_near) = runs
    outs_far = out_far if isinstance(out_far, tuple) else (out_far,)
    outs_near = out_near if isinstance(out_near, tuple) else (out_near,)
    for i, (a, b) in enumerate(zip(outs_far, outs_near)):
        _same(f"output {i}", a, b)
    for name, a, b in zip(names, g_far, g_near):
        _same(f"d{name}", a, b)
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in far.items()}
    ref_small = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in small.items()}
    out_ref = fn(**ref_leaves, **ref_small, backend="torch")
    g_ref = _grads(out_ref, list(ref_leaves.values()))
    for i, (a, r) in enumerate(zip(outs_far, out_ref if isinstance(out_ref, tuple) else (out_ref,))):
        _close(f"output {i}", a, r, tol)
    for name, a, r in zip(names, g_far, g_ref):
        _close(f"d{name}", a, r, 4 * tol)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_selective_scan_far_offsets(layout):
    (batch, _), _ = LAYOUTS[layout]
    d, n = 8, 4
    far = _seq_views(layout, {"x": (d,), "dt": (d,), "z": (d,), "B": (1, n), "C": (1, n)}, torch.bfloat16)
    small = dict(A=-torch.rand(d, n) - 0.2, D=torch.randn(d), dt_bias=torch.randn(d) * 0.3,
                 initial_state=torch.randn(batch, d, n), return_final_state=True)
    _compare(selective_scan, far, small, 2e-2)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_ssd_far_offsets(layout):
    (batch, _), _ = LAYOUTS[layout]
    h, p, n = 2, 8, 8
    far = _seq_views(layout, {"x": (h, p), "z": (h, p), "B": (1, n), "C": (1, n)}, torch.bfloat16)
    small = dict(dt=torch.randn(batch, LAYOUTS[layout][0][1], h) * 0.5 - 1, A=-torch.rand(h) - 0.2,
                 D=torch.randn(h), dt_bias=torch.randn(h) * 0.3, initial_state=torch.randn(batch, h, p, n),
                 return_final_state=True)
    _compare(ssd, far, small, 2e-2)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_causal_conv1d_far_offsets(layout):
    (batch, _), _ = LAYOUTS[layout]
    d, w = 8, 4
    far = _seq_views(layout, {"x": (d,)}, torch.bfloat16)
    small = dict(weight=torch.randn(d, w, dtype=torch.bfloat16), bias=torch.randn(d, dtype=torch.bfloat16),
                 activation="silu", initial_state=torch.randn(batch, d, w - 1, dtype=torch.bfloat16),
                 return_final_state=True)
    _compare(causal_conv1d, far, small, 2e-2)


def _far_states(shape, dtype):
    """A (3, *shape) state whose batch rows are ``FAR_ROW`` elements apart, and a contiguous copy."""
    state = _carve({"s": shape}, (3,), (FAR_ROW,), dtype)["s"]
    return state, state.clone()


def _step_case(op: str, gen: torch.Generator):
    """(step function, state shape without batch, arguments) for a batch of 3 streams."""
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    if op == "selective_scan_step":
        d, n = 8, 4
        return selective_scan_step, (d, n), dict(
            x=r(3, d), dt=r(3, d) * 0.5 - 1, A=-torch.rand(d, n, generator=gen) - 0.2, B=r(3, 1, n), C=r(3, 1, n),
            D=r(d), z=r(3, d), dt_bias=r(d) * 0.3)
    if op == "ssd_step":
        h, p, n = 2, 4, 8
        return ssd_step, (h, p, n), dict(
            x=r(3, h, p), dt=r(3, h) * 0.5 - 1, A=-torch.rand(h, generator=gen) - 0.2, B=r(3, 1, n), C=r(3, 1, n),
            D=r(h), z=r(3, h, p), dt_bias=r(h) * 0.3)
    d, w = 8, 4
    return causal_conv1d_step, (d, w - 1), dict(x=r(3, d), weight=r(d, w), bias=r(d), activation="silu")


@pytest.mark.parametrize("op", ["selective_scan_step", "ssd_step", "causal_conv1d_step"])
def test_decode_step_updates_a_far_state_in_place(op):
    step, shape, args = _step_case(op, torch.Generator().manual_seed(11))
    far, near = _far_states(shape, torch.float32)
    ref = far.double()
    y_ref = step(ref, **{k: v.double() if torch.is_tensor(v) else v for k, v in args.items()}, backend="naive")
    y_far = step(far, **args, backend="triton")
    _same(f"{op} y", y_far, step(near, **args, backend="triton"))
    _same(f"{op} state", far, near)
    _close(f"{op} state", far, ref, 1e-5)
    _close(f"{op} y", y_far, y_ref, 1e-4)


def test_ssd_refuses_positions_too_wide_for_int32_chunk_offsets():
    heads = 2**19  # heads * headdim * 64 positions >= 2**31: a contiguous chunk spans more than int32 can address
    x = torch.zeros(1, 1, heads, 64, dtype=torch.bfloat16)
    B = torch.zeros(1, 1, 1, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"fewer than 33554432 elements per position.*backend='torch'"):
        ssd(x, torch.zeros(1, 1, heads), -torch.ones(heads), B, B, backend="triton")
