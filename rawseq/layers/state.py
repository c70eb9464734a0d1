"""Helpers over decoding states: tensors whose first axis is the batch of streams, nested in dicts, lists and tuples
(one dict per layer, a list of layers, deeper for hierarchical models)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def map_states(fn: Callable[[torch.Tensor], torch.Tensor], states):
    """The same nesting with ``fn`` applied to every tensor (anything else is kept as it is)."""
    if isinstance(states, dict):
        return {k: map_states(fn, v) for k, v in states.items()}
    if isinstance(states, (list, tuple)):
        return type(states)(map_states(fn, s) for s in states)
    return fn(states) if isinstance(states, torch.Tensor) else states


def detach_states(states):
    """A copy of nested states with every tensor detached (to carry state across training windows)."""
    return map_states(torch.Tensor.detach, states)


def keep_rows(keep: torch.Tensor, target, source) -> None:
    """In place, over nested states: ``target[row] = source[row]`` for every row where ``keep`` (b,) is False."""
    if isinstance(target, dict):
        for k in target:
            keep_rows(keep, target[k], source[k])
    elif isinstance(target, (list, tuple)):
        for t, s in zip(target, source, strict=True):
            keep_rows(keep, t, s)
    elif isinstance(target, torch.Tensor):
        target.copy_(torch.where(keep.view(-1, *([1] * (target.dim() - 1))), target, source))


def index_states(states, index: torch.Tensor):
    """Rows ``index`` (a 1-D int64 tensor) of every tensor in nested states."""
    return map_states(lambda t: t.index_select(0, index), states)


def concat_states(states: list):
    """Stack nested states of several batches of streams along the batch axis.

    Tensors whose other axes differ (KV caches of different capacities) are zero-padded at the end of each axis;
    the padding lies beyond every row's ``length`` and is never attended to.
    """
    first = states[0]
    if isinstance(first, dict):
        return {k: concat_states([s[k] for s in states]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(concat_states([s[i] for s in states]) for i in range(len(first)))
    if not isinstance(first, torch.Tensor):
        return first
    target = [max(p.shape[d] for p in states) for d in range(first.dim())]
    padded = []
    for p in states:
        pad = []
        for d in reversed(range(1, first.dim())):
            pad += [0, target[d] - p.shape[d]]
        padded.append(F.pad(p, pad) if any(pad) else p)
    return torch.cat(padded, dim=0)


def state_bytes(states) -> int:
    """Total bytes held by the tensors in nested states."""
    total = 0

    def count(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    map_states(count, states)
    return total
