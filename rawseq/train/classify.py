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

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rawseq.config import ConfigError, atomic_write_text, option
from rawseq.models import registry
from rawseq.models.config import ModelConfig
from rawseq.models.encoders import Encoder, EncoderConfig, collate_symbols
from rawseq.train import parallel
from rawseq.train.config import RunConfig
from rawseq.train.loop import fit
from rawseq.train.run import RunFolder, resolve_out_dir

log = logging.getLogger(__name__)


@dataclass
class ClassifyConfig(RunConfig):
    """A classification run; ``model`` holds :class:`rawseq.models.encoders.EncoderConfig` fields."""

    default_model_type = "encoder"

    data: str = option("sklearn-digits", help="sklearn-digits, spoken-digits or a folder of class sub-folders",
                       path=True)
    modality: str | None = option(None, help="audio, image or text (needed for a folder)",
                                  choices=("audio", "image", "text"))
    spoken_digits_dir: str = option("data/spoken_digits", help="where the spoken digits are built", path=True)
    epochs: int = option(30, help="passes over the training split", min=1, max=1 << 20)
    steps: int | None = option(None, help="optimizer steps (default: epochs x batches per epoch)", min=1)
    batch_size: int = option(32, help="items per optimizer step", min=1, max=1 << 20)
    lr: float = option(3e-3, help="peak learning rate (AdamW)", min=1e-12, max=10.0)
    min_lr_ratio: float = option(0.05, help="the cosine schedule ends at lr * min_lr_ratio", min=0.0, max=1.0)
    warmup_steps: int = option(50, help="linear warmup steps", min=0)
    weight_decay: float = option(0.05, help="AdamW decay of matrices", min=0.0, max=10.0)
    beta2: float = option(0.98, help="AdamW beta2", min=0.0, max=0.9999999)
    test_fraction: float = option(0.2, help="held-out share of every class", min=0.0, max=0.99)
    shift_augment: int = option(0, help="audio: roll each training clip by up to this many samples (0: off)",
                                min=0)
    eval_every: int = option(5, help="epochs between held-out evaluations (and at the end)", min=1)
    checkpoint_every: int = option(5, help="epochs between checkpoints (and at the end)", min=1)
    threads: int = option(0, help="torch.set_num_threads (0: torch's default)", min=0, max=1024)

    def validate(self) -> None:
        super().validate()
        if self.data not in ("sklearn-digits", "spoken-digits") and self.modality is None:
            self.fail("modality", f"data={self.data!r} is a folder: set modality (audio, image or text)")

    @property
    def data_modality(self) -> str:
        return {"sklearn-digits": "image", "spoken-digits": "audio"}.get(self.data, self.modality)


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
        if encoder is None:
            raise ConfigError(f"data={cfg.data!r} is a folder: an encoder must turn its files into symbols")
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




@torch.no_grad()
def evaluate(model: Encoder, items: list[torch.Tensor], labels: list[int], *, batch_size: int = 64) -> dict:
    """Accuracy, mean cross-entropy and confusion matrix (as nested lists) of ``model`` on ``items``."""
    was_training = model.training
    model.eval()
    device = model.device
    preds, losses = [], []
    for start in range(0, len(items), batch_size):
        batch = collate_symbols(items[start : start + batch_size], labels=labels[start : start + batch_size])
        out = model(**{k: v.to(device) for k, v in batch.items()})
        preds.append(out.logits.argmax(-1).cpu())
        losses.append(out.loss.item() * len(batch["labels"]))
    model.train(was_training)
    pred = torch.cat(preds)
    target = torch.tensor(labels)
    cm = confusion_matrix(pred, target, model.config.n_classes)
    return {"accuracy": float((pred == target).float().mean()), "loss": sum(losses) / len(labels),
            "confusion_matrix": cm.tolist(), "n": len(labels)}


