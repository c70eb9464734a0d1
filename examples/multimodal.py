"""One model for text, audio and images: train on captioned digits and tones, then prompt it with a caption.

    python examples/multimodal.py
    python examples/multimodal.py --steps=2000 --prompt="digit 7" --prompt="tone 440 Hz"

Each document is a caption followed by what it describes, in one stream of symbols (rawseq/modalities/multimodal.py):

    BOS TEXT "digit 3" END IMAGE <height, width, channels> <64 pixels> END EOS
    BOS TEXT "tone 440 Hz" END AUDIO <codec, channels, rate> <800 mu-law samples> END EOS

Given ``BOS TEXT caption END``, the model picks the next segment's modality and writes its header itself; the output
is unpacked back into .txt, .png and .wav files under --out. Training is ``rawseq.train.train`` on a corpus of
these documents, drawing is ``rawseq.generation.generate`` restricted to the ids each step allows. Every other
``--key=value`` is a training setting (``rawseq train --help``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from rawseq.generation import generate
from rawseq.modalities import ByteCorpus, audio, image
from rawseq.modalities import multimodal as mm
from rawseq.modalities.symbols import N_SYMBOLS
from rawseq.models import from_pretrained
from rawseq.train import load_config, train

SETTINGS = ["--steps=300", "--batch_size=8", "--seq_len=256", "--warmup_steps=20", "--modality=multimodal",
            "--model.d_model=64", "--model.n_layers=3", "--model.headdim=32", "--model.d_state=16"]
RATE = 8000
FREQUENCIES = (220, 330, 440, 550, 660, 880)
PROMPTS = ("digit 0", "digit 3", "digit 7", "tone 330 Hz", "tone 660 Hz")
BYTES = list(range(N_SYMBOLS))


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


def continue_caption(model, caption: str, max_symbols: int, temperature: float, seed: int) -> list[int]:
    """``BOS TEXT caption END`` and one more segment, drawn with :func:`rawseq.generation.generate`.

    The model chooses AUDIO or IMAGE (only those two ids allowed), then writes the header greedily (a header is
    format, not content); an image ends when the header's height x width x channels pixels are written, audio when
    the model writes END. ``max_symbols`` caps the payload.
    """
    ids = mm.pack([caption], eos=False).tolist()
    kw = {"temperature": temperature, "seed": seed, "return_ids": True}
    ids += generate(model, ids, max_new_tokens=1, allowed_ids=[mm.AUDIO, mm.IMAGE], **kw)
    marker = ids[-1]
    ids += generate(model, ids, max_new_tokens=mm.HEADER_LEN[marker], allowed_ids=BYTES, do_sample=False,
                    return_ids=True)
    if marker == mm.IMAGE:
        header = ids[-mm.HEADER_LEN[marker]:]
        size = (header[0] * 256 + header[1]) * (header[2] * 256 + header[3]) * header[4]
        ids += generate(model, ids, max_new_tokens=min(size, max_symbols), allowed_ids=BYTES, **kw)
        if size <= max_symbols:
            ids.append(mm.END)
    else:  # END ends the row, and stays in it
        ids += generate(model, ids, max_new_tokens=max_symbols, allowed_ids=[*BYTES, mm.END], eos_token_id=mm.END,
                        **kw)
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
    out = Path(args.out).expanduser()
    cfg = load_config(preset="tiny-text", overrides=[*SETTINGS, f"--out_dir={out}", *overrides])

    corpus = ByteCorpus.from_documents(documents(args.tones, cfg.seed), out / "corpus", multimodal=True)
    print(f"{corpus.num_docs} documents, {corpus.num_symbols:,} symbols; training {cfg.steps} steps")
    summary = train(cfg, corpus=corpus)  # the trainer's one loop, on documents made in memory
    print(f"bits per symbol: {summary['first_bpb']:.2f} at the first step, {summary['bpb']:.2f} at the last, "
          f"{summary['val_bpb']:.2f} on held-out documents; model in {summary['model_dir']}")
    model = from_pretrained(summary["model_dir"]).eval()

    for k, caption in enumerate(args.prompt or PROMPTS):
        ids = continue_caption(model, caption, args.max_symbols, args.temperature, cfg.seed + k)
        segments = mm.unpack(ids)  # a segment with a malformed header is skipped, with a warning
        paths = write_segments(segments, out / f"prompt_{k}")
        kinds = " + ".join(type(s).__name__.removesuffix("Segment").lower() for s in segments)
        print(f"{caption!r} -> {len(ids)} symbols: {kinds or 'nothing decodable'} -> "
              f"{', '.join(p.name for p in paths)}")


if __name__ == "__main__":
    main()
