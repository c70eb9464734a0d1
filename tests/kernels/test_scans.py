"""selective_scan and ssd: every backend against the float64 naive specification, plus the structural properties
(packing, reverse, state chaining, step == forward) that the models rely on."""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
from _scan_cases import SELECTIVE_SCAN, SSD, TOL, assert_close, compare_with_reference, leaves
from hypothesis import given, settings
from hypothesis import strategies as st

from rawseq.kernels import selective_scan_step, ssd_step

FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16


SCAN_CPU = importlib.import_module("rawseq.kernels.selective_scan.chunked")


@contextlib.contextmanager
def scan_chunk(chunk):
    """The CPU selective scan with another time chunk (its backward recomputes one chunk at a time)."""
    saved = SCAN_CPU.CHUNK
    SCAN_CPU.CHUNK = chunk
    try:
        yield
    finally:
        SCAN_CPU.CHUNK = saved


def _width(op, d):
    return d if op is SELECTIVE_SCAN else (d // 4, 4)


CASES = [
    # op, dtype, b, l, channels, n, groups, chunk (ssd only)
    pytest.param(SELECTIVE_SCAN, FP32, 2, 1, 8, 4, 1, None, id="sscan-B2-L1-D8-N4-G1-fp32"),
    pytest.param(SELECTIVE_SCAN, FP32, 2, 63, 8, 4, 2, None, id="sscan-B2-L63-D8-N4-G2-fp32"),
    pytest.param(SELECTIVE_SCAN, FP32, 1, 1000, 4, 3, 1, None, id="sscan-B1-L1000-D4-N3-G1-fp32"),
    pytest.param(SELECTIVE_SCAN, BF16, 2, 63, 8, 4, 2, None, id="sscan-B2-L63-D8-N4-G2-bf16"),
    pytest.param(SELECTIVE_SCAN, FP16, 2, 63, 8, 4, 1, None, id="sscan-B2-L63-D8-N4-G1-fp16"),
    pytest.param(SSD, FP32, 2, 1, 8, 4, 1, 16, id="ssd-B2-L1-H2-P4-N4-G1-Q16-fp32"),
    pytest.param(SSD, FP32, 2, 63, 16, 4, 2, 16, id="ssd-B2-L63-H4-P4-N4-G2-Q16-fp32"),
    pytest.param(SSD, FP32, 2, 63, 16, 4, 2, 256, id="ssd-B2-L63-H4-P4-N4-G2-Q256-fp32"),
    pytest.param(SSD, FP32, 1, 1000, 8, 4, 1, 64, id="ssd-B1-L1000-H2-P4-N4-G1-Q64-fp32"),
    pytest.param(SSD, BF16, 2, 63, 16, 4, 2, 32, id="ssd-B2-L63-H4-P4-N4-G2-Q32-bf16"),
    pytest.param(SSD, FP16, 2, 63, 16, 4, 1, 32, id="ssd-B2-L63-H4-P4-N4-G1-Q32-fp16"),
]


@pytest.mark.parametrize("op, dtype, b, l, d, n, g, chunk", CASES)
def test_torch_backend_matches_float64_reference(op, dtype, b, l, d, n, g, chunk):
    compare_with_reference(op, "torch", dtype, b, l, _width(op, d), n, g, chunk_size=chunk)


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
def test_naive_backend_runs_in_low_precision(op):
    compare_with_reference(op, "naive", BF16, 2, 20, _width(op, 8), 4, 2)


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
@pytest.mark.parametrize("flags", [dict(D=False, z=False, bias=False, init=False), dict(z=False, init=False)],
                         ids=["bare", "no-gate"])
def test_optional_inputs(op, flags):
    compare_with_reference(op, "torch", FP32, 2, 40, _width(op, 8), 4, 1, chunk_size=None if op is SELECTIVE_SCAN
                           else 16, **flags)


def test_no_softplus():
    base = SSD.inputs(2, 20, (2, 4), 4, 1)
    for op, inputs in ((SSD, base), (SELECTIVE_SCAN, SELECTIVE_SCAN.inputs(2, 20, 8, 4, 1))):
        inputs["dt"] = inputs["dt"].abs() * 0.1
        ref, _ = op.run(leaves(inputs, torch.float64), "naive", dt_softplus=False)
        out, _ = op.run(inputs, "torch", dt_softplus=False)
        assert_close(out, ref, FP32, f"{op.name} without softplus")


def _packed_seq_idx(b, l):
    seq_idx = torch.zeros(b, l, dtype=torch.int32)
    seq_idx[:, l // 3:] = 1
    seq_idx[:, (2 * l) // 3:] = 7  # ids need not be consecutive, only change at boundaries
    return seq_idx


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
@pytest.mark.parametrize("backend", ["naive", "torch"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_seq_idx_equals_separate_documents(op, backend, reverse):
    b, l = 2, 45
    inputs = op.inputs(b, l, _width(op, 8), 4, 2, dtype=torch.float64)
    seq_idx = _packed_seq_idx(b, l)
    kw = {"chunk_size": 8} if op is SSD else {}
    y, state = op.run(inputs, backend, seq_idx=seq_idx, reverse=reverse, **kw)
    bounds = [0, l // 3, (2 * l) // 3, l]
    docs = list(zip(bounds[:-1], bounds[1:]))
    for k, (s, e) in enumerate(docs):
        part = {
            name: (v[:, s:e] if v is not None and v.dim() >= 3 and v.shape[1] == l else v)
            for name, v in inputs.items()
        }
        # The initial state belongs to the document the scan starts in.
        first = docs[-1] if reverse else docs[0]
        if (s, e) != first:
            part["initial_state"] = None
        y_doc, state_doc = op.run(part, "naive", reverse=reverse)
        assert_close(y[:, s:e], y_doc, torch.float64, f"document {k}")
        last = docs[0] if reverse else docs[-1]
        if (s, e) == last:
            assert_close(state, state_doc, torch.float64, "final state")


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
def test_seq_idx_gradients_match_reference(op):
    compare_with_reference(op, "torch", FP32, 2, 70, _width(op, 8), 4, 2, seq_idx=_packed_seq_idx(2, 70),
                           chunk_size=16 if op is SSD else None)


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_reverse_equals_flipping(op, backend):
    inputs = op.inputs(2, 33, _width(op, 8), 4, 1, dtype=torch.float64)
    seq_idx = _packed_seq_idx(2, 33)
    y, state = op.run(inputs, backend, reverse=True, seq_idx=seq_idx)
    flipped = {k: (v.flip(1) if v is not None and v.dim() >= 3 and v.shape[1] == 33 else v)
               for k, v in inputs.items()}
    y_flip, state_flip = op.run(flipped, backend, seq_idx=seq_idx.flip(1))
    assert_close(y, y_flip.flip(1), torch.float64, "y")
    assert_close(state, state_flip, torch.float64, "state")


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
def test_reverse_gradients_match_reference(op):
    compare_with_reference(op, "torch", FP32, 2, 50, _width(op, 8), 4, 2, reverse=True,
                           chunk_size=16 if op is SSD else None)


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
@pytest.mark.parametrize("split", [1, 37, 99])
def test_state_chaining(op, split):
    l = 100
    inputs = op.inputs(2, l, _width(op, 8), 4, 2, dtype=torch.float32)
    kw = {"chunk_size": 32} if op is SSD else {}
    y, state = op.run(inputs, "torch", **kw)
    first = {k: (v[:, :split] if v is not None and v.dim() >= 3 and v.shape[1] == l else v) for k, v in inputs.items()}
    second = {k: (v[:, split:] if v is not None and v.dim() >= 3 and v.shape[1] == l else v)
              for k, v in inputs.items()}
    y1, s1 = op.run(first, "torch", **kw)
    second["initial_state"] = s1
    y2, s2 = op.run(second, "torch", **kw)
    assert_close(torch.cat([y1, y2], dim=1), y, FP32, "chained y")
    assert_close(s2, state, FP32, "chained state")


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_step_equals_forward(op, dtype):
    l = 23
    inputs = op.inputs(2, l, _width(op, 8), 4, 2, dtype=dtype)
    y, state = op.run(inputs, "torch")
    s = inputs["initial_state"].clone()
    per_pos = {"x", "dt", "B", "C", "z"}
    ys = []
    for t in range(l):
        inputs_t = {k: (v[:, t] if k in per_pos else v) for k, v in inputs.items() if k != "initial_state"}
        ys.append(op.step(s, inputs_t, "auto"))
    assert ys[0].dtype == dtype
    assert_close(torch.stack(ys, 1), y, dtype, "stepped y")
    assert_close(s, state, dtype, "stepped state")


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
def test_non_contiguous_inputs(op):
    inputs = op.inputs(2, 30, _width(op, 8), 4, 2)
    strided = {}
    for k, v in inputs.items():
        if v is None:
            strided[k] = None
            continue
        wide = torch.zeros(*v.shape[:-1], 2 * v.shape[-1], dtype=v.dtype)
        wide[..., ::2] = v
        strided[k] = wide[..., ::2]
        assert not strided[k].is_contiguous()
    y, s = op.run(strided, "torch")
    y_ref, s_ref = op.run(inputs, "naive")
    assert_close(y, y_ref, FP32, "y")
    assert_close(s, s_ref, FP32, "state")


def test_selective_scan_saves_no_expanded_tensor():
    """The backward must not keep a (batch, length, channels, nstate) tensor alive."""
    b, l, d, n = 1, 512, 16, 8
    inputs = leaves(SELECTIVE_SCAN.inputs(b, l, d, n, 1))
    with scan_chunk(64):
        y, _ = SELECTIVE_SCAN.run(inputs, "torch")
    saved = sorted(t.numel() for t in y.grad_fn.saved_tensors if t is not None)
    assert saved[-1] == b * l * d, saved  # the inputs themselves ...
    assert b * (l // 64) * d * n in saved  # ... and the state entering each chunk, nothing per position


def test_ssd_backward_memory_is_bounded_by_chunk_states():
    b, l, h, p, n = 1, 512, 2, 8, 8
    inputs = leaves(SSD.inputs(b, l, (h, p), n, 1))
    y, _ = SSD.run(inputs, "torch", chunk_size=64)
    saved = sorted(t.numel() for t in y.grad_fn.saved_tensors if t is not None)
    assert saved[-1] == b * l * h * p  # the inputs themselves ...
    assert b * (l // 64) * h * p * n in saved  # ... and the state entering each chunk, nothing per position


@settings(max_examples=25, deadline=None)
@given(
    op=st.sampled_from([SELECTIVE_SCAN, SSD]),
    b=st.integers(1, 3),
    l=st.integers(1, 80),
    groups=st.sampled_from([1, 2]),
    per_group=st.integers(1, 3),
    n=st.integers(1, 6),
    chunk=st.sampled_from([1, 5, 16, 64, 256]),
    reverse=st.booleans(),
    packed=st.booleans(),
)
def test_property_torch_equals_naive_in_float64(op, b, l, groups, per_group, n, chunk, reverse, packed):
    width = groups * per_group if op is SELECTIVE_SCAN else (groups * per_group, 3)
    seq_idx = None
    if packed:
        seq_idx = (torch.arange(l) * 7 // max(l, 1) % 3).repeat(b, 1)
        seq_idx[0] = 0
    kw = {"chunk_size": chunk} if op is SSD else {}
    with scan_chunk(chunk):  # chunk is also the selective scan's time chunk
        compare_with_reference(op, "torch", torch.float64, b, l, width, n, groups, seq_idx=seq_idx,
                               reverse=reverse, **kw)


def test_tolerances_are_ordered():
    assert TOL[torch.float64] < TOL[FP32] < TOL[FP16] < TOL[BF16]


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
@pytest.mark.parametrize("backend", ["naive", "torch", "triton"])
def test_seq_idx_reverse_with_boundaries_inside_chunks(op, backend):
    """Length 50 with document starts at 13, 29 and 41 (row 0) and 7 (row 1): inside the torch chunks of 16, the
    selective scan's chunks of 32, and the Triton tiles and chunks. Each document equals a separate reverse run;
    outputs, final state and gradients match the float64 specification."""
    l = 50
    seq_idx = torch.tensor([[0] * 13 + [1] * 16 + [2] * 12 + [3] * 9, [5] * 7 + [6] * 43])
    kw = {"chunk_size": 16} if op is SSD else {}
    inputs = op.inputs(2, l, _width(op, 8), 4, 2, dtype=FP32)
    y, state = op.run(inputs, backend, seq_idx=seq_idx, reverse=True, **kw)
    for r, bounds in enumerate(([0, 13, 29, 41, 50], [0, 7, 50])):
        for s, e in zip(bounds[:-1], bounds[1:]):
            part = {k: (v[r : r + 1, s:e] if v is not None and v.dim() >= 3 and v.shape[1] == l else v)
                    for k, v in inputs.items()}
            part["initial_state"] = inputs["initial_state"][r : r + 1] if e == l else None
            part = leaves(part, torch.float64)
            y_doc, state_doc = op.run(part, "naive", reverse=True)
            assert_close(y[r : r + 1, s:e], y_doc, FP32, f"row {r} document [{s}, {e})")
            if s == 0:  # a reverse scan ends in the first document
                assert_close(state[r : r + 1], state_doc, FP32, f"row {r} final state")
    compare_with_reference(op, backend, FP32, 2, l, _width(op, 8), 4, 2, seq_idx=seq_idx, reverse=True, **kw)


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("extras", [True, False], ids=["D-z-bias", "bare"])
@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_torch_step_matches_the_naive_step(op, groups, extras, dtype):
    """The fast CPU decoding step (chunked.py) against the specification's, over steps that read what earlier ones
    wrote, for one and several B/C groups, with and without D, z and dt_bias."""
    inputs = op.inputs(3, 4, _width(op, 8), 4, groups, dtype=dtype, D=extras, z=extras, bias=extras)
    state, ref_state = inputs["initial_state"].clone(), inputs["initial_state"].clone()
    per_pos = {"x", "dt", "B", "C", "z"}
    for t in range(4):
        inputs_t = {k: (v[:, t] if k in per_pos and v is not None else v) for k, v in inputs.items()
                    if k != "initial_state"}
        y = op.step(state, inputs_t, "torch")
        y_ref = op.step(ref_state, inputs_t, "naive")
        assert y.dtype == y_ref.dtype == dtype
        assert_close(y, y_ref.float(), dtype, f"y at step {t}")
        assert_close(state, ref_state, FP32, f"state at step {t}")


@pytest.mark.parametrize("op", [SELECTIVE_SCAN, SSD], ids=["sscan", "ssd"])
def test_unchecked_step_is_the_checked_step(op):
    """``check=False`` (what the layers pass) skips only the argument checks: the same outputs and states."""
    inputs = op.inputs(2, 3, _width(op, 8), 4, 2, D=True, z=True, bias=True)
    fn = selective_scan_step if op is SELECTIVE_SCAN else ssd_step
    state, unchecked = inputs["initial_state"].clone(), inputs["initial_state"].clone()
    for t in range(3):
        inputs_t = {k: (v[:, t] if k in {"x", "dt", "B", "C", "z"} else v) for k, v in inputs.items()
                    if k != "initial_state"}
        assert torch.equal(fn(state, **inputs_t), fn(unchecked, **inputs_t, check=False))
        assert torch.equal(state, unchecked)
