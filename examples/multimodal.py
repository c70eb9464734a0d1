"""One model for text, audio and images: train on captioned digits and tones, then prompt it with a caption.

    python examples/multimodal.py
    python examples/multimodal.py --steps=2000 --prompt="digit 7" --prompt="tone 440 Hz"

Each document is a caption followed by what it describes, in one stream of symbols (rawseq/modalities/multimodal.py):

    BOS TEXT "digit 3" END IMAGE <height, width, channels> <64 pixels> END EOS
    BOS TEXT "tone 440 Hz" END AUDIO <codec, channels, rate> <800 mu-law samples> END EOS

Given ``BOS TEXT caption END``, the model picks the next segment's modality and writes its header itself; the output
is unpacked back into .txt, .png and .wav files under --out. Every other ``--key=value`` is a training setting
(rawseq/train/config.py).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from rawseq import ByteLM, ByteLMConfig
from rawseq.generation import sample
from rawseq.modalities import ByteCorpus, RandomWindows, SequentialWindows, audio, image, split
from rawseq.modalities import multimodal as mm
from rawseq.train import evaluate, load_config
from rawseq.train.trainer import lr_at

SETTINGS = ["--steps=300", "--batch_size=8", "--seq_len=256", "--warmup_steps=20", "--model.d_model=64",
            "--model.n_layers=3", "--model.headdim=32", "--model.d_state=16"]
RATE = 8000
FREQUENCIES = (220, 330, 440, 550, 660, 880)
PROMPTS = ("digit 0", "digit 3", "digit 7", "tone 330 Hz", "tone 660 Hz")


def documents(n_tones: int, seed: int = 0) -> list[list[mm.Segment]]:
    """Every scikit-learn digit after its caption, and ``n_tones`` tenths of a second of tone after theirs."""
    digits = load_digits()
    pixels = torch.from_numpy(digits.images * (255 / 16)).round().to(torch.uint8)  # levels 0..16 -> bytes
    docs = [[mm.TextSegment(f"digit {label}".encode()), mm.ImageSegment(img[None])]  # (8, 8) -> (1, 8, 8)
            for label, img in zip(digits.target, pixels)]
    rng = np.random.default_rng(seed)
    t = np.arange(RATE // 10) / RATE
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    for _ in range(n_tones):
        f = int(rng.choice(FREQUENCIES))
        wave = rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * fade
        docs.append([mm.TextSegment(f"tone {f} Hz".encode()), mm.AudioSegment(torch.from_numpy(wave), RATE)])
    return docs


def train_model(cfg, corpus: ByteCorpus) -> ByteLM:
    """The whole training loop: random windows of the packed documents, AdamW, the trainer's lr schedule."""
    train_docs, val_docs = split(corpus, cfg.val_fraction, seed=cfg.seed)
    windows = RandomWindows(train_docs, cfg.seq_len, seed=cfg.seed)
    model = ByteLM(ByteLMConfig.from_dict({**cfg.model, "n_special": mm.NUM_SPECIAL}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
    torch.manual_seed(cfg.seed)
    for step in range(cfg.steps):
        rows = [windows[step * cfg.batch_size + i] for i in range(cfg.batch_size)]
        batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}  # (batch, seq_len) each
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss = model(batch["input_ids"], batch["targets"], seq_idx=batch["seq_idx"]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            print(f"step {step + 1}/{cfg.steps}: {loss.item() / math.log(2):.3f} bits per symbol")
    val = evaluate(model, SequentialWindows(val_docs, cfg.seq_len), cfg, torch.device("cpu"), cfg.eval_batches)
    print(f"held-out documents: {val:.3f} bits per symbol")
    return model.eval()


@torch.no_grad()
def continue_caption(model: ByteLM, caption: str, max_symbols: int, temperature: float, generator) -> list[int]:
    """``BOS TEXT caption END`` and one more segment, sampled symbol by symbol.

    The model chooses AUDIO or IMAGE, then writes the header, most likely symbol first (a header is format, not
    content); an image ends when the header's height x width x channels pixels are written, audio when the model
    writes END. ``max_symbols`` caps the payload.
    """
    ids = mm.pack([caption], eos=False).tolist()
    logits, states = model.prefill(torch.tensor([ids]))

    def emit(allowed: list[int], greedy: bool = False) -> int:
        nonlocal logits
        mask = torch.full_like(logits, float("-inf"))
        mask[:, allowed] = 0.0
        next_id = sample(logits + mask, temperature=0.0 if greedy else temperature, generator=generator)  # (1,)
        logits = model.step(next_id, states)
        ids.append(int(next_id))
        return ids[-1]

    byte_ids = list(range(256))
    marker = emit([mm.AUDIO, mm.IMAGE])
    header = [emit(byte_ids, greedy=True) for _ in range(mm.HEADER_LEN[marker])]
    if marker == mm.IMAGE:
        size = (header[0] * 256 + header[1]) * (header[2] * 256 + header[3]) * header[4]
        for _ in range(min(size, max_symbols)):
            emit(byte_ids)
        if size <= max_symbols:
            ids.append(mm.END)
    else:
        for _ in range(max_symbols):
            if emit(byte_ids + [mm.END]) == mm.END:
                break
    return ids


def write_segments(segments: list[mm.Segment], stem: Path) -> list[Path]:
    """Save each segment as ``<stem>_<i>.txt``, ``.wav`` or ``.png``; returns the paths written."""
    paths = []
    for i, segment in enumerate(segments):
        if isinstance(segment, mm.TextSegment):
            path = stem.with_name(f"{stem.name}_{i}.txt")
            path.write_bytes(segment.data)
        elif isinstance(segment, mm.AudioSegment):
            path = stem.with_name(f"{stem.name}_{i}.wav")
            audio.save(path, segment.waveform, segment.sample_rate)
        else:
            path = stem.with_name(f"{stem.name}_{i}.png")
            image.save(path, segment.image)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", default="runs/examples/multimodal", help="output folder")
    parser.add_argument("--tones", type=int, default=400, help="tone documents (beside the 1,797 digits)")
    parser.add_argument("--prompt", action="append", help=f"a caption to continue (default: {', '.join(PROMPTS)})")
    parser.add_argument("--max_symbols", type=int, default=2000, help="most symbols generated per prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    args, overrides = parser.parse_known_args()
    out = Path(args.out)
    cfg = load_config(preset="tiny-text", overrides=[*SETTINGS, f"--out_dir={out}", *overrides])

    corpus = ByteCorpus.from_documents(documents(args.tones, cfg.seed), out / "corpus", multimodal=True)
    print(f"{corpus.num_docs} documents, {corpus.num_symbols:,} symbols; training {cfg.steps} steps")
    model = train_model(cfg, corpus)
    model.save_pretrained(out / "model")

    generator = torch.Generator().manual_seed(cfg.seed)
    for k, caption in enumerate(args.prompt or PROMPTS):
        ids = continue_caption(model, caption, args.max_symbols, args.temperature, generator)
        segments = mm.unpack(ids)  # a segment with a malformed header is skipped, with a warning
        paths = write_segments(segments, out / f"prompt_{k}")
        kinds = " + ".join(type(s).__name__.removesuffix("Segment").lower() for s in segments)
        print(f"{caption!r} -> {len(ids)} symbols: {kinds or 'nothing decodable'} -> "
              f"{', '.join(p.name for p in paths)}")


if __name__ == "__main__":
    main()
