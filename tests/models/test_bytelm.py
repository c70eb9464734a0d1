"""ByteLM: decoding equals the parallel forward, state carrying, packing, loss, save/load, torch.compile."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from rawseq import ByteLM, ByteLMConfig
from rawseq.layers import detach_states, state_bytes

SMALL = {"d_model": 32, "d_state": 8, "headdim": 16, "attn_heads": 2, "chunk_size": 8, "n_special": 4}
ARCHS = {
    "mamba": {"layers": ["mamba", "mamba"]},
    "mamba2": {"layers": ["mamba2", "mamba2"]},
    "hybrid": {"layers": ["mamba", "attention", "mamba2"], "attn_kv_heads": 1, "d_mlp": 48},
    "hybrid-window": {"n_layers": 2, "ssm": "mamba2", "attention_every": 2, "attn_window": 4},
    "mamba3-conv": {"layers": ["mamba3", "mamba3"], "mamba3_conv": True},
}


def model(arch: str, **kw) -> ByteLM:
    torch.manual_seed(0)
    return ByteLM(ByteLMConfig(**SMALL, **ARCHS[arch], **kw)).eval()


@pytest.fixture(params=list(ARCHS))
def lm(request) -> ByteLM:
    """The small model of each architecture in ``ARCHS``."""
    return model(request.param)


def _close(a, b, tol=1e-4):
    scale = b.abs().max().clamp_min(1e-6)
    assert torch.isfinite(a).all()
    assert (a - b).abs().max() / scale < tol, f"relative error {float((a - b).abs().max() / scale):.3g}"


def test_layer_pattern():
    cfg = ByteLMConfig(n_layers=8, ssm="mamba", attention_every=4)
    assert cfg.layer_kinds() == ["mamba"] * 3 + ["attention"] + ["mamba"] * 3 + ["attention"]
    assert ByteLMConfig(layers=["attention", "mamba2"]).n_layers == 2
    assert ByteLMConfig(n_special=16).total_vocab == 272
    with pytest.raises(ValueError, match="layers\\[1\\]"):
        ByteLMConfig(layers=["mamba", "rnn"])


def test_step_decoding_matches_parallel_forward(lm):
    ids = torch.randint(0, 260, (2, 15))
    with torch.no_grad():
        ref = lm(ids).logits
        states = lm.allocate_inference_state(2)
        steps = torch.stack([lm.step(ids[:, t], states) for t in range(ids.shape[1])], dim=1)
    _close(steps, ref)


def test_prefill_then_steps_matches_forward(lm):
    ids = torch.randint(0, 256, (3, 17))
    with torch.no_grad():
        ref = lm(ids).logits
        last, states = lm.prefill(ids[:, :9])
        steps = [last] + [lm.step(ids[:, t], states) for t in range(9, 17)]
    _close(torch.stack(steps, dim=1), ref[:, 8:])


def test_rows_of_a_batch_are_independent(lm):
    ids = torch.randint(0, 256, (3, 12))
    with torch.no_grad():
        batched = lm(ids).logits
        for r in range(3):
            _close(batched[r:r + 1], lm(ids[r:r + 1]).logits)
        other = ids.clone()
        other[1] = torch.randint(0, 256, (12,))
        changed = lm(other).logits
    _close(changed[0], batched[0])
    _close(changed[2], batched[2])


def test_gradients_reach_every_parameter(lm):
    lm.train()
    ids = torch.randint(0, 256, (2, 10))
    lm(ids, targets=ids.roll(-1, 1)).loss.backward()
    for name, p in lm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_carried_states_across_windows_match_one_pass(lm):
    """The hook for stateful long-stream training: detached states fed into the next window."""
    ids = torch.randint(0, 256, (2, 20))
    ref = lm(ids).logits
    first = lm(ids[:, :11], return_states=True)
    second = lm(ids[:, 11:], initial_states=detach_states(first.states), return_states=True)
    _close(torch.cat([first.logits, second.logits], dim=1), ref)
    second.logits.sum().backward()  # a trainer backpropagates through the second window only


def test_seq_idx_packing_matches_separate_documents(lm):
    lengths = [6, 11, 3]
    ids = torch.randint(0, 256, (1, sum(lengths)))
    seq_idx = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))[None].int()
    with torch.no_grad():
        packed = lm(ids, seq_idx=seq_idx).logits
        parts = torch.cat([lm(p).logits for p in ids.split(lengths, dim=1)], dim=1)
    _close(packed, parts)


def test_loss_is_cross_entropy_in_nats_and_bits_per_byte():
    lm = model("mamba", pad_id=258)
    ids = torch.randint(0, 256, (2, 9))
    targets = torch.randint(0, 256, (2, 9))
    targets[0, -3:] = 258
    targets[1, 0] = -100
    out = lm(ids, targets=targets)
    keep = (targets != 258) & (targets != -100)
    ref = F.cross_entropy(out.logits[keep].double(), targets[keep])
    assert abs(out.loss.detach().item() - ref.item()) < 1e-5
    assert abs(out.bits_per_byte.detach().item() - ref.item() / math.log(2)) < 1e-5


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_pure_ssm_state_size_does_not_grow(arch):
    lm = model(arch)
    with torch.no_grad():
        _, states = lm.prefill(torch.randint(0, 256, (1, 5)))
        before = state_bytes(states)
        for _ in range(200):
            lm.step(torch.randint(0, 256, (1,)), states)
        _, long_states = lm.prefill(torch.randint(0, 256, (1, 300)))
    assert state_bytes(states) == before == state_bytes(long_states)


def test_bidirectional_encoder():
    lm = model("hybrid", bidirectional=True)
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        base = lm(ids).logits
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % 256
        # the first position sees the last one
        assert (lm(changed).logits[0, 0] - base[0, 0]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="bidirectional"):
        lm.allocate_inference_state(1)


@pytest.mark.parametrize("arch", ["mamba", "hybrid"])
def test_save_and_load_roundtrip(arch, tmp_path):
    lm = model(arch, tie_embeddings=(arch == "mamba"))
    lm.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = ByteLM.from_pretrained(tmp_path)
    assert loaded.config == lm.config
    ids = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, lm(ids).logits)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model("mamba").save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called")

    monkeypatch.setattr(torch, "load", refuse)
    ByteLM.from_pretrained(tmp_path)


def test_load_errors_name_the_problem(tmp_path):
    model("mamba").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for change, match in [
        ({"d_state": 4}, "A_log has shape"),
        ({"d_stat": 4}, r"unknown ByteLMConfig key 'd_stat' \(did you mean 'd_state'\?\); valid: d_model"),
        ({"d_state": "8"}, "d_state='8' does not match"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=match):
            ByteLM.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ByteLM.from_pretrained(tmp_path)


def _real_empty(monkeypatch):
    """Undo conftest's NaN-filling ``torch.empty`` wrappers, which inductor cannot trace through."""
    monkeypatch.setattr(torch, "empty", torch.empty.__wrapped__)
    monkeypatch.setattr(torch, "empty_like", torch.empty_like.__wrapped__)
    monkeypatch.setattr(torch.Tensor, "new_empty", torch.Tensor.new_empty.__wrapped__)


@pytest.mark.parametrize(
    "backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]
)
def test_torch_compile_matches_eager(backend, monkeypatch):
    """torch.compile traces every layer kind (Mamba, attention, Mamba-2) in one graph and matches eager."""
    _real_empty(monkeypatch)
    lm = model("hybrid")
    ids = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        eager = lm(ids).logits
        compiled = torch.compile(lm, backend=backend, fullgraph=False)(ids).logits
    _close(compiled, eager, tol=1e-4)
    torch._dynamo.reset()
