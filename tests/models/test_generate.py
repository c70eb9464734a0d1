"""Sampling filters and generation: greedy decoding against a recompute-everything reference, ragged batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rawseq import ByteLM, ByteLMConfig
from rawseq.generation import (
    NonFiniteLogitsError,
    generate,
    generate_audio,
    generate_images,
    penalize_repetition,
    sample,
)

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


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits never change: what generate() samples is exactly its sampling rule."""

    def __init__(self, logits, **config):
        super().__init__()
        self.logits = logits
        self.config = SimpleNamespace(**{"bidirectional": False, "bos_id": None, "eos_id": None,
                                         "vocab_size": None, **config})
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def prefill_ragged(self, prompts):
        return self.logits.expand(len(prompts), -1).clone(), None

    def step(self, ids, states):
        return self.logits.expand(len(ids), -1).clone()


def test_generate_samples_at_the_given_temperature():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    fake = FixedLogits(probs.log())
    n = 4000
    for temperature in (0.5, 1.7):
        draws = generate(fake, [[0]] * n, max_new_tokens=1, temperature=temperature, seed=0, return_ids=True)
        freq = torch.bincount(torch.tensor(draws).flatten(), minlength=4).float() / n
        expected = (probs.log() / temperature).softmax(-1)  # 0.5: [0.72, 0.18, 0.07, 0.03]
        torch.testing.assert_close(freq, expected, atol=0.03, rtol=0)
    greedy = generate(fake, [[0]] * 5, max_new_tokens=3, do_sample=False, return_ids=True)
    assert greedy == [[0, 0, 0]] * 5


def test_repetition_penalty_follows_transformers():
    logits = torch.tensor([[2.0, 1.5, -1.0, 0.5]])
    seen = torch.tensor([[True, False, True, False]])
    torch.testing.assert_close(penalize_repetition(logits, seen, 2.0), torch.tensor([[1.0, 1.5, -2.0, 0.5]]))
    try:
        from transformers import RepetitionPenaltyLogitsProcessor
    except ImportError:
        pass
    else:
        theirs = RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[0, 2, 0]]), logits.clone())
        torch.testing.assert_close(penalize_repetition(logits, seen, 2.0), theirs)
    fake = FixedLogits(logits[0])
    assert generate(fake, [3], max_new_tokens=3, do_sample=False, repetition_penalty=2.0, return_ids=True) == \
        [0, 1, 0]  # 0 wins, then 0 is penalised (1.0 < 1.5), then 1 too (0.75 < 1.0)


def test_hf_style_arguments_ids_and_streamer():
    lm = model(["mamba"], eos_id=257)
    prompts = torch.tensor([list(b"ab"), list(b"cd")])
    assert lm.generate(prompts, max_new_tokens=5, temperature=0) == lm.generate([b"ab", b"cd"], max_new_bytes=5,
                                                                                temperature=0)

    class Streamer:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.tolist())

        def end(self):
            self.calls.append("end")

    streamer = Streamer()
    ids = generate(lm, prompts, max_new_tokens=4, temperature=0, return_ids=True, streamer=streamer)
    assert streamer.calls[0] == prompts.tolist() and streamer.calls[-1] == "end"
    assert [list(step) for step in zip(*ids)] == streamer.calls[1:-1]
    with pytest.raises(ValueError, match="one length"):
        generate(lm, [b"a", b"bc"], max_new_tokens=2, streamer=Streamer())
    only = generate(lm, b"x", max_new_tokens=6, allowed_ids=[257], return_ids=True)
    assert only == [257]  # the end id ends the row and, with return_ids, stays in it
    assert generate(lm, b"x", max_new_tokens=6, allowed_ids=[257]) == b""


def test_a_real_vocabulary_is_sampled_whole():
    logits = torch.full((300,), -10.0)
    logits[280] = 10.0
    fake = FixedLogits(logits, vocab_size=300)
    assert generate(fake, [1, 2], max_new_tokens=2, temperature=0, return_ids=True) == [280, 280]
    with pytest.raises(ValueError, match="return_ids"):
        generate(fake, [1, 2], max_new_tokens=2, temperature=0)
    byte_model = FixedLogits(logits)  # a byte vocabulary: special ids are never drawn
    assert max(generate(byte_model, [1], max_new_tokens=3, temperature=0, return_ids=True)) < 256


def test_non_finite_logits_are_an_error():
    fake = FixedLogits(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(NonFiniteLogitsError, match="non-finite logits"):
        generate(fake, [0], max_new_tokens=3, temperature=0)
    masked = FixedLogits(torch.tensor([0.0, float("-inf"), 1.0]))  # -inf alone is a probability of zero
    assert [1] not in generate(masked, [[0]] * 50, max_new_tokens=1, seed=0, return_ids=True)
    with pytest.raises(NonFiniteLogitsError):
        generate(FixedLogits(torch.full((3,), float("-inf"))), [0], max_new_tokens=1)
    with pytest.raises(ValueError, match="top_k=0"):
        generate(masked, [0], top_k=0, do_sample=False)  # checked whether or not it would be used
    lm = model(["mamba"])
    with torch.no_grad():
        lm.norm_f.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLogitsError):
        lm.generate(b"ab", max_new_tokens=3)


def test_audio_and_image_helpers_follow_the_config():
    torch.manual_seed(0)
    lm = ByteLM(ByteLMConfig(**SMALL, layers=["mamba2"], modality="audio", codec="pcm16", channels=2,
                             sample_rate=1000)).eval()
    clips = generate_audio(lm, 2, seconds=0.05, seed=0)
    assert [tuple(c.shape) for c in clips] == [(2, 50), (2, 50)]
    prompt = torch.zeros(2, 30)
    assert generate_audio(lm, seconds=0.02, prompt=prompt, sampling_rate=3000, seed=0)[0].shape == (2, 10 + 20)
    with pytest.raises(ValueError, match="channels"):
        generate_audio(lm, prompt=torch.zeros(3, 30))
    pixels = ByteLM(ByteLMConfig(**SMALL, layers=["mamba2"], modality="image", image_mode="RGB",
                                 image_size=[3, 2])).eval()
    pictures = generate_images(pixels, 3, seed=0)
    assert [tuple(p.shape) for p in pictures] == [(3, 3, 2)] * 3 and all(p.dtype == torch.uint8 for p in pictures)
    with pytest.raises(ValueError, match="audio"):
        generate_audio(pixels)
