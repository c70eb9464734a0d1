"""Bad arguments to the kernels raise ValueError naming the argument, its shape and the expected shape."""

from __future__ import annotations

import importlib

import pytest
import torch
from _scan_cases import SELECTIVE_SCAN, SSD

from rawseq.kernels import causal_conv1d, causal_conv1d_step, selective_scan, selective_scan_step, ssd, ssd_step


def _sscan():
    return SELECTIVE_SCAN.inputs(2, 5, 8, 4, 2)


def _ssd():
    return SSD.inputs(2, 5, (4, 3), 4, 2)


@pytest.mark.parametrize(
    "fn, make, name, bad, message",
    [
        (selective_scan, _sscan, "x", torch.randn(2, 5), r"x has shape \(2, 5\), expected \(batch, length, channels\)"),
        (selective_scan, _sscan, "dt", torch.randn(2, 5, 7), r"dt has shape \(2, 5, 7\), expected .* = \(2, 5, 8\)"),
        (selective_scan, _sscan, "A", torch.randn(4, 8), r"A has shape \(4, 8\), expected \(channels, nstate\)"),
        (selective_scan, _sscan, "B", torch.randn(2, 5, 3, 4), r"channels=8 must be divisible by groups=3"),
        (selective_scan, _sscan, "C", torch.randn(2, 5, 1, 4), r"C has shape \(2, 5, 1, 4\)"),
        (selective_scan, _sscan, "D", torch.randn(3), r"D has shape \(3,\)"),
        (selective_scan, _sscan, "initial_state", torch.randn(2, 8), r"initial_state has shape"),
        (selective_scan, _sscan, "x", torch.randint(0, 3, (2, 5, 8)), r"x has dtype torch.int64"),
        (selective_scan, _sscan, "x", [[1.0]], r"x must be a torch.Tensor, got list"),
        (ssd, _ssd, "x", torch.randn(2, 5, 12), r"x has shape \(2, 5, 12\), expected \(batch, length, heads, headd"),
        (ssd, _ssd, "A", torch.randn(4, 4), r"A has shape \(4, 4\), expected \(heads\) = \(4\)"),
        (ssd, _ssd, "B", torch.randn(2, 5, 3, 4), r"heads=4 must be divisible by groups=3"),
        (ssd, _ssd, "z", torch.randn(2, 5, 4, 2), r"z has shape \(2, 5, 4, 2\)"),
        (ssd, _ssd, "dt_bias", torch.randn(5), r"dt_bias has shape \(5,\)"),
    ],
)
def test_shape_and_dtype_errors(fn, make, name, bad, message):
    inputs = make()
    inputs[name] = bad
    with pytest.raises(ValueError, match=message):
        fn(**inputs)


def test_seq_idx_must_be_integer():
    with pytest.raises(ValueError, match="seq_idx has dtype torch.float32"):
        selective_scan(**_sscan(), seq_idx=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"seq_idx has shape \(2, 4\)"):
        ssd(**_ssd(), seq_idx=torch.zeros(2, 4, dtype=torch.long))


def test_device_mismatch_names_both_arguments():
    inputs = _sscan()
    inputs["C"] = inputs["C"].to("meta")
    with pytest.raises(ValueError, match="C is on meta but x is on cpu"):
        selective_scan(**inputs)


def test_bad_backend_and_options():
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        selective_scan(**_sscan(), backend="cuda")
    with pytest.raises(ValueError, match="chunk_size=0 must be a positive int"):
        ssd(**_ssd(), chunk_size=0)
    x = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match="activation='relu' is not one of"):
        causal_conv1d(x, torch.randn(3, 4), activation="relu")
    with pytest.raises(ValueError, match=r"weight has shape \(2, 4\), expected \(channels, width\)"):
        causal_conv1d(x, torch.randn(2, 4))


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        selective_scan(**_sscan(), backend="triton")


def test_step_state_errors():
    state = torch.zeros(2, 8, 4, dtype=torch.bfloat16)
    x = torch.randn(2, 8)
    B = torch.randn(2, 1, 4)
    with pytest.raises(ValueError, match="state has dtype torch.bfloat16"):
        selective_scan_step(state, x, x, -torch.rand(8, 4), B, B)
    with pytest.raises(ValueError, match=r"state has shape \(2, 8, 4\), expected \(batch, heads, headdim, nstate\)"):
        ssd_step(torch.zeros(2, 8, 4), torch.randn(2, 8, 2), torch.randn(2, 8), -torch.rand(8), B, B)
    with pytest.raises(ValueError, match=r"state has shape \(2, 8, 4\), expected .* = \(2, 8, 3\)"):
        causal_conv1d_step(torch.zeros(2, 8, 4), x, torch.randn(8, 4))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ssd(**SSD.inputs(2, 5, (0, 3), 4, 1)), r"x has heads = 0"),
        (lambda: ssd(**SSD.inputs(2, 5, (4, 0), 4, 1)), r"x has headdim = 0"),
        (lambda: ssd(**SSD.inputs(2, 5, (4, 3), 0, 2)), r"B has nstate = 0"),
        (lambda: selective_scan(**SELECTIVE_SCAN.inputs(2, 5, 8, 0, 2)), r"A has nstate = 0"),
        (lambda: selective_scan(**SELECTIVE_SCAN.inputs(2, 5, 0, 4, 1)), r"x has channels = 0"),
        (lambda: causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 0)), r"weight has width = 0"),
        (lambda: ssd_step(torch.zeros(2, 0, 3, 4), torch.randn(2, 0, 3), torch.randn(2, 0), torch.randn(0),
                          torch.randn(2, 1, 4), torch.randn(2, 1, 4)), r"state has heads = 0"),
        (lambda: ssd_step(torch.zeros(2, 4, 3, 0), torch.randn(2, 4, 3), torch.randn(2, 4), torch.randn(4),
                          torch.randn(2, 1, 0), torch.randn(2, 1, 0)), r"state has nstate = 0"),
        (lambda: selective_scan_step(torch.zeros(2, 8, 0), torch.randn(2, 8), torch.randn(2, 8), torch.randn(8, 0),
                                     torch.randn(2, 1, 0), torch.randn(2, 1, 0)), r"state has nstate = 0"),
        (lambda: causal_conv1d_step(torch.zeros(2, 3, 0), torch.randn(2, 3), torch.randn(3, 0)),
         r"weight has width = 0"),
    ],
    ids=["ssd-heads", "ssd-headdim", "ssd-nstate", "sscan-nstate", "sscan-channels", "conv-width", "ssd-step-heads",
         "ssd-step-nstate", "sscan-step-nstate", "conv-step-width"],
)
def test_zero_sized_dimensions_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("missing", [(), ("D",), ("z", "dt_bias"), ("D", "z", "dt_bias", "initial_state")])
def test_the_fast_check_accepts_what_the_full_check_accepts(missing):
    """Arguments that are right pass the compiled predicate itself (the decoding steps' fast path), with the same
    sizes and device as the argument-by-argument check."""
    for op, inputs in (("selective_scan", _sscan()), ("ssd", _ssd())):
        spec = importlib.import_module(f"rawseq.kernels.{op}")._ARGS  # the module, not the function of that name
        args = [None if k in missing else inputs.get(k) for k in spec.axes]
        args[-1] = torch.zeros(2, 5, dtype=torch.long)  # seq_idx
        fast = spec._fast(*args)
        assert fast is not None
        assert fast == spec._check_one_by_one(args)
