"""Sampling and constant-memory generation for every causal model family (``ByteLM``, ``SashimiLM``, ``HNet``).

Arguments follow transformers and mamba_ssm: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``,
``top_p``, ``min_p``, ``repetition_penalty``, ``eos_token_id``, ``streamer``. Prompts of different lengths are
prefilled separately (those of one length together), so no padding ever enters a state; the streams then advance
together, one symbol per ``model.step``.

The default is sampling at temperature 1 (transformers' default is greedy). A model of raw bytes, samples or pixels
is trained to give the distribution of the next symbol, and its bits per symbol measure exactly that distribution;
its single most likely continuation is usually degenerate (a byte or a run of spaces repeated, audio decaying to
silence, a flat image). ``do_sample=False`` or ``temperature=0`` gives greedy decoding.

:func:`generate_audio` and :func:`generate_images` turn symbols into waveforms and pictures, reading the codec,
rate, channels, pixel mode and image size from the model's config (what it was trained on).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from rawseq.modalities.symbols import N_SYMBOLS

__all__ = ["NonFiniteLogitsError", "check_sampling", "generate", "generate_audio", "generate_images", "image_shape",
           "penalize_repetition", "sample"]

DEFAULT_MAX_NEW_TOKENS = 256


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or infinite logits: its weights or its computation are broken, and no symbol drawn
    from them would mean anything."""


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    do_sample: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one id per row from logits (b, vocab) -> (b,) int64.

    ``do_sample=False`` or ``temperature == 0`` is greedy. Otherwise the logits are divided by the temperature, then
    restricted to the ``top_k`` most likely ids, to the smallest set whose probability reaches ``top_p``, and to ids
    whose probability is at least ``min_p`` times the largest one (each filter only if given).
    """
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    logits = logits.float()
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop an id when the ids ranked above it already reach top_p; the most likely id always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if min_p is not None:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def check_sampling(*, temperature: float, top_k: int | None, top_p: float | None, min_p: float | None) -> None:
    """Raise ValueError naming the sampling argument that is out of range (NaN included)."""
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be a number >= 0")
    if top_k is not None and not top_k >= 1:
        raise ValueError(f"top_k={top_k} must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must lie in (0, 1]")
    if min_p is not None and not 0 <= min_p <= 1:
        raise ValueError(f"min_p={min_p} must lie in [0, 1]")


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (as in transformers): the logit of an id already in the row is divided by
    ``penalty`` when positive and multiplied by it when negative. logits (b, vocab), seen (b, vocab) bool."""
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def _as_ids(prompt) -> list[int]:
    if isinstance(prompt, str):
        return list(prompt.encode("utf-8"))
    if isinstance(prompt, (bytes, bytearray)):
        return list(prompt)
    if isinstance(prompt, torch.Tensor) and prompt.dim() == 1 and not prompt.is_floating_point():
        return [int(i) for i in prompt.tolist()]
    if isinstance(prompt, Sequence) and all(isinstance(i, int) for i in prompt):
        return list(prompt)
    raise TypeError(f"a prompt is bytes, str, a list of ids or a 1-D integer tensor, got {type(prompt).__name__}")


def _batch(prompts) -> tuple[list[list[int]], bool]:
    """The prompts as lists of ids, and whether a single prompt was given."""
    if isinstance(prompts, torch.Tensor) and prompts.dim() == 2:
        return [_as_ids(row) for row in prompts], False
    single = isinstance(prompts, (bytes, bytearray, str)) or (isinstance(prompts, torch.Tensor) and prompts.dim() == 1)
    single = single or (isinstance(prompts, Sequence) and len(prompts) > 0 and all(isinstance(i, int) for i in prompts))
    return ([_as_ids(prompts)] if single else [_as_ids(p) for p in prompts]), single


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


def _id_list(value, name: str, vocab: int) -> list[int]:
    ids = [value] if isinstance(value, int) else list(value)
    bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < vocab)]
    if bad:
        raise ValueError(f"{name}={value!r}: ids must lie in [0, {vocab})")
    return ids


def _check_model(model) -> None:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "bidirectional", False) or not hasattr(model, "step") or not hasattr(model, "prefill_ragged"):
        raise ValueError(f"a {type(model).__name__} is an encoder (bidirectional) and cannot generate; load a causal "
                         "language model")


