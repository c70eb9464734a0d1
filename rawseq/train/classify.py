"""Training and evaluating encoder classifiers: AdamW with warmup and cosine decay over epochs, accuracy and a
confusion matrix on a held-out split.

Data sources (``ClassifyConfig.data``):

- ``"sklearn-digits"``: scikit-learn's bundled 1,797 handwritten 8x8 digits, pixel values 0..16 scaled to 0..255,
  64 symbols per image (needs scikit-learn; nothing is downloaded).
- ``"spoken-digits"``: the espeak-ng spoken digits of :mod:`rawseq.modalities.spoken_digits` (needs espeak-ng),
  built into ``spoken_digits_dir`` on first use.
- a folder with one sub-folder per class, each holding files of ``modality`` (audio, image or text).

The entry point is :func:`train_classifier`; ``rawseq train --task=classify`` passes its keys through.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rawseq.models.config import checked_dataclass
from rawseq.models.encoders import _BY_MODALITY, Encoder, EncoderConfig

log = logging.getLogger(__name__)


@dataclass
class ClassifyConfig:
    """A classification run; ``model`` holds :class:`rawseq.models.encoders.EncoderConfig` fields."""

    data: str = "sklearn-digits"  # "sklearn-digits", "spoken-digits" or a folder of class sub-folders
    modality: str | None = None  # needed for a folder; the built-in sets know theirs
    out_dir: str = "runs/classify"
    spoken_digits_dir: str = "data/spoken_digits"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    test_fraction: float = 0.2
    shift_augment: int = 0  # audio: roll each training clip by up to this many samples (0 = off)
    eval_every: int = 5  # epochs between held-out evaluations (the last epoch is always evaluated)
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch.set_num_threads; 0 leaves torch's default
    model: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> ClassifyConfig:
        """Build a config, refusing unknown keys (with the valid ones) and values of the wrong type."""
        return checked_dataclass(cls, data)


@dataclass
class Dataset:
    """Symbols (1-D uint8 tensors) and class ids of a train and a test split."""

    train: list[torch.Tensor]
    train_labels: list[int]
    test: list[torch.Tensor]
    test_labels: list[int]
    labels: list[str]
    modality: str


def stratified_split(labels: list[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a train and a test split holding ``test_fraction`` of every class (at least one each)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    labels = np.asarray(labels)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, round(len(idx) * test_fraction)) if test_fraction > 0 else 0
        test += idx[:n_test].tolist()
        train += idx[n_test:].tolist()
    return sorted(train), sorted(test)


def sklearn_digits() -> tuple[list[torch.Tensor], list[int], list[str]]:
    """scikit-learn's handwritten digits as 64-symbol sequences (0..16 scaled to 0..255), labels and names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (n, 8, 8)
    return [torch.from_numpy(p.reshape(-1).copy()) for p in pixels], digits.target.tolist(), [str(d) for d in range(10)]


def load_dataset(cfg: ClassifyConfig, encoder: Encoder | None = None) -> Dataset:
    """The configured data as symbols, split into train and test (stratified, seeded)."""
    if cfg.data == "sklearn-digits":
        items, labels, names = sklearn_digits()
        modality = "image"
    elif cfg.data == "spoken-digits":
        from rawseq.modalities import spoken_digits

        clips = spoken_digits.build(cfg.spoken_digits_dir)
        return _spoken_digit_split(clips, cfg)
    else:
        if cfg.modality is None or encoder is None:
            raise ValueError(f"data={cfg.data!r} is a folder: set modality (audio, image or text)")
        root = Path(cfg.data)
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if len(names) < 2:
            raise ValueError(f"{root} must be a folder holding one sub-folder per class (at least two)")
        items, labels = [], []
        for c, name in enumerate(names):
            for f in sorted(p for p in (root / name).rglob("*") if p.is_file()):
                items.append(encoder.to_symbols(f))
                labels.append(c)
        modality = cfg.modality
    train, test = stratified_split(labels, cfg.test_fraction, cfg.seed)
    return Dataset([items[i] for i in train], [labels[i] for i in train], [items[i] for i in test],
                   [labels[i] for i in test], names, modality)


