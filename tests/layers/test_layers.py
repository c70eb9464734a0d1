"""Layers against references: step-by-step decoding, state continuation, document packing, attention masks."""

from __future__ import annotations

import math

import pytest
import torch

from rawseq.layers import Attention, Bidirectional, Block, GatedMLP, GatedRMSNorm, Mamba, Mamba2, Mamba3, RMSNorm

D_MODEL = 32


def make(kind: str, **kw):
    torch.manual_seed(1)
    if kind == "mamba":
        return Mamba(D_MODEL, d_state=8, **kw)
    if kind == "mamba2":
        return Mamba2(D_MODEL, d_state=8, headdim=16, n_groups=2, chunk_size=8, **kw)
    if kind == "mamba2-limit":
        return Mamba2(D_MODEL, d_state=8, headdim=16, chunk_size=8, dt_limit=(0.01, 0.05), **kw)
    if kind == "mamba3":
        return Mamba3(D_MODEL, d_state=8, headdim=16, chunk_size=8, **kw)
    if kind == "attention":
        return Attention(D_MODEL, n_heads=4, n_kv_heads=2, **kw)
    if kind == "attention-window":
        return Attention(D_MODEL, n_heads=4, n_kv_heads=1, window=5, **kw)
    raise ValueError(kind)


MIXERS = ["mamba", "mamba2", "mamba2-limit", "attention", "attention-window"]


def _close(a, b, tol=1e-5):
    scale = b.abs().max().clamp_min(1e-6)
    assert torch.isfinite(a).all()
    assert (a - b).abs().max() / scale < tol, f"relative error {float((a - b).abs().max() / scale):.3g}"


@pytest.mark.parametrize("kind", MIXERS)
def test_step_matches_forward(kind):
    layer = make(kind).eval()
    x = torch.randn(2, 13, D_MODEL)
    with torch.no_grad():
        ref = layer(x)
        state = layer.allocate_inference_state(2)
        steps = torch.stack([layer.step(x[:, t], state) for t in range(x.shape[1])], dim=1)
    _close(steps, ref)


@pytest.mark.parametrize("kind", MIXERS)
def test_state_continuation_matches_one_pass(kind):
    layer = make(kind).eval()
    x = torch.randn(2, 19, D_MODEL)
    with torch.no_grad():
        ref, ref_state = layer(x, return_state=True)
        y1, s1 = layer(x[:, :7], return_state=True)
        y2, s2 = layer(x[:, 7:], initial_state=s1, return_state=True)
    _close(torch.cat([y1, y2], dim=1), ref)
    if kind.startswith("mamba"):
        _close(s2["ssm"], ref_state["ssm"])
        _close(s2["conv"], ref_state["conv"])


@pytest.mark.parametrize("kind", MIXERS)
def test_packed_documents_match_separate_runs(kind):
    layer = make(kind).eval()
    lengths = [5, 9, 4]
    x = torch.randn(1, sum(lengths), D_MODEL)
    seq_idx = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))[None]
    with torch.no_grad():
        packed = layer(x, seq_idx=seq_idx)
        parts = [layer(p) for p in x.split(lengths, dim=1)]
    _close(packed, torch.cat(parts, dim=1))


@pytest.mark.parametrize("kind", MIXERS)
def test_packed_prefill_then_steps(kind):
    """After a packed prefill the state belongs to the last document only."""
    layer = make(kind).eval()
    x = torch.randn(2, 12, D_MODEL)
    seq_idx = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    with torch.no_grad():
        _, state = layer(x[:, :9], seq_idx=seq_idx[:, :9], return_state=True)
        tail = torch.stack([layer.step(x[:, t], state) for t in range(9, 12)], dim=1)
        row0 = layer(x[:1, 5:])[:, 4:]
        row1 = layer(x[1:])[:, 9:]
    _close(tail, torch.cat([row0, row1]))


