"""SaShiMi backbone: step-by-step decoding equals the parallel forward, causality, constant state, save/load."""

from __future__ import annotations

import pytest
import torch

from rawseq.layers import state_bytes
from rawseq.models.sashimi import DownPool, SashimiConfig, SashimiLM, UpPool


def _model(ssm: str, pools, **kw) -> SashimiLM:
    cfg = SashimiConfig(pools=pools, d_model=16, n_layers=1, ssm=ssm, headdim=8, d_state=8, chunk_size=8,
                         n_special=0, **kw)
    return SashimiLM(cfg).double().eval()


CASES = [
    pytest.param("mamba", [2, 3], 23, id="mamba-pools2x3-L23"),
    pytest.param("mamba2", [4], 17, id="mamba2-pool4-L17"),
    pytest.param("mamba2", [2, 2, 2], 16, id="mamba2-pools2x2x2-L16"),
]


@pytest.mark.parametrize("ssm, pools, length", CASES)
def test_step_equals_forward_with_constant_state(ssm, pools, length):
    model = _model(ssm, pools, d_mlp=32)
    ids = torch.randint(0, 256, (3, length))
    ref = model(ids).logits
    states = model.allocate_inference_state(3, dtype=torch.float64)
    size = state_bytes(states)
    steps = []
    for t in range(length):
        steps.append(model.step(ids[:, t], states))
        assert state_bytes(states) == size
    torch.testing.assert_close(torch.stack(steps, 1), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("ssm, pools, length", CASES)
def test_forward_is_causal(ssm, pools, length):
    model = _model(ssm, pools)
    ids = torch.randint(0, 256, (2, length))
    changed = ids.clone()
    cut = length // 2
    changed[:, cut:] = (changed[:, cut:] + 1) % 256
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :cut], b[:, :cut], atol=0, rtol=0)
    assert not torch.allclose(a[:, cut:], b[:, cut:])


def test_coarse_levels_carry_information():
    # The coarse path must reach the output: zeroing the up-pool changes later positions.
    model = _model("mamba2", [2, 2])
    ids = torch.randint(0, 256, (1, 16))
    ref = model(ids).logits
    with torch.no_grad():
        model.backbone.up_pool[0].proj.weight.zero_()
        model.backbone.up_pool[0].proj.bias.zero_()
    out = model(ids).logits
    torch.testing.assert_close(out[:, :2], ref[:, :2])  # before the first coarse step arrives
    assert not torch.allclose(out[:, 2:], ref[:, 2:])


def test_pools_reference():
    down, up = DownPool(3, 5, 2).double(), UpPool(5, 3, 2).double()
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    coarse = down(x)
    for j in range(3):
        torch.testing.assert_close(coarse[0, j], down.proj(x[0, 2 * j : 2 * j + 2].reshape(-1)))
    fine = up(coarse)
    torch.testing.assert_close(fine[0, :2], torch.zeros(2, 3, dtype=torch.float64))
    for j in range(2):
        torch.testing.assert_close(fine[0, 2 * j + 2 : 2 * j + 4], up.proj(coarse[0, j]).reshape(2, 3))


def test_ragged_prompts_decode_together():
    model = _model("mamba", [2, 3])
    ids = torch.randint(0, 256, (2, 14))
    ref = model(ids).logits
    logits, states = model.prefill_ragged([ids[0, :5].tolist(), ids[1, :9].tolist()])
    torch.testing.assert_close(logits, torch.stack([ref[0, 4], ref[1, 8]]))
    for k in range(4):  # the two streams sit at different phases of every pool
        out = model.step(torch.stack([ids[0, 5 + k], ids[1, 9 + k]]), states)
        torch.testing.assert_close(out, torch.stack([ref[0, 5 + k], ref[1, 9 + k]]))


def test_generate_save_and_load(tmp_path):
    model = _model("mamba2", [2, 2]).float()
    out = model.generate(b"ab", max_new_bytes=5, temperature=0)
    assert len(out) == 5
    model.save_pretrained(tmp_path / "m")
    loaded = SashimiLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 256, (1, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert isinstance(loaded.config, SashimiConfig) and loaded.config.pools == [2, 2]


def test_forward_refuses_what_it_cannot_do():
    model = _model("mamba2", [2])
    with pytest.raises(ValueError, match="step"):
        model(torch.zeros(1, 4, dtype=torch.long), return_states=True)


def test_packed_documents_equal_separate_rows():
    model = _model("mamba2", [2, 3])
    docs = [torch.randint(0, 256, (n,)) for n in (5, 13, 1, 9)]
    rows = [torch.cat(docs[:2]), torch.cat(docs[2:])]
    seq_idx = torch.tensor([[0] * 5 + [1] * 13, [0] * 1 + [1] * 9 + [2] * 8])
    packed = torch.stack([rows[0], torch.cat([rows[1], torch.randint(0, 256, (8,))])])
    out = model(packed, seq_idx=seq_idx).logits
    alone = [model(d.unsqueeze(0)).logits[0] for d in docs]
    torch.testing.assert_close(out[0], torch.cat(alone[:2]))
    torch.testing.assert_close(out[1, :10], torch.cat(alone[2:]))


def test_sashimi_trains_from_the_command_line(tmp_path):
    from rawseq.cli import main
    from rawseq.models import from_pretrained

    data = tmp_path / "data.txt"
    data.write_bytes(bytes(range(256)) * 40)
    code = main(["train", f"--data={data}", f"--out_dir={tmp_path / 'run'}", "--steps=2", "--seq_len=64",
                 "--batch_size=2", "--progress=false", "--sample_bytes=0", "--eval_batches=1",
                 "--model.model_type=sashimi", "--model.pools=[2,2]", "--model.d_model=16", "--model.n_layers=1",
                 "--model.headdim=8", "--model.d_state=8", "--model.chunk_size=8"])
    assert code == 0
    model = from_pretrained(tmp_path / "run/model")
    assert isinstance(model, SashimiLM) and model.config.pools == [2, 2]
