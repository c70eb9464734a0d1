"""Dynamic chunking pieces: routing, smoothing through the SSD scan, straight-through confidence, ratio loss,
upsampling."""

from __future__ import annotations

import pytest
import torch

from rawseq.layers.chunking import (
    P_MIN,
    RoutingModule,
    confidence,
    plug_back,
    ratio_loss,
    smooth,
    smooth_naive,
    smooth_step,
)


def _routing(d=8, seed=0, identity=True):
    torch.manual_seed(seed)
    r = RoutingModule(d)
    if not identity:
        with torch.no_grad():
            r.q_proj.weight.normal_()
            r.k_proj.weight.normal_()
    return r


def test_routing_starts_as_identity_and_p_in_unit_interval():
    r = _routing()
    assert torch.equal(r.q_proj.weight, torch.eye(8)) and torch.equal(r.k_proj.weight, torch.eye(8))
    h = torch.randn(3, 20, 8)
    p = r(h)
    assert p.shape == (3, 20) and p.dtype == torch.float32
    assert bool(((p >= 0) & (p <= 1)).all())
    assert bool((p[:, 0] == 1).all())
    # the definition, computed directly
    cos = torch.nn.functional.cosine_similarity(h[:, 1:], h[:, :-1], dim=-1)
    torch.testing.assert_close(p[:, 1:], (1 - cos) / 2)
    # the same direction is no boundary, the opposite one is certain
    same = torch.ones(1, 4, 8) * torch.tensor([1.0, 2.0, 3.0, -1.0])[None, :, None]
    p = r(same)
    torch.testing.assert_close(p, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))


def test_routing_p_is_one_at_every_document_start():
    r = _routing(identity=False)
    h = torch.randn(2, 12, 8)
    seq_idx = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [7] * 12])
    p = r(h, seq_idx)
    assert bool((p[0, [0, 5, 9]] == 1).all()) and bool(p[1, 0] == 1)
    # elsewhere p is the cosine rule: documents do not change it
    torch.testing.assert_close(p[:, 1:5], r(h)[:, 1:5])
    assert bool(((p >= 0) & (p <= 1)).all())


def test_routing_state_continues_and_step_equals_forward():
    r = _routing(identity=False)
    h = torch.randn(2, 10, 8)
    full = r(h)
    first, state = r(h[:, :4], return_state=True)
    rest = r(h[:, 4:], state=state)
    torch.testing.assert_close(torch.cat([first, rest], 1), full)
    state = r.allocate_inference_state(2)
    steps = torch.stack([r.step(h[:, t], state) for t in range(10)], 1)
    torch.testing.assert_close(steps, full)