@pytest.mark.parametrize("kind", MIXERS)
def test_gradients_reach_every_parameter(kind):
    layer = make(kind)
    layer(torch.randn(2, 11, D_MODEL)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def _attention_reference(layer: Attention, x, seq_idx=None):
    """Explicit float64 softmax attention with rotary positions restarting per document."""
    b, l, _ = x.shape
    h, kvh, hd = layer.n_heads, layer.n_kv_heads, layer.head_dim
    W = layer.qkv_proj.weight.double()
    qkv = (x.double() @ W.T).view(b, l, h + 2 * kvh, hd)
    q, k, v = qkv[:, :, :h], qkv[:, :, h:h + kvh], qkv[:, :, h + kvh:]
    seq = torch.zeros(b, l, dtype=torch.long) if seq_idx is None else seq_idx
    pos = torch.zeros(b, l, dtype=torch.float64)
    for r in range(b):
        for t in range(1, l):
            pos[r, t] = pos[r, t - 1] + 1 if seq[r, t] == seq[r, t - 1] else 0
    inv = layer.inv_freq.double()

    def rot(u):
        ang = pos[..., None] * inv
        c, s = ang.cos()[:, :, None], ang.sin()[:, :, None]
        u1, u2 = u[..., : hd // 2], u[..., hd // 2:]
        return torch.cat([u1 * c - u2 * s, u2 * c + u1 * s], -1)

    q, k = rot(q), rot(k)
    k = k.repeat_interleave(h // kvh, dim=2)
    v = v.repeat_interleave(h // kvh, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    i = torch.arange(l)
    mask = (seq[:, :, None] == seq[:, None, :])[:, None]
    if layer.causal:
        mask = mask & (i[:, None] >= i[None, :])
    if layer.window is not None:
        mask = mask & (i[:, None] - i[None, :] < layer.window)
    att = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    y = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, l, h * hd)
    return (y @ layer.out_proj.weight.double().T).float()


@pytest.mark.parametrize("kind", ["attention", "attention-window"])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_reference(kind, causal):
    layer = make(kind, causal=causal)
    x = torch.randn(2, 14, D_MODEL)
    seq_idx = torch.tensor([[0] * 6 + [1] * 8, [3] * 14])
    with torch.no_grad():
        _close(layer(x), _attention_reference(layer, x))
        _close(layer(x, seq_idx=seq_idx), _attention_reference(layer, x, seq_idx))


def test_sliding_window_cache_has_constant_size():
    layer = make("attention-window").eval()
    state = layer.allocate_inference_state(1)
    shapes = set()
    with torch.no_grad():
        for _ in range(12):
            layer.step(torch.randn(1, D_MODEL), state)
            shapes.add(tuple(state["k"].shape))
    assert shapes == {(1, 5, 1, 8)}
    assert int(state["length"]) == 12


@pytest.mark.parametrize("kind", ["mamba", "mamba2", "mamba3", "attention"])
def test_bidirectional_owns_the_flip(kind):
    """The reverse mixer is an ordinary causal mixer; Bidirectional flips its input, document ids and output."""
    fwd, rev = make(kind), make(kind)
    with torch.no_grad():
        for p in rev.parameters():
            p.add_(0.1 * torch.randn_like(p))
    bi = Bidirectional(fwd, rev)
    x = torch.randn(2, 10, D_MODEL)
    seq_idx = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
    with torch.no_grad():
        ref = fwd(x, seq_idx=seq_idx) + rev(x.flip(1), seq_idx=seq_idx.flip(1)).flip(1)
        _close(bi(x, seq_idx=seq_idx), ref)
        # Position 0 of the second row sees what follows it: changing the last input changes it.
        changed = x.clone()
        changed[1, -1] += 1.0
        assert (bi(changed)[1, 0] - bi(x)[1, 0]).abs().max() > 1e-6
    assert {k.split(".")[0] for k in bi.state_dict()} == {"fwd", "rev"}
    for call in (lambda: bi.step(x[:, 0], None), lambda: bi.allocate_inference_state(2),
                 lambda: bi(x, return_state=True)):
        with pytest.raises(ValueError, match="bidirectional.*decode step by step"):
            call()


def test_norms_match_formulas():
    x = torch.randn(3, 4, 16)
    gate = torch.randn(3, 4, 16)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_()
    ref = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    _close(norm(x), ref)
    gnorm = GatedRMSNorm(16, group_size=4, eps=1e-5)
    with torch.no_grad():
        gnorm.weight.uniform_()
    g = (x * torch.nn.functional.silu(gate)).view(3, 4, 4, 4)
    ref = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(3, 4, 16) * gnorm.weight
    _close(gnorm(x, gate), ref)
    whole = GatedRMSNorm(16, eps=1e-5)  # one group: the single-call path
    with torch.no_grad():
        whole.weight.uniform_()
    g = x * torch.nn.functional.silu(gate)
    _close(whole(x, gate), g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5) * whole.weight)


def test_block_residual_in_fp32_and_mlp():
    torch.manual_seed(0)
    mixer = Mamba(D_MODEL, d_state=4, dtype=torch.bfloat16)
    block = Block(D_MODEL, mixer, mlp=GatedMLP(D_MODEL, dtype=torch.bfloat16), residual_in_fp32=True,
                  dtype=torch.bfloat16)
    x = torch.randn(2, 6, D_MODEL, dtype=torch.bfloat16)
    out = block(x)
    assert out.dtype == torch.float32
    ref = x.float() + mixer(block.norm(x))
    ref = ref + block.mlp(block.mlp_norm(ref.to(torch.bfloat16)))
    _close(out, ref, tol=1e-2)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_decoding_follows_in_place_changes_to_A_log(kind):
    """The decoding steps keep -exp(A_log) between calls; an in-place update (an optimizer step, a
    load_state_dict) must be seen by the next step."""
    layer = make(kind).eval()
    x = torch.randn(2, D_MODEL)
    with torch.no_grad():
        layer.step(x, layer.allocate_inference_state(2))  # fills the cache
        layer.A_log.add_(0.7)
        out = layer.step(x, layer.allocate_inference_state(2))
        ref = layer(x[:, None])[:, 0]
    _close(out, ref)
    fresh = make(kind).eval()
    with torch.no_grad():
        fresh.step(x, fresh.allocate_inference_state(2))
        fresh.load_state_dict(layer.state_dict())
        _close(fresh.step(x, fresh.allocate_inference_state(2)), ref)


@pytest.mark.parametrize("kind", ["attention", "attention-window"])
def test_attention_steps_rows_with_different_cache_lengths(kind):
    """Decoding rows whose caches hold different numbers of positions (ragged prompts), through cache growth and
    ring-buffer wrap-around, equals running each row's whole sequence through the parallel forward."""
    from rawseq.layers.state import concat_states

    layer = make(kind).eval()
    prompts = [torch.randn(1, n, D_MODEL) for n in (3, 9)]
    following = torch.randn(2, 7, D_MODEL)
    with torch.no_grad():
        state = concat_states([layer(p, return_state=True)[1] for p in prompts])
        steps = torch.stack([layer.step(following[:, t], state) for t in range(following.shape[1])], dim=1)
        for r, p in enumerate(prompts):
            ref = layer(torch.cat([p, following[r : r + 1]], dim=1))[:, p.shape[1]:]
            _close(steps[r : r + 1], ref)
    assert state["length"].tolist() == [3 + 7, 9 + 7]
