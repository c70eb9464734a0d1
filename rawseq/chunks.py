"""Looking at the cuts a hierarchy learned: where an :class:`rawseq.HNet` starts its chunks in some input.

- :func:`boundaries`: the boundary probabilities and cuts of every stage on a sequence of symbols;
- :func:`mark_text`: text with its chunk starts marked (``|`` for stage 0, ``‖`` where stage 1 also cuts, ...);
- :func:`waveform_png`: a PNG of an audio waveform with vertical lines at the chunk starts;
- :func:`show_chunks`: what ``rawseq chunks MODEL INPUT`` does: text printed with marks, audio drawn into a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["MARKERS", "boundaries", "mark_text", "show_chunks", "waveform_png"]

MARKERS = ("|", "‖", "⦀")
"""Mark of a chunk start of stage 0, 1, 2 (the deepest stage that cuts there is shown)."""

_WINDOW = 1 << 16


@torch.no_grad()
def boundaries(model, symbols) -> tuple[torch.Tensor, torch.Tensor]:
    """Boundary probabilities and cuts of every stage of ``model`` on one sequence.

    Long inputs run in windows of 65,536 symbols that continue each other's states, so the result equals one
    pass over the whole sequence.

    Args:
        model: an :class:`rawseq.HNet`.
        symbols: bytes, a list of ids or a 1-D integer tensor (at least one symbol).

    Returns:
        probs (stages, l) float32: stage i's p at the symbols that reach stage i (0 elsewhere);
        cuts (stages, l) bool: where stage i starts a chunk (stage i + 1 cuts only where stage i does).
    """
    if not hasattr(model, "stage") or not hasattr(model.config, "ratio"):
        raise ValueError(f"{type(model).__name__} has no learned chunks; boundaries need an HNet")
    ids = torch.as_tensor(list(symbols) if isinstance(symbols, (bytes, bytearray)) else symbols).long().flatten()
    if ids.numel() == 0:
        raise ValueError("symbols is empty; give at least one symbol")
    was_training = model.training
    model.eval()
    states, probs = None, []
    try:
        for start in range(0, ids.numel(), _WINDOW):
            piece = ids[start : start + _WINDOW].to(model.device)[None]
            out = model(piece, initial_states=states, return_states=True)
            states = out.states
            probs.append(torch.stack([p[0] for p in out.boundary_probs]).float().cpu())
    finally:
        model.train(was_training)
    probs = torch.cat(probs, dim=1)
    cuts = probs >= 0.5
    for i in range(1, len(cuts)):  # a deeper stage only sees (and cuts at) the chunks of the one above
        cuts[i] &= cuts[i - 1]
    return probs, cuts


def _char_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each UTF-8 character of ``data``; an invalid byte is a character of its own."""
    spans, i = [], 0
    while i < len(data):
        lead = data[i]
        n = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4 if lead < 0xF8 else 1
        if i + n > len(data) or any(not 0x80 <= b < 0xC0 for b in data[i + 1 : i + n]):
            n = 1
        spans.append((i, i + n))
        i += n
    return spans


def mark_text(data: bytes, cuts: torch.Tensor, markers: tuple[str, ...] = MARKERS) -> str:
    """``data`` decoded as UTF-8 with a marker before every chunk start (but the first).

    A cut inside a multi-byte character is shown before that character.

    Args:
        data: the bytes the model read.
        cuts: (stages, len(data)) bool, from :func:`boundaries`.
        markers: the mark of each stage (the deepest stage cutting at a position is shown).
    """
    cuts = torch.as_tensor(cuts).bool()
    if cuts.dim() == 1:
        cuts = cuts[None]
    if cuts.shape[1] != len(data):
        raise ValueError(f"cuts covers {cuts.shape[1]} positions but data has {len(data)} bytes")
    if len(markers) < len(cuts):
        raise ValueError(f"{len(cuts)} stages need {len(cuts)} markers, got {len(markers)}")
    depth = cuts.long().sum(0).tolist()  # stages cutting at each byte (nested, so the deepest is depth - 1)
    out = []
    for start, end in _char_spans(data):
        deepest = max(depth[start:end])
        if deepest and start > 0:
            out.append(markers[deepest - 1])
        out.append(data[start:end].decode("utf-8", errors="replace"))
    return "".join(out)