@pytest.mark.parametrize("backend", ["torch", "naive", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("length,chunk_size", [(1, 4), (7, 4), (33, 8)], ids=["n1", "n7-Q4", "n33-Q8"])
@pytest.mark.parametrize("docs", [False, True], ids=["one-doc", "packed"])
def test_smoothing_through_ssd_equals_float64_loop(backend, length, chunk_size, docs):
    if backend == "triton":  # the GPU kernels under the CPU interpreter (TRITON_INTERPRET=1, set by conftest)
        from rawseq.kernels.common.interpreter import patch_interpreter

        patch_interpreter()
    torch.manual_seed(length)
    b, d = 2, 6
    x = torch.randn(b, length, d, requires_grad=True)
    p = torch.rand(b, length).mul(0.98).add(0.01)
    p[0, 0] = 1.0  # clamped into [P_MIN, 1 - P_MIN]
    p.requires_grad_(True)
    z0 = torch.randn(b, d, requires_grad=True)
    seq_idx = torch.randint(0, 3, (b, length)).sort(1).values if docs else None
    z = smooth(x, p, seq_idx, z0, chunk_size=chunk_size, backend=backend)
    x64, p64, z064 = (t.detach().double().requires_grad_(True) for t in (x, p, z0))
    ref = smooth_naive(x64, p64, seq_idx, z064)
    torch.testing.assert_close(z.double(), ref, atol=2e-5, rtol=1e-4)
    w = torch.randn_like(ref)
    (z.double() * w).sum().backward()
    (ref * w).sum().backward()
    for got, want in ((x.grad, x64.grad), (p.grad, p64.grad), (z0.grad, z064.grad)):
        torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=1e-3)


def test_smoothing_float64_through_ssd_is_exact_and_loop_is_the_recurrence():
    torch.manual_seed(0)
    x = torch.randn(1, 9, 4, dtype=torch.float64)
    p = torch.rand(1, 9, dtype=torch.float64)
    z = smooth(x, p, backend="torch", chunk_size=4)
    torch.testing.assert_close(z, smooth_naive(x, p), atol=1e-12, rtol=1e-10)
    P = p.clamp(P_MIN, 1 - P_MIN)
    manual = P[0, 0] * x[0, 0]
    manual = P[0, 1] * x[0, 1] + (1 - P[0, 1]) * manual
    torch.testing.assert_close(z[0, 1], manual)


def test_smooth_step_equals_scan_and_skips_masked_rows():
    torch.manual_seed(0)
    x, p = torch.randn(3, 5, 4), torch.rand(3, 5)
    ref = smooth_naive(x, p)
    z = torch.zeros(3, 4)
    for t in range(5):
        smooth_step(z, x[:, t], p[:, t], torch.ones(3, dtype=torch.bool))
        torch.testing.assert_close(z, ref[:, t])
    before = z.clone()
    smooth_step(z, torch.full((3, 4), float("nan")), p[:, 0], torch.tensor([False, True, False]))
    assert torch.equal(z[[0, 2]], before[[0, 2]]) and bool(z[1].isnan().all())


def test_confidence_is_one_forward_and_passes_the_gradient():
    p = torch.tensor([0.9, 0.2, 0.5, 0.7], requires_grad=True)
    b = p.detach() >= 0.5
    c = confidence(p, b)
    assert torch.equal(c, torch.ones(4))
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (c * w).sum().backward()
    # c = p at a boundary, 1 - p elsewhere
    torch.testing.assert_close(p.grad, torch.tensor([1.0, -2.0, 3.0, 4.0]))


@pytest.mark.parametrize("n", [2.0, 3.0, 4.0, 6.0])
def test_ratio_loss_is_smallest_at_one_over_n(n):
    steps = 240  # multiples of 2, 3, 4, 6
    # Where the decisions agree with the probabilities (F = G), the loss is smallest, 1, at F = G = 1/N.
    losses = []
    for k in range(steps + 1):
        boundary = torch.arange(steps) < k
        losses.append(float(ratio_loss(torch.full((steps,), k / steps), boundary, n)))
    best = min(range(steps + 1), key=losses.__getitem__)
    assert best / steps == pytest.approx(1 / n) and losses[best] == pytest.approx(1.0, abs=1e-6)
    # With the decisions fixed (F carries no gradient), the gradient on every p pushes F towards 1/N and
    # vanishes at F = 1/N.
    for k, sign in ((round(steps / n) - 24, -1), (round(steps / n), 0), (round(steps / n) + 24, 1)):
        p = torch.full((steps,), 0.5, requires_grad=True)
        ratio_loss(p, torch.arange(steps) < k, n).backward()
        grad = torch.where(p.grad.abs() < 1e-7, torch.zeros_like(p.grad), p.grad)
        assert torch.sign(grad).eq(sign).all(), (k, p.grad[0])
    # the formula itself
    p = torch.tensor([0.9, 0.1, 0.3, 0.8, 0.6])
    b = p >= 0.5
    f, g = 0.6, float(p.mean())
    assert float(ratio_loss(p, b, n)) == pytest.approx(n / (n - 1) * ((n - 1) * f * g + (1 - f) * (1 - g)))


@pytest.mark.parametrize("n", [1.0, 0.5, -2.0])
def test_ratio_loss_rejects_targets_up_to_one(n):
    with pytest.raises(ValueError, match="target"):
        ratio_loss(torch.rand(4), torch.ones(4, dtype=torch.bool), n)


def test_plug_back_spreads_each_chunk_until_the_next_boundary():
    boundary = torch.tensor([[True, False, True, False, False], [True, True, False, False, True]])
    z = torch.arange(6.0)[:, None].expand(6, 2)  # row 0: chunks 0, 1; row 1: chunks 2, 3, 4 (packed)
    out = plug_back(z, boundary)
    assert out[..., 0].tolist() == [[0, 0, 1, 1, 1], [2, 3, 3, 3, 4]]
    # a continued row starts in the chunk it carries
    boundary = torch.tensor([[False, True, False], [False, False, False]])
    carried = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    out = plug_back(torch.tensor([[5.0, 5.0]]), boundary, carried)
    assert out[..., 0].tolist() == [[10, 5, 5], [20, 20, 20]]
