"""Model configs: the base of every family (:class:`ModelConfig`), what a model's symbols are (:class:`SignalSpec`)
and :class:`ByteLMConfig`. Each is saved as ``config.json`` beside ``model.safetensors``, with a ``model_type`` key
that the registry (:mod:`rawseq.models.registry`) uses to build the right family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rawseq.config import Config, ConfigError, option
from rawseq.modalities.symbols import N_SYMBOLS

LAYER_KINDS = ("mamba", "mamba2", "mamba3", "attention")
SSM_KINDS = ("mamba", "mamba2", "mamba3")
MODALITIES = ("text", "audio", "image", "multimodal")
AUDIO_CODECS = ("mulaw8", "linear8", "pcm16")
IMAGE_MODES = ("L", "LA", "RGB", "RGBA")


@dataclass
class ModelConfig(Config):
    """Base of every model family's config; ``model_type`` (a class attribute, written into ``config.json``) names
    the family."""

    model_type: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: dict, *, source: str | None = None):
        """Build the config of the family that ``data["model_type"]`` names (a subclass of ``cls``); without a
        ``model_type`` key, ``cls`` itself (or, for folders written before the key existed, its legacy form)."""
        from rawseq.models import registry

        if not isinstance(data, dict):
            return super().from_dict(data, source=source)
        data = dict(data)
        name = data.pop("model_type", None)
        if name is None:
            target = registry.legacy_config_class(cls, data)
        else:
            target = registry.config_class(name, source=source)
            if not issubclass(target, cls):
                where = f"{source}: " if source else ""
                raise ConfigError(f"{where}model_type={name!r} is a {target.__name__}, not a {cls.__name__}")
        return Config.from_dict.__func__(target, target.upgrade(data), source=source)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """Turn the keys of an older ``config.json`` of this family into today's (default: unchanged)."""
        return data


@dataclass
class SignalSpec(Config):
    """What a model's symbols are, so that a saved model says how to feed it and how to read what it generates."""

    modality: str = option("text", help="what the symbols are: text bytes, audio samples, image pixels, multimodal",
                           choices=MODALITIES)
    codec: str = option("mulaw8", help="audio: how a sample becomes symbols", choices=AUDIO_CODECS)
    sample_rate: int = option(16000, help="audio: samples per second", min=1, max=1_000_000)
    channels: int = option(1, help="audio: channels, interleaved per time step", min=1, max=8)
    image_mode: str = option("L", help="images: L, LA, RGB or RGBA (symbols per pixel: 1, 2, 3, 4)",
                             choices=IMAGE_MODES)
    image_size: list[int] | int | None = option(None, help="images: [height, width] (or one side of a square) "
                                                "every image is resized to", min=1, max=65536)

    def validate(self) -> None:
        super().validate()
        if isinstance(self.image_size, int):
            self.image_size = [self.image_size, self.image_size]
        if self.image_size is not None and len(self.image_size) != 2:
            self.fail("image_size", "must be [height, width]")

    @property
    def symbols_per_pixel(self) -> int:
        return IMAGE_MODES.index(self.image_mode) + 1

    def signal(self) -> dict:
        """The fields of :class:`SignalSpec` alone."""
        return {name: getattr(self, name) for name in SignalSpec.field_names()}


@dataclass
class LMConfig(SignalSpec, ModelConfig):
    """Base of the language-model families: the :class:`SignalSpec` fields and the vocabulary.

    Vocabulary: the 256 symbol values, then ``n_special`` special symbols (ids 256, 257, ...) whose meaning
    (begin/end, padding, modality tags) the data pipeline defines. ``vocab_size`` overrides the total, for models
    converted from checkpoints with another vocabulary.
    """

    n_special: int = option(16, help="special symbols after the 256 symbol values", min=0, max=1 << 20)
    vocab_size: int | None = option(None, help="total vocabulary (converted models); default 256 + n_special",
                                    min=1, max=1 << 24)
    pad_id: int | None = option(None, help="id ignored in targets", min=0)
    bos_id: int | None = option(None, help="id a generation starts from when the prompt is empty", min=0)
    eos_id: int | None = option(None, help="id that ends a generated row", min=0)
    tie_embeddings: bool = option(True, help="output matrix = embedding matrix")
    initializer_range: float = option(0.02, help="std of the embedding initialisation", min=0.0, max=10.0)

    @property
    def total_vocab(self) -> int:
        return N_SYMBOLS + self.n_special if self.vocab_size is None else self.vocab_size

    def validate(self) -> None:
        super().validate()
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and value >= self.total_vocab:
                self.fail(name, f"must lie in [0, {self.total_vocab})")


