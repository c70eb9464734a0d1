"""Training configuration: one dataclass, read from TOML and ``--key=value`` overrides, checked field by field.

A TOML file holds the training keys at top level and the model's in a ``[model]`` table (the fields of
:class:`rawseq.ByteLMConfig`); on the command line, model keys are written ``--model.d_model=128``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rawseq.models.config import ByteLMConfig

MODALITIES = ("text", "audio", "image", "multimodal")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``model`` holds :class:`ByteLMConfig` fields."""

    data: str | None = None  # file, folder or glob; None = the Python standard library's source files
    out_dir: str = "runs/bytelm"
    preset: str = "tiny-text"
    modality: str = "text"  # how files become symbols: text (raw bytes), audio, image, multimodal
    audio_codec: str = "mulaw8"
    sample_rate: int = 16000
    image_size: int | None = None
    image_mode: str = "RGB"  # L, LA, RGB or RGBA: symbols per pixel = channels
    cache_dir: str | None = None  # corpus cache; default <out_dir>/../.corpus-cache/<hash>
    max_corpus_bytes: int = 0  # 0 = no limit; otherwise stop adding files past this many bytes
    steps: int = 300
    batch_size: int = 4  # sequences per optimizer step, across all processes
    grad_accum: int = 1
    seq_len: int = 512
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    val_fraction: float = 0.02
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_nonfinite: int = 10  # stop after this many skipped steps with a non-finite loss or gradient
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    stateful: bool = False  # carry SSM states across consecutive windows of the same document (TBPTT)
    fsdp: bool = False
    num_workers: int = 0
    log_every: int = 10
    sample_bytes: int = 200  # bytes generated at the end of a text run (0 = none)
    sample_prompt: str = "def "
    progress: bool = True
    model: dict = field(default_factory=dict)

    def validate(self) -> None:
        def bad(name: str, why: str):
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        for name in ("steps", "batch_size", "grad_accum", "seq_len", "checkpoint_every", "keep_checkpoints",
                     "eval_every", "log_every"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("warmup_steps", "eval_batches", "max_nonfinite", "num_workers", "sample_bytes",
                     "max_corpus_bytes"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            bad("val_fraction", "must be between 0 and 1")
        if self.lr <= 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            bad("lr" if self.lr <= 0 else "min_lr_ratio", "lr must be > 0 and min_lr_ratio in [0, 1]")
        if self.modality not in MODALITIES:
            bad("modality", f"must be one of {MODALITIES}")
        if self.image_mode not in ("L", "LA", "RGB", "RGBA"):
            bad("image_mode", "must be one of L, LA, RGB, RGBA")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            bad("device", "must be auto, cpu, cuda or cuda:N")
        self.model_config()  # raises on unknown or mistyped model keys

    def model_config(self) -> ByteLMConfig:
        return ByteLMConfig.from_dict(dict(self.model))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _presets() -> dict[str, dict[str, Any]]:
    """Small, complete starting points; every key can still be overridden."""
    tiny_model = {"d_model": 128, "n_layers": 4, "ssm": "mamba2", "headdim": 32, "d_state": 32, "chunk_size": 64}
    return {
        "tiny-text": {"modality": "text", "seq_len": 256, "batch_size": 8, "steps": 300, "lr": 3e-3,
                      "model": dict(tiny_model)},
        "tiny-audio": {"modality": "audio", "audio_codec": "mulaw8", "seq_len": 1024, "batch_size": 4,
                       "steps": 300, "lr": 2e-3, "sample_bytes": 0,
                       "model": {**tiny_model, "ssm": "mamba", "d_state": 16}},
        "tiny-pixels": {"modality": "image", "image_mode": "L", "seq_len": 192, "batch_size": 8, "steps": 300,
                        "lr": 3e-3,
                        "sample_bytes": 0, "model": dict(tiny_model)},
    }


PRESETS = tuple(_presets())


def _type_of(name: str):
    return typing.get_type_hints(TrainConfig)[name]


def _parse_value(key: str, text: str, hint) -> Any:
    """Turn a command-line string into a value of the annotated type, or raise naming the key."""
    args = typing.get_args(hint)
    if text.lower() in ("none", "null") and type(None) in args:
        return None
    kinds = [a for a in args if a is not type(None)] or [hint]
    for kind in kinds:
        try:
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if kind in (int, float):
                return kind(text)
            if kind is str:
                return text
            if typing.get_origin(kind) is list or kind is list:
                return [x for x in text.split(",") if x]
        except ValueError:
            continue
    raise ValueError(f"--{key}={text!r} is not a valid {hint}")


def parse_overrides(overrides: list[str], config_cls, model_cls) -> dict[str, Any]:
    """``--key=value`` strings -> a dict for ``config_cls`` (``--model.key`` into its ``model`` dict), each value
    parsed by its field's type; unknown keys are errors listing the valid ones."""
    hints, model_hints = typing.get_type_hints(config_cls), typing.get_type_hints(model_cls)
    out: dict[str, Any] = {}
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"override {item!r} must look like --key=value")
        key, text = item[2:].split("=", 1)
        if key.startswith("model."):
            name = key[6:]
            if name not in model_hints:
                raise ValueError(f"unknown model key {name!r}; valid model keys: {', '.join(model_hints)}")
            out.setdefault("model", {})[name] = _parse_value(key, text, model_hints[name])
        elif key in hints and key != "model":
            out[key] = _parse_value(key, text, hints[key])
        else:
            valid = ", ".join(k for k in hints if k != "model")
            raise ValueError(f"unknown key {key!r}; valid keys: {valid} (and model.<field>)")
    return out


def _parse_model_value(key: str, text: str) -> Any:
    hints = typing.get_type_hints(ByteLMConfig)
    if key not in hints:
        valid = ", ".join(f.name for f in dataclasses.fields(ByteLMConfig))
        raise ValueError(f"unknown model key {key!r}; valid model keys: {valid}")
    return _parse_value(f"model.{key}", text, hints[key])


def _check_keys(data: dict, source: str) -> None:
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; valid keys: {', '.join(valid)}")
    for key, value in data.items():
        if key == "model":
            if not isinstance(value, dict):
                raise ValueError(f"{source}: 'model' must be a table of ByteLMConfig fields")
            continue
        hint = _type_of(key)
        kinds = typing.get_args(hint) or (hint,)
        ok = any(
            (k is type(None) and value is None)
            or (k is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (k is int and isinstance(value, int) and not isinstance(value, bool))
            or (k not in (int, float, type(None)) and isinstance(value, k))
            for k in kinds
        )
        if not ok:
            raise ValueError(f"{source}: {key}={value!r} does not match its type {hint}")


def load_config(path: str | None = None, overrides: list[str] | None = None, preset: str | None = None) -> TrainConfig:
    """Build a TrainConfig from a preset, then a TOML file, then ``--key=value`` overrides (later wins).

    Raises:
        ValueError: for a missing/unreadable file, bad TOML, unknown keys (listing the valid ones), values of the
            wrong type, or an unknown preset (listing the presets).
    """
    data: dict[str, Any] = {}
    file_data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file {path} does not exist or is not a file")
        try:
            file_data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
        _check_keys(file_data, str(path))
    cli: dict[str, Any] = {}
    cli_model: dict[str, Any] = {}
    for item in overrides or []:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"override {item!r} must look like --key=value")
        key, text = item[2:].split("=", 1)
        if key.startswith("model."):
            cli_model[key[6:]] = _parse_model_value(key[6:], text)
        else:
            if key not in {f.name for f in dataclasses.fields(TrainConfig)} or key == "model":
                valid = ", ".join(f.name for f in dataclasses.fields(TrainConfig) if f.name != "model")
                raise ValueError(f"unknown key {key!r}; valid keys: {valid} (and model.<field>)")
            cli[key] = _parse_value(key, text, _type_of(key))
    name = preset or cli.get("preset") or file_data.get("preset") or TrainConfig.preset
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(presets)}")
    for layer in (presets[name], file_data, cli):
        model = layer.get("model")
        data.update({k: v for k, v in layer.items() if k != "model"})
        if model:
            data["model"] = {**data.get("model", {}), **model}
    if cli_model:
        data["model"] = {**data.get("model", {}), **cli_model}
    data["preset"] = name
    cfg = TrainConfig(**data)
    cfg.validate()
    return cfg
