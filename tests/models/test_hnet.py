"""HNet: config checks, the forward contract, packing, extreme routings, decoding equal to the forward, save/load."""

from __future__ import annotations

import math

import pytest
import torch

import rawseq
from rawseq.config import ConfigError
from rawseq.models import from_pretrained
from rawseq.models.hnet_config import parse_layers

SMALL = {"headdim": 16, "d_state": 8, "chunk_size": 8, "attn_heads": 2, "n_special": 4}
ONE = {"layout": ["m1", ["t1m1"], "m1"], "d_model": [32, 48], "ratio": [3.0], **SMALL}
TWO = {"layout": ["m1", ["s1", ["T1"], "m1"], "m1"], "d_model": [32, 32, 48], "ratio": [2.0, 2.0],
       "mlp_width": [0 + 64, 64, 96], **SMALL}


def _model(fields, seed=0, **changes):
    torch.manual_seed(seed)
    model = rawseq.HNet(rawseq.HNetConfig(**{**fields, **changes}))
    with torch.no_grad():  # weights that let the main network matter from the start
        for stage in _stages(model):
            stage.skip.weight.normal_(std=0.1)
    return model.eval()


def _stages(model):
    stage, out = model.stage, []
    while hasattr(stage, "router"):
        out.append(stage)
        stage = stage.main
    return out


# --- config -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,field", [
    ({"ratio": [0.5]}, "ratio"),
    ({"ratio": [1.0]}, "ratio"),
    ({"ratio": [3.0, 2.0]}, "ratio"),
    ({"layout": []}, "layout"),
    ({"layout": ["m2"]}, "layout"),
    ({"layout": ["", ["m2"], "m2"]}, "layout"),
    ({"layout": ["m0", ["m2"], "m2"]}, "layout"),
    ({"layout": ["m2", [""], "m2"]}, "layout"),
    ({"layout": ["m2", [], "m2"]}, "layout"),
    ({"layout": ["m2", "m2", "m2"]}, "layout"),
    ({"layout": ["x2", ["m2"], "m2"]}, "layout"),
    ({"layout": ["m2", ["m2"], "m2 "]}, "layout"),
    ({"d_model": [48, 32]}, "d_model"),
    ({"d_model": [32]}, "d_model"),
    ({"lr_multiplier": [1.0]}, "lr_multiplier"),
    ({"mlp_width": [64, 64, 64]}, "mlp_width"),
    ({"d_mlp": 64}, "d_mlp"),
    ({"d_model": [30, 48]}, "headdim"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"HNetConfig\.{field}"):
        rawseq.HNetConfig(**{**ONE, **changes})


def test_layout_letters_and_json_round_trip():
    assert parse_layers("m2T1s1") == [("mamba2", False), ("mamba2", False), ("attention", True), ("mamba", False)]
    cfg = rawseq.HNetConfig(**TWO)
    assert cfg.stage_layouts() == [["m1", "m1"], ["s1", "m1"], ["T1"]] and cfg.n_stages == 2
    again = rawseq.models.ModelConfig.from_dict(cfg.to_dict())
    assert type(again) is rawseq.HNetConfig and again == cfg
    assert rawseq.HNetConfig(**{**ONE, "layout": ("m1", ("m1",), "m1")}).layout == ["m1", ["m1"], "m1"]


# --- forward ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [ONE, TWO], ids=["one-stage", "two-stages"])
def test_forward_contract_and_gradients_reach_routing(fields):
    model = _model(fields).train()
    ids = torch.randint(0, 256, (3, 40))
    out = model(ids, targets=ids.roll(-1, 1))
    stages = len(fields["ratio"])
    assert out.logits.shape == (3, 40, 260)
    assert out.ratio_loss.shape == out.bytes_per_chunk.shape == out.p_mid_share.shape == (stages,)
    torch.testing.assert_close(out.loss, out.bits_per_byte * math.log(2) + 0.03 * out.ratio_loss.sum())
    metrics = out.metrics()
    assert set(metrics) == {"ratio_loss", *(f"{k}_{i}" for i in range(stages)
                                           for k in ("ratio_loss", "bytes_per_chunk", "p_mid_share"))}
    assert all(math.isfinite(v) for v in metrics.values())
    # bytes per chunk: symbols over chunks, growing inwards; the boundary maps agree with it
    chunks = [int((p >= 0.5).sum()) for p in out.boundary_probs]
    torch.testing.assert_close(out.bytes_per_chunk, torch.tensor([120 / c for c in chunks]))
    assert chunks == sorted(chunks, reverse=True) and bool((out.boundary_probs[0][:, 0] == 1).all())
    out.loss.backward()
    for stage in _stages(model):
        for proj in (stage.router.q_proj, stage.router.k_proj):
            assert proj.weight.grad is not None and float(proj.weight.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.parameters())


