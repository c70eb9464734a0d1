"""``rawseq eval MODEL --data PATH``: bits per symbol of a causal model on data read the way the model was trained
(its modality, codec, rate, pixel mode and size, from the model folder)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rawseq.cli import common
from rawseq.config import Config, ConfigError, option
from rawseq.models.config import AUDIO_CODECS, IMAGE_MODES, MODALITIES

USAGE = "rawseq eval MODEL --data PATH [--key value ...]"
SUMMARY = ("Bits per symbol of a model on a file, folder or glob. The data is read as the model was trained on it "
           "(modality, codec, sample rate, pixel mode and size from its config.json); a flag that contradicts the "
           "folder is an error. The corpus cache goes to --cache_dir (default ~/.cache/rawseq/corpus, or "
           "$RAWSEQ_CACHE/corpus), never into the model folder.")


@dataclass
class EvalConfig(Config):
    """The keys of ``rawseq eval``."""

    data: str | None = option(None, help="file, folder or glob of data to score", path=True)
    seq_len: int = option(1024, help="symbols per window (a shorter file is one padded window)", min=1, max=1 << 24)
    batch_size: int = option(8, help="windows per forward pass", min=1, max=1 << 16)
    max_batches: int = option(0, help="score only this many batches (0: all)", min=0)
    device: str = option("auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    cache_dir: str | None = option(None, help="where corpus caches go (default ~/.cache/rawseq/corpus)", path=True)
    num_workers: int = option(0, help="processes decoding audio and image files for the cache", min=0, max=256)
    threads: int = option(0, help="torch CPU threads (0: torch's default)", min=0, max=1024)
    progress: bool = option(True, help="show progress bars")
    modality: str | None = option(None, help="check: the model's modality (from the folder)", choices=MODALITIES)
    codec: str | None = option(None, help="check: the model's audio codec (from the folder)", choices=AUDIO_CODECS)
    sample_rate: int | None = option(None, help="check: the model's sample rate (from the folder)", min=1)
    image_mode: str | None = option(None, help="check: the model's pixel mode (from the folder)", choices=IMAGE_MODES)

    def validate(self) -> None:
        super().validate()
        if self.data is None:
            self.fail("data", "give the data to score: --data=PATH")


def cache_root(cache_dir: str | None) -> Path:
    """Where corpus caches go: ``cache_dir``, else ``$RAWSEQ_CACHE/corpus``, else ``~/.cache/rawseq/corpus``
    (``$XDG_CACHE_HOME`` honoured)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("RAWSEQ_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "rawseq"
    return Path(base).expanduser() / "corpus"


class _Counted:
    """Windows that advance a progress bar as they are read."""

    def __init__(self, windows, bar):
        self.windows, self.bar = windows, bar

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int):
        self.bar.update(1)
        return self.windows[k]


def run(words: list[str]) -> int:
    from tqdm import tqdm

    from rawseq.modalities import ByteCorpus, SequentialWindows
    from rawseq.train.lm import evaluate_bpb

    cfg, words = common.parse(words, EvalConfig, USAGE, SUMMARY)
    (folder,) = common.positionals(words, ["MODEL"])
    common.set_threads(cfg.threads)
    device = common.device(cfg.device)
    model = common.load_model(folder, cfg.device)
    spec = model.config
    if not hasattr(model, "step") or getattr(spec, "bidirectional", False):
        raise ConfigError(f"{folder} holds an encoder ({type(model).__name__}); eval scores language models")
    if getattr(spec, "vocab_size", None) is not None:
        raise ConfigError(f"{folder} has a vocabulary of its own ({spec.vocab_size} ids, converted from "
                          "transformers); eval scores models of raw symbols")
    for key in ("modality", "codec", "sample_rate", "image_mode"):
        common.folder_value(folder, key, getattr(spec, key), getattr(cfg, key))
    data = Path(cfg.data)
    if not any(ch in cfg.data for ch in "*?[") and not data.exists():
        raise FileNotFoundError(f"--data={cfg.data}: no such file or folder")
    options = {"modality": spec.modality, "codec": spec.codec, "sample_rate": spec.sample_rate,
               "channels": spec.channels, "image_mode": spec.image_mode, "image_size": spec.image_size}
    root = cache_root(cfg.cache_dir)
    key = json.dumps({"data": str(data.resolve()), **options}, sort_keys=True)
    cache = root / hashlib.sha256(key.encode()).hexdigest()[:16]
    model_dir = Path(folder).expanduser()
    if model_dir.is_dir() and cache.resolve().is_relative_to(model_dir.resolve()):
        raise ConfigError(f"--cache_dir={root} lies inside the model folder {folder}; caches never go into a model "
                          "folder")
    modality = {"text": "text", "audio": "audio", "image": "image", "multimodal": "auto"}[spec.modality]
    corpus = ByteCorpus.build(
        cfg.data, cache, modality=modality, codec=spec.codec, sample_rate=spec.sample_rate, mono=spec.channels == 1,
        image_mode=spec.image_mode, image_size=spec.image_size, multimodal=spec.modality == "multimodal",
        exclude=[root, model_dir], progress=cfg.progress, num_workers=cfg.num_workers,
    )
    if corpus.num_symbols < 2:
        raise ValueError(f"--data={cfg.data} holds {corpus.num_symbols} symbol(s); scoring needs at least 2")
    # Padding (inputs past the end of the data) is its own document with ignored targets: any valid id will do.
    windows = SequentialWindows(corpus, min(cfg.seq_len, corpus.num_symbols - 1), pad_id=0)
    total = len(windows) if not cfg.max_batches else min(len(windows), cfg.max_batches * cfg.batch_size)
    with tqdm(total=total, disable=not cfg.progress, unit="window", desc="scoring", leave=False) as bar:
        bits = evaluate_bpb(model, _Counted(windows, bar), cfg.batch_size, device, cfg.max_batches or None)
    what = {"text": "bytes", "audio": f"{spec.codec} samples at {spec.sample_rate} Hz",
            "image": f"{spec.image_mode} pixel values", "multimodal": "multimodal symbols"}[spec.modality]
    print(f"{cfg.data}: {bits:.4f} bits per symbol over {corpus.num_symbols:,} symbols ({what}; {corpus.num_docs} "
          f"document(s), cache {cache})")
    return 0
