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
import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rawseq.config import ConfigError, option
from rawseq.layers import RMSNorm
from rawseq.modalities.symbols import N_SYMBOLS
from rawseq.models.backbone import Backbone, scale_residual_writes
from rawseq.models.config import SSM_KINDS, ByteLMConfig, ModelConfig, SignalSpec
from rawseq.models.pretrained import PretrainedModel
from rawseq.models.registry import register

MODALITIES = ("audio", "image", "text")


@dataclass
class EncoderConfig(SignalSpec, ModelConfig):
    """Architecture and input handling of an encoder; saved as ``config.json`` beside ``model.safetensors``.

    ``modality`` (audio, image or text) picks how :meth:`Encoder.encode` turns inputs into symbols: audio waveforms
    through ``codec`` at ``sample_rate``, images in ``image_mode`` (resized to ``image_size`` when set), text as
    its UTF-8 bytes. ``frontend_strides`` folds that many positions per stage before the SSM layers (audio:
    ``[4, 4]`` reads 16 samples per position). ``n_classes > 0`` adds a classification head; ``labels`` names its
    classes.
    """

    model_type: ClassVar[str] = "encoder"

    d_model: int = option(64, help="width of the residual stream", min=1, max=65536)
    n_layers: int = option(2, help="bidirectional residual blocks", min=1, max=1024)
    ssm: str = option("mamba2", help="SSM layer kind", choices=SSM_KINDS)
    d_state: int = option(16, help="SSM state size", min=1, max=1024)
    d_conv: int = option(4, help="causal convolution width", min=1, max=64)
    expand: int = option(2, help="inner width = expand * d_model", min=1, max=16)
    headdim: int = option(32, help="Mamba-2: channels per head", min=1, max=1024)
    chunk_size: int = option(64, help="Mamba-2: SSD chunk length", min=1, max=4096)
    d_mlp: int = option(0, help="hidden width of a gated MLP after each mixer (0: none)", min=0, max=1 << 18)
    n_positions: int = option(0, help="> 0: learned position embeddings for fixed-size inputs (images)", min=0,
                              max=1 << 24)
    frontend_strides: list[int] = option(default_factory=list, help="fold this many positions per front-end stage",
                                         min=1, max=4096)
    max_length: int | None = option(None, help="inputs longer than this many symbols are cut", min=1)
    n_classes: int = option(0, help="> 0: a classification head with this many classes", min=0, max=1 << 20)
    labels: list[str] | None = option(None, help="class names, one per class")
    dropout: float = option(0.0, help="dropout before the classification head", min=0.0, max=0.99)
    norm_eps: float = option(1e-5, help="RMSNorm epsilon", min=1e-12, max=1.0)
    backend: str = option("auto", help="kernels: auto, naive, torch or triton",
                          choices=("auto", "naive", "torch", "triton"))
    initializer_range: float = option(0.02, help="std of the embedding initialisation", min=0.0, max=10.0)

    @property
    def total_stride(self) -> int:
        return math.prod(self.frontend_strides)

    def validate(self) -> None:
        super().validate()
        if self.modality not in MODALITIES:
            self.fail("modality", f"must be one of {MODALITIES}")
        if self.labels is not None and len(self.labels) != self.n_classes:
            self.fail("labels", f"must name the {self.n_classes} classes")
        try:
            self.backbone_config()
        except ConfigError as exc:  # the SSM fields are checked by ByteLMConfig
            raise ConfigError(str(exc).replace("ByteLMConfig.", "EncoderConfig.")) from None

    def backbone_config(self) -> ByteLMConfig:
        """The bidirectional ByteLM-style configuration of the SSM layers."""
        return ByteLMConfig(
            d_model=self.d_model, n_layers=self.n_layers, ssm=self.ssm, bidirectional=True, d_mlp=self.d_mlp,
            d_state=self.d_state, d_conv=self.d_conv, expand=self.expand, headdim=self.headdim,
            chunk_size=self.chunk_size, norm_eps=self.norm_eps, backend=self.backend, n_special=0,
        )


