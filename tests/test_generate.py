"""Sampling filters and generation: greedy decoding against a recompute-everything reference, ragged batches."""

from __future__ import annotations

import pytest
import torch

from rawseq import ByteLM, ByteLMConfig
from rawseq.generation import sample

SMALL = {"d_model": 32, "d_state": 8, "headdim": 16, "attn_heads": 2, "chunk_size": 8, "n_special": 4}


def model(layers, **kw) -> ByteLM:
    torch.manual_seed(0)
    return ByteLM(ByteLMConfig(**SMALL, layers=layers, **kw)).eval()


def _greedy_reference(lm: ByteLM, prompt: bytes, n: int) -> bytes:
    """Recompute the full forward for every new byte (no states), taking the argmax over byte values."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = lm(torch.tensor([ids])).logits[0, -1, :256]
            nxt = int(logits.argmax())
            ids.append(nxt)
            out.append(nxt)
    return bytes(out)


@pytest.mark.parametrize("layers", [["mamba", "mamba"], ["mamba2", "attention"]])
def test_greedy_generation_matches_recomputation(layers):
    lm = model(layers)
    prompt = b"The quick brown fox"
    assert lm.generate(prompt, max_new_bytes=12, temperature=0) == _greedy_reference(lm, prompt, 12)


@pytest.mark.parametrize("layers", [["mamba", "mamba"], ["attention", "mamba2"]])
def test_ragged_batch_matches_single_prompts(layers):
    lm = model(layers)
    prompts = [b"a", b"hello world", "caf\u00e9", b"hello"]
    batched = lm.generate(prompts, max_new_bytes=9, temperature=0)
    assert batched == [lm.generate(p, max_new_bytes=9, temperature=0) for p in prompts]
    assert batched[0] == _greedy_reference(lm, b"a", 9)


def test_sampling_is_reproducible_with_a_seed():
    lm = model(["mamba"])
    a = lm.generate([b"xy", b"z"], max_new_bytes=20, temperature=1.0, seed=7)
    b = lm.generate([b"xy", b"z"], max_new_bytes=20, temperature=1.0, seed=7)
    c = lm.generate([b"xy", b"z"], max_new_bytes=20, temperature=1.0, seed=8)
    assert a == b and a != c
    assert all(len(x) == 20 for x in a)


def test_stop_sequences_and_streaming():
    lm = model(["mamba"])
    full = lm.generate(b"abc", max_new_bytes=30, temperature=0)
    stop = full[5:7]
    first = full.find(stop)
    streamed = []
    out = lm.generate(b"abc", max_new_bytes=30, temperature=0, stop=[b"\xff\xfe\xfd", stop],
                      stream=lambda row, data: streamed.append((row, data)))
    assert out == full[: first + len(stop)]
    assert b"".join(d for _, d in streamed) == out and {r for r, _ in streamed} == {0}


def test_eos_stops_a_row_and_special_symbols_are_never_sampled():
    lm = model(["mamba"], eos_id=257)
    with torch.no_grad():
        lm.embed.weight[256:] = 0
        lm.embed.weight[257] = 10 * lm.norm_f(lm.backbone(lm.embed(torch.tensor([[1, 2]]))))[0, -1]
    out = lm.generate(b"\x01\x02", max_new_bytes=10, temperature=0)
    assert out == b""  # eos is the argmax right away
    lm.config.eos_id = None
    out = lm.generate(b"\x01\x02", max_new_bytes=10, temperature=0)
    assert len(out) == 10  # without eos, special symbols are masked and bytes come out


def test_sample_filters():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    assert sample(logits, temperature=0).tolist() == [0, 3]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, top_k=2, generator=g) for _ in range(300)])
    assert set(draws[:, 0].tolist()) == {0, 1} and set(draws[:, 1].tolist()) == {2, 3}
    draws = torch.stack([sample(logits, top_p=0.7, generator=g) for _ in range(300)])
    assert set(draws[:, 0].tolist()) == {0, 1} and set(draws[:, 1].tolist()) == {2, 3}
    draws = torch.stack([sample(logits, min_p=0.45, generator=g) for _ in range(300)])
    assert set(draws[:, 0].tolist()) == {0, 1} and set(draws[:, 1].tolist()) == {1, 2, 3}
    draws = torch.stack([sample(logits, temperature=1.0, generator=g) for _ in range(2000)])
    freq = torch.bincount(draws[:, 0], minlength=4).float() / 2000
    assert torch.allclose(freq, torch.tensor([0.5, 0.25, 0.15, 0.1]), atol=0.05)
    with pytest.raises(ValueError, match="top_p"):
        sample(logits, top_p=0.0)


def test_bidirectional_model_refuses_to_generate():
    lm = model(["mamba"], bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        lm.generate(b"x", max_new_bytes=3)