class ClassifyTask:
    """Shuffled batches of items each epoch (a pure function of the step, so resume is exact); cross-entropy."""

    def __init__(self, cfg: ClassifyConfig, data: Dataset, model_config: EncoderConfig):
        self.cfg, self.data, self._model_config = cfg, data, model_config
        self.per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        self.last_eval: dict = {}

    def model_config(self) -> EncoderConfig:
        return self._model_config

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        epoch, k = divmod(step, self.per_epoch)
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        idx = order[k * self.cfg.batch_size : (k + 1) * self.cfg.batch_size].tolist()
        items = [self.data.train[i] for i in idx]
        if self.cfg.shift_augment:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
            shifts = torch.randint(-self.cfg.shift_augment, self.cfg.shift_augment + 1, (len(items),), generator=gen)
            items = [torch.roll(s, int(n)) for s, n in zip(items, shifts)]
        return collate_symbols(items, labels=[self.data.train_labels[i] for i in idx])

    @staticmethod
    def count(batch) -> int:
        return len(batch["labels"])

    def forward(self, model, batch):
        out = model(batch["input_ids"], lengths=batch.get("lengths"), labels=batch["labels"])
        accuracy = float((out.logits.argmax(-1) == batch["labels"]).float().mean())
        return out.loss, len(batch["labels"]), {"loss": float(out.loss.detach()), "accuracy": accuracy}

    def evaluate(self, model, device) -> dict[str, float]:
        self.last_eval = evaluate(model, self.data.test, self.data.test_labels)
        return {"test_loss": self.last_eval["loss"], "test_accuracy": self.last_eval["accuracy"]}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def train_classifier(config: ClassifyConfig | dict, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Train an encoder classifier on the configured data and return the summary.

    Args:
        config: a :class:`ClassifyConfig` or a dict of its keys (``model`` a dict of EncoderConfig keys).
        resume, overwrite: what to do with a run folder that already holds a run (see docs/training.md).

    Returns:
        dict with ``test_accuracy``, ``test_loss``, ``confusion_matrix`` (rows true, columns predicted),
        ``labels``, ``train_accuracy``, ``parameters``, ``seconds``, ``out_dir`` (the run folder: ``model/``,
        ``metrics.jsonl``, ``results.json``).
    """
    cfg = ClassifyConfig.from_dict(config) if isinstance(config, dict) else config
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    place = parallel.setup(cfg.device)
    cfg = cfg.replace(out_dir=str(resolve_out_dir(cfg.out_dir, "classify", resume=resume)))
    folder = RunFolder(cfg.out_dir, resume=resume, overwrite=overwrite)
    try:
        folder.open(cfg.to_dict())
        summary = _train_classifier(cfg, place, folder, resume)
        folder.finish("finished")
        return summary
    except BaseException as exc:
        folder.finish("failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        folder.close()
        torch.set_num_threads(threads)


def _train_classifier(cfg: ClassifyConfig, place, folder, resume: bool) -> dict:
    modality = cfg.data_modality
    base = {**cfg.model, "model_type": "encoder", "modality": modality}
    probe = registry.build(ModelConfig.from_dict({**base, "n_classes": 0}))
    data = load_dataset(cfg, probe)
    model_cfg = ModelConfig.from_dict({**base, "n_classes": len(data.labels), "labels": data.labels})
    task = ClassifyTask(cfg, data, model_cfg)
    per_epoch = task.per_epoch
    run_cfg = cfg.replace(steps=cfg.steps or cfg.epochs * per_epoch, eval_every=cfg.eval_every * per_epoch,
                          checkpoint_every=cfg.checkpoint_every * per_epoch)
    start = time.perf_counter()
    result = fit(task, run_cfg, folder, place, resume=resume)
    seconds = time.perf_counter() - start
    if result.get("finished"):
        return result
    ev = task.last_eval
    summary = {
        "test_accuracy": ev["accuracy"], "test_loss": ev["loss"], "confusion_matrix": ev["confusion_matrix"],
        "labels": data.labels, "train_accuracy": result.get("accuracy"), "n_train": len(data.train),
        "n_test": len(data.test), "parameters": result.get("parameters"), "seconds": seconds,
        "steps": run_cfg.steps, "out_dir": cfg.out_dir, "model_dir": result.get("model_dir"),
    }
    atomic_write_text(Path(cfg.out_dir) / "results.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_confusion(matrix: list[list[int]], labels: list[str]) -> str:
    """A confusion matrix as a text table (rows: true class, columns: predicted class)."""
    width = max(4, *(len(str(v)) + 1 for row in matrix for v in row), *(len(s) + 1 for s in labels))
    lines = ["true\\pred".ljust(10) + "".join(s.rjust(width) for s in labels)]
    for name, row in zip(labels, matrix):
        lines.append(name.ljust(10) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
