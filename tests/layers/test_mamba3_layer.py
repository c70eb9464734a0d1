"""The Mamba3 layer: decoding step equals forward, state chaining, documents, save/load, parameter flags, errors."""

from __future__ import annotations

import io

import pytest
import torch

from rawseq.layers.mamba3 import Mamba3, decay_rate

CONFIGS = [
    pytest.param(dict(), id="siso"),
    pytest.param(dict(d_conv=4), id="siso-conv4"),
    pytest.param(dict(mimo_rank=2, n_groups=2), id="mimo2-G2"),
    pytest.param(dict(mimo_rank=2, d_conv=3, conv_bias=False), id="mimo2-conv3-nobias"),
    pytest.param(dict(mimo_rank=4, rope_fraction=1.0), id="mimo4-rope1"),
    pytest.param(dict(data_dependent_A=False, rope_fraction=0.0), id="siso-headA-norope"),
    pytest.param(dict(headdim=16, bc_norm=False), id="siso-P16-nonorm"),
    pytest.param(dict(outproj_norm=True), id="siso-outnorm"),
    pytest.param(dict(mimo_rank=2, outproj_norm=True), id="mimo2-outnorm"),
]


def _layer(**kw):
    args = dict(d_state=8, headdim=8, expand=2)
    args.update(kw)
    torch.manual_seed(0)
    layer = Mamba3(32, **args).double()
    with torch.no_grad():  # move every parameter off its initial value so that each one matters
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


@pytest.mark.parametrize("kw", CONFIGS)
def test_step_equals_forward(kw):
    layer = _layer(**kw)
    hidden = torch.randn(2, 19, 32, dtype=torch.float64)
    y, state = layer(hidden, return_state=True)
    stepped = layer.allocate_inference_state(2)
    stepped = {k: v.double() for k, v in stepped.items()}
    ys = torch.stack([layer.step(hidden[:, t], stepped) for t in range(19)], dim=1)
    assert torch.allclose(ys, y, atol=1e-10, rtol=1e-8)
    for key in state:
        assert torch.allclose(stepped[key], state[key], atol=1e-10), key


