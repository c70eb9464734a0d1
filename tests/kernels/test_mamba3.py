"""Mamba-3 op: the chunked torch backend and the decoding steps against the float64 naive loop.

Every case compares outputs, the four final-state tensors and the gradients of every input (x, dt, A, B, C, lam,
angle, D, z, dt_bias, the B/C biases, the MIMO weights and the initial state) through a random loss of both.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from _mamba3_cases import (
    PER_POSITION,
    assert_close,
    assert_states_close,
    compare_with_naive,
    leaves,
    make_inputs,
    run_with_grads,
    split_inputs,
    step_through,
)

from rawseq.kernels.common.native import _compiler
from rawseq.kernels.mamba3 import Mamba3State, mamba3, mamba3_step, native
from rawseq.kernels.mamba3.chunked import mamba3_step_torch
from rawseq.kernels.mamba3.naive import mamba3_step_naive, rotate_pairs

FP32, BF16, FP64 = torch.float32, torch.bfloat16, torch.float64

CASES = [
    # b, l, h, p, n, g, rank, chunk, dtype
    pytest.param(2, 1, 2, 16, 8, 1, None, 16, FP32, id="siso-B2-L1-H2-P16-N8-Q16-fp32"),
    pytest.param(2, 37, 4, 16, 8, 2, None, 16, FP32, id="siso-B2-L37-H4-P16-N8-G2-Q16-fp32"),
    pytest.param(1, 70, 2, 32, 16, 1, None, 32, FP32, id="siso-B1-L70-H2-P32-N16-Q32-fp32"),
    pytest.param(1, 33, 2, 64, 16, 1, None, 64, FP32, id="siso-B1-L33-H2-P64-N16-Q64-fp32"),
    pytest.param(2, 21, 2, 16, 8, 1, 1, 8, FP32, id="mimo1-B2-L21-H2-P16-N8-Q8-fp32"),
    pytest.param(2, 37, 4, 16, 8, 2, 2, 16, FP32, id="mimo2-B2-L37-H4-P16-N8-G2-Q16-fp32"),
    pytest.param(2, 1, 2, 16, 8, 1, 4, 16, FP32, id="mimo4-B2-L1-H2-P16-N8-fp32"),
    pytest.param(1, 45, 2, 32, 8, 1, 4, 16, FP32, id="mimo4-B1-L45-H2-P32-N8-Q16-fp32"),
    pytest.param(2, 37, 2, 16, 8, 1, None, 16, BF16, id="siso-B2-L37-H2-P16-N8-Q16-bf16"),
    pytest.param(2, 29, 2, 16, 8, 1, 2, 8, BF16, id="mimo2-B2-L29-H2-P16-N8-Q8-bf16"),
]


@pytest.mark.parametrize("b, l, h, p, n, g, rank, chunk, dtype", CASES)
def test_torch_backend_matches_float64_naive(b, l, h, p, n, g, rank, chunk, dtype):
    inputs = make_inputs(b, l, h, p, n, g=g, rank=rank, dtype=dtype)
    compare_with_naive(inputs, "torch", dtype, chunk_size=chunk)


@pytest.mark.parametrize("flags", [
    dict(optional=False), dict(n_angles=0), dict(per_position_A=False), dict(n_angles=4), dict(shared_angle=True),
], ids=["bare", "no-rotation", "per-head-A", "all-pairs-rotated", "angle-shared-by-heads"])
def test_optional_inputs(flags):
    inputs = make_inputs(2, 25, 2, 16, 8, **flags)
    compare_with_naive(inputs, "torch", FP32, chunk_size=8)


def test_odd_nstate_without_rotation():
    inputs = make_inputs(1, 19, 2, 16, 5, n_angles=0)
    compare_with_naive(inputs, "torch", FP32, chunk_size=8)


def test_no_softplus():
    inputs = make_inputs(2, 30, 2, 16, 8, rank=2)
    inputs["dt"] = torch.nn.functional.softplus(inputs["dt"])
    compare_with_naive(inputs, "torch", FP32, dt_softplus=False, chunk_size=8)


def _packed_seq_idx(b, l):
    seq_idx = torch.zeros(b, l, dtype=torch.int32)
    seq_idx[:, l // 3:] = 1
    seq_idx[:, (2 * l) // 3:] = 7  # ids need not be consecutive, only change at boundaries
    seq_idx[-1] = 0  # one row without boundaries
    return seq_idx


@pytest.mark.parametrize("rank", [None, 2], ids=["siso", "mimo2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_seq_idx_gradients_match_naive(rank, reverse):
    inputs = make_inputs(2, 50, 2, 16, 8, rank=rank)
    compare_with_naive(inputs, "torch", FP32, seq_idx=_packed_seq_idx(2, 50), reverse=reverse, chunk_size=16)


@pytest.mark.parametrize("backend", ["naive", "torch"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_seq_idx_equals_separate_documents(backend, reverse):
    """A new document restarts the state, the second tap's (x, B) and the angle: each document alone from a zero
    state (the first one scanned from the initial state) gives the same outputs."""
    b, l = 2, 45
    inputs = make_inputs(b, l, 2, 16, 8, rank=2, dtype=FP64)
    seq_idx = _packed_seq_idx(b, l)[:1].expand(b, l)
    y, state = mamba3(**inputs, seq_idx=seq_idx, reverse=reverse, return_final_state=True, backend=backend,
                      chunk_size=8)
    bounds = [0, l // 3, (2 * l) // 3, l]
    docs = list(zip(bounds[:-1], bounds[1:]))
    first, last = (docs[-1], docs[0]) if reverse else (docs[0], docs[-1])
    for s, e in docs:
        part = split_inputs(inputs, s, e)
        if (s, e) != first:
            part["initial_state"] = None
        y_doc, state_doc = mamba3(**part, reverse=reverse, return_final_state=True, backend="naive")
        assert_close(y[:, s:e], y_doc, FP64, f"document {s}:{e}")
        if (s, e) == last:
            assert_states_close(state, state_doc, FP64, "final state")


@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_reverse_equals_flipping(backend):
    inputs = make_inputs(2, 33, 2, 16, 8, dtype=FP64)
    seq_idx = _packed_seq_idx(2, 33)
    y, state = mamba3(**inputs, reverse=True, seq_idx=seq_idx, return_final_state=True, backend=backend)
    flipped = {k: (v.flip(1) if k in PER_POSITION and v is not None and v.dim() >= 3 else v)
               for k, v in inputs.items()}
    y_flip, state_flip = mamba3(**flipped, seq_idx=seq_idx.flip(1), return_final_state=True, backend=backend)
    assert_close(y, y_flip.flip(1), FP64, "y")
    assert_states_close(state, state_flip, FP64, "state")


@pytest.mark.parametrize("rank", [None, 4], ids=["siso", "mimo4"])
@pytest.mark.parametrize("split", [1, 37, 99])
def test_state_chaining(rank, split):
    """Two calls chained through the final state equal one call: outputs, states and gradients."""
    l = 100
    inputs = make_inputs(2, l, 2, 16, 8, rank=rank)
    whole = leaves(inputs)
    y, state, grads = run_with_grads(whole, "torch", chunk_size=32)
    parts = leaves(inputs)
    first, second = split_inputs(parts, 0, split), split_inputs(parts, split, l)
    y1, s1 = mamba3(**first, return_final_state=True, chunk_size=32)
    y2, s2 = mamba3(**{**second, "initial_state": s1}, return_final_state=True, chunk_size=32)
    assert_close(torch.cat([y1, y2], dim=1), y, FP32, "chained y")
    assert_states_close(s2, state, FP32, "chained state")
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    loss = (torch.cat([y1, y2], dim=1).double() * gy).sum()
    for t in s2:
        loss = loss + (t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).sum()
    loss.backward()
    for name, v in parts.items():
        if isinstance(v, Mamba3State):
            for field, t in zip(v._fields, v):
                assert_close(t.grad, grads[f"{name}.{field}"], FP32, f"chained grad {name}.{field}")
        elif v is not None:
            assert_close(v.grad, grads[name], FP32, f"chained grad {name}")


@pytest.mark.parametrize("rank", [None, 1, 4], ids=["siso", "mimo1", "mimo4"])
@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_step_equals_forward(rank, dtype):
    l = 23
    inputs = make_inputs(2, l, 4, 16, 8, g=2, rank=rank, dtype=dtype)
    y, state = mamba3(**inputs, return_final_state=True, backend="torch", chunk_size=8)
    ys, stepped = step_through(inputs, mamba3_step, l)
    assert ys.dtype == dtype
    assert_close(ys, y, dtype, "stepped y")
    assert_states_close(stepped, state, dtype, "stepped state")


needs_compiler = pytest.mark.skipif(_compiler() is None, reason="no C compiler for the native step")
FAST_STEPS = [pytest.param(mamba3_step_torch, id="torch"),
              pytest.param(native.mamba3_step_native, id="native", marks=needs_compiler)]


@pytest.mark.parametrize("step", FAST_STEPS)
@pytest.mark.parametrize("rank", [None, 2, 4], ids=["siso", "mimo2", "mimo4"])
@pytest.mark.parametrize("n_angles", [0, 2, 4])
@pytest.mark.parametrize("flags", [dict(), dict(per_position_A=False), dict(shared_angle=True)],
                         ids=["", "per-head-A", "shared-angle"])
def test_fast_step_matches_naive_step(step, rank, n_angles, flags):
    """Both fast steps against the float64 naive step, over non-contiguous per-position slices, two groups."""
    l = 9
    inputs = make_inputs(3, l, 4, 16, 8, g=2, rank=rank, n_angles=n_angles, **flags)
    y_fast, s_fast = step_through(inputs, step, l)
    y_ref, s_ref = step_through(make_inputs(3, l, 4, 16, 8, g=2, rank=rank, n_angles=n_angles, dtype=FP64, **flags),
                                mamba3_step_naive, l)
    assert_close(y_fast, y_ref, FP32, "y")
    assert_states_close(s_fast, s_ref, FP32, "state")


@needs_compiler
@pytest.mark.parametrize("rank", [None, 2], ids=["siso", "mimo2"])
@pytest.mark.parametrize("optional", [True, False], ids=["all-inputs", "bare"])
def test_native_step_in_float64_and_without_softplus(rank, optional):
    """The float64 C step equals the naive step to rounding; dt used as given with ``dt_softplus=False``."""
    l = 7
    inputs = make_inputs(2, l, 2, 16, 8, rank=rank, dtype=FP64, optional=optional)
    if not optional:  # b 2, h 2, p 16, n 8, 2 angles
        R = rank or 1
        inputs["initial_state"] = Mamba3State(torch.randn(2, 2, 16, 8, dtype=FP64), torch.rand(2, 2, 2, dtype=FP64),
                                              torch.randn(2, 2, R, 8, dtype=FP64), torch.randn(2, 2, R, 16, dtype=FP64))
    inputs["dt"] = torch.nn.functional.softplus(inputs["dt"])
    y, state = step_through(inputs, functools.partial(native.mamba3_step_native, dt_softplus=False), l)
    y_ref, s_ref = step_through(inputs, functools.partial(mamba3_step_naive, dt_softplus=False), l)
    assert_close(y, y_ref, FP64, "y")
    assert_states_close(state, s_ref, FP64, "state")


@needs_compiler
def test_native_step_runs_in_c(monkeypatch):
    """Where a C compiler exists the step builds, and small batches never reach the PyTorch step."""
    assert native.available()

    def refuse(*args, **kwargs):
        raise AssertionError("the PyTorch step was called")

    monkeypatch.setattr(native, "mamba3_step_torch", refuse)
    inputs = make_inputs(2, 3, 4, 16, 8, g=2, rank=4)
    step_through(inputs, native.mamba3_step_native, 3)


@needs_compiler
@pytest.mark.parametrize("case", ["large-batch", "requires-grad", "strided-state"])
def test_native_step_hands_over_to_torch(monkeypatch, case):
    """Batches above MAX_ROWS rows x rank, inputs that require gradients under autograd, and a strided state go
    to the PyTorch step, with the same results."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return mamba3_step_torch(*args, **kwargs)

    monkeypatch.setattr(native, "mamba3_step_torch", spy)
    rank = 2
    batch = native.MAX_ROWS // rank + 1 if case == "large-batch" else 2
    inputs = make_inputs(batch, 2, 2, 16, 8, rank=rank)
    if case == "requires-grad":
        inputs["x"].requires_grad_(True)
    state = Mamba3State(*(t.clone() for t in inputs["initial_state"]))
    if case == "strided-state":
        state = state._replace(ssm=state.ssm.transpose(-1, -2).contiguous().transpose(-1, -2))
    args = {k: v[:, 0] if k in ("x", "dt", "A", "B", "C", "lam", "angle", "z") else v for k, v in inputs.items()
            if k != "initial_state"}
    y = native.mamba3_step_native(state, **args)
    expected_state = Mamba3State(*(t.clone() for t in inputs["initial_state"]))
    expected = mamba3_step_naive(expected_state, **{k: v.detach() for k, v in args.items() if v is not None})
    assert calls == [1]
    assert_close(y.detach(), expected, FP32, "y")
    assert_states_close(state, expected_state, FP32, "state")


