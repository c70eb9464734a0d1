"""Where and how a model runs during training: device, precision, processes (DDP / FSDP2 under torchrun),
activation checkpointing, ``torch.compile``, and gathering full weights for saving."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from rawseq.config import ConfigError


@dataclass
class Placement:
    """This process's device and place among ``world`` processes."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this process's CUDA device when available, else CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device={name}: no CUDA device is available on this machine (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def setup(device_name: str) -> Placement:
    """Join the process group under torchrun and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Placement(device, rank, world)


def barrier(place: Placement) -> None:
    if place.world > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, place: Placement) -> torch.Tensor:
    if place.world > 1:
        dist.all_reduce(t)
    return t


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def checkpoint_blocks(blocks) -> None:
    """Recompute each block in the backward instead of keeping its activations."""
    for block in blocks:
        forward = block.forward

        def wrapped(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = wrapped


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of a model (the units of sharding and recomputation)."""
    from rawseq.layers import Block

    return [m for m in model.modules() if isinstance(m, Block)]


def wrap(model: nn.Module, place: Placement, *, fsdp: bool, compile_model: bool) -> tuple[nn.Module, bool]:
    """(the module to call, whether parameters are sharded). Under several processes: DDP, or FSDP2 over blocks."""
    wrapped, sharded = model, False
    if place.world > 1 and fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in blocks_of(model):
            fully_shard(block)
        fully_shard(model)
        sharded = True
    elif place.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped, sharded


def no_sync(wrapped: nn.Module, place: Placement, *, fsdp: bool, last_micro: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
    inner = getattr(wrapped, "_orig_mod", wrapped)
    if place.world > 1 and not fsdp and not last_micro and hasattr(inner, "no_sync"):
        return inner.no_sync()
    return nullcontext()


def full_state(model: nn.Module, optimizer, sharded: bool):
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


def load_optimizer_state(model: nn.Module, optimizer, state: dict, sharded: bool) -> None:
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