@torch.inference_mode()
def generate(
    model,
    prompts,
    max_new_bytes: int | None = None,
    *,
    max_new_tokens: int | None = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    allowed_ids: Sequence[int] | None = None,
    return_ids: bool = False,
    seed: int | None = None,
    stop=None,
    stream: Callable[[int, bytes], None] | None = None,
    streamer=None,
    progress: bool = False,
):
    """Continue one prompt or a batch of prompts of different lengths.

    Args:
        model: a causal model of the registry (``ByteLM``, ``SashimiLM``, ``HNet``): anything with ``config``,
            ``prefill_ragged(prompts) -> (logits (b, vocab), states)`` and ``step(ids (b,), states) -> logits``.
        prompts: bytes, str (UTF-8), a list of ids or a 1-D integer tensor; or a list of such prompts, or a 2-D
            (b, l) integer tensor (transformers' ``input_ids``).
        max_new_tokens: the most symbols generated per prompt (default 256). ``max_new_bytes`` is the same, an
            older name; ``max_new_tokens`` wins when both are given.
        do_sample: False decodes greedily (as ``temperature=0``).
        temperature, top_k, top_p, min_p: see :func:`sample`.
        repetition_penalty: > 1 discourages ids already in the row (prompt included); 1 leaves the logits alone.
        eos_token_id: id or ids that end a row (default: the config's ``eos_id``).
        allowed_ids: the only ids that may be drawn. Default: the 256 symbol values and the end ids, or, for a model
            with its own vocabulary (``config.vocab_size`` set, e.g. converted from transformers), every id.
        return_ids: return lists of new ids (a row that ended on an end id keeps it last, as in transformers)
            instead of bytes; needed for ids >= 256 (special symbols, converted vocabularies).
        seed: seeds a private ``torch.Generator`` so that sampling is reproducible, or None.
        stop: bytes/str or a list of them; a row stops once its output ends with one (which is kept).
        stream: called as ``stream(row, data)`` with each new byte of each row as it is produced.
        streamer: an object with ``put(ids)`` and ``end()``, as transformers' ``TextStreamer``: ``put`` gets the
            prompt ids (b, l) first (all prompts must then have one length), then each step's new ids (b,) (-1 for
            rows that have ended); ``end()`` comes last.
        progress: show a tqdm bar over the steps.

    Returns:
        bytes (or a list of ids with ``return_ids``) for a single prompt, or a list of them in prompt order.

    Raises:
        ValueError: bad arguments, an empty prompt without ``bos_id``, an encoder.
        NonFiniteLogitsError: the model produced NaN or infinite logits.
    """
    _check_model(model)
    batch, single = _batch(prompts)
    if not batch:
        return []
    steps = max_new_tokens if max_new_tokens is not None else max_new_bytes
    steps = DEFAULT_MAX_NEW_TOKENS if steps is None else steps
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"max_new_tokens={steps!r} must be an integer >= 0")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty={repetition_penalty} must be > 0")
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    cfg = model.config
    bos = getattr(cfg, "bos_id", None)
    if bos is not None:
        batch = [p if p else [bos] for p in batch]
    if streamer is not None and len({len(p) for p in batch}) > 1:
        raise ValueError("a streamer needs prompts of one length (it is given the prompt ids as one tensor)")
    stops = _stops(stop)
    if stops and return_ids:
        raise ValueError("stop sequences are bytes; with return_ids use eos_token_id")
    device = getattr(model, "device", None) or next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None

    results: list[list[int]] = [[] for _ in batch]
    if streamer is not None:
        streamer.put(torch.tensor(batch, dtype=torch.long))
    if steps > 0:
        logits, states = model.prefill_ragged(batch)
        vocab = logits.shape[-1]
        if eos_token_id is None:
            eos_token_id = getattr(cfg, "eos_id", None)
        ends = [] if eos_token_id is None else _id_list(eos_token_id, "eos_token_id", vocab)
        if allowed_ids is None and getattr(cfg, "vocab_size", None) is None and vocab > N_SYMBOLS:
            allowed_ids = [*range(N_SYMBOLS), *ends]
        banned = None
        if allowed_ids is not None:
            banned = torch.ones(vocab, dtype=torch.bool, device=device)
            banned[_id_list(allowed_ids, "allowed_ids", vocab)] = False
        seen = None
        if repetition_penalty != 1.0:
            seen = torch.zeros(len(batch), vocab, dtype=torch.bool, device=device)
            for row, p in enumerate(batch):
                seen[row, p] = True
        results = _decode(model, logits, states, steps, batch, dict(
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, generator=generator),
            banned=banned, seen=seen, penalty=repetition_penalty, ends=set(ends), stops=stops,
            keep_ends=return_ids, stream=stream, streamer=streamer, progress=progress)
    if streamer is not None:
        streamer.end()
    if not return_ids:
        results = [_to_bytes(r) for r in results]
    return results[0] if single else results


