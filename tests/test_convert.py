"""transformers' Mamba / Mamba-2 causal LMs convert to ByteLMs with the same logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from rawseq.convert import from_transformers  # noqa: E402


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _mamba(tie=True, bias=False):
    cfg = transformers.MambaConfig(vocab_size=300, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                   conv_kernel=4, use_bias=bias, tie_word_embeddings=tie)
    return transformers.MambaForCausalLM(cfg).eval()


def _mamba2(tie=False, limit=(0.0, float("inf"))):
    cfg = transformers.Mamba2Config(vocab_size=259, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                    num_heads=4, head_dim=16, n_groups=2, chunk_size=8, tie_word_embeddings=tie,
                                    time_step_limit=limit)
    return transformers.Mamba2ForCausalLM(cfg).eval()


def _randomize(hf):
    """Fresh transformers models have D = 1, zero biases and ones as norm weights: perturb everything."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


CASES = {
    "mamba-tied": lambda: _mamba(),
    "mamba-untied-bias": lambda: _mamba(tie=False, bias=True),
    "mamba2-untied": lambda: _mamba2(),
    "mamba2-tied-dtlimit": lambda: _mamba2(tie=True, limit=(0.01, 0.08)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_in_memory_model(case):
    torch.manual_seed(0)
    hf = _randomize(CASES[case]())
    lm = from_transformers(hf)
    assert lm.vocab_size == hf.config.vocab_size
    ids = torch.randint(0, hf.config.vocab_size, (2, 21))
    with torch.no_grad():
        ref = hf(ids).logits
        out = lm(ids).logits
        assert _rel(out, ref) < 1e-4
        # and decoding through the converted model's states agrees with the parallel forward
        last, states = lm.prefill(ids[:, :10])
        steps = torch.stack([last] + [lm.step(ids[:, t], states) for t in range(10, 21)], dim=1)
        assert _rel(steps, ref[:, 9:]) < 1e-4


@pytest.mark.parametrize("case", ["mamba-tied", "mamba2-untied"])
def test_logits_match_from_local_directory(case, tmp_path):
    torch.manual_seed(0)
    hf = _randomize(CASES[case]())
    hf.save_pretrained(tmp_path)
    lm = from_transformers(tmp_path)
    ids = torch.randint(0, hf.config.vocab_size, (1, 13))
    with torch.no_grad():
        assert _rel(lm(ids).logits, hf(ids).logits) < 1e-4
    # the converted model saves and reloads as a plain ByteLM
    lm.save_pretrained(tmp_path / "rawseq")
    from rawseq import ByteLM

    again = ByteLM.from_pretrained(tmp_path / "rawseq")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, lm(ids).logits)


def test_unsupported_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        from rawseq.convert import config_from_transformers

        config_from_transformers({"model_type": "llama"})
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_transformers(tmp_path)