def _spoken_digit_split(clips, cfg: ClassifyConfig) -> Dataset:
    from rawseq.modalities import audio

    codec = cfg.model.get("codec", "mulaw8")
    train, test = stratified_split([c.digit for c in clips], cfg.test_fraction, cfg.seed)
    sym = [audio.encode(c.waveform, codec) for c in clips]
    labels = [c.digit for c in clips]
    return Dataset([sym[i] for i in train], [labels[i] for i in train], [sym[i] for i in test],
                   [labels[i] for i in test], [str(d) for d in range(10)], "audio")


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes, n_classes) counts; row = true class, column = predicted class."""
    flat = target.long() * n_classes + predicted.long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _batch(model: Encoder, items: list[torch.Tensor], labels: list[int], device) -> tuple:
    y = torch.tensor(labels, dtype=torch.long, device=device)
    if all(len(s) == len(items[0]) for s in items):
        return torch.stack(items).to(device), None, y
    return torch.cat(items).unsqueeze(0).to(device), [len(s) for s in items], y


@torch.no_grad()
def evaluate(model: Encoder, items: list[torch.Tensor], labels: list[int], *, batch_size: int = 64) -> dict:
    """Accuracy, mean cross-entropy and confusion matrix (as nested lists) of ``model`` on ``items``."""
    was_training = model.training
    model.eval()
    device = model.device
    preds, losses = [], []
    for start in range(0, len(items), batch_size):
        ids, lengths, y = _batch(model, items[start : start + batch_size], labels[start : start + batch_size], device)
        out = model(ids, lengths=lengths, labels=y)
        preds.append(out.logits.argmax(-1).cpu())
        losses.append(out.loss.item() * len(y))
    model.train(was_training)
    pred = torch.cat(preds)
    target = torch.tensor(labels)
    cm = confusion_matrix(pred, target, model.config.n_classes)
    return {"accuracy": float((pred == target).float().mean()), "loss": sum(losses) / len(labels),
            "confusion_matrix": cm.tolist(), "n": len(labels)}


def _lr_at(cfg: ClassifyConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fit(model: Encoder, data: Dataset, cfg: ClassifyConfig, *, log_fn=None) -> dict:
    """Train ``model`` on ``data.train`` for ``cfg.epochs`` and return the last held-out evaluation, with history."""
    device = model.device
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    history, step = [], 0
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        seen = correct = 0
        loss_sum = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            items = [data.train[i] for i in idx]
            if cfg.shift_augment:
                shifts = torch.randint(-cfg.shift_augment, cfg.shift_augment + 1, (len(items),), generator=gen)
                items = [torch.roll(s, int(k)) for s, k in zip(items, shifts)]
            ids, lengths, y = _batch(model, items, [data.train_labels[i] for i in idx], device)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step, total)
            out = model(ids, lengths=lengths, labels=y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            seen += len(y)
            correct += int((out.logits.argmax(-1) == y).sum())
            loss_sum += out.loss.item() * len(y)
        record = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            ev = evaluate(model, data.test, data.test_labels)
            record.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
            last = ev
        history.append(record)
        if log_fn is not None:
            log_fn(record)
    return {**last, "history": history}


def train_classifier(config: ClassifyConfig | dict, *, log_fn=None) -> dict:
    """Train an encoder classifier on the configured data, save it and its metrics, and return the summary.

    Args:
        config: a :class:`ClassifyConfig` or a dict of its keys (``model`` a dict of EncoderConfig keys).
        log_fn: called with each epoch's record (dict); default logs at INFO.

    Returns:
        dict with ``test_accuracy``, ``test_loss``, ``confusion_matrix`` (rows true, columns predicted),
        ``labels``, ``train_accuracy``, ``parameters``, ``seconds``, ``history`` and ``out_dir`` (holding
        ``config.json``, ``model.safetensors`` and ``metrics.json``).
    """
    cfg = ClassifyConfig.from_dict(config) if isinstance(config, dict) else config
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train_classifier(cfg, log_fn)
    finally:
        torch.set_num_threads(threads)


def _train_classifier(cfg: ClassifyConfig, log_fn) -> dict:
    torch.manual_seed(cfg.seed)
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    modality = {"sklearn-digits": "image", "spoken-digits": "audio"}.get(cfg.data, cfg.modality)
    if modality is None:
        raise ValueError(f"data={cfg.data!r} is a folder: set modality (audio, image or text)")
    probe = _BY_MODALITY[modality](EncoderConfig.from_dict({**cfg.model, "modality": modality, "n_classes": 0}))
    data = load_dataset(cfg, probe)
    model_cfg = EncoderConfig.from_dict({**cfg.model, "modality": modality, "n_classes": len(data.labels),
                                         "labels": data.labels})
    model = _BY_MODALITY[modality](model_cfg, device=device)
    start = time.perf_counter()
    result = fit(model, data, cfg, log_fn=log_fn or (lambda r: log.info("%s", r)))
    seconds = time.perf_counter() - start
    summary = {
        "test_accuracy": result["accuracy"], "test_loss": result["loss"],
        "confusion_matrix": result["confusion_matrix"], "labels": data.labels,
        "train_accuracy": result["history"][-1]["train_accuracy"], "n_train": len(data.train),
        "n_test": len(data.test), "parameters": model.num_parameters(), "seconds": seconds,
        "history": result["history"], "out_dir": cfg.out_dir,
    }
    out = Path(cfg.out_dir)
    model.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps({**summary, "config": dataclasses.asdict(cfg)}, indent=2) + "\n")
    return summary


def format_confusion(matrix: list[list[int]], labels: list[str]) -> str:
    """A confusion matrix as a text table (rows: true class, columns: predicted class)."""
    width = max(4, *(len(str(v)) + 1 for row in matrix for v in row), *(len(s) + 1 for s in labels))
    lines = ["true\\pred".ljust(10) + "".join(s.rjust(width) for s in labels)]
    for name, row in zip(labels, matrix):
        lines.append(name.ljust(10) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