def test_unchecked_step_is_the_checked_step():
    """``check=False`` (what the layer passes) skips only the checks: the same outputs and states, bit for bit."""
    l = 5
    inputs = make_inputs(2, l, 4, 16, 8, g=2, rank=2)
    y, state = step_through(inputs, mamba3_step, l)
    y_unchecked, state_unchecked = step_through(inputs, functools.partial(mamba3_step, check=False), l)
    assert torch.equal(y, y_unchecked)
    assert all(torch.equal(a, b) for a, b in zip(state, state_unchecked))


def test_empty_sequence_returns_initial_state():
    inputs = make_inputs(2, 0, 2, 16, 8, rank=2)
    y, state = mamba3(**inputs, return_final_state=True, backend="torch")
    assert y.shape == (2, 0, 2, 16)
    for a, b in zip(state, inputs["initial_state"]):
        assert torch.equal(a, b)


def test_rotation_is_complex_multiplication():
    t = torch.randn(3, 8, dtype=FP64)
    angle = torch.randn(3, 3, dtype=FP64)
    rotated = rotate_pairs(t, angle)
    as_complex = torch.view_as_complex(t[:, :6].reshape(3, 3, 2).contiguous()) * torch.exp(1j * angle)
    assert torch.allclose(torch.view_as_real(as_complex).reshape(3, 6), rotated[:, :6])
    assert torch.equal(rotated[:, 6:], t[:, 6:])


