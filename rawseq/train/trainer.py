"""The training loop for ByteLM: AdamW with warmup and cosine decay, clipping, accumulation, non-finite guard,
atomic checkpoints with exact resume, optional truncated backpropagation through time, DDP or FSDP2 under torchrun.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from rawseq.models import ByteLM, ByteLMConfig
from rawseq.train.checkpoint import load_latest, save_checkpoint
from rawseq.train.config import TrainConfig
from rawseq.train.data import Batches, build_corpus, eval_windows, split_corpus

log = logging.getLogger(__name__)
LN2 = math.log(2.0)


class NonFiniteLossError(RuntimeError):
    """Too many steps had a non-finite loss or gradient."""


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
    return torch.device(cfg.device)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; leave norms, biases, embeddings and the SSM's A_log, D and dt_bias alone."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (decay if p.dim() >= 2 and "embed" not in name and leaf not in ("A_log",) else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _checkpoint_layers(model: ByteLM) -> None:
    """Recompute each residual block in the backward instead of keeping its activations."""
    for layer in model.backbone.layers:
        forward = layer.forward

        def wrapped(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        layer.forward = wrapped


def _detach_states(states, continues: torch.Tensor | None):
    """Detach carried states (truncated BPTT) and zero the rows whose next window starts a new document."""
    out = []
    for layer in states:
        kept = {}
        for key, value in layer.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
                if continues is not None and value.dim() > 0 and value.shape[0] == continues.shape[0]:
                    value = value * continues.view(-1, *([1] * (value.dim() - 1))).to(value.dtype)
            kept[key] = value
        out.append(kept)
    return out


def _full_state(model, optimizer, sharded: bool):
    """Unsharded model weights and optimizer state (collective under FSDP: every rank must call it)."""
    if not sharded:
        return model.state_dict(), None if optimizer is None else optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = None if optimizer is None else get_optimizer_state_dict(model, optimizer, options=options)
    return weights, optim


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Metrics:
    """metrics.jsonl: one JSON object per optimizer step (and per evaluation), written by rank 0 only."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step and path.exists():  # drop what a killed run logged after its last checkpoint
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))
        elif not resume_step:
            path.write_text("")

    def write(self, **row) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def _plot(metrics_path: Path, out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln]
    train = [(r["step"], r["bpb"]) for r in rows if "bpb" in r]
    val = [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per symbol")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


@torch.no_grad()
def evaluate(model: ByteLM, windows, cfg: TrainConfig, device: torch.device, max_batches: int | None) -> float:
    """Bits per symbol over the first ``max_batches`` batches of sequential windows (all when None)."""
    model.eval()
    total, count = 0.0, 0
    n = len(windows)
    limit = n if max_batches is None else min(n, max_batches * cfg.batch_size)
    for start in range(0, limit, cfg.batch_size):
        items = [windows[k] for k in range(start, min(limit, start + cfg.batch_size))]
        batch = {key: torch.stack([it[key] for it in items]).to(device) for key in items[0]}
        out = model(batch["input_ids"], batch["targets"], seq_idx=batch["seq_idx"])
        valid = int((batch["targets"] != -100).sum())
        if valid:
            total += out.loss.item() * valid
            count += valid
    model.train()
    return total / max(count, 1) / LN2


def train(cfg: TrainConfig, *, resume: bool = False, corpus=None) -> dict:
    """Train a ByteLM as ``cfg`` says; returns a summary (final losses, paths, skipped steps).

    ``corpus`` (a :class:`rawseq.modalities.ByteCorpus`, for example built with ``from_documents``) replaces the
    corpus that ``cfg.data`` would name.

    Writes under ``cfg.out_dir``: ``checkpoints/step_*/``, ``metrics.jsonl``, ``config.toml``-equivalent
    ``train_config.json``, ``model/`` (the final ``save_pretrained``), ``loss.png`` when matplotlib is installed.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(cfg)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    out = Path(cfg.out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    torch.manual_seed(cfg.seed)

    if corpus is None:
        if main:
            corpus = build_corpus(cfg)
        if world > 1:
            dist.barrier()
        if not main:
            corpus = build_corpus(cfg)
    train_view, val_view = split_corpus(corpus, cfg)

    mcfg_dict = dict(cfg.model)
    if corpus.vocab_size > 256 and "n_special" not in mcfg_dict and "vocab_size" not in mcfg_dict:
        mcfg_dict["n_special"] = corpus.vocab_size - 256
    mcfg = ByteLMConfig.from_dict(mcfg_dict)
    if mcfg.total_vocab < corpus.vocab_size:
        raise ValueError(f"the model's vocabulary ({mcfg.total_vocab}) is smaller than the corpus needs "
                         f"({corpus.vocab_size}); raise model.n_special")
    model = ByteLM(mcfg).to(device)
    if cfg.activation_checkpointing:
        _checkpoint_layers(model)

    start_step, skipped, carried, state = 0, 0, None, None
    ckpt_root = out / "checkpoints"
    if resume:
        found = load_latest(ckpt_root)
        if found is None:
            raise ValueError(f"--resume: no readable checkpoint in {ckpt_root}")
        path, tensors, _, state = found
        model.load_state_dict(tensors)
        _set_rng_state(state["rng"])
        start_step, skipped = state["step"], state["skipped"]
        carried = state.get("carried")
        if main:
            log.info("resumed from %s (step %d)", path, start_step)

    wrapped = model
    sharded = world > 1 and cfg.fsdp
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for layer in model.backbone.layers:
            fully_shard(layer)
        fully_shard(model)
    elif world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  foreach=False)
    if state is not None:
        if sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
    fwd = torch.compile(wrapped) if cfg.compile else wrapped
    batches = Batches(train_view, cfg, rank, world)
    val_windows = eval_windows(val_view, cfg)
    metrics = _Metrics(out / "metrics.jsonl", main, start_step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    if carried is not None:
        carried = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in layer.items()}
                   for layer in carried]

    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (main and cfg.progress), unit="step",
               dynamic_ncols=True)
    t_start, symbols_seen, last = time.perf_counter(), 0, {}
    first_bpb = None
    for step in range(start_step, cfg.steps):
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [batches.batch(step, m) for m in range(cfg.grad_accum)]
        local_count = sum(int((b["targets"] != -100).sum()) for b in micro)
        counts = torch.tensor([float(local_count)], device=device)
        if world > 1:
            dist.all_reduce(counts)
        global_count = max(counts.item(), 1.0)
        loss_sum = torch.zeros((), device=device)
        for m, batch in enumerate(micro):
            batch = {k: v.to(device) for k, v in batch.items()}
            valid = int((batch["targets"] != -100).sum())
            sync = nullcontext()
            if world > 1 and not cfg.fsdp and m < cfg.grad_accum - 1:
                sync = wrapped.no_sync()
            with sync, autocast:
                if cfg.stateful:
                    o = fwd(batch["input_ids"], batch["targets"], seq_idx=batch["seq_idx"], initial_states=carried,
                            return_states=True)
                    # Keep each row's state only if that row's next window continues the same document.
                    nxt = batches.batch(step + (m + 1) // cfg.grad_accum, (m + 1) % cfg.grad_accum)["continues"]
                    carried = _detach_states(o.states, nxt.to(device))
                else:
                    o = fwd(batch["input_ids"], batch["targets"], seq_idx=batch["seq_idx"])
            # Scale so that the (DDP-averaged) gradient is that of the mean over every target of the step.
            (o.loss * (valid * world / global_count)).backward()
            loss_sum += o.loss.detach() * valid
        if world > 1:
            dist.all_reduce(loss_sum)
        loss = loss_sum.item() / global_count
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            log.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s); step skipped (%d so far)",
                        step, loss, grad_norm, skipped)
            metrics.write(step=step + 1, loss=loss, skipped=True, skipped_total=skipped)
            if skipped > cfg.max_nonfinite:
                raise NonFiniteLossError(
                    f"stopping: {skipped} steps had a non-finite loss or gradient (max_nonfinite="
                    f"{cfg.max_nonfinite}); lower lr, raise warmup_steps, or check the data")
            bar.update(1)
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        symbols_seen += cfg.batch_size * cfg.grad_accum * cfg.seq_len
        elapsed = time.perf_counter() - t_start
        bpb = loss / LN2
        first_bpb = bpb if first_bpb is None else first_bpb
        last = {"step": step + 1, "loss": loss, "bpb": bpb, "lr": lr, "grad_norm": grad_norm,
                "bytes_per_s": symbols_seen / elapsed, "elapsed_s": elapsed}
        metrics.write(**last)
        bar.set_postfix(loss=f"{loss:.3f}", bpb=f"{bpb:.3f}", Bps=f"{symbols_seen / elapsed:,.0f}")
        bar.update(1)
        done = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or done:
            val_bpb = evaluate(model, val_windows, cfg, device, cfg.eval_batches)
            last["val_bpb"] = val_bpb
            metrics.write(step=step + 1, val_bpb=val_bpb)
        if (step + 1) % cfg.checkpoint_every == 0 or done:
            weights, optim_state = _full_state(model, optimizer, sharded)
            state = {"optimizer": optim_state, "rng": _rng_state(), "step": step + 1, "skipped": skipped,
                     "data_position": (step + 1) * cfg.grad_accum * cfg.batch_size}
            if carried is not None:
                state["carried"] = [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in layer.items()}
                                    for layer in carried]
            if main:
                save_checkpoint(ckpt_root, step + 1, weights, mcfg.to_dict(), state, cfg.keep_checkpoints)
            if world > 1:
                dist.barrier()
    bar.close()

    summary = {"out_dir": str(out), "steps": cfg.steps, "skipped": skipped, "first_bpb": first_bpb, **last}
    weights, _ = _full_state(model, None, sharded)
    if main:
        final = ByteLM(mcfg)
        final.load_state_dict(weights)
        final.save_pretrained(out / "model")
        summary["model_dir"] = str(out / "model")
        if _plot(out / "metrics.jsonl", out / "loss.png"):
            summary["plot"] = str(out / "loss.png")
    if world > 1:
        dist.barrier()
    return summary
