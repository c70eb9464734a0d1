"""Convert transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` into a :class:`rawseq.ByteLM`.

The parameter layouts match one to one (transformers, like mamba_ssm, orders Mamba-2's ``in_proj`` output as
z, x, B, C, dt), so conversion renames tensors and squeezes the depthwise convolutions' (channels, 1, width)
weights to (channels, width). The vocabulary is carried over as ``vocab_size``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rawseq.config import read_json
from rawseq.models.bytelm import ByteLM
from rawseq.models.config import ByteLMConfig
from rawseq.models.pretrained import load_state_dict_strict

_SUPPORTED = ("mamba", "mamba2")


def _get(cfg, name, default=None):
    return cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)


def _float(v) -> float:
    """A number from a transformers config; its JSON writes infinities as ``{"__float__": "Infinity"}``."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


def config_from_transformers(hf_config) -> ByteLMConfig:
    """A :class:`ByteLMConfig` equivalent to a transformers ``MambaConfig`` or ``Mamba2Config`` (object or dict)."""
    kind = _get(hf_config, "model_type")
    if kind not in _SUPPORTED:
        raise ValueError(f"model_type={kind!r} is not supported; expected one of {_SUPPORTED}")
    act = _get(hf_config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"hidden_act={act!r} is not supported; rawseq's SSM layers use silu")
    hidden = int(_get(hf_config, "hidden_size"))
    dt_rank = _get(hf_config, "time_step_rank", "auto")
    dt_rank = math.ceil(hidden / 16) if dt_rank == "auto" else int(dt_rank)
    common = {
        "d_model": hidden,
        "n_layers": int(_get(hf_config, "num_hidden_layers")),
        "ssm": kind,
        "vocab_size": int(_get(hf_config, "vocab_size")),
        "n_special": 0,
        "tie_embeddings": bool(_get(hf_config, "tie_word_embeddings", kind == "mamba")),
        "norm_eps": float(_get(hf_config, "layer_norm_epsilon", 1e-5)),
        "residual_in_fp32": bool(_get(hf_config, "residual_in_fp32", True)),
        "d_state": int(_get(hf_config, "state_size")),
        "d_conv": int(_get(hf_config, "conv_kernel", 4)),
        "expand": int(_get(hf_config, "expand", 2)),
        "conv_bias": bool(_get(hf_config, "use_conv_bias", True)),
        "proj_bias": bool(_get(hf_config, "use_bias", False)),
        "dt_min": float(_get(hf_config, "time_step_min", 1e-3)),
        "dt_max": float(_get(hf_config, "time_step_max", 1e-1)),
        "dt_init_floor": float(_get(hf_config, "time_step_floor", 1e-4)),
    }
    if kind == "mamba":
        intermediate = _get(hf_config, "intermediate_size", common["expand"] * hidden)
        if intermediate != common["expand"] * hidden:
            raise ValueError(f"intermediate_size={intermediate} must equal expand * hidden_size")
        return ByteLMConfig(dt_rank=dt_rank, **common)
    heads, head_dim = int(_get(hf_config, "num_heads")), int(_get(hf_config, "head_dim"))
    if heads * head_dim != common["expand"] * hidden:
        raise ValueError(f"num_heads * head_dim = {heads * head_dim} must equal expand * hidden_size")
    limit = [_float(v) for v in _get(hf_config, "time_step_limit", (0.0, float("inf")))]
    dt_limit = None if limit[0] <= 0.0 and math.isinf(limit[1]) else limit
    # chunk_size is not carried over: it only trades speed, and rawseq picks it per device.
    return ByteLMConfig(headdim=head_dim, n_groups=int(_get(hf_config, "n_groups", 1)), dt_limit=dt_limit,
                        **common)


def _rename(name: str) -> str:
    """transformers parameter name -> ByteLM parameter name."""
    if name.startswith("backbone.embedding.") or name.startswith("backbone.embeddings."):
        return "embed." + name.split(".")[-1]
    if name.startswith("backbone.norm_f."):
        return name.removeprefix("backbone.")
    if name.startswith("backbone.layers."):
        return name.replace("mixer.conv1d.weight", "mixer.conv_weight").replace("mixer.conv1d.bias",
                                                                                "mixer.conv_bias")
    return name


def state_dict_from_transformers(tensors: dict[str, torch.Tensor], config: ByteLMConfig) -> dict[str, torch.Tensor]:
    """Rename a transformers Mamba/Mamba-2 state dict to ByteLM's names."""
    out = {}
    for name, t in tensors.items():
        new = _rename(name)
        if new == "lm_head.weight" and config.tie_embeddings:
            continue  # the tied output matrix is the embedding
        if new.endswith("mixer.conv_weight") and t.dim() == 3:
            t = t.squeeze(1)  # (channels, 1, width) -> (channels, width)
        out[new] = t
    if not config.tie_embeddings and "lm_head.weight" not in out:
        raise ValueError("the checkpoint has untied embeddings but no lm_head.weight")
    return out


def _load_directory(path: Path):
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found")
    hf_config = read_json(config_path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors file in {path}; only safetensors checkpoints are read (never pickles)"
        )
    from safetensors.torch import load_file

    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return hf_config, tensors


def from_transformers(model, *, device=None, dtype: torch.dtype | None = None, revision: str | None = None,
                      cache_dir: str | Path | None = None, local_files_only: bool = False,
                      token: str | bool | None = None) -> ByteLM:
    """Build a ByteLM with the weights of a transformers Mamba or Mamba-2 causal LM.

    Args:
        model: a ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` instance, a local directory holding its
            ``config.json`` and ``*.safetensors`` (as written by ``save_pretrained``), or a Hub repository id
            (only those files are downloaded; ``revision``, ``cache_dir``, ``local_files_only`` and ``token`` as in
            :func:`rawseq.hub.resolve`).
        device, dtype: where and in which dtype to build the ByteLM (defaults: the checkpoint's, float32 on CPU).

    Returns:
        a ByteLM in eval mode whose logits match the source model's.
    """
    if isinstance(model, (str, Path)):
        from rawseq.hub import resolve

        folder = resolve(model, ["config.json", "*.safetensors"], revision=revision, cache_dir=cache_dir,
                          local_files_only=local_files_only, token=token)
        hf_config, tensors = _load_directory(folder)
    else:
        hf_config = model.config
        tensors = {k: v.detach() for k, v in model.state_dict().items()}
    config = config_from_transformers(hf_config)
    tensors = state_dict_from_transformers(tensors, config)
    if dtype is None:
        dtype = tensors["embed.weight"].dtype
    lm = ByteLM(config, device=device, dtype=dtype)
    load_state_dict_strict(lm, tensors, source="the transformers checkpoint")
    return lm.eval()
