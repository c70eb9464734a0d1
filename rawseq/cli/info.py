"""``rawseq info MODEL`` (what a model folder holds) and ``rawseq convert SOURCE OUT`` (a transformers Mamba or
Mamba-2 checkpoint as a rawseq model folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rawseq.cli import common
from rawseq.config import Config, ConfigError, option

INFO_USAGE = "rawseq info MODEL [--key value ...]"
INFO_SUMMARY = ("What a model folder (or Hub repository id) holds: its family, size, what its symbols are, its "
                "layers or classes, and for a language model the memory its decoding state takes per stream.")
CONVERT_USAGE = "rawseq convert SOURCE OUT [--key value ...]"
CONVERT_SUMMARY = ("Convert a transformers MambaForCausalLM or Mamba2ForCausalLM (a folder written by its "
                   "save_pretrained, or a Hub repository id) into a rawseq model folder OUT. Only config.json and "
                   "*.safetensors are read. The logits agree with the source model's; the vocabulary is kept.")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class InfoConfig(Config):
    """The keys of ``rawseq info``."""

    modules: bool = option(False, help="also print the module tree")
    device: str = option("cpu", help="where the model is loaded: cpu, auto, cuda or cuda:N")


@dataclass
class ConvertConfig(Config):
    """The keys of ``rawseq convert``."""

    dtype: str = option("auto", help="weights' dtype (auto: the checkpoint's)", choices=tuple(DTYPES))
    revision: str | None = option(None, help="a branch, tag or commit, for a Hub repository")
    overwrite: bool = option(False, help="replace a model that OUT already holds")


def _state_bytes(states) -> int:
    if isinstance(states, dict):
        return sum(_state_bytes(v) for v in states.values())
    if isinstance(states, (list, tuple)):
        return sum(_state_bytes(v) for v in states)
    return states.numel() * states.element_size() if isinstance(states, torch.Tensor) else 0


def _has_kv_cache(states) -> bool:
    if isinstance(states, dict):
        return {"k", "v"} <= set(states) or any(_has_kv_cache(v) for v in states.values())
    if isinstance(states, (list, tuple)):
        return any(_has_kv_cache(v) for v in states)
    return False


def describe_signal(cfg) -> str:
    """What a model's symbols are, in words, from its config."""
    modality = getattr(cfg, "modality", None)
    if getattr(cfg, "vocab_size", None) is not None:
        return f"ids of a vocabulary of {cfg.vocab_size} (converted; not bytes)"
    if modality == "audio":
        return (f"audio: {cfg.codec} samples at {cfg.sample_rate} Hz, {cfg.channels} channel(s) (interleaved per "
                "time step)")
    if modality == "image":
        size = f"{cfg.image_size[0]}x{cfg.image_size[1]}" if cfg.image_size else "sizes as found (none recorded)"
        return f"images: {cfg.image_mode} pixels in raster order ({cfg.symbols_per_pixel} per pixel), {size}"
    if modality == "multimodal":
        return "multimodal: text, audio and image segments with markers (rawseq.modalities.multimodal)"
    return "text: UTF-8 bytes" if modality == "text" else str(modality)


def info(words: list[str]) -> int:
    cfg, words = common.parse(words, InfoConfig, INFO_USAGE, INFO_SUMMARY)
    (folder,) = common.positionals(words, ["MODEL"])
    model = common.load_model(folder, cfg.device)
    spec = model.config
    if cfg.modules:
        print(model)
    print(f"model: {folder}")
    print(f"family: {type(spec).model_type} ({type(model).__name__}), {model.num_parameters():,} parameters")
    print(f"symbols: {describe_signal(spec)}")
    if hasattr(spec, "total_vocab"):
        special = f" ({getattr(spec, 'n_special', 0)} special)" if getattr(spec, "vocab_size", None) is None else ""
        print(f"vocabulary: {spec.total_vocab} ids{special}")
    if hasattr(spec, "layer_kinds"):
        print(f"layers: {', '.join(spec.layer_kinds())}")
    elif hasattr(spec, "layout"):
        print(f"layout: {spec.layout}")
    if getattr(spec, "n_classes", 0):
        names = ", ".join(spec.labels) if spec.labels else "unnamed"
        print(f"classes: {spec.n_classes} ({names})")
    if hasattr(model, "step") and not getattr(spec, "bidirectional", False):
        states = model.allocate_inference_state(1, torch.float32)
        growing = (" (+ a KV cache that grows with the context in the attention layers)"
                   if _has_kv_cache(states) and getattr(spec, "attn_window", None) is None
                   else " (fixed: it does not grow with the context)")
        print(f"decoding state per stream: {_state_bytes(states) / 1024:.1f} KiB{growing}")
    else:
        print("encoder: bidirectional, no generation (rawseq.models.encoders)")
    return 0


def convert(words: list[str]) -> int:
    from rawseq.convert import from_transformers
    from rawseq.models.pretrained import CONFIG_NAME, WEIGHTS_NAME

    cfg, words = common.parse(words, ConvertConfig, CONVERT_USAGE, CONVERT_SUMMARY)
    source, out = common.positionals(words, ["SOURCE", "OUT"])
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"OUT={out} exists and is not a folder")
    if (out_dir / CONFIG_NAME).exists() or (out_dir / WEIGHTS_NAME).exists():
        if not cfg.overwrite:
            raise ConfigError(f"OUT={out} already holds a model; pass --overwrite to replace it")
    model = from_transformers(source, dtype=DTYPES[cfg.dtype], revision=cfg.revision)
    model.save_pretrained(out_dir)
    dtype = next(model.parameters()).dtype
    print(f"converted {source} ({', '.join(model.config.layer_kinds())}; {model.num_parameters():,} parameters, "
          f"{model.vocab_size} ids, {str(dtype).removeprefix('torch.')}) to {out_dir}")
    return 0


CHUNKS_USAGE = "rawseq chunks MODEL INPUT [--out FILE]"
CHUNKS_SUMMARY = ("Where an H-Net model starts its chunks in INPUT: for a text model, INPUT (a file, or the text "
                  "itself) printed with its chunk starts marked (| stage 0, ‖ stage 1, ...); for an audio model, a "
                  "PNG of the waveform of INPUT (an audio file) with lines at the chunk starts.")


@dataclass
class ChunksConfig(Config):
    """The keys of ``rawseq chunks``."""

    out: str | None = option(None, help="audio: the PNG to write (default <input name>.chunks.png)", path=True)
    device: str = option("cpu", help="where the model runs: cpu, auto, cuda or cuda:N")


def chunks(words: list[str]) -> int:
    from rawseq.chunks import show_chunks

    cfg, words = common.parse(words, ChunksConfig, CHUNKS_USAGE, CHUNKS_SUMMARY)
    folder, source = common.positionals(words, ["MODEL", "INPUT"])
    model = common.load_model(folder, cfg.device)
    if source.startswith("~"):
        source = str(Path(source).expanduser())
    print(show_chunks(model, source, out=cfg.out))
    return 0
