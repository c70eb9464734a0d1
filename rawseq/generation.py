"""Sampling and constant-memory generation for :class:`rawseq.ByteLM`.

Prompts of different lengths are prefilled separately (those of one length together), so no padding ever enters a
state; the streams then advance together, one symbol per :meth:`ByteLM.step`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

N_BYTES = 256


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one id per row from logits (b, vocab) -> (b,) int64.

    ``temperature == 0`` is greedy. Otherwise the logits are divided by the temperature, then restricted to the
    ``top_k`` most likely ids, to the smallest set whose probability reaches ``top_p``, and to ids whose
    probability is at least ``min_p`` times the largest one (each filter only if given).
    """
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p} must lie in (0, 1]")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop an id when the ids ranked above it already reach top_p; the most likely id always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if min_p is not None:
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p={min_p} must lie in [0, 1]")
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _as_ids(prompt) -> list[int]:
    if isinstance(prompt, str):
        return list(prompt.encode("utf-8"))
    if isinstance(prompt, (bytes, bytearray)):
        return list(prompt)
    if isinstance(prompt, Sequence) and all(isinstance(i, int) for i in prompt):
        return list(prompt)
    raise TypeError(f"a prompt is bytes, str or a list of ids, got {type(prompt).__name__}")


def _stops(stop) -> list[bytes]:
    if stop is None:
        return []
    if isinstance(stop, (bytes, bytearray)):
        stop = [stop]
    elif isinstance(stop, str):
        stop = [stop.encode("utf-8")]
    out = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in stop]
    if any(len(s) == 0 for s in out):
        raise ValueError("stop sequences must not be empty")
    return out


@torch.inference_mode()
def generate(
    model,
    prompts,
    max_new_bytes: int = 256,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | None = None,
    stop=None,
    stream: Callable[[int, bytes], None] | None = None,
):
    """Continue one prompt or a batch of prompts of different lengths.

    Args:
        model: a :class:`rawseq.ByteLM` (any causal backbone).
        prompts: bytes, str (UTF-8) or a list of ids (special symbols allowed), or a list of such prompts.
        max_new_bytes: the most bytes generated per prompt.
        temperature, top_k, top_p, min_p: see :func:`sample`; ``temperature=0`` is greedy.
        seed: seeds a private ``torch.Generator`` so that sampling is reproducible, or None.
        stop: bytes/str or a list of them; a row stops once its output ends with one (which is kept). A row also
            stops when it samples ``config.eos_id`` (not included in its output). Other special symbols are never
            sampled.
        stream: called as ``stream(row, data)`` with each new byte of each row as it is produced.

    Returns:
        bytes for a single prompt, or a list of bytes in the order of ``prompts``.
    """
    single = isinstance(prompts, (bytes, bytearray, str)) or (
        isinstance(prompts, Sequence) and len(prompts) > 0 and all(isinstance(i, int) for i in prompts)
    )
    batch = [_as_ids(prompts)] if single else [_as_ids(p) for p in prompts]
    if not batch:
        return []
    if max_new_bytes < 0:
        raise ValueError(f"max_new_bytes={max_new_bytes} must be >= 0")
    cfg = model.config
    if cfg.bidirectional:
        raise ValueError("a bidirectional ByteLM is an encoder and cannot generate")
    if cfg.bos_id is not None:
        batch = [p if p else [cfg.bos_id] for p in batch]
    stops = _stops(stop)
    device = model.embed.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    vocab = model.vocab_size
    banned = None
    if vocab > N_BYTES:
        banned = torch.ones(vocab, dtype=torch.bool, device=device)
        banned[:N_BYTES] = False
        if cfg.eos_id is not None:
            banned[cfg.eos_id] = False

    outputs = [bytearray() for _ in batch]
    done = [False] * len(batch)
    if max_new_bytes > 0:
        logits, states = model.prefill_ragged(batch)
        for t in range(max_new_bytes):
            if banned is not None:
                logits = logits.masked_fill(banned, float("-inf"))
            ids = sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         generator=generator)
            for row, i in enumerate(ids.tolist()):
                if done[row]:
                    continue
                if i >= N_BYTES:  # only eos_id gets through the mask
                    done[row] = True
                    continue
                outputs[row].append(i)
                if stream is not None:
                    stream(row, bytes((i,)))
                if any(outputs[row].endswith(s) for s in stops):
                    done[row] = True
            if all(done) or t == max_new_bytes - 1:
                break
            logits = model.step(ids, states)
    results = [bytes(o) for o in outputs]
    return results[0] if single else results
