"""transformers' Mamba / Mamba-2 causal LMs convert to ByteLMs with the same logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from rawseq.convert import from_transformers  # noqa: E402


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _mamba(tie=True, bias=False, eps=1e-5):
    cfg = transformers.MambaConfig(vocab_size=300, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                   conv_kernel=4, use_bias=bias, tie_word_embeddings=tie, layer_norm_epsilon=eps)
    return transformers.MambaForCausalLM(cfg).eval()


def _mamba2(tie=False, limit=(0.0, float("inf")), eps=1e-5):
    cfg = transformers.Mamba2Config(vocab_size=259, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                    num_heads=4, head_dim=16, n_groups=2, chunk_size=8, tie_word_embeddings=tie,
                                    time_step_limit=limit, layer_norm_epsilon=eps)
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
    # An epsilon far from the default changes the logits: reading it from the wrong key cannot pass.
    "mamba-eps": lambda: _mamba(eps=0.05),
    "mamba2-eps": lambda: _mamba2(eps=0.05),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_in_memory_model(case):
    torch.manual_seed(0)
    hf = _randomize(CASES[case]())
    lm = from_transformers(hf)
    assert lm.vocab_size == hf.config.vocab_size and lm.config.norm_eps == hf.config.layer_norm_epsilon
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


def test_eps_matters_at_these_shapes():
    """The epsilon cases above can fail: the same weights with the default epsilon give other logits."""
    torch.manual_seed(0)
    hf = _randomize(_mamba2(eps=0.05))
    lm = from_transformers(hf)
    wrong = type(lm)(lm.config.replace(norm_eps=1e-5)).eval()
    wrong.load_state_dict(lm.state_dict())
    ids = torch.randint(0, 259, (1, 9))
    with torch.no_grad():
        assert _rel(wrong(ids).logits, hf(ids).logits) > 1e-3


def test_cli_converts_a_local_checkpoint_and_greedy_ids_agree(tmp_path, capsys):
    from rawseq.cli import main
    from rawseq.generation import generate
    from rawseq.models import from_pretrained

    torch.manual_seed(0)
    hf = _randomize(_mamba())
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    assert "converted" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    lm = from_pretrained(tmp_path / "ours")
    prompt = torch.tensor([[5, 280, 17]])
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)[0, 3:].tolist()
    assert generate(lm, prompt, max_new_tokens=6, do_sample=False, return_ids=True) == [theirs]