class EncoderOutput(NamedTuple):
    features: torch.Tensor  # (b, l', d) per position; packed rows hold several items one after another
    pooled: torch.Tensor  # (n, d) one embedding per item
    lengths: torch.Tensor  # (n,) positions of each item in ``features`` (after the front end)
    logits: torch.Tensor | None = None  # (n, n_classes)
    loss: torch.Tensor | None = None
    padded: torch.Tensor | None = None  # (n, max l', d) each item's features, zeros after its length (padded=True)
    mask: torch.Tensor | None = None  # (n, max l') bool, True at an item's own positions (padded=True)


class Encoded(NamedTuple):
    """What :meth:`Encoder.encode` returns: per-item features and pooled embeddings (or logits with a head)."""

    features: list[torch.Tensor] | torch.Tensor  # [(l_i', d)], (n, max l', d) with padded=True, (l', d) for one input
    pooled: torch.Tensor  # (n, d), or (d,) for a single input
    logits: torch.Tensor | None = None  # (n, n_classes), or (n_classes,)
    mask: torch.Tensor | None = None  # (n, max l') bool with padded=True


def collate_symbols(items: list[torch.Tensor], *, padded: bool = False,
                    labels: list[int] | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Symbol sequences -> the keyword arguments of :meth:`Encoder.forward` for one batch.

    Items of one length are stacked: ``input_ids`` (n, l). Items of different lengths are packed into one row,
    ``input_ids`` (1, sum l) with ``lengths`` (n,) (each item its own document: no padding is computed on), or, with
    ``padded=True``, right-padded as ``input_ids`` (n, max l) with ``attention_mask`` (n, max l) (True at real
    symbols; the encoder packs them again inside). ``labels`` (n,) are added when given.
    """
    if not items:
        raise ValueError("a batch needs at least one item")
    lengths = [len(s) for s in items]
    if min(lengths) < 1:
        raise ValueError(f"item {lengths.index(min(lengths))} holds no symbols")
    if len(set(lengths)) == 1:
        batch = {"input_ids": torch.stack(list(items))}
    elif padded:
        ids = torch.zeros(len(items), max(lengths), dtype=items[0].dtype)
        for i, s in enumerate(items):
            ids[i, : len(s)] = s
        batch = {"input_ids": ids, "attention_mask": torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]}
    else:
        batch = {"input_ids": torch.cat(list(items)).unsqueeze(0), "lengths": torch.tensor(lengths)}
    if labels is not None:
        batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
    return batch


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


class Encoder(PretrainedModel):
    """A bidirectional SSM encoder; use :class:`AudioEncoder`, :class:`ImageEncoder` or :class:`TextEncoder`.

    ``Encoder.from_pretrained`` returns the class that matches the saved modality; a subclass refuses a folder of
    another modality.
    """

    config_class = EncoderConfig
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
        for module in (self.embed, self.pos_embed, None if self.head is None else self.head.proj):
            if module is not None:
                nn.init.normal_(module.weight, std=self.config.initializer_range)
        scale_residual_writes(self.backbone)
        if self.head is not None:
            nn.init.zeros_(self.head.proj.bias)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor | list[int] | None = None,
        labels: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        padded: bool = False,
    ) -> EncoderOutput:
        """Encode a batch of symbol sequences (with autograd: use it to train or fine-tune; see
        :meth:`collate` to build the batch).

        Args:
            input_ids: (b, l) symbols in 0..255. Without ``lengths`` each row is one item; with ``lengths`` the
                single row (b = 1) holds ``len(lengths)`` items back to back, which never see one another.
            lengths: (n,) symbols per packed item, summing to l.
            labels: (n,) class ids; with a head, the cross-entropy loss is returned.
            attention_mask: (n, l) bool or 0/1, True at each row's real symbols, which must come first (right
                padding, as transformers' tokenizers make it); instead of ``lengths``. The padding is never
                computed on: the rows are packed inside.
            padded: also return ``padded`` (n, max l', d) features and their ``mask`` (n, max l').

        Returns:
            EncoderOutput(features (b, l', d), pooled (n, d), lengths (n,) in feature positions, logits, loss,
            padded, mask). With a front end of total stride S, each item is zero-padded (after the embedding) to a
            multiple of S, so l_i' = ceil(l_i / S).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if attention_mask is not None:
            input_ids, lengths = _unpad(input_ids, attention_mask, lengths)
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
                loss = F.cross_entropy(logits.float(), torch.as_tensor(labels, device=logits.device).long())
        out_padded = mask = None
        if padded:
            if seq_idx is None:
                out_padded = features
                mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
            else:
                out_padded = nn.utils.rnn.pad_sequence(list(features[0].split(frames.tolist())), batch_first=True)
                mask = torch.arange(out_padded.shape[1], device=features.device) < frames[:, None]
        return EncoderOutput(features, pooled, frames, logits, loss, out_padded, mask)

    def _positions(self, length: int, frames: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
        if int(frames.max()) > self.config.n_positions:
            raise ValueError(f"an item has {int(frames.max())} positions, more than n_positions="
                             f"{self.config.n_positions}")
        if seq_idx is None:
            return torch.arange(length, device=frames.device).unsqueeze(0)
        starts = torch.cumsum(frames, 0) - frames
        return (torch.arange(length, device=frames.device) - starts[seq_idx[0].long()]).unsqueeze(0)

    def to_symbols(self, item, **kwargs) -> torch.Tensor:
        """One input -> 1-D uint8 symbols; see the subclasses for what each modality accepts."""
        raise NotImplementedError

    def symbols(self, inputs, **kwargs) -> list[torch.Tensor]:
        """Each input as 1-D uint8 symbols, cut to ``max_length``; errors name the input's index."""
        out = []
        for i, item in enumerate(inputs):
            try:
                s = self.to_symbols(item, **kwargs)
            except (ValueError, TypeError) as exc:
                if type(exc) not in (ValueError, TypeError):  # DecodeError names its source already
                    raise
                raise type(exc)(f"input {i}: {exc}") from None
            if s.dim() != 1 or s.numel() == 0:
                raise ValueError(f"input {i} gives {tuple(s.shape)} symbols; expected a non-empty 1-D sequence")
            out.append(s[: self.config.max_length] if self.config.max_length is not None else s)
        return out

    def collate(self, inputs, *, labels=None, padded: bool = False, **kwargs) -> dict[str, torch.Tensor]:
        """A training batch from inputs of any kind and length: ``encoder(**encoder.collate(inputs))``.

        Args:
            inputs: a list of inputs (see :meth:`to_symbols`).
            labels: class ids, one per input, added as ``labels``.
            padded: right-pad to ``input_ids`` (n, max l) with an ``attention_mask`` instead of packing into one row.
            **kwargs: passed to :meth:`to_symbols` (``sampling_rate=`` for audio arrays).

        Returns:
            see :func:`collate_symbols`; the tensors are on the encoder's device.
        """
        batch = collate_symbols(self.symbols(list(inputs), **kwargs), padded=padded, labels=labels)
        return {k: v.to(self.device) for k, v in batch.items()}

    def encode(self, inputs, *, batch_size: int = 32, padded: bool = False, grad: bool = False, **kwargs) -> Encoded:
        """Encode one input or a list of inputs of any lengths.

        Args:
            inputs: one input, or a list or tuple of them (a batch); what an input may be depends on the modality
                (see :meth:`to_symbols`). Items of equal length share a batch; items of different lengths are
                packed, each its own document, so results never depend on what else is in the batch.
            batch_size: items per forward pass.
            padded: return a batch's features as one (n, max l', d) tensor, zero after each item's length, and its
                ``mask`` (n, max l'), instead of a list.
            grad: keep autograd and the module's train/eval mode (fine-tuning); by default the encoder runs in eval
                mode without gradients.
            **kwargs: passed to :meth:`to_symbols` (``sampling_rate=`` for audio arrays at another rate).

        Returns:
            Encoded(features, pooled, logits, mask): for a batch, a list of (l_i', d) tensors (or the padded tensor),
            (n, d) and (n, classes); for a single input, (l', d), (d,) and (classes,).
        """
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        if not items:
            raise ValueError("encode needs at least one input")
        symbols = self.symbols(items, **kwargs)
        was_training = self.training
        if not grad:
            self.eval()
        features, pooled, logits = [], [], []
        try:
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                for start in range(0, len(symbols), batch_size):
                    chunk = collate_symbols(symbols[start : start + batch_size])
                    out = self(**{k: v.to(self.device) for k, v in chunk.items()})
                    if "lengths" in chunk:
                        features += list(out.features[0].split(out.lengths.tolist()))
                    else:
                        features += list(out.features.unbind(0))
                    pooled.append(out.pooled)
                    if out.logits is not None:
                        logits.append(out.logits)
        finally:
            self.train(was_training)
        pooled = torch.cat(pooled)
        logits = torch.cat(logits) if logits else None
        if single:
            return Encoded(features[0], pooled[0], None if logits is None else logits[0])
        mask = None
        if padded:
            lengths = torch.tensor([len(f) for f in features], device=pooled.device)
            features = nn.utils.rnn.pad_sequence(features, batch_first=True)
            mask = torch.arange(features.shape[1], device=pooled.device) < lengths[:, None]
        return Encoded(features, pooled, logits, mask)

    @torch.no_grad()
    def classify(self, inputs, *, batch_size: int = 32, **kwargs) -> list[str] | list[int]:
        """Predicted class of each input: its label name when the config has ``labels``, else its index
        (``kwargs`` as in :meth:`encode`)."""
        if self.head is None:
            raise ValueError("this encoder has no classification head (n_classes=0)")
        single = not isinstance(inputs, (list, tuple))
        logits = self.encode([inputs] if single else inputs, batch_size=batch_size, **kwargs).logits
        pred = logits.argmax(-1).tolist()
        if self.config.labels is not None:
            pred = [self.config.labels[p] for p in pred]
        return pred[0] if single else pred


def _unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows (n, l) and their mask -> one packed row (1, sum l_i) and the lengths (n,)."""
    if lengths is not None:
        raise ValueError("give lengths (a packed row) or attention_mask (padded rows), not both")
    mask = torch.as_tensor(attention_mask, device=input_ids.device).bool()
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; input_ids have {tuple(input_ids.shape)}")
    lengths = mask.sum(1)
    if bool((lengths < 1).any()) or not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)
                                                    < lengths[:, None]):
        raise ValueError("attention_mask must mark a non-empty prefix of every row (right padding)")
    return input_ids[mask].unsqueeze(0), lengths.cpu()


class AudioEncoder(Encoder):
    """Encoder over raw audio samples (quantised by ``config.codec``, default 8-bit mu-law, at ``sample_rate``).

    ``encode`` accepts: a file path or an encoded file's bytes (any format libsndfile reads; mixed to mono and
    resampled to ``config.sample_rate``); a float waveform in [-1, 1] or an int16 one (numpy or tensor, ``(time,)``,
    ``(channels, time)`` or soundfile's ``(frames, channels)``; channels are averaged) at ``config.sample_rate``, or
    at another rate given as ``sampling_rate=`` (resampled); a ``datasets`` audio dict; or uint8 symbols already
    quantised.
    """

    modality = "audio"

    def to_symbols(self, item, *, sampling_rate: int | None = None) -> torch.Tensor:
        from rawseq.modalities import audio

        cfg = self.config
        return audio.to_symbols(item, codec=cfg.codec, sample_rate=cfg.sample_rate, sampling_rate=sampling_rate,
                                mono=cfg.channels == 1)


class ImageEncoder(Encoder):
    """Encoder over pixels in raster order (``config.image_mode``, resized to ``config.image_size`` when set).

    ``encode`` accepts one image per input: a file path or an encoded file's bytes (PNG, JPEG, GIF, WebP); a PIL
    image; a numpy array ``(h, w)`` or ``(h, w, c)`` (PIL's layout); a tensor ``(h, w)`` or ``(c, h, w)``
    (torchvision's layout); arrays hold uint8 pixels or floats in [0, 1] (torchvision's ``ToTensor``). A batch is a
    list of images.
    """

    modality = "image"

    def to_symbols(self, item) -> torch.Tensor:
        from rawseq.modalities import image

        return image.to_symbols(item, mode=self.config.image_mode, size=self.config.image_size)


class TextEncoder(Encoder):
    """Encoder over raw bytes. ``encode`` accepts: ``str`` (its UTF-8 bytes), bytes, a ``pathlib.Path`` (the
    file's bytes; a plain ``str`` is always text) or uint8 symbols."""

    modality = "text"

    def to_symbols(self, item) -> torch.Tensor:
        from rawseq.modalities import text

        return text.to_symbols(item)


_BY_MODALITY = {"audio": AudioEncoder, "image": ImageEncoder, "text": TextEncoder}
register(EncoderConfig, lambda config: _BY_MODALITY[config.modality], causal=False)