def _decode(model, logits, states, steps, batch, sampling, *, banned, seen, penalty, ends, stops, keep_ends, stream,
            streamer, progress) -> list[list[int]]:
    """The decoding loop of :func:`generate`: one sampled id per live row per step."""
    from tqdm import tqdm

    outputs = [[] for _ in batch]
    done = [False] * len(batch)
    with tqdm(total=steps, disable=not progress, unit="symbol", dynamic_ncols=True, leave=False) as bar:
        for t in range(steps):
            # NaN or +inf anywhere, or a row that is -inf everywhere, leaves nothing meaningful to draw (-inf alone is
            # a probability of zero, which a model may give on purpose). A row's maximum is finite exactly when none
            # of these holds (the maximum propagates NaN), so one reduction screens every row.
            if not bool(logits.amax(-1).isfinite().all()):
                _check_finite(logits, done, t)
            if seen is not None:
                logits = penalize_repetition(logits, seen, penalty)
            if banned is not None:
                logits = logits.masked_fill(banned, float("-inf"))
            ids = sample(logits, **sampling)
            values = ids.tolist()
            for row, i in enumerate(values):
                if done[row]:
                    values[row] = -1
                    continue
                if i in ends:
                    done[row] = True
                    if keep_ends:
                        outputs[row].append(i)
                    continue
                outputs[row].append(i)
                if stream is not None and i < N_SYMBOLS:
                    stream(row, bytes((i,)))
                if stops and any(outputs[row][-len(s):] == list(s) for s in stops):
                    done[row] = True
            if streamer is not None:
                streamer.put(torch.tensor(values, dtype=torch.long))
            bar.update(1)
            if all(done) or t == steps - 1:
                break
            if seen is not None:
                seen[torch.arange(len(values), device=seen.device), ids] = True
            logits = model.step(ids, states)
    return outputs


def _check_finite(logits: torch.Tensor, done: list[bool], t: int) -> None:
    """Raise NonFiniteLogitsError if a live row of logits (b, vocab) holds NaN or +inf, or is -inf everywhere."""
    bad = (logits.isnan() | logits.isposinf()).any(-1) | logits.isneginf().all(-1)
    bad &= torch.tensor([not d for d in done], device=logits.device)
    if bool(bad.any()):
        raise NonFiniteLogitsError(f"the model produced non-finite logits (row {int(bad.nonzero()[0])}, after "
                                   f"{t} new symbols); its weights or computation hold NaN or infinity")


def _to_bytes(ids: list[int]) -> bytes:
    if any(i >= N_SYMBOLS for i in ids):
        raise ValueError("the model generated ids >= 256 (a vocabulary of its own); pass return_ids=True")
    return bytes(ids)


def _spec(model, modality: str):
    cfg = model.config
    have = getattr(cfg, "modality", None)
    if have != modality:
        raise ValueError(f"the model was trained on {have or 'unrecorded'} symbols (config modality={have!r}), "
                         f"not {modality}")
    return cfg