def test_trapezoid_weights_by_hand():
    """One head, headdim 1, nstate 2 (no rotation), two positions: h_2 written out from the paper's rule."""
    x = torch.tensor([[[[2.0]], [[3.0]]]], dtype=FP64)  # (1, 2, 1, 1)
    dt = torch.tensor([[[0.5], [0.25]]], dtype=FP64)
    A = torch.tensor([-1.0], dtype=FP64)
    B = torch.tensor([[[[1.0, 2.0]], [[-1.0, 0.5]]]], dtype=FP64)
    C = torch.tensor([[[[1.0, 1.0]], [[0.5, -2.0]]]], dtype=FP64)
    lam = torch.tensor([[[0.0], [math.log(3.0)]]], dtype=FP64)  # sigmoid: 1/2, 3/4
    y, state = mamba3(x, dt, A, B, C, lam, dt_softplus=False, return_final_state=True, backend="torch")
    h1 = 0.5 * 0.5 * 2.0 * torch.tensor([1.0, 2.0], dtype=FP64)
    a2 = math.exp(-0.25)
    h2 = a2 * h1 + (1 - 0.75) * 0.25 * a2 * 2.0 * torch.tensor([1.0, 2.0], dtype=FP64) \
        + 0.75 * 0.25 * 3.0 * torch.tensor([-1.0, 0.5], dtype=FP64)
    assert torch.allclose(y[0, :, 0, 0], torch.stack([h1 @ C[0, 0, 0], h2 @ C[0, 1, 0]]))
    assert torch.allclose(state.ssm[0, 0, 0], h2)