def waveform_png(path: str | os.PathLike, samples, cuts: torch.Tensor, *, sample_rate: int = 16000,
                 probs: torch.Tensor | None = None, title: str | None = None) -> Path:
    """Draw a waveform with a vertical line at every chunk start, and the boundary probabilities below it.

    Args:
        path: the PNG to write.
        samples: (time,) float waveform in [-1, 1] (one value per symbol position).
        cuts: (stages, time) bool from :func:`boundaries`; deeper stages are drawn darker and longer.
        sample_rate: samples per second, for the time axis.
        probs: (stages, time) boundary probabilities from :func:`boundaries`, drawn in a second panel if given.

    Returns:
        the path written. Needs matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("waveform_png needs matplotlib (pip install matplotlib)") from exc
    samples = torch.as_tensor(samples, dtype=torch.float32).flatten()
    cuts = torch.as_tensor(cuts).bool()
    cuts = cuts[None] if cuts.dim() == 1 else cuts
    if cuts.shape[1] != samples.numel():
        raise ValueError(f"cuts covers {cuts.shape[1]} positions but there are {samples.numel()} samples")
    t = torch.arange(samples.numel()) / sample_rate
    rows = 2 if probs is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(14, 3 * rows), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(t.numpy(), samples.numpy(), lw=0.5, color="0.3")
    colors = ("tab:orange", "tab:red", "tab:purple")
    for i in range(len(cuts)):
        at = t[cuts[i]].numpy()
        height = 0.4 + 0.3 * i
        ax.vlines(at, -height, height, colors=colors[i % len(colors)], lw=0.4 + 0.4 * i, alpha=0.7,
                  label=f"stage {i}: {int(cuts[i].sum())} chunks")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("amplitude")
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    if probs is not None:
        probs = torch.as_tensor(probs, dtype=torch.float32)
        probs = probs[None] if probs.dim() == 1 else probs
        for i in range(len(probs)):
            axes[1, 0].plot(t.numpy(), probs[i].numpy(), lw=0.5, color=colors[i % len(colors)], label=f"p stage {i}")
        axes[1, 0].axhline(0.5, color="0.5", lw=0.5, ls="--")
        axes[1, 0].set_ylabel("boundary probability")
        axes[1, 0].legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def show_chunks(model, source, *, out: str | os.PathLike | None = None) -> str:
    """What ``rawseq chunks MODEL INPUT [--out FILE]`` does.

    Args:
        model: an :class:`rawseq.HNet` or the folder of a saved one.
        source: text models: a string or a file (read as bytes); audio models: an audio file, or symbols.
        out: audio models: the PNG to write (default: ``<input name>.chunks.png`` in the working folder).

    Returns:
        the text with its chunk starts marked, or a line naming the PNG written (with the chunk counts).
    """
    from rawseq.models import from_pretrained

    if isinstance(model, (str, os.PathLike)):
        model = from_pretrained(model)
    modality = getattr(model.config, "modality", "text")
    if modality == "audio":
        from rawseq.modalities import audio

        cfg = model.config
        symbols = audio.to_symbols(source, codec=cfg.codec, sample_rate=cfg.sample_rate, mono=cfg.channels == 1)
        probs, cuts = boundaries(model, symbols)
        wave = audio.decode(symbols, cfg.codec, cfg.channels)[0]
        per = len(symbols) // wave.numel()  # pcm16: two symbols per sample; mark the sample where a cut falls
        cuts = cuts.view(len(cuts), -1, per).any(-1)
        probs = probs.view(len(probs), -1, per).amax(-1)
        name = Path(source).stem if isinstance(source, (str, os.PathLike)) else "audio"
        target = Path(out) if out is not None else Path(f"{name}.chunks.png")
        waveform_png(target, wave, cuts, sample_rate=cfg.sample_rate, probs=probs, title=name)
        counts = ", ".join(f"stage {i}: {int(c.sum())} chunks" for i, c in enumerate(cuts))
        return f"wrote {target} ({wave.numel()} samples; {counts})"
    if modality != "text":
        raise ValueError(f"rawseq chunks shows text and audio models; this model's modality is {modality!r}")
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, os.PathLike) or (isinstance(source, str) and Path(source).is_file()):
        data = Path(source).read_bytes()
    else:
        data = str(source).encode("utf-8")
    _, cuts = boundaries(model, data)
    return mark_text(data, cuts)