@pytest.mark.parametrize("kw", CONFIGS[:2])
def test_step_equals_forward_float32(kw):
    layer = _layer(**kw).float()
    hidden = torch.randn(2, 11, 32)
    y = layer(hidden)
    state = layer.allocate_inference_state(2)
    ys = torch.stack([layer.step(hidden[:, t], state) for t in range(11)], dim=1)
    assert torch.allclose(ys, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", CONFIGS[:3])
def test_forward_chains_through_state(kw):
    layer = _layer(**kw)
    hidden = torch.randn(2, 30, 32, dtype=torch.float64)
    y = layer(hidden)
    y1, s1 = layer(hidden[:, :13], return_state=True)
    y2 = layer(hidden[:, 13:], initial_state=s1)
    assert torch.allclose(torch.cat([y1, y2], dim=1), y, atol=1e-10)


@pytest.mark.parametrize("kw", [dict(mimo_rank=2), dict(d_conv=4)], ids=["mimo2", "siso-conv4"])
def test_seq_idx_separates_documents(kw):
    layer = _layer(**kw)
    hidden = torch.randn(1, 24, 32, dtype=torch.float64)
    seq_idx = torch.tensor([[0] * 10 + [1] * 14])
    y = layer(hidden, seq_idx=seq_idx)
    assert torch.allclose(y[:, :10], layer(hidden[:, :10]), atol=1e-10)
    assert torch.allclose(y[:, 10:], layer(hidden[:, 10:]), atol=1e-10)


@pytest.mark.parametrize("kw", [dict(mimo_rank=2), dict(d_conv=4)], ids=["mimo2", "siso-conv4"])
def test_backends_agree_and_gradients_reach_every_parameter(kw):
    layer = _layer(**kw)
    hidden = torch.randn(2, 21, 32, dtype=torch.float64)
    layer.backend = "naive"
    layer(hidden).square().sum().backward()
    ref = {name: p.grad.clone() for name, p in layer.named_parameters()}
    layer.zero_grad()
    layer.backend = "torch"
    layer(hidden).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.allclose(p.grad, ref[name], atol=1e-9, rtol=1e-7), name


def test_save_and_load_state_dict():
    layer = _layer(mimo_rank=2)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = Mamba3(32, d_state=8, headdim=8, expand=2, mimo_rank=2).double()
    other.load_state_dict(torch.load(buf, weights_only=True))
    hidden = torch.randn(1, 9, 32, dtype=torch.float64)
    assert torch.equal(other(hidden), layer(hidden))


def test_no_weight_decay_flags():
    layer = Mamba3(32, d_state=8, headdim=8, mimo_rank=2, data_dependent_A=False)
    flagged = {name for name, p in layer.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert flagged == {"dt_bias", "A_log", "D", "bc_bias", "bc_norm_weight", "mimo_x", "mimo_z", "mimo_o"}


def test_initialisation():
    layer = Mamba3(32, d_state=8, headdim=8, mimo_rank=4)
    assert torch.equal(layer.bc_bias, torch.ones(2, 8, 4, 8))  # B and C biases per head and rank start at 1
    dt = torch.nn.functional.softplus(layer.dt_bias)
    assert (dt >= 1e-4).all() and (dt <= 0.1 + 1e-6).all()
    assert torch.allclose(layer.mimo_x.sum(1), torch.ones(8, 8))
    assert layer.n_angles == 2  # rope_fraction 0.5 of 8 state entries: 2 rotated pairs


def test_A_bias_spreads_the_initial_decay_rates():
    """With ``A_bias`` a zero projection gives each head an |A| in A_init_range (uniform), instead of 1 everywhere;
    the offset is learned and not weight-decayed."""
    torch.manual_seed(0)
    layer = Mamba3(32, d_state=8, headdim=4, expand=8, A_bias=True, A_init_range=(1.0, 16.0))  # 64 heads
    A = -decay_rate(layer.A_bias.detach(), layer.A_floor)
    assert (A >= 1.0 - 1e-6).all() and (A <= 16.0 + 1e-5).all() and A.max() - A.min() > 10
    assert layer.A_bias._no_weight_decay
    with torch.no_grad():
        layer.in_proj.weight.zero_()
    _, _, _, _, _, A_in, _, _ = layer._mixer_inputs(layer.in_proj(torch.randn(1, 3, 32)))
    assert torch.allclose(-A_in, A.expand(1, 3, -1))
    low = Mamba3(32, d_state=8, headdim=4, expand=8, A_bias=True, A_init_range=(0.25, 0.5))  # below 1 as well
    A_low = -decay_rate(low.A_bias.detach(), low.A_floor)
    assert (A_low >= 0.25 - 1e-6).all() and (A_low <= 0.5 + 1e-6).all()
    assert Mamba3(32, d_state=8, headdim=8).A_bias is None  # off by default, as in the reference layer


def test_decay_rate_is_the_floored_heavy_tail():
    """A = -max(f(a), floor), f(a) = 1 + a above 0 and 1 / (1 - a) below, with a continuous derivative."""
    a = torch.cat([torch.linspace(-50, 50, 1001, dtype=torch.float64), torch.tensor([-2e5], dtype=torch.float64)])
    a.requires_grad_(True)
    A = decay_rate(a, 1e-4)
    ad = a.detach()
    f = torch.where(ad >= 0, 1 + ad, 1 / (1 - ad))
    assert torch.allclose(A, -f.clamp(min=1e-4))
    (grad,) = torch.autograd.grad(A.sum(), a)
    assert torch.allclose(grad[:-1][ad[:-1] >= 0], -torch.ones(()).double())
    below = (ad < 0) & (ad > -1e4)
    assert torch.allclose(grad[below], -1 / (1 - ad[below]) ** 2)
    assert grad[-1] == 0  # under the floor A is constant


@pytest.mark.parametrize("kw, field", [
    (dict(d_state=7), "d_state"),
    (dict(headdim=12), "headdim"),
    (dict(n_groups=3), "n_groups"),
    (dict(mimo_rank=0), "mimo_rank"),
    (dict(rope_fraction=1.5), "rope_fraction"),
    (dict(A_floor=-1.0), "A_floor"),
    (dict(A_bias=True, data_dependent_A=False), "A_bias"),
    (dict(d_conv=-1), "d_conv"),
])
def test_bad_arguments_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        Mamba3(32, **{"d_state": 8, "headdim": 8, **kw})


def test_odd_state_without_rotation_is_fine():
    layer = Mamba3(32, d_state=7, headdim=8, rope_fraction=0.0)
    assert layer(torch.randn(1, 5, 32)).shape == (1, 5, 32)


@pytest.mark.parametrize("rank", [None, 2], ids=["siso", "mimo2"])
def test_output_norm_is_a_per_head_rmsnorm_before_the_gate(rank):
    """With ``outproj_norm`` the op runs ungated and each head's output is RMS-normalised, weighted, then gated."""
    layer = _layer(mimo_rank=rank, outproj_norm=True)
    assert layer.mimo_z is None  # the gate is applied once per channel, after the norm
    hidden = torch.randn(2, 7, 32, dtype=torch.float64)
    x, z, B, C, dt, A, lam, angle = layer._mixer_inputs(layer.in_proj(hidden))
    from rawseq.kernels.mamba3 import mamba3

    y = mamba3(x, dt, A, B, C, lam, angle, **layer._params(), backend="naive")  # (b, l, h, p), ungated
    normed = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + layer.norm.eps)
    expected = (normed.flatten(-2) * layer.norm.weight) * torch.nn.functional.silu(z.flatten(-2))
    assert torch.allclose(layer(hidden), layer.out_proj(expected), atol=1e-10)
