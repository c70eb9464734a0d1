"""Classify spoken digits from raw 16 kHz samples with a bidirectional SSM encoder (CPU).

    apt-get install espeak-ng                 # Debian/Ubuntu (macOS: brew install espeak-ng); nothing else is needed
    python examples/classify_spoken_digits.py [--epochs 12] [--data data/spoken_digits] [--out runs/spoken_digits]

The clips are synthesised once by espeak-ng (:mod:`rawseq.modalities.spoken_digits`: 10 digits x 6 voices x 2
variants x 3 speeds x 3 pitches = 1,080 one-second clips, 20% of every digit held out) and cached under ``--data``.
Samples are 8-bit mu-law symbols; a learned strided front end folds 4 x 4 x 4 = 64 samples into one position before
the SSM layers. The last line printed is ``test accuracy: <fraction>``; the model folder is ``<out>/model``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from classify_digits import ENCODER, arguments, run

from rawseq.modalities.spoken_digits import INSTALL_HINT, espeak_binary
from rawseq.train.classify import ClassifyConfig


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], epochs=12, out="runs/spoken_digits")
    parser.add_argument("--data", default="data/spoken_digits")
    args = parser.parse_args()
    if espeak_binary() is None and not (Path(args.data).expanduser() / "index.json").is_file():
        sys.exit(f"espeak-ng is not installed; {INSTALL_HINT}")
    run(ClassifyConfig(
        data="spoken-digits", spoken_digits_dir=args.data, out_dir=args.out, epochs=args.epochs, batch_size=8,
        lr=4e-3, warmup_steps=50, eval_every=3, shift_augment=1600, seed=args.seed, threads=args.threads,
        model={**ENCODER, "frontend_strides": [4, 4, 4]},
    ))


if __name__ == "__main__":
    main()
