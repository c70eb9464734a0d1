"""The language-model task: next-symbol prediction over windows of a corpus, for every causal model family.

:func:`train` is the entry point of ``rawseq train``: it resolves the run folder, builds the corpus, and runs the
one loop (:func:`rawseq.train.loop.fit`) with :class:`LMTask`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rawseq.config import ConfigError
from rawseq.layers.state import map_states
from rawseq.modalities.symbols import IGNORE_INDEX, N_SYMBOLS
from rawseq.models.config import ModelConfig
from rawseq.train import parallel
from rawseq.train.config import TrainConfig
from rawseq.train.data import Batches, build_corpus, eval_windows, split_corpus
from rawseq.train.loop import fit
from rawseq.train.run import RunFolder, resolve_out_dir

LN2 = math.log(2.0)


def carry_states(states, continues: torch.Tensor | None):
    """Detach carried states (truncated BPTT) and zero the rows whose next window starts a new document; states
    may be nested (lists and dicts of tensors whose first axis is the batch)."""

    def carry(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if continues is not None and t.dim() > 0 and t.shape[0] == continues.shape[0]:
            keep = continues.view(-1, *([1] * (t.dim() - 1)))
            t = torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))
        return t

    return map_states(carry, states)


@torch.no_grad()
def evaluate_bpb(model, windows, batch_size: int, device: torch.device, max_batches: int | None = None) -> float:
    """Bits per symbol (prediction only) over the first ``max_batches`` batches of ``windows`` (all when None)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(windows)
    limit = n if not max_batches else min(n, max_batches * batch_size)
    for start in range(0, limit, batch_size):
        items = [windows[k] for k in range(start, min(limit, start + batch_size))]
        batch = {key: torch.stack([it[key] for it in items]).to(device) for key in items[0]}
        out = model(batch["input_ids"], batch["targets"], seq_idx=batch["seq_idx"])
        valid = int((batch["targets"] != IGNORE_INDEX).sum())
        if valid:
            total += float(out.bits_per_byte) * valid
            count += valid
    model.train(was_training)
    return total / max(count, 1)


class LMTask:
    """Windows of ``seq_len`` symbols from a corpus; the objective is the model's ``loss``."""

    def __init__(self, cfg: TrainConfig, corpus, place: parallel.Placement):
        self.cfg, self.place = cfg, place
        train_view, val_view = split_corpus(corpus, cfg)
        self.batches = Batches(train_view, cfg, place.rank, place.world)
        self.val = eval_windows(val_view, cfg)
        self.vocab = corpus.vocab_size
        self.carried = None

    def model_config(self) -> ModelConfig:
        cfg = self.cfg
        data = {"model_type": cfg.default_model_type, **cfg.model}
        klass = type(ModelConfig.from_dict(data))
        fields = klass.field_names()
        if "n_special" in fields and self.vocab > N_SYMBOLS and "n_special" not in data and "vocab_size" not in data:
            data["n_special"] = self.vocab - N_SYMBOLS
        signal = {"modality": cfg.modality, "codec": cfg.audio_codec, "sample_rate": cfg.sample_rate,
                  "image_mode": cfg.image_mode,
                  "image_size": None if cfg.image_size is None else [cfg.image_size, cfg.image_size]}
        data.update({k: v for k, v in signal.items() if k in fields})
        config = ModelConfig.from_dict(data)
        if getattr(config, "total_vocab", self.vocab) < self.vocab:
            raise ConfigError(f"the model's vocabulary ({config.total_vocab}) is smaller than the corpus needs "
                              f"({self.vocab}); raise model.n_special")
        return config

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        batch = self.batches.batch(step, micro)
        if self.cfg.stateful:
            accum = self.cfg.grad_accum
            nxt = self.batches.batch(step + (micro + 1) // accum, (micro + 1) % accum)
            batch["next_continues"] = nxt["continues"]
        return batch

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def forward(self, model, batch):
        if self.cfg.stateful:
            out = model(batch["input_ids"], batch["targets"], seq_idx=batch["seq_idx"], initial_states=self.carried,
                        return_states=True)
            # Keep each row's state only if that row's next window continues the same document.
            self.carried = carry_states(out.states, batch["next_continues"])
        else:
            out = model(batch["input_ids"], batch["targets"], seq_idx=batch["seq_idx"])
        logs = {"loss": float(out.loss.detach()), "bpb": float(out.bits_per_byte.detach())}
        if hasattr(out, "metrics"):
            logs.update(out.metrics())
        return out.loss, self.count(batch), logs

    def evaluate(self, model, device) -> dict[str, float]:
        return {"val_bpb": evaluate_bpb(model, self.val, self.cfg.batch_size, device, self.cfg.eval_batches)}

    def state_dict(self) -> dict:
        return {} if self.carried is None else {"carried": map_states(torch.Tensor.cpu, self.carried)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("carried") is not None:
            self.carried = map_states(lambda t: t.to(self.place.device), state["carried"])


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, corpus=None) -> dict:
    """Train the model ``cfg.model`` describes on ``cfg.data`` (or on ``corpus``, a
    :class:`rawseq.modalities.ByteCorpus`); returns a summary (losses, paths, skipped steps).

    Writes into the run folder (``cfg.out_dir``, by default ``runs/<preset>/<date-time>`` linked as
    ``runs/<preset>/latest``): ``run.json``, ``metrics.jsonl``, ``checkpoints/``, ``model/``, ``loss.png``.
    """
    place = parallel.setup(cfg.device)
    out = resolve_out_dir(cfg.out_dir, cfg.preset, resume=resume) if place.main else None
    if place.world > 1:
        import torch.distributed as dist

        holder = [str(out) if out is not None else None]
        dist.broadcast_object_list(holder, src=0)
        out = Path(holder[0])
    cfg = cfg.replace(out_dir=str(out))
    folder = RunFolder(out, resume=resume, overwrite=overwrite) if place.main else None
    try:
        if folder is not None:
            folder.open({**cfg.to_dict()})
        if corpus is None:
            if place.main:
                corpus = build_corpus(cfg)
            parallel.barrier(place)
            if not place.main:
                corpus = build_corpus(cfg)
        task = LMTask(cfg, corpus, place)
        try:
            summary = fit(task, cfg, folder, place, resume=resume)
        except BaseException as exc:
            if folder is not None:
                folder.finish("failed", error=str(exc) or type(exc).__name__)
            raise
        if folder is not None:
            folder.finish("finished", step=summary.get("step", cfg.steps))
        return summary
    finally:
        if folder is not None:
            folder.close()
