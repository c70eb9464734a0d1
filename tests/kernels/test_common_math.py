"""``constant`` (the kept 0-dim tensors that decoding steps use instead of Python numbers) and ``all_finite``."""

from __future__ import annotations

import pytest
import torch

from rawseq.kernels.common.math import all_finite, constant


def test_constant_is_kept_per_value_dtype_and_device():
    x32, x64 = torch.randn(3), torch.randn(3, dtype=torch.float64)
    c = constant(0.25, x32)
    assert c.shape == () and c.dtype == torch.float32 and c.item() == 0.25
    assert constant(0.25, x32) is c
    assert constant(0.25, x64).dtype == torch.float64
    assert constant(0.5, x32).item() == 0.5


def test_constant_made_under_inference_mode_works_with_autograd():
    with torch.inference_mode():
        constant(0.375, torch.randn(2))
    w = torch.randn(4, requires_grad=True)
    (w * constant(0.375, w)).sum().backward()  # an inference tensor could not be saved for backward
    assert torch.allclose(w.grad, torch.full((4,), 0.375))


def test_constant_is_the_number_under_compile():
    seen = []

    def f(x):
        c = constant(0.125, x)
        seen.append(type(c))
        return x * c

    x = torch.randn(5)
    assert torch.allclose(torch.compile(f, backend="eager", fullgraph=True)(x), x * 0.125)
    assert seen == [float]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_finds_any_non_finite_value(dtype, bad):
    tensors = [torch.randn(3, 50).to(dtype), torch.randn(7).to(dtype)]
    assert all_finite(*tensors) and all_finite(tensors[0])
    for t in tensors:
        for index in (0, t.numel() - 1):
            t.view(-1)[index] = bad
            assert not all_finite(*tensors)
            t.view(-1)[index] = 0.5
    both = [torch.full((4,), float("inf")).to(dtype), torch.full((4,), float("-inf")).to(dtype)]
    assert not all_finite(*both)  # +inf and -inf do not cancel


def test_all_finite_is_conservative_on_overflow():
    """Huge finite values may overflow the sum and read as not finite: the callers then take their exact path."""
    assert not all_finite(torch.full((4,), 3e38))