def test_lr_multipliers_mark_each_depth():
    model = rawseq.HNet(rawseq.HNetConfig(**{**TWO, "lr_multiplier": [3.0, 2.0, 1.0], "routing_lr_multiplier": 10.0}))
    stage0, stage1 = _stages(model)
    assert model.embed.weight._lr_scale == 3.0 and stage0.encoder.norm.weight._lr_scale == 3.0
    assert stage1.encoder.norm.weight._lr_scale == 2.0 and stage1.main.norm.weight._lr_scale == 1.0
    assert stage0.router.q_proj.weight._lr_scale == 30.0 and stage1.router.k_proj.weight._lr_scale == 20.0
    plain = rawseq.HNet(rawseq.HNetConfig(**{**ONE, "routing_lr_multiplier": 1.0}))
    assert {p._lr_scale for p in plain.parameters()} == {1.0}
    assert stage0.router.q_proj.weight._no_weight_decay


@pytest.mark.parametrize("fields", [ONE, TWO], ids=["one-stage", "two-stages"])
def test_packed_rows_equal_separate_rows(fields):
    model = _model(fields)
    a, b, c = torch.randint(0, 256, (13,)), torch.randint(0, 256, (7,)), torch.randint(0, 256, (20,))
    packed = torch.cat([a, b, c])[None]
    seq_idx = torch.tensor([0] * 13 + [1] * 7 + [2] * 20)[None]
    out = model(packed, seq_idx=seq_idx)
    alone = [model(x[None]) for x in (a, b, c)]
    torch.testing.assert_close(out.logits[0], torch.cat([o.logits[0] for o in alone]), atol=2e-5, rtol=1e-4)
    for i in range(len(fields["ratio"])):
        torch.testing.assert_close(out.boundary_probs[i][0], torch.cat([o.boundary_probs[i][0] for o in alone]))
    # rows of a batch are separate too
    batch = torch.stack([a, c[:13]])
    out = model(batch)
    torch.testing.assert_close(out.logits[1], model(c[None, :13]).logits[0], atol=2e-5, rtol=1e-4)


def test_chunks_of_a_batch_share_grid_rows_without_seeing_each_other():
    from rawseq.models.hnet import _grid

    rows, cols, shape = _grid(torch.tensor([3, 5, 4, 6]), 8)
    assert shape == (3, 8)
    assert rows.tolist() == [0] * 8 + [1] * 4 + [2] * 6
    assert cols.tolist() == [*range(8), *range(4), *range(6)]  # rows 0 and 1 fill grid row 0
    model = _model(ONE)
    ids = torch.randint(0, 256, (5, 16))
    batch = model(ids)
    for r in range(5):
        torch.testing.assert_close(batch.logits[r], model(ids[r : r + 1]).logits[0], atol=2e-5, rtol=1e-4)


class _FixedRouting(torch.nn.Module):
    """The model's routing with every probability that is not a forced start replaced by ``value``."""

    def __init__(self, router, value):
        super().__init__()
        self.router, self.value = router, value

    def _fix(self, p):
        return torch.where(p == 1, p, torch.full_like(p, self.value))

    def allocate_inference_state(self, *args):
        return self.router.allocate_inference_state(*args)

    def forward(self, hidden, seq_idx=None, state=None, return_state=False):
        out = self.router(hidden, seq_idx, state, return_state)
        return (self._fix(out[0]), out[1]) if return_state else self._fix(out)

    def step(self, hidden, state):
        return self._fix(self.router.step(hidden, state))


