"""``ByteLMConfig``: every choice that shapes a ByteLM, saved as ``config.json`` beside ``model.safetensors``."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

N_BYTES = 256
LAYER_KINDS = ("mamba", "mamba2", "attention")


@dataclass
class ByteLMConfig:
    """Architecture of a :class:`rawseq.ByteLM`.

    Vocabulary: the 256 byte values, then ``n_special`` special symbols (ids 256, 257, ...) whose meaning
    (begin/end, padding, modality tags) the data pipeline defines. ``vocab_size`` overrides the total, for models
    converted from checkpoints with another vocabulary.

    Layers: ``ssm`` ("mamba" or "mamba2") everywhere, except that with ``attention_every=k`` every k-th layer
    (indices k-1, 2k-1, ...) is attention (k=4: three SSM layers per attention layer). ``layers`` lists the kinds
    explicitly instead and then fixes ``n_layers``.
    """

    d_model: int = 256
    n_layers: int = 4
    ssm: str = "mamba2"
    attention_every: int = 0
    layers: list[str] | None = None
    bidirectional: bool = False
    n_special: int = 16
    vocab_size: int | None = None
    pad_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    d_mlp: int = 0
    # selective SSMs (both kinds)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    conv_bias: bool = True
    proj_bias: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    # Mamba-1
    dt_rank: int | None = None
    # Mamba-2
    headdim: int = 64
    n_groups: int = 1
    chunk_size: int | None = None  # None: 64 on CPU, 256 on GPU
    dt_limit: list[float] | None = None
    # attention
    attn_heads: int = 4
    attn_kv_heads: int | None = None
    attn_window: int | None = None
    rope_base: float = 10000.0
    # kernels ("auto", "naive", "torch" or "triton")
    backend: str = "auto"
    initializer_range: float = 0.02
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.layers is not None:
            self.layers = list(self.layers)
            self.n_layers = len(self.layers)
        if self.dt_limit is not None:
            self.dt_limit = [float(v) for v in self.dt_limit]
        self.validate()

    @property
    def total_vocab(self) -> int:
        return N_BYTES + self.n_special if self.vocab_size is None else self.vocab_size

    def layer_kinds(self) -> list[str]:
        """The kind of each layer, in order."""
        if self.layers is not None:
            return list(self.layers)
        kinds = [self.ssm] * self.n_layers
        if self.attention_every:
            for i in range(self.attention_every - 1, self.n_layers, self.attention_every):
                kinds[i] = "attention"
        return kinds

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f"ByteLMConfig.{name}={getattr(self, name)!r}: {why}")

        if self.ssm not in ("mamba", "mamba2"):
            bad("ssm", "must be 'mamba' or 'mamba2'")
        for i, kind in enumerate(self.layers or []):
            if kind not in LAYER_KINDS:
                raise ValueError(f"ByteLMConfig.layers[{i}]={kind!r}: must be one of {LAYER_KINDS}")
        for name in ("d_model", "n_layers", "d_state", "d_conv", "expand", "headdim", "n_groups", "attn_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a positive int")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            bad("chunk_size", "must be a positive int or None")
        if self.attention_every < 0:
            bad("attention_every", "must be >= 0")
        if self.n_special < 0:
            bad("n_special", "must be >= 0")
        if self.vocab_size is not None and self.vocab_size < 1:
            bad("vocab_size", "must be a positive int or None")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.total_vocab:
                bad(name, f"must lie in [0, {self.total_vocab})")
        if self.dt_limit is not None and len(self.dt_limit) != 2:
            bad("dt_limit", "must be [low, high] or None")
        if "mamba2" in self.layer_kinds() and (self.expand * self.d_model) % self.headdim:
            bad("headdim", f"must divide expand * d_model = {self.expand * self.d_model}")
        if "attention" in self.layer_kinds() and self.d_model % self.attn_heads:
            bad("attn_heads", f"must divide d_model={self.d_model}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ByteLMConfig:
        """Build a config, refusing unknown keys with the list of valid ones."""
        return checked_dataclass(cls, data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ByteLMConfig:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


def checked_dataclass(cls, data: dict):
    """``cls(**data)`` for a config dataclass, refusing unknown keys (listing the valid ones) and values (from JSON
    or TOML) that do not fit the field's annotation, each error naming ``Class.field``."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        _check_type(f"{cls.__name__}.{name}", value, hints[name])
    return cls(**data)


def _check_type(name: str, value, hint) -> None:
    """Raise ValueError unless ``value`` (from JSON) fits the field's annotation; ``name`` is ``Class.field``."""
    def fits(v, h) -> bool:
        origin = typing.get_origin(h)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            return any(fits(v, a) for a in typing.get_args(h))
        if h is type(None):
            return v is None
        if origin is list:
            (item,) = typing.get_args(h) or (typing.Any,)
            return isinstance(v, list) and all(fits(x, item) for x in v)
        if origin is dict or h is dict:
            return isinstance(v, dict)
        if h is bool:
            return isinstance(v, bool)
        if h is int:
            return isinstance(v, int) and not isinstance(v, bool)
        if h is float:
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        if h is typing.Any:
            return True
        return isinstance(v, h)

    if not fits(value, hint):
        raise ValueError(f"{name}={value!r} does not match its type {hint}")
