"""Helpers over per-layer decoding states (dicts of tensors whose first axis is the batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def concat_states(states: list[dict]) -> dict:
    """Stack the states of several batches of streams along the batch axis.

    Tensors whose other axes differ (KV caches of different capacities) are zero-padded at the end of each axis;
    the padding lies beyond every row's ``length`` and is never attended to.
    """
    out = {}
    for key in states[0]:
        parts = [s[key] for s in states]
        ndim = parts[0].dim()
        target = [max(p.shape[d] for p in parts) for d in range(ndim)]
        padded = []
        for p in parts:
            pad = []
            for d in reversed(range(1, ndim)):
                pad += [0, target[d] - p.shape[d]]
            padded.append(F.pad(p, pad) if any(pad) else p)
        out[key] = torch.cat(padded, dim=0)
    return out


def detach_states(states):
    """A copy of nested per-layer states with every tensor detached (to carry state across training windows)."""
    if isinstance(states, dict):
        return {k: detach_states(v) for k, v in states.items()}
    if isinstance(states, (list, tuple)):
        return type(states)(detach_states(s) for s in states)
    return states.detach() if isinstance(states, torch.Tensor) else states


def state_bytes(states) -> int:
    """Total bytes held by the tensors in nested states."""
    if isinstance(states, dict):
        return sum(state_bytes(v) for v in states.values())
    if isinstance(states, (list, tuple)):
        return sum(state_bytes(s) for s in states)
    return states.numel() * states.element_size() if isinstance(states, torch.Tensor) else 0