def test_backward_memory_is_bounded_by_chunk_states():
    """The core keeps its inputs and one state per chunk, nothing of size (length, headdim, nstate)."""
    b, l, h, p, n = 1, 512, 2, 8, 8
    inputs = leaves(make_inputs(b, l, h, p, n))
    y = mamba3(**inputs, chunk_size=64, backend="torch")
    node, seen, core = y.grad_fn, set(), None
    stack = [node]
    while stack:  # find the core's node in the graph
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "rawseq_mamba3_core" in type(node).__name__:  # the registered op's autograd node
            core = node
            break
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    assert core is not None
    saved = sorted(t.numel() for t in core.saved_tensors if t is not None)
    assert saved[-1] == b * l * h * max(p, n)  # the inputs themselves ...
    assert b * (l // 64) * h * p * n in saved  # ... and the state entering each chunk, nothing per position


def test_naive_runs_in_low_precision():
    inputs = make_inputs(1, 12, 2, 16, 8, rank=2, dtype=BF16)
    y = mamba3(**inputs, backend="naive")
    ref = mamba3(**make_inputs(1, 12, 2, 16, 8, rank=2, dtype=FP64), backend="naive")
    assert y.dtype == BF16
    assert_close(y, ref, BF16, "y")



def _bad(change):
    inputs = make_inputs(1, 6, 2, 16, 8, rank=2)
    inputs.update(change(inputs))
    return inputs


@pytest.mark.parametrize("change, match", [
    (lambda i: dict(B=i["B"][..., :7], C=i["C"][..., :7], B_bias=i["B_bias"][..., :7], C_bias=i["C_bias"][..., :7]),
     "even nstate"),
    (lambda i: dict(angle=torch.randn(1, 6, 2, 5)), "n_angles=5"),
    (lambda i: dict(B=i["B"][:, :, :, :1], C=i["C"][:, :, :, :1]), "B_bias has shape"),
    (lambda i: dict(C=i["C"][:, :, :, :1]), "C has shape"),
    (lambda i: dict(mimo_x=torch.ones(2, 3, 16)), "mimo_x has shape"),
    (lambda i: dict(z=torch.randn(1, 6, 2, 8)), "z has shape"),
    (lambda i: dict(mimo_o=torch.ones(2, 2, 8)), "mimo_o has shape"),
    (lambda i: dict(x=torch.randn(1, 6, 3, 16)), "heads=3 must be divisible by groups|dt has shape"),
    (lambda i: dict(dt=torch.full((1, 6, 2), float("nan"))), "dt has non-finite"),
    (lambda i: dict(dt=i["dt"].clone().index_fill_(1, torch.tensor([3]), float("inf"))), "dt has non-finite"),
    (lambda i: dict(A=torch.randn(3)), "A has shape"),
    (lambda i: dict(lam=torch.randn(1, 5, 2)), "lam has shape"),
    (lambda i: dict(initial_state=i["initial_state"]._replace(x=torch.zeros(1, 2, 2, 8))), "initial_state.x"),
    (lambda i: dict(initial_state=tuple(i["initial_state"])[:3]), "initial_state must be a Mamba3State"),
    (lambda i: dict(seq_idx=torch.zeros(1, 6)), "seq_idx has dtype"),
], ids=["odd-nstate-rotated", "too-many-angles", "rank-mismatch", "C-shape", "mimo-rank", "headdim-z",
        "headdim-mimo", "heads", "dt-nan", "dt-inf", "A", "lam", "state-x", "state-tuple", "seq_idx"])
@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_bad_input_names_the_argument(change, match, backend):
    with pytest.raises(ValueError, match=match):
        mamba3(**_bad(change), backend=backend)


def test_negative_dt_without_softplus():
    inputs = make_inputs(1, 6, 2, 16, 8)
    inputs["dt"] = inputs["dt"].abs()
    mamba3(**inputs, dt_softplus=False)  # non-negative steps are fine
    inputs["dt"][0, 2, 1] = -0.1
    with pytest.raises(ValueError, match="dt has negative values"):
        mamba3(**inputs, dt_softplus=False)


def test_mimo_weights_need_a_rank_axis():
    inputs = make_inputs(1, 6, 2, 16, 8)
    with pytest.raises(ValueError, match="mimo_x is given but B has no rank axis"):
        mamba3(**inputs, mimo_x=torch.ones(2, 1, 16))


def test_step_checks_its_state():
    inputs = make_inputs(2, 1, 2, 16, 8, rank=2)
    state = Mamba3State(*(t.clone() for t in inputs.pop("initial_state")))
    step_inputs = {k: (v[:, 0] if k in PER_POSITION and v is not None and v.dim() >= 3 else v)
                   for k, v in inputs.items()}
    with pytest.raises(ValueError, match="state.ssm has shape"):
        mamba3_step(state._replace(ssm=state.ssm[:, :, :8]), **step_inputs)
    with pytest.raises(ValueError, match="state.B has dtype"):
        mamba3_step(state._replace(B=state.B.half()), **step_inputs)
    with pytest.raises(ValueError, match="dt has non-finite"):
        mamba3_step(state, **{**step_inputs, "dt": torch.full((2, 2), float("nan"))})


@pytest.mark.parametrize("name", ["x", "B", "C", "z", "lam", "angle"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_input_stays_causal(name, value):
    """A non-finite input at position t of one row leaves the outputs before t and the other rows unchanged."""
    t, row = 23, 1
    inputs = make_inputs(3, 50, 2, 16, 8, rank=2)
    y, state = mamba3(**inputs, return_final_state=True, chunk_size=16)
    spoiled = dict(inputs)
    spoiled[name] = inputs[name].clone()
    spoiled[name][(row, t) + (0,) * (spoiled[name].dim() - 2)] = value
    y_bad, state_bad = mamba3(**spoiled, return_final_state=True, chunk_size=16)
    torch.testing.assert_close(y_bad[:, :t], y[:, :t])
    others = torch.arange(3) != row
    torch.testing.assert_close(y_bad[others], y[others])
    for a, b in zip(state_bad, state):
        torch.testing.assert_close(a[others], b[others])


@pytest.mark.parametrize("name", ["x", "B", "angle"])
def test_non_finite_input_leaves_other_rows_gradients(name):
    """The backward through a row with a NaN (chunks of one position, states recomputed) leaves the gradients of the
    other rows equal to the clean ones."""
    row, others = 1, torch.tensor([True, False, True])
    inputs = make_inputs(3, 40, 2, 16, 8, rank=2)

    def grads(inp):
        lv = leaves(inp)
        y = mamba3(**lv, chunk_size=16)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
        loss = torch.where(others.view(-1, 1, 1, 1), y * weights, 0.0).sum()
        return torch.autograd.grad(loss, [lv["x"], lv["B"], lv["dt"]])

    spoiled = dict(inputs)
    spoiled[name] = inputs[name].clone()
    spoiled[name][(row, 17) + (0,) * (spoiled[name].dim() - 2)] = float("nan")
    for clean, bad in zip(grads(inputs), grads(spoiled)):
        torch.testing.assert_close(bad[others], clean[others])