def generate_audio(model, n: int = 1, *, seconds: float = 1.0, prompt=None, sampling_rate: int | None = None,
                   **kwargs) -> list[torch.Tensor]:
    """Clips of audio in the model's codec, rate and channels (``config.codec``, ``sample_rate``, ``channels``).

    Args:
        n: clips to generate (each its own stream).
        seconds: audio generated after the prompt; without a prompt, the length of the whole clip, which starts
            from one frame of silence.
        prompt: a clip to continue: a path, an encoded file's bytes or a waveform (see
            :func:`rawseq.modalities.audio.to_symbols`), converted to the model's rate and channels.
        sampling_rate: a waveform prompt's own rate (files carry theirs).
        **kwargs: sampling arguments of :func:`generate` (``temperature``, ``seed``, ``progress``, ...).

    Returns:
        n float32 waveforms (channels, time) in [-1, 1] at ``config.sample_rate``, each the prompt and its
        continuation (shorter when the model sampled its end id).
    """
    from rawseq.modalities import audio

    cfg = _spec(model, "audio")
    if not (n >= 1 and seconds > 0):
        raise ValueError(f"n={n} must be >= 1 and seconds={seconds} > 0")
    frame = cfg.channels * audio.symbols_per_sample(cfg.codec)
    total = max(1, round(seconds * cfg.sample_rate))
    if prompt is None:
        start = audio.encode(torch.zeros(cfg.channels, 1), cfg.codec).tolist()
        new = (total - 1) * frame
    else:
        if isinstance(prompt, (str, os.PathLike)):
            prompt = os.path.expanduser(prompt)
        if cfg.channels == 1:
            start = audio.to_symbols(prompt, codec=cfg.codec, sample_rate=cfg.sample_rate,
                                     sampling_rate=sampling_rate).tolist()
        else:
            wave = audio.load(prompt, cfg.sample_rate, mono=False) if isinstance(prompt, (str, os.PathLike, bytes)) \
                else audio.waveform(prompt, sample_rate=cfg.sample_rate, sampling_rate=sampling_rate, mono=False)
            if wave.shape[0] != cfg.channels:
                raise ValueError(f"the prompt has {wave.shape[0]} channels; the model generates {cfg.channels}")
            start = audio.encode(wave, cfg.codec).tolist()
        new = total * frame
    rows = generate(model, [start] * n, max_new_tokens=new, return_ids=True, **kwargs)
    clips = []
    for row in rows:
        row = [i for i in row if i < N_SYMBOLS]  # an end id, if sampled, is not audio
        symbols = start + row[: len(row) - len(row) % frame]
        clips.append(audio.decode(torch.tensor(symbols, dtype=torch.uint8), cfg.codec, cfg.channels))
    return clips


def image_shape(model, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) of the model's images: the pixel mode and size it was trained on
    (``config.image_mode``, ``config.image_size``); ``height``/``width`` are needed when no size was recorded and
    must agree with it otherwise."""
    from rawseq.modalities import image

    cfg = _spec(model, "image")
    size = cfg.image_size
    for name, value, i in (("height", height, 0), ("width", width, 1)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
        if value is not None and size is not None and value != size[i]:
            raise ValueError(f"{name}={value} contradicts the model's image_size {size} (trained at "
                             f"{size[0]}x{size[1]})")
    if size is None and (height is None or width is None):
        raise ValueError("the model's config records no image_size (it was trained on images of several sizes): "
                         "give height and width")
    h, w = (size[0], size[1]) if size is not None else (height, width)
    return image.MODES[cfg.image_mode], h, w


def generate_images(model, n: int = 1, *, prompts: Sequence | None = None, prompt_rows: int | None = None,
                    height: int | None = None, width: int | None = None, **kwargs) -> list[torch.Tensor]:
    """Images in the model's pixel mode and size, drawn in raster order.

    Args:
        n: images to draw from nothing; their first pixel is black (the background of most training images) and
            the model draws the rest. Ignored when ``prompts`` are given.
        prompts: images to complete (paths, arrays, tensors, PIL images; see
            :func:`rawseq.modalities.image.to_symbols`): each is converted to the model's mode and size and its first
            ``prompt_rows`` rows (default: half) are kept.
        height, width: see :func:`image_shape`.
        **kwargs: sampling arguments of :func:`generate`.

    Returns:
        uint8 images (channels, height, width); pixels after an end id, if one was sampled, stay black.
    """
    from rawseq.modalities import image

    channels, h, w = image_shape(model, height, width)
    if prompts is None:
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        starts = [[0] * channels] * n
    else:
        rows = h // 2 if prompt_rows is None else prompt_rows
        if not 0 < rows < h:
            raise ValueError(f"prompt_rows={rows} must lie in [1, {h - 1}]")
        mode = model.config.image_mode
        starts = [image.to_symbols(os.path.expanduser(p) if isinstance(p, (str, os.PathLike)) else p, mode=mode,
                                   size=(h, w))[: rows * w * channels].tolist() for p in prompts]
    total = h * w * channels
    outs = generate(model, starts, max_new_tokens=total - len(starts[0]), return_ids=True, **kwargs)
    pictures = []
    for start, row in zip(starts, outs):
        symbols = (start + [i for i in row if i < N_SYMBOLS])[:total]
        symbols += [0] * (total - len(symbols))
        pictures.append(image.from_bytes(torch.tensor(symbols, dtype=torch.uint8), h, w, channels))
    return pictures
