"""The one training loop. A task (:mod:`rawseq.train.lm`, :mod:`rawseq.train.classify`) says what a batch is, what
its loss is and how to evaluate; the loop does the rest the same way for every task and model family: the run
folder, the model from the registry, the optimiser and schedule, accumulation over micro-batches and processes,
the non-finite guard, evaluation, checkpoints with exact resume, metrics and the final ``model/``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from rawseq.config import ConfigError
from rawseq.models import registry
from rawseq.train import parallel
from rawseq.train.checkpoint import load_latest, save_checkpoint
from rawseq.train.metrics import MetricsLog, plot
from rawseq.train.optim import build_optimizer, lr_at, set_lr
from rawseq.train.run import RunFolder

log = logging.getLogger("rawseq.train")

# Keys that may change when a run is resumed (how it runs, not what it computes).
RESUMABLE_CHANGES = ("steps", "eval_every", "eval_batches", "log_every", "progress", "checkpoint_every",
                     "keep_checkpoints", "device", "num_workers", "tensorboard", "max_nonfinite", "sample_bytes",
                     "sample_prompt", "compile", "out_dir", "cache_dir", "preset", "threads")
MAX_SKIPPED_SHARE = 0.1


class NonFiniteError(RuntimeError):
    """The run cannot go on: too many non-finite steps, or parameters that became non-finite."""


NonFiniteLossError = NonFiniteError


class Task(Protocol):
    """What the loop needs from a task. Batches are pure functions of (step, micro) so that a resumed run sees the
    batches it would have seen."""

    def model_config(self): ...

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]: ...

    def forward(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, float]]:
        """(objective to minimise, number of targets it averages over, values to log)."""

    def evaluate(self, model, device: torch.device) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (prefix == "" and key in RESUMABLE_CHANGES):
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out


def _finite_params(model: torch.nn.Module) -> bool:
    flags = [p.isfinite().all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def fit(task: Task, cfg, folder: RunFolder | None, place: parallel.Placement, *, resume: bool = False) -> dict:
    """Train ``task``'s model as ``cfg`` (a :class:`rawseq.train.config.RunConfig`) says; returns a summary.

    ``folder`` is the locked run folder on the main process (None on the others).
    """
    out = Path(cfg.out_dir)
    device = place.device
    torch.manual_seed(cfg.seed)
    model_cfg = task.model_config()
    model = registry.build(model_cfg).to(device)
    if cfg.activation_checkpointing:
        parallel.checkpoint_blocks(parallel.blocks_of(model))

    start, skipped, state, first, train_s = 0, 0, None, None, 0.0
    ckpt_root = out / "checkpoints"
    config_dict = {**cfg.to_dict(), "model": model_cfg.to_dict()}
    if resume:
        found = load_latest(ckpt_root)
        if found is None:
            raise ConfigError(f"--resume: no readable checkpoint in {ckpt_root}")
        path, tensors, _, state = found
        changed = _differences(state.get("config", {}), config_dict)
        if changed:
            raise ConfigError(f"--resume: the configuration differs from the checkpoint {path}: " + "; ".join(changed))
        if state["step"] >= cfg.steps and (out / "model").is_dir():
            if folder is not None:
                folder.finish("finished", step=state["step"])
            return {"out_dir": str(out), "finished": True, "steps": cfg.steps, "step": state["step"],
                    "model_dir": str(out / "model")}
        model.load_state_dict(tensors)
        parallel.set_rng_state(state["rng"])
        start, skipped = state["step"], state["skipped"]
        train_s = state.get("train_s", 0.0)
        if cfg.time_budget_s and train_s >= cfg.time_budget_s and (out / "model").is_dir():
            if folder is not None:
                folder.finish("finished", step=start)
            return {"out_dir": str(out), "finished": True, "steps": start, "step": start,
                    "model_dir": str(out / "model")}
        first = state.get("first_bpb")
        task.load_state_dict(state.get("task", {}))
        if place.main:
            log.info("resumed from %s (step %d)", path, start)

    wrapped, sharded = parallel.wrap(model, place, fsdp=cfg.fsdp, compile_model=cfg.compile)
    optimizer = build_optimizer(model, cfg)
    if state is not None:
        parallel.load_optimizer_state(model, optimizer, state["optimizer"], sharded)
    metrics = MetricsLog(out / "metrics.jsonl", enabled=place.main, resume_step=start,
                         tensorboard=out / "tensorboard" if cfg.tensorboard else None)
    accum = getattr(cfg, "grad_accum", 1)
    bar = tqdm(total=cfg.steps, initial=start, disable=not (place.main and cfg.progress), unit="step",
               dynamic_ncols=True)
    budget = cfg.time_budget_s
    t_start, seen, last, steps_done = time.perf_counter(), 0, {}, start
    try:
        for step in range(start, cfg.steps):
            progress = train_s / budget if budget else None
            lr = lr_at(step, lr=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps, min_ratio=cfg.min_lr_ratio,
                       progress=progress)
            set_lr(optimizer, lr)
            t_step = time.perf_counter()
            row = _train_step(task, wrapped, model, optimizer, cfg, place, step, accum)
            train_s += time.perf_counter() - t_step
            steps_done = step + 1
            # every process stops at the same step: the slowest one's clock decides
            over = bool(budget) and parallel.all_reduce_sum(
                torch.tensor([float(train_s >= budget)], device=device), place).item() > 0
            if row is None:
                skipped += 1
                log.warning("step %d: non-finite loss or gradient; step skipped (%d so far)", step + 1, skipped)
                metrics.write(step=step + 1, skipped=True, skipped_total=skipped)
                if skipped > cfg.max_nonfinite:
                    raise NonFiniteError(f"stopping: {skipped} steps had a non-finite loss or gradient "
                                         f"(max_nonfinite={cfg.max_nonfinite}); lower lr, raise warmup_steps, or "
                                         "check the data")
                bar.update(1)
                continue
            if not _finite_params(model):
                raise NonFiniteError(f"step {step + 1}: parameters became non-finite; the last good state is the "
                                     f"newest checkpoint in {ckpt_root}")
            seen += row.pop("_symbols")
            elapsed = time.perf_counter() - t_start
            first = row.get("bpb") if first is None else first
            last = {"step": step + 1, **row, "lr": lr, "symbols_per_s": seen / elapsed, "elapsed_s": elapsed,
                    **({"train_s": train_s} if budget else {})}
            metrics.write(**last)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("loss", "bpb")})
            bar.update(1)
            if place.main and not cfg.progress and (step + 1) % cfg.log_every == 0:
                log.info("step %d: %s", step + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                            if isinstance(v, float)))
            done = step + 1 == cfg.steps or over
            if (step + 1) % cfg.eval_every == 0 or done:
                ev = task.evaluate(model, device)
                last.update(ev)
                metrics.write(step=step + 1, **ev)
            if (step + 1) % cfg.checkpoint_every == 0 or done:
                weights, optim_state = parallel.full_state(model, optimizer, sharded)
                ckpt = {"optimizer": optim_state, "rng": parallel.rng_state(), "step": step + 1, "skipped": skipped,
                        "first_bpb": first, "train_s": train_s, "task": task.state_dict(), "config": config_dict,
                        "run_id": folder.run_id if folder is not None else None}
                if place.main:
                    save_checkpoint(ckpt_root, step + 1, weights, model_cfg.to_dict(), ckpt, cfg.keep_checkpoints)
                parallel.barrier(place)
            if over:
                break
    finally:
        bar.close()
        metrics.close()

    if skipped > MAX_SKIPPED_SHARE * steps_done:
        raise NonFiniteError(f"{skipped} of {steps_done} steps were skipped (non-finite loss or gradient): the run "
                             "is not trustworthy; lower lr or check the data")
    summary = {"out_dir": str(out), "steps": steps_done, "skipped": skipped, "first_bpb": first, **last}
    weights, _ = parallel.full_state(model, None, sharded)
    if place.main:
        final = registry.build(model_cfg)
        final.load_state_dict(weights)
        final.save_pretrained(out / "model")
        summary["model_dir"] = str(out / "model")
        summary["parameters"] = final.num_parameters()
        if plot(out / "metrics.jsonl", out / "loss.png"):
            summary["plot"] = str(out / "loss.png")
    parallel.barrier(place)
    return summary


def _train_step(task, wrapped, model, optimizer, cfg, place, step: int, accum: int) -> dict | None:
    """One optimizer step over ``accum`` micro-batches; the logged row, or None when it was skipped."""
    device = place.device
    micro = [task.batch(step, m) for m in range(accum)]
    counts = [task.count(b) for b in micro]
    total = parallel.all_reduce_sum(torch.tensor([float(sum(counts))], device=device), place).item()
    total = max(total, 1.0)
    sums: dict[str, float] = {}
    for m, batch in enumerate(micro):
        batch = {k: v.to(device) for k, v in batch.items()}
        with parallel.no_sync(wrapped, place, fsdp=cfg.fsdp, last_micro=m == accum - 1), parallel.autocast(device):
            objective, count, logs = task.forward(wrapped, batch)
        # Scaled so the (DDP-averaged) gradient is that of the mean over every target of the step.
        (objective * (count * place.world / total)).backward()
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + float(value) * count
    keys = sorted(sums)
    vec = parallel.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device), place)
    row = {k: float(v) / total for k, v in zip(keys, vec.tolist())}
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    if not (all(math.isfinite(v) for v in row.values()) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**row, "grad_norm": grad_norm, "_symbols": int(total)}