@pytest.mark.parametrize("value,expect", [(0.7, "all"), (0.2, "first")])
@pytest.mark.parametrize("fields", [ONE, TWO], ids=["one-stage", "two-stages"])
def test_rows_with_every_or_no_boundary_and_length_one(fields, value, expect):
    model = _model(fields)
    for stage in _stages(model):
        stage.router = _FixedRouting(stage.router, value)
    ids = torch.randint(0, 256, (2, 9))
    out = model(ids, targets=ids)
    assert bool(out.loss.isfinite())
    chunks = float(out.bytes_per_chunk[0])
    assert chunks == (1.0 if expect == "all" else 9.0)
    out.loss.backward()
    _check_steps(model, [ids[0].tolist(), ids[1, :4].tolist()], ids.shape[1])
    one = model(ids[:, :1], targets=ids[:, :1])
    assert one.logits.shape == (2, 1, 260) and bool(one.loss.isfinite())


def test_length_one_and_bad_inputs():
    model = _model(ONE)
    out = model(torch.tensor([[5], [6]]), targets=torch.tensor([[1], [2]]))
    assert out.logits.shape == (2, 1, 260) and bool(out.loss.isfinite())
    assert out.bytes_per_chunk.tolist() == [1.0]
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_idx"):
        model(torch.zeros(2, 3, dtype=torch.long), seq_idx=torch.zeros(2, 4, dtype=torch.long))


# --- decoding -----------------------------------------------------------------------------------------------------

def _check_steps(model, prompts, total):
    """prefill_ragged + step over the rest of each row equal the parallel forward of each whole row."""
    torch.manual_seed(1)
    rows = [p + torch.randint(0, 256, (total - len(p),)).tolist() for p in prompts]
    want = [model(torch.tensor([r])).logits[0] for r in rows]
    logits, states = model.prefill_ragged(prompts)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(logits[i], want[i][len(p) - 1], atol=1e-4, rtol=1e-4)
    longest = max(len(p) for p in prompts)
    for t in range(total - min(len(p) for p in prompts)):
        ids = torch.tensor([r[len(p) + t] if len(p) + t < total else 0 for r, p in zip(rows, prompts, strict=True)])
        logits = model.step(ids, states)
        for i, p in enumerate(prompts):
            if len(p) + t < total:
                torch.testing.assert_close(logits[i], want[i][len(p) + t], atol=1e-4, rtol=1e-4,
                                           msg=f"row {i}, position {len(p) + t} (longest prompt {longest})")


@pytest.mark.parametrize("fields", [ONE, TWO], ids=["one-stage", "two-stages"])
def test_step_equals_forward_for_batched_prompts_of_different_lengths(fields):
    model = _model(fields)
    torch.manual_seed(0)
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (1, 6, 11)]
    _check_steps(model, prompts, 24)


@pytest.mark.parametrize("fields", [ONE, TWO], ids=["one-stage", "two-stages"])
def test_forward_continues_from_states(fields):
    model = _model(fields)
    ids = torch.randint(0, 256, (2, 30))
    whole = model(ids)
    first = model(ids[:, :11], return_states=True)
    rest = model(ids[:, 11:], initial_states=first.states, return_states=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), whole.logits, atol=2e-5, rtol=1e-4)
    # from freshly allocated states, too
    fresh = model(ids, initial_states=model.allocate_inference_state(2))
    torch.testing.assert_close(fresh.logits, whole.logits, atol=2e-5, rtol=1e-4)


def test_generate_greedy_follows_the_forward():
    model = _model(ONE)
    prompts = [b"ab", b"hello w"]
    outs = model.generate(prompts, max_new_bytes=12, temperature=0)
    assert [len(o) for o in outs] == [12, 12]
    for prompt, out in zip(prompts, outs, strict=True):
        full = torch.tensor([list(prompt + out)])
        greedy = model(full).logits[0, len(prompt) - 1 : -1, :256].argmax(-1)
        assert greedy.tolist() == list(out)


# --- save / load --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [ONE, TWO], ids=["one-stage", "two-stages"])
def test_save_load_round_trip(tmp_path, fields):
    model = _model(fields, lr_multiplier=[2.0] + [1.0] * len(fields["ratio"]))
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, 256, (2, 17))
    for loaded in (rawseq.HNet.from_pretrained(tmp_path / "m"), from_pretrained(tmp_path / "m")):
        assert type(loaded) is rawseq.HNet and loaded.config == model.config
        torch.testing.assert_close(loaded.eval()(ids).logits, model(ids).logits)
        assert loaded.embed.weight._lr_scale == 2.0
    with pytest.raises(ConfigError, match="not a ByteLM"):
        rawseq.ByteLM.from_pretrained(tmp_path / "m")
