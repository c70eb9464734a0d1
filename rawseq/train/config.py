"""Run configuration: the settings every training run shares (:class:`RunConfig`), the language-model run
(:class:`TrainConfig`), and the one loader every command uses (:func:`load`): a preset, a TOML file and
command-line overrides, later ones winning.

A TOML file holds the run keys at top level and the model's in a ``[model]`` table (``model_type`` picks the family
in :mod:`rawseq.models.registry`; its config class's fields are the valid keys). On the command line a key is
``--key=value`` or ``--key value``, a model key ``--model.key=value``; a boolean may be given alone (``--compile``);
lists are ``[4,4,4]`` or ``4,4,4``. Unknown keys are errors that suggest the closest valid key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rawseq.config import Config, ConfigError, option, parse_value, unknown_key

MODALITIES = ("text", "audio", "image", "multimodal")
DEVICES_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"


def check_device(cfg: Config) -> None:
    device = cfg.device
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        cfg.fail("device", f"must be {DEVICES_HELP}")


@dataclass
class RunConfig(Config):
    """What every training run has: where it writes, the optimiser and schedule, the device, the model."""

    default_model_type = "bytelm"

    out_dir: str | None = option(None, help="the run folder (default: a new runs/<preset>/<date-time>, linked as "
                                 "runs/<preset>/latest)", path=True)
    steps: int = option(300, help="optimizer steps (with time_budget_s: the most steps)", min=1, max=10**9)
    time_budget_s: float = option(0.0, help="stop after this many seconds of training steps (evaluations and "
                                  "checkpoints not counted), the cosine schedule decaying over that time rather "
                                  "than over steps (0: off)", min=0.0)
    batch_size: int = option(4, help="sequences per optimizer step, over all processes", min=1, max=1 << 20)
    lr: float = option(2e-3, help="peak learning rate (AdamW)", min=1e-12, max=10.0)
    min_lr_ratio: float = option(0.1, help="the cosine schedule ends at lr * min_lr_ratio", min=0.0, max=1.0)
    warmup_steps: int = option(30, help="linear warmup steps", min=0)
    weight_decay: float = option(0.1, help="AdamW decay of matrices (not norms, biases, embeddings, SSM decays)",
                                 min=0.0, max=10.0)
    beta1: float = option(0.9, help="AdamW beta1", min=0.0, max=0.9999999)
    beta2: float = option(0.95, help="AdamW beta2", min=0.0, max=0.9999999)
    grad_clip: float = option(1.0, help="clip the gradient norm to this (0: no clipping)", min=0.0)
    eval_every: int = option(100, help="steps between evaluations (and at the end)", min=1)
    checkpoint_every: int = option(100, help="steps between checkpoints (and at the end)", min=1)
    keep_checkpoints: int = option(2, help="checkpoints kept", min=1, max=1000)
    max_nonfinite: int = option(10, help="steps with a non-finite loss or gradient tolerated before failing", min=0)
    seed: int = option(0, help="model initialisation and data order", min=0, max=2**63 - 1)
    device: str = option("auto", help=DEVICES_HELP)
    compile: bool = option(False, help="torch.compile the model")
    activation_checkpointing: bool = option(False, help="recompute each block in the backward (less memory)")
    fsdp: bool = option(False, help="under torchrun: FSDP2 instead of DDP")
    log_every: int = option(10, help="steps between log lines", min=1)
    progress: bool = option(True, help="show a progress bar")
    tensorboard: bool = option(False, help="also write TensorBoard events to <out_dir>/tensorboard")
    model: dict = option(default_factory=dict, help="the model's config (a [model] table; model_type picks it)")

    def validate(self) -> None:
        super().validate()
        check_device(self)
        self.model_config()

    def model_config(self):
        """The typed config of ``model`` (its ``model_type``, or this run's default family)."""
        from rawseq.models.config import ModelConfig

        return ModelConfig.from_dict({"model_type": self.default_model_type, **self.model})


@dataclass
class TrainConfig(RunConfig):
    """A language-model run: symbols from ``data`` cut into windows of ``seq_len``; see docs/training.md."""

    data: str | None = option(None, help="file, folder or glob of training data (default: the Python standard "
                              "library's sources)", path=True)
    preset: str = option("tiny-text", help="starting point (tiny-text, tiny-audio, tiny-pixels, ...)")
    modality: str = option("text", help="how files become symbols", choices=MODALITIES)
    audio_codec: str = option("mulaw8", help="audio: mulaw8, linear8 or pcm16", choices=("mulaw8", "linear8", "pcm16"))
    sample_rate: int = option(16000, help="audio: samples per second", min=1, max=1_000_000)
    image_size: int | None = option(None, help="images: resize to this square side", min=1, max=65536)
    image_mode: str = option("RGB", help="images: L, LA, RGB or RGBA (symbols per pixel)",
                             choices=("L", "LA", "RGB", "RGBA"))
    cache_dir: str | None = option(None, help="corpus cache folder (default beside out_dir)", path=True)
    max_corpus_bytes: int = option(0, help="stop adding files past this many bytes (0: no limit)", min=0)
    grad_accum: int = option(1, help="micro-batches per optimizer step", min=1, max=1 << 16)
    seq_len: int = option(512, help="symbols per training window", min=1, max=1 << 24)
    val_fraction: float = option(0.02, help="held-out share of the data", min=1e-9, max=0.999999)
    eval_batches: int = option(8, help="validation batches per evaluation (0: all)", min=0)
    stateful: bool = option(False, help="carry states across consecutive windows of a document (TBPTT)")
    num_workers: int = option(0, help="DataLoader workers", min=0, max=256)
    sample_bytes: int = option(200, help="bytes sampled at the end of a text run (0: none)", min=0, max=1 << 20)
    sample_prompt: str = option("def ", help="prompt of that sample")


def split_args(args: list[str], flags: dict[str, type] | None = None) -> tuple[list[str], dict[str, str]]:
    """Command-line words -> (positional words, {key: text}) for ``--key=value``, ``--key value`` and a boolean
    ``--key`` alone (followed by another option or nothing). ``flags`` names keys whose type is ``bool``."""
    flags = flags or {}
    positional, values = [], {}
    i = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("--") or word == "--":
            positional.append(word)
            i += 1
            continue
        key, eq, text = word[2:].partition("=")
        if not key:
            raise ConfigError(f"{word!r} is not an option")
        if not eq:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if flags.get(key) is bool and (nxt is None or nxt.startswith("--") or nxt.lower() not in
                                           ("true", "false", "1", "0", "yes", "no", "on", "off")):
                text = "true"
            elif nxt is None:
                raise ConfigError(f"--{key} needs a value (--{key}=VALUE or --{key} VALUE)")
            else:
                text = nxt
                i += 1
        values[key] = text  # a key given twice: the later value wins
        i += 1
    return positional, values


def read_toml(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist or is not a file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def presets() -> list[str]:
    """Names of the preset files shipped with rawseq."""
    return sorted(p.name[:-5] for p in resources.files("rawseq.presets").iterdir() if p.name.endswith(".toml"))


def read_preset(name: str) -> dict:
    if name not in presets():
        raise ConfigError(str(unknown_key(name, presets(), "preset")).replace("; valid:", "; presets:"))
    return tomllib.loads(resources.files("rawseq.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8"))


def _merge(*layers: dict) -> dict:
    """Later layers win key by key; a ``model`` table merges field by field unless it names another family."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "model" and isinstance(value, dict) and isinstance(out.get("model"), dict):
                before = out["model"]
                same = value.get("model_type", before.get("model_type")) == before.get("model_type")
                out["model"] = {**before, **value} if same else dict(value)
            else:
                out[key] = value
    return out


def _check_keys(cls, data: dict, source: str) -> None:
    valid = cls.field_names()
    for key in data:
        if key not in valid:
            raise ConfigError(f"{source}: {unknown_key(key, valid)}")
    if "model" in data and not isinstance(data["model"], dict):
        raise ConfigError(f"{source}: 'model' must be a table of model fields")


def typed_overrides(cls, values: dict[str, str], model_class: type | None) -> dict:
    """``{key: text}`` from the command line -> values typed by ``cls``'s fields (``model.*`` by ``model_class``)."""
    hints = cls.hints()
    valid = [k for k in cls.field_names() if k != "model"]
    out: dict[str, Any] = {}
    for key, text in values.items():
        if key.startswith("model.") and model_class is not None:
            name = key[6:]
            if name == "model_type":
                out.setdefault("model", {})[name] = text
                continue
            mhints = model_class.hints()
            if name not in mhints:
                raise unknown_key(name, model_class.field_names(specific_first=True), f"{model_class.__name__} key")
            out.setdefault("model", {})[name] = parse_value(key, text, mhints[name])
        elif key in valid:
            out[key] = parse_value(key, text, hints[key])
        else:
            extra = " (and model.<key>)" if model_class is not None else ""
            raise ConfigError(str(unknown_key(key, valid)) + extra)
    return out


def load(cls, path: str | Path | None = None, overrides: dict[str, str] | None = None, preset: str | None = None):
    """Build ``cls`` (a :class:`RunConfig` or any :class:`Config`) from a preset (if ``cls`` has a ``preset``
    field), a TOML file and command-line overrides ``{key: text}`` (see :func:`split_args`), later ones winning.

    Raises:
        ConfigError: a missing or invalid file, an unknown preset or key (with the closest valid one), a value of
            the wrong type or out of range (naming the field).
    """
    overrides = dict(overrides or {})
    file_data = read_toml(path) if path is not None else {}
    if path is not None:
        _check_keys(cls, file_data, str(path))
    preset_data: dict = {}
    if "preset" in cls.field_names():
        name = preset or overrides.pop("preset", None) or file_data.get("preset") or cls().preset
        preset_data = read_preset(name)
        preset_data["preset"] = name
    elif preset is not None:
        raise ConfigError(f"{cls.__name__} has no presets")
    model_class = None
    if "model" in cls.field_names():
        from rawseq.models.registry import config_class

        model_type = overrides.get("model.model_type") or _merge(preset_data, file_data).get("model", {}).get(
            "model_type", getattr(cls, "default_model_type", "bytelm"))
        model_class = config_class(model_type)
    data = _merge(preset_data, file_data, typed_overrides(cls, overrides, model_class))
    return cls.from_dict(data)


def load_config(path: str | None = None, overrides: list[str] | None = None, preset: str | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a preset, a TOML file and ``--key=value`` / ``--key value`` words."""
    positional, values = split_args(list(overrides or []), {k: v for k, v in TrainConfig.hints().items()})
    if positional:
        raise ConfigError(f"unexpected argument {positional[0]!r}: options are --key=value")
    return load(TrainConfig, path, values, preset)


__all__ = ["RunConfig", "TrainConfig", "load", "load_config", "presets", "read_toml", "split_args"]
