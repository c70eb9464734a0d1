"""Bidirectional SSM encoders over raw symbols: ``AudioEncoder`` (samples), ``ImageEncoder`` (pixels) and
``TextEncoder`` (bytes), with an optional classification head.

    symbols (b, l) -> embed -> [strided front end] -> bidirectional Backbone -> RMSNorm -> features (b, l', d)
    features -> mean over each item's positions -> pooled (n, d) -> [ClassificationHead] -> logits (n, classes)

Items of different lengths are packed into one row with ``seq_idx`` (every item its own document: the forward and
reverse scans and the convolutions reset at item boundaries), so no padding enters any other item's features or
pooled embedding. The audio front end is learned: each stage folds ``s`` consecutive positions into one
(``(b, l, d) -> (b, l / s, s * d) -> Linear -> GELU``), a strided convolution whose windows never straddle two items.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rawseq.layers import RMSNorm
from rawseq.models.backbone import Backbone
from rawseq.models.bytelm import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_strict
from rawseq.models.config import ByteLMConfig, checked_dataclass

MODALITIES = ("audio", "image", "text")
N_SYMBOLS = 256


@dataclass
class EncoderConfig:
    """Architecture and input handling of an encoder; saved as ``config.json`` beside ``model.safetensors``.

    ``modality`` picks how :meth:`Encoder.encode` turns inputs into symbols: audio waveforms through ``codec`` at
    ``sample_rate``, images in ``image_mode`` (resized to ``image_size`` when set), text as its UTF-8 bytes.
    ``frontend_strides`` folds that many positions per stage before the SSM layers (audio: ``[4, 4]`` reads 16
    samples per position). ``n_classes > 0`` adds a classification head; ``labels`` names its classes.
    """

    modality: str = "text"
    d_model: int = 64
    n_layers: int = 2
    ssm: str = "mamba2"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 32
    chunk_size: int = 64
    d_mlp: int = 0
    n_positions: int = 0  # > 0: learned position embeddings for fixed-size inputs (images); 0 = none
    frontend_strides: list[int] = field(default_factory=list)
    codec: str = "mulaw8"
    sample_rate: int = 16000
    image_mode: str = "L"
    image_size: int | None = None
    max_length: int | None = None  # inputs longer than this many symbols are cut (None = no limit)
    n_classes: int = 0
    labels: list[str] | None = None
    dropout: float = 0.0
    norm_eps: float = 1e-5
    backend: str = "auto"
    initializer_range: float = 0.02

    def __post_init__(self):
        self.frontend_strides = [int(s) for s in self.frontend_strides]
        if self.labels is not None:
            self.labels = [str(s) for s in self.labels]
        self.validate()

    @property
    def total_stride(self) -> int:
        return math.prod(self.frontend_strides)

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f"EncoderConfig.{name}={getattr(self, name)!r}: {why}")

        if self.modality not in MODALITIES:
            bad("modality", f"must be one of {MODALITIES}")
        if any(s < 1 for s in self.frontend_strides):
            bad("frontend_strides", "every stride must be >= 1")
        if self.n_classes < 0:
            bad("n_classes", "must be >= 0")
        if self.labels is not None and len(self.labels) != self.n_classes:
            bad("labels", f"must name the {self.n_classes} classes")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must lie in [0, 1)")
        if self.n_positions < 0:
            bad("n_positions", "must be >= 0")
        self.backbone_config()  # the SSM fields are checked by ByteLMConfig

    def backbone_config(self) -> ByteLMConfig:
        """The bidirectional ByteLM-style configuration of the SSM layers."""
        return ByteLMConfig(
            d_model=self.d_model, n_layers=self.n_layers, ssm=self.ssm, bidirectional=True, d_mlp=self.d_mlp,
            d_state=self.d_state, d_conv=self.d_conv, expand=self.expand, headdim=self.headdim,
            chunk_size=self.chunk_size, norm_eps=self.norm_eps, backend=self.backend, n_special=0,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        """Build a config, refusing unknown keys (with the list of valid ones) and values of the wrong type."""
        return checked_dataclass(cls, data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EncoderConfig:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


class EncoderOutput(NamedTuple):
    features: torch.Tensor  # (b, l', d) per position; packed rows hold several items one after another
    pooled: torch.Tensor  # (n, d) one embedding per item
    lengths: torch.Tensor  # (n,) positions of each item in ``features`` (after the front end)
    logits: torch.Tensor | None = None  # (n, n_classes)
    loss: torch.Tensor | None = None


class Encoded(NamedTuple):
    """What :meth:`Encoder.encode` returns: per-item features and pooled embeddings (or logits with a head)."""

    features: list[torch.Tensor] | torch.Tensor  # [(l_i', d)], or (l', d) for a single input
    pooled: torch.Tensor  # (n, d), or (d,) for a single input
    logits: torch.Tensor | None = None  # (n, n_classes), or (n_classes,)


class ClassificationHead(nn.Module):
    """pooled (n, d) -> dropout -> Linear -> logits (n, n_classes)."""

    def __init__(self, d_model: int, n_classes: int, *, dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, n_classes, device=device, dtype=dtype)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled))


class _Fold(nn.Module):
    """One front-end stage: (b, l, d) -> (b, l / s, s * d) -> Linear -> GELU -> (b, l / s, d)."""

    def __init__(self, d_model: int, stride: int, *, device=None, dtype=None):
        super().__init__()
        self.stride = stride
        self.proj = nn.Linear(stride * d_model, d_model, device=device, dtype=dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(rearrange(hidden, "b (l s) d -> b l (s d)", s=self.stride)))


class Encoder(nn.Module):
    """A bidirectional SSM encoder; use :class:`AudioEncoder`, :class:`ImageEncoder` or :class:`TextEncoder`."""

    modality: str | None = None

    def __init__(self, config: EncoderConfig | None = None, *, device=None, dtype=None, **overrides):
        super().__init__()
        if config is None:
            config = EncoderConfig(**{"modality": self.modality or "text", **overrides})
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if self.modality is not None and config.modality != self.modality:
            raise ValueError(f"{type(self).__name__} needs modality={self.modality!r}, config has {config.modality!r}")
        self.config = config
        kw = {"device": device, "dtype": dtype}
        self.embed = nn.Embedding(N_SYMBOLS, config.d_model, **kw)
        self.pos_embed = nn.Embedding(config.n_positions, config.d_model, **kw) if config.n_positions else None
        self.frontend = nn.ModuleList(_Fold(config.d_model, s, **kw) for s in config.frontend_strides)
        self.backbone = Backbone(config.backbone_config(), **kw)
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps, **kw)
        self.head = (ClassificationHead(config.d_model, config.n_classes, dropout=config.dropout, **kw)
                     if config.n_classes else None)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        std = self.config.initializer_range
        nn.init.normal_(self.embed.weight, std=std)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=std)
        residuals = len(self.backbone.layers) * (2 if self.config.d_mlp else 1)
        for name, p in self.backbone.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("mlp.w_out.weight"):
                p /= math.sqrt(residuals)
        if self.head is not None:
            nn.init.normal_(self.head.proj.weight, std=std)
            nn.init.zeros_(self.head.proj.bias)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor | list[int] | None = None,
        labels: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode a batch of symbol sequences.

        Args:
            input_ids: (b, l) symbols in 0..255. Without ``lengths`` each row is one item; with ``lengths`` the
                single row (b = 1) holds ``len(lengths)`` items back to back, which never see one another.
            lengths: (n,) symbols per packed item, summing to l.
            labels: (n,) class ids; with a head, the cross-entropy loss is returned.

        Returns:
            EncoderOutput(features (b, l', d), pooled (n, d), lengths (n,) in feature positions, logits, loss).
            With a front end of total stride S, each item is zero-padded (after the embedding) to a multiple of S,
            so l_i' = ceil(l_i / S).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        stride = self.config.total_stride
        hidden = self.embed(input_ids.long())  # (b, l) -> (b, l, d)
        if lengths is None:
            n_items, length = input_ids.shape
            pad = -length % stride
            hidden = F.pad(hidden, (0, 0, 0, pad))
            frames = torch.full((n_items,), (length + pad) // stride, dtype=torch.long, device=hidden.device)
            seq_idx = None
        else:
            lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
            if input_ids.shape[0] != 1 or int(lengths.sum()) != input_ids.shape[1] or bool((lengths < 1).any()):
                raise ValueError("packed input needs one row whose length is the sum of positive item lengths, "
                                 f"got shape {tuple(input_ids.shape)} and lengths {lengths.tolist()}")
            if stride > 1:
                # Every item starts at a multiple of the stride, so no folded window straddles two items.
                parts = hidden[0].split(lengths.tolist())
                hidden = torch.cat([F.pad(p, (0, 0, 0, -len(p) % stride)) for p in parts]).unsqueeze(0)
            frames = (lengths + stride - 1) // stride
            frames = frames.to(hidden.device)
            seq_idx = torch.repeat_interleave(torch.arange(len(frames), device=hidden.device, dtype=torch.int32),
                                              frames).unsqueeze(0)
        for fold in self.frontend:
            hidden = fold(hidden)  # (b, l, d) -> (b, l / s, d)
        if self.pos_embed is not None:
            hidden = hidden + self.pos_embed(self._positions(hidden.shape[1], frames, seq_idx))
        hidden = self.backbone(hidden, seq_idx=seq_idx)
        features = self.norm_f(hidden.to(self.norm_f.weight.dtype))
        if seq_idx is None:
            pooled = features.mean(dim=1)  # (b, l', d) -> (b, d)
        else:
            sums = features.new_zeros(len(frames), features.shape[-1]).index_add_(0, seq_idx[0].long(), features[0])
            pooled = sums / frames.unsqueeze(1).to(sums.dtype)
        logits = loss = None
        if self.head is not None:
            logits = self.head(pooled)
            if labels is not None:
                loss = F.cross_entropy(logits.float(), labels.to(logits.device).long())
        return EncoderOutput(features, pooled, frames, logits, loss)

    def _positions(self, length: int, frames: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
        if int(frames.max()) > self.config.n_positions:
            raise ValueError(f"an item has {int(frames.max())} positions, more than n_positions="
                             f"{self.config.n_positions}")
        if seq_idx is None:
            return torch.arange(length, device=frames.device).unsqueeze(0)
        starts = torch.cumsum(frames, 0) - frames
        return (torch.arange(length, device=frames.device) - starts[seq_idx[0].long()]).unsqueeze(0)

    def to_symbols(self, item) -> torch.Tensor:
        """One input -> 1-D uint8 symbols; see the subclasses for what each modality accepts."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, inputs, *, batch_size: int = 32) -> Encoded:
        """Encode one input or a list of inputs of any lengths, in eval mode and without gradients.

        Args:
            inputs: one input, or a list or tuple of them (a batch); what an input may be depends on the modality
                (see :meth:`to_symbols`). Items of equal length share a batch; items of different lengths are
                packed, each its own document, so results never depend on what else is in the batch.
            batch_size: items per forward pass.

        Returns:
            Encoded(features, pooled, logits): for a batch, a list of (l_i', d) tensors, (n, d) and (n, classes);
            for a single input, (l', d), (d,) and (classes,).
        """
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        if not items:
            raise ValueError("encode needs at least one input")
        symbols = [self._checked_symbols(x, i) for i, x in enumerate(items)]
        was_training = self.training
        self.eval()
        features, pooled, logits = [], [], []
        try:
            for start in range(0, len(symbols), batch_size):
                chunk = [s.to(self.device) for s in symbols[start : start + batch_size]]
                if all(len(s) == len(chunk[0]) for s in chunk):
                    out = self(torch.stack(chunk))
                    features += list(out.features.unbind(0))
                else:
                    out = self(torch.cat(chunk).unsqueeze(0), lengths=[len(s) for s in chunk])
                    features += list(out.features[0].split(out.lengths.tolist()))
                pooled.append(out.pooled)
                if out.logits is not None:
                    logits.append(out.logits)
        finally:
            self.train(was_training)
        pooled = torch.cat(pooled)
        logits = torch.cat(logits) if logits else None
        if single:
            return Encoded(features[0], pooled[0], None if logits is None else logits[0])
        return Encoded(features, pooled, logits)

    def _checked_symbols(self, item, index: int) -> torch.Tensor:
        s = self.to_symbols(item)
        if s.dim() != 1 or s.numel() == 0:
            raise ValueError(f"input {index} gives {tuple(s.shape)} symbols; expected a non-empty 1-D sequence")
        if self.config.max_length is not None:
            s = s[: self.config.max_length]
        return s

    @torch.no_grad()
    def classify(self, inputs, *, batch_size: int = 32) -> list[str] | list[int]:
        """Predicted class of each input: its label name when the config has ``labels``, else its index."""
        if self.head is None:
            raise ValueError("this encoder has no classification head (n_classes=0)")
        single = not isinstance(inputs, (list, tuple))
        logits = self.encode([inputs] if single else inputs, batch_size=batch_size).logits
        pred = logits.argmax(-1).tolist()
        if self.config.labels is not None:
            pred = [self.config.labels[p] for p in pred]
        return pred[0] if single else pred

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if missing)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "rawseq": type(self).__name__})

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device=None, dtype=None) -> Encoder:
        """Load an encoder written by :meth:`save_pretrained` (JSON and safetensors only, nothing unpickled).

        ``Encoder.from_pretrained`` returns the class that matches the saved modality; a subclass refuses a
        directory of another modality.

        Raises:
            FileNotFoundError: a file is missing. ValueError: invalid config, wrong modality, or a missing,
            unexpected or misshapen tensor.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            config = EncoderConfig.load(directory / CONFIG_NAME)
        except json.JSONDecodeError as e:
            raise ValueError(f"{directory / CONFIG_NAME} is not valid JSON: {e}") from e
        klass = _BY_MODALITY[config.modality] if cls is Encoder else cls
        model = klass(config, device=device, dtype=dtype)
        tensors = load_file(str(directory / WEIGHTS_NAME), device=str(device) if device is not None else "cpu")
        load_state_dict_strict(model, tensors, source=str(directory / WEIGHTS_NAME))
        return model


def _symbols_tensor(item) -> torch.Tensor | None:
    """Integer tensors and arrays that already hold symbols (uint8, or int values in 0..255), else None."""
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return torch.from_numpy(item.copy())
    if isinstance(item, torch.Tensor) and item.dtype == torch.uint8:
        return item.detach().cpu()
    return None


class AudioEncoder(Encoder):
    """Encoder over raw audio samples (quantised by ``config.codec``, default 8-bit mu-law, at ``sample_rate``).

    ``encode`` accepts: a file path or an encoded file's bytes (any format libsndfile reads; mixed to mono and
    resampled to ``config.sample_rate``); a float waveform (numpy or tensor, ``(time,)`` or ``(channels, time)`` in
    [-1, 1] at ``config.sample_rate``; channels are averaged); an int16 waveform; or uint8 symbols already quantised.
    """

    modality = "audio"

    def to_symbols(self, item) -> torch.Tensor:
        from rawseq.modalities import audio

        symbols = _symbols_tensor(item)
        if symbols is not None:
            return symbols.reshape(-1)
        if isinstance(item, (str, os.PathLike, bytes)):
            wave = audio.load(item, sample_rate=self.config.sample_rate, mono=True)
        else:
            wave = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item).detach().cpu()
            if wave.dtype == torch.int16:
                wave = wave.float() / 32768.0  # exact, as in modalities.audio
            if wave.dim() == 2:
                wave = wave.float().mean(0, keepdim=True)
        return audio.encode(wave, self.config.codec)


class ImageEncoder(Encoder):
    """Encoder over pixels in raster order (``config.image_mode``, resized to ``config.image_size`` when set).

    ``encode`` accepts: a file path (PNG, JPEG, GIF, WebP); a PIL image; a uint8 numpy array ``(h, w)`` or
    ``(h, w, c)`` (PIL's layout); a uint8 tensor ``(h, w)`` or ``(c, h, w)`` (torchvision's layout).
    """

    modality = "image"

    def to_symbols(self, item) -> torch.Tensor:
        from rawseq.modalities import image

        mode, size = self.config.image_mode, self.config.image_size
        if isinstance(item, (str, os.PathLike)):
            return image.to_bytes(image.load(item, mode=mode, size=size))
        if type(item).__module__.startswith("PIL."):
            item = np.asarray(item.convert(mode))
        if isinstance(item, np.ndarray):
            t = torch.from_numpy(np.array(item, copy=True))
            t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)  # (h, w, c) -> (c, h, w)
        elif isinstance(item, torch.Tensor):
            t = item.detach().cpu()
            t = t.unsqueeze(0) if t.dim() == 2 else t
        else:
            raise TypeError(f"ImageEncoder cannot read {type(item).__name__}")
        if t.dtype != torch.uint8:
            raise ValueError(f"image arrays must be uint8 pixels, got {t.dtype}")
        t = _convert_mode(t, mode)
        if size is not None:
            from rawseq.modalities.image import _resize

            t = _resize(t, size)
        return image.to_bytes(t.contiguous())


def _convert_mode(t: torch.Tensor, mode: str) -> torch.Tensor:
    """Channels of a uint8 (c, h, w) image to ``mode`` (L, LA, RGB, RGBA), as PIL does for the common cases."""
    from rawseq.modalities.image import MODES

    want, have = MODES[mode], t.shape[0]
    if have == want:
        return t
    color = t[:3] if have >= 3 else t[:1].expand(3, -1, -1)
    alpha = t[-1:] if have in (2, 4) else torch.full_like(t[:1], 255)
    if want in (1, 2):
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        gray = (color.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        return gray if want == 1 else torch.cat([gray, alpha])
    return color.contiguous() if want == 3 else torch.cat([color, alpha])


class TextEncoder(Encoder):
    """Encoder over raw bytes. ``encode`` accepts: ``str`` (its UTF-8 bytes), bytes, a ``pathlib.Path`` (the
    file's bytes; a plain ``str`` is always text) or uint8 symbols."""

    modality = "text"

    def to_symbols(self, item) -> torch.Tensor:
        from rawseq.modalities import text

        symbols = _symbols_tensor(item)
        if symbols is not None:
            return symbols.reshape(-1)
        if isinstance(item, os.PathLike):
            return text.load(item)
        return text.encode(item)


_BY_MODALITY = {"audio": AudioEncoder, "image": ImageEncoder, "text": TextEncoder}