@dataclass
class LayerSpec(Config):
    """Settings of the layers themselves (SSM, attention, MLP, norms), shared by every family that stacks them."""

    norm_eps: float = option(1e-5, help="RMSNorm epsilon", min=1e-12, max=1.0)
    residual_in_fp32: bool = option(True, help="carry the residual stream in float32")
    d_mlp: int = option(0, help="hidden width of a gated MLP after each mixer (0: none)", min=0, max=1 << 18)
    d_state: int = option(16, help="SSM state size per channel (Mamba) or head (Mamba-2)", min=1, max=1024)
    d_conv: int = option(4, help="causal convolution width", min=1, max=64)
    expand: int = option(2, help="inner width = expand * d_model", min=1, max=16)
    conv_bias: bool = option(True, help="bias in the causal convolution")
    proj_bias: bool = option(False, help="bias in the input/output projections")
    dt_min: float = option(1e-3, help="smallest initial step size", min=0.0)
    dt_max: float = option(1e-1, help="largest initial step size", min=0.0)
    dt_init_floor: float = option(1e-4, help="floor of the initial step size", min=0.0)
    dt_rank: int | None = option(None, help="Mamba-1: rank of the dt projection (default ceil(d_model / 16))",
                                 min=1, max=65536)
    headdim: int = option(64, help="Mamba-2/3: channels per head", min=1, max=1024)
    n_groups: int = option(1, help="Mamba-2/3: groups of heads sharing B and C", min=1, max=1024)
    chunk_size: int | None = option(None, help="Mamba-2/3: chunk length of the chunked scan (default: the layer's "
                                    "choice for the device)", min=1, max=4096)
    mimo_rank: int | None = option(None, help="Mamba-3: inputs and outputs per head (MIMO rank; None: SISO)", min=1,
                                   max=64)
    rope_fraction: float = option(0.5, help="Mamba-3: share of the state rotated by the data-dependent angles",
                                  min=0.0, max=1.0)
    outproj_norm: bool = option(False, help="Mamba-3: RMSNorm of each head's output before the gate and out_proj")
    A_bias: bool = option(False, help="Mamba-3: a per-head offset of the data-dependent decay, started so that the "
                          "heads' decay rates spread over [1, 16] as Mamba-2's do (default: all near 1)")
    mamba3_conv: bool = option(False, help="Mamba-3: a causal convolution of width d_conv with SiLU over x, B and C "
                               "before the scan, as in Mamba-2 (the Mamba-3 paper's layer has none)")
    dt_limit: list[float] | None = option(None, help="Mamba-2: [low, high] clamp of the step size", min=0.0,
                                          allow_inf=True)
    attn_heads: int = option(4, help="attention: query heads", min=1, max=1024)
    attn_kv_heads: int | None = option(None, help="attention: key/value heads (default attn_heads)", min=1,
                                       max=1024)
    attn_window: int | None = option(None, help="attention: sliding window (default: the whole context)", min=1)
    rope_base: float = option(10000.0, help="attention: rotary base frequency", min=1.0)
    backend: str = option("auto", help="kernels: auto, naive, torch or triton",
                          choices=("auto", "naive", "torch", "triton"))

    def validate(self) -> None:
        super().validate()
        if self.dt_limit is not None and (len(self.dt_limit) != 2 or self.dt_limit[0] > self.dt_limit[1]):
            self.fail("dt_limit", "must be [low, high] with low <= high, or None")
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")

    def check_width(self, d_model: int, kinds: list[str], where: str = "d_model") -> None:
        """Raise ConfigError unless layers of ``kinds`` can be built at width ``d_model``."""
        if "mamba2" in kinds or "mamba3" in kinds:
            if (self.expand * d_model) % self.headdim:
                self.fail("headdim", f"must divide expand * {where} = {self.expand * d_model}")
            if (self.expand * d_model // self.headdim) % self.n_groups:
                self.fail("n_groups", f"must divide the number of heads {self.expand * d_model // self.headdim}")
        if "mamba3" in kinds and int(self.d_state * self.rope_fraction) // 2 > 0 and self.d_state % 2:
            self.fail("d_state", "must be even when Mamba-3 rotates part of the state (rope_fraction > 0)")
        if "attention" in kinds:
            if d_model % self.attn_heads:
                self.fail("attn_heads", f"must divide {where}={d_model}")
            if (d_model // self.attn_heads) % 2:
                self.fail("attn_heads", f"must leave an even head width (rotary pairs) at {where}={d_model}")
            if self.attn_kv_heads is not None and self.attn_heads % self.attn_kv_heads:
                self.fail("attn_kv_heads", f"must divide attn_heads={self.attn_heads}")

    def layer_spec(self) -> dict:
        """The fields of :class:`LayerSpec` alone."""
        return {name: getattr(self, name) for name in LayerSpec.field_names()}


@dataclass
class ByteLMConfig(LayerSpec, LMConfig):
    """Architecture of a :class:`rawseq.ByteLM`: a stack of ``n_layers`` residual blocks of width ``d_model``, plus
    the vocabulary (:class:`LMConfig`), the signal (:class:`SignalSpec`) and layer settings (:class:`LayerSpec`).

    Layers: ``ssm`` everywhere, except that with ``attention_every=k`` every k-th layer (indices k-1, 2k-1, ...) is
    attention (k=4: three SSM layers per attention layer). ``layers`` lists the kinds explicitly instead and then
    fixes ``n_layers``.
    """

    model_type: ClassVar[str] = "bytelm"

    d_model: int = option(256, help="width of the residual stream", min=1, max=65536)
    n_layers: int = option(4, help="residual blocks", min=1, max=1024)
    ssm: str = option("mamba2", help="SSM layer kind", choices=SSM_KINDS)
    attention_every: int = option(0, help="k > 0: every k-th layer is attention (a hybrid)", min=0, max=1024)
    layers: list[str] | None = option(None, help="explicit layer kinds (overrides ssm/attention_every/n_layers)",
                                      choices=LAYER_KINDS)
    bidirectional: bool = option(False, help="encoder: forward + reverse scans, non-causal attention")

    def validate(self) -> None:
        super().validate()
        if self.layers is not None:
            if not self.layers:
                self.fail("layers", "must list at least one layer kind, or be None")
            self.n_layers = len(self.layers)
        self.check_width(self.d_model, self.layer_kinds())

    def layer_kinds(self) -> list[str]:
        """The kind of each layer, in order."""
        if self.layers is not None:
            return list(self.layers)
        kinds = [self.ssm] * self.n_layers
        if self.attention_every:
            for i in range(self.attention_every - 1, self.n_layers, self.attention_every):
                kinds[i] = "attention"
        return kinds

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        extra = data.pop("extra", None)
        if extra:
            raise ConfigError(f"{cls.__name__}: the untyped 'extra' settings {sorted(extra)} are no longer read; "
                              "SaShiMi models are model_type 'sashimi' with typed 'pools' and 'width_expand'")
        return data


__all__ = ["ByteLMConfig", "ConfigError", "LAYER_KINDS", "LMConfig", "LayerSpec", "ModelConfig", "SSM_KINDS",
           "SignalSpec"]
