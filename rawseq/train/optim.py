"""Parameter groups and the learning-rate schedule, the same for every task.

Weight decay applies to matrices only: never to vectors (norms, biases), embedding tables, or any parameter a layer
marks with ``_no_weight_decay = True`` (the SSMs' ``A_log``, ``D``, ``dt_bias``). A parameter may carry
``_lr_scale`` (a float): its group's learning rate is that multiple of the schedule's (per-stage rates of a
hierarchy).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def decays(name: str, param: torch.Tensor, embeddings: set[int]) -> bool:
    """Whether weight decay applies to ``param``."""
    return param.dim() >= 2 and id(param) not in embeddings and not getattr(param, "_no_weight_decay", False)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: (decay or not) x (learning-rate scale), each with ``weight_decay`` and ``lr_scale``."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        key = (decays(name, p, embeddings), float(getattr(p, "_lr_scale", 1.0)))
        groups.setdefault(key, []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the run's betas."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             foreach=False)


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_ratio: float,
          progress: float | None = None) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``lr * min_ratio`` at ``total``; or, with
    ``progress`` (a fraction of the run done, as a time budget measures it), to the floor at ``progress = 1``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if progress is None:
        progress = (step - warmup) / max(1, total - warmup)
    floor = lr * min_ratio
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
