"""Encoding throughput of the modality encoders on CPU: audio samples per second, images per second, text bytes
per second, for the model shapes of the examples (untrained weights: speed does not depend on them).

    python benchmarks/encoders_cpu.py [--threads 1] [--repeats 3]

Each row first checks that a batch of different lengths encodes exactly as its items do one by one (packing with
seq_idx); a row whose check fails is reported as FAILED instead of a speed.
"""

from __future__ import annotations

import datetime
import sys

import numpy as np
import torch

from rawseq.models.encoders import AudioEncoder, ImageEncoder, TextEncoder

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, median_time, options, table  # noqa: E402

AUDIO = {"d_model": 64, "n_layers": 2, "ssm": "mamba2", "headdim": 32, "d_state": 16, "chunk_size": 64,
         "frontend_strides": [4, 4, 4]}
IMAGE = {"d_model": 64, "n_layers": 2, "ssm": "mamba2", "headdim": 32, "d_state": 16, "chunk_size": 64,
         "n_positions": 64}
TEXT = {"d_model": 64, "n_layers": 2, "ssm": "mamba2", "headdim": 32, "d_state": 16, "chunk_size": 64}


def packing_ok(enc, items) -> bool:
    batch = enc.encode(items)
    return all(torch.allclose(batch.pooled[i], enc.encode(x).pooled, atol=1e-5, rtol=1e-4)
               for i, x in enumerate(items))


def main() -> None:
    args = options(__doc__.splitlines()[0], threads=1, repeats=3).parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []

    audio_enc = AudioEncoder(**AUDIO)
    clips = [rng.uniform(-0.5, 0.5, 16000).astype(np.float32) for _ in range(16)]
    ok = packing_ok(audio_enc, [clips[0], clips[1][:9000], clips[2][:700]])
    t = median_time(lambda: audio_enc.encode(clips, batch_size=16), repeats=args.repeats)
    rows.append(["audio (16 x 1 s at 16 kHz)", f"{audio_enc.num_parameters():,}",
                 f"{16 * 16000 / t:,.0f} samples/s" if ok else "FAILED", f"{t * 1000:.0f}" if ok else "-"])

    image_enc = ImageEncoder(**IMAGE)
    images = list(rng.integers(0, 256, (256, 8, 8), dtype=np.uint8))
    ok = packing_ok(image_enc, [images[0], images[1][:5], images[2][:3]])
    t = median_time(lambda: image_enc.encode(images, batch_size=256), repeats=args.repeats)
    rows.append(["image (256 x 8x8 gray)", f"{image_enc.num_parameters():,}",
                 f"{256 / t:,.0f} images/s" if ok else "FAILED", f"{t * 1000:.0f}" if ok else "-"])

    text_enc = TextEncoder(**TEXT)
    texts = [bytes(rng.integers(32, 127, n, dtype=np.uint8)) for n in rng.integers(200, 1000, 32)]
    ok = packing_ok(text_enc, texts[:3])
    total = sum(len(x) for x in texts)
    t = median_time(lambda: text_enc.encode(texts, batch_size=32), repeats=args.repeats)
    rows.append([f"text (32 items, {total:,} bytes, ragged)", f"{text_enc.num_parameters():,}",
                 f"{total / t:,.0f} bytes/s" if ok else "FAILED", f"{t * 1000:.0f}" if ok else "-"])

    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(table(["input", "parameters", "throughput", "ms per call"], rows))


if __name__ == "__main__":
    main()
