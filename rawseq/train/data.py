"""From a TrainConfig to batches: the corpus cache, the train/validation split and the windows of each step.

Every batch is a pure function of (corpus, seed, step), so a resumed run sees exactly the batches it would have
seen, and each process of a distributed run takes its own rows of the same global batch.
"""

from __future__ import annotations

import hashlib
import logging
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from rawseq.modalities import ByteCorpus, RandomWindows, SequentialWindows, read_window, split

log = logging.getLogger(__name__)


def stdlib_sources() -> list[str]:
    """The Python standard library's own source files: real text present wherever Python is."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.rglob("*.py"))
             if not {"site-packages", "test", "tests"} & set(p.parts) and p.stat().st_size > 0]
    if not files:
        raise ValueError(f"no .py files under the standard library folder {root}")
    return [str(p) for p in files]


def _limit(files: list[str], max_bytes: int) -> list[str]:
    if max_bytes <= 0:
        return files
    out, total = [], 0
    for f in files:
        out.append(f)
        total += Path(f).stat().st_size
        if total >= max_bytes:
            break
    return out


def build_corpus(cfg) -> ByteCorpus:
    """The corpus named by ``cfg.data`` (the standard library's sources when None), cached on disk."""
    if cfg.data is None:
        sources = _limit(stdlib_sources(), cfg.max_corpus_bytes)
        key = f"stdlib:{len(sources)}:{cfg.max_corpus_bytes}"
    else:
        sources = cfg.data
        if not any(ch in sources for ch in "*?[") and not Path(sources).exists():
            raise ValueError(f"data={sources!r}: no such file or folder")
        key = f"{Path(sources).resolve()}"
    key += f":{cfg.modality}:{cfg.audio_codec}:{cfg.sample_rate}:{cfg.image_size}:{cfg.image_mode}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    caches = Path(cfg.out_dir).resolve().parent / ".corpus-cache"
    cache = Path(cfg.cache_dir) if cfg.cache_dir else caches / digest
    cache.parent.mkdir(parents=True, exist_ok=True)
    modality = {"text": "text", "audio": "audio", "image": "image", "multimodal": "auto"}[cfg.modality]
    corpus = ByteCorpus.build(
        sources, cache, modality=modality, codec=cfg.audio_codec, sample_rate=cfg.sample_rate,
        image_size=cfg.image_size, image_mode=cfg.image_mode, multimodal=cfg.modality == "multimodal",
        progress=cfg.progress,
        exclude=[cfg.out_dir, cache, caches],  # never read the run's own files or corpus caches as data
    )
    if corpus.num_symbols < cfg.seq_len + 2:
        raise ValueError(f"data={cfg.data!r} holds {corpus.num_symbols} symbols, too few for seq_len={cfg.seq_len}")
    return corpus


class _Indexed(Dataset):
    """Map-style view of the windows chosen for one process: item i is window ``indices[i]``."""

    def __init__(self, windows, indices: list[int]):
        self.windows, self.indices = windows, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.windows[self.indices[i]]


class Batches:
    """The batches of a run: ``batch(step, micro)`` gives this process's rows of that micro-batch.

    Random windows are numbered globally: micro-batch ``m`` of step ``s`` holds windows
    ``(s * grad_accum + m) * batch_size + [0, batch_size)``, of which rank ``r`` takes its contiguous share.
    With ``stateful``, row ``i`` instead reads the ``i``-th of ``batch_size`` contiguous streams through the
    corpus, one window further each micro-batch, and ``continues`` tells whether each row's first position
    continues the document of the previous window (so the carried state is kept).
    """

    def __init__(self, corpus_view, cfg, rank: int = 0, world: int = 1):
        if cfg.batch_size % world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world})")
        self.view, self.cfg, self.rank, self.world = corpus_view, cfg, rank, world
        self.local = cfg.batch_size // world
        self.windows = RandomWindows(corpus_view, cfg.seq_len, cfg.seed)
        self.stream_len = corpus_view.num_symbols // cfg.batch_size
        if cfg.stateful and self.stream_len < cfg.seq_len + 1:
            raise ValueError("stateful training needs batch_size * (seq_len + 1) symbols of training data")

    def _rows(self) -> range:
        return range(self.rank * self.local, (self.rank + 1) * self.local)

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        k = step * self.cfg.grad_accum + micro
        if self.cfg.stateful:
            return self._stream_batch(k)
        indices = [k * self.cfg.batch_size + i for i in self._rows()]
        if self.cfg.num_workers == 0:
            items = [self.windows[i] for i in indices]
            return {key: torch.stack([it[key] for it in items]) for key in items[0]}
        loader = DataLoader(_Indexed(self.windows, indices), batch_size=self.local, num_workers=self.cfg.num_workers)
        return next(iter(loader))

    def _stream_batch(self, k: int) -> dict[str, torch.Tensor]:
        L = self.cfg.seq_len
        per_stream = (self.stream_len - 1) // L  # whole windows per stream; streams wrap around after that
        step = k % per_stream
        rows = [read_window(self.view, row * self.stream_len + step * L, L, continues=True) for row in self._rows()]
        batch = {key: torch.stack([r[key] for r in rows]) for key in rows[0]}
        if step == 0:
            batch["continues"] = torch.zeros_like(batch["continues"])  # a stream starting over carries no state
        return batch


class _Range:
    """Symbols ``[lo, hi)`` of a corpus as a sequence of its own (what windows need: ``num_symbols``, ``read``)."""

    def __init__(self, source, lo: int, hi: int):
        self.source, self.lo, self.hi = source, lo, hi

    @property
    def num_symbols(self) -> int:
        return self.hi - self.lo

    def read(self, start: int, stop: int):
        ids, docs = self.source.read(self.lo + start, self.lo + stop)
        return ids, docs


def split_corpus(corpus: ByteCorpus, cfg):
    """Deterministic split by document; when that leaves either side too small (say, one big file), the last
    ``val_fraction`` of the symbols becomes the validation stream instead."""
    if corpus.num_docs >= 2:
        train, val = split(corpus, cfg.val_fraction, seed=cfg.seed)
        if train.num_symbols > cfg.seq_len + 1 and val.num_symbols > 1:
            return train, val
    cut = int(corpus.num_symbols * (1 - cfg.val_fraction))
    return _Range(corpus, 0, cut), _Range(corpus, cut, corpus.num_symbols)


def eval_windows(val_view, cfg) -> SequentialWindows:
    """Consecutive windows of the validation data. The last one is padded with symbol 0: padding is a document of
    its own with no targets, so any id in every model's vocabulary serves, and 0 is in all of them."""
    return SequentialWindows(val_view, cfg.seq_len, pad_id=0)
