"""Classify spoken digits from raw 16 kHz samples with a bidirectional SSM encoder (CPU).

    apt-get install espeak-ng                 # Debian/Ubuntu (macOS: brew install espeak-ng); nothing else is needed
    python examples/classify_spoken_digits.py [--epochs 12] [--data data/spoken_digits] [--out runs/spoken_digits]

The clips are synthesised once by espeak-ng (:mod:`rawseq.modalities.spoken_digits`: 10 digits x 6 voices x 2
variants x 3 speeds x 3 pitches = 1,080 one-second clips, 20% of every digit held out) and cached under ``--data``.
Samples are 8-bit mu-law symbols; a learned strided front end folds 4 x 4 x 4 = 64 samples into one position before
the SSM layers. The last line printed is ``test accuracy: <fraction>``.
"""

from __future__ import annotations

import argparse
import sys

from rawseq.modalities.spoken_digits import INSTALL_HINT, espeak_binary
from rawseq.train.classify import ClassifyConfig, format_confusion, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--data", default="data/spoken_digits")
    parser.add_argument("--out", default="runs/spoken_digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    args = parser.parse_args()
    from pathlib import Path

    if espeak_binary() is None and not (Path(args.data) / "index.json").is_file():
        sys.exit(f"espeak-ng is not installed; {INSTALL_HINT}")
    cfg = ClassifyConfig(
        data="spoken-digits", spoken_digits_dir=args.data, out_dir=args.out, epochs=args.epochs, batch_size=8,
        lr=4e-3, warmup_steps=50, eval_every=3, shift_augment=1600, seed=args.seed, threads=args.threads,
        model={"d_model": 64, "n_layers": 2, "ssm": "mamba2", "headdim": 32, "d_state": 16, "chunk_size": 64,
               "frontend_strides": [4, 4, 4]},
    )

    def log(r):
        test = f"  test acc {r['test_accuracy']:.4f}" if "test_accuracy" in r else ""
        print(f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  train acc {r['train_accuracy']:.4f}{test}",
              flush=True)

    summary = train_classifier(cfg, log_fn=log)
    print(f"{summary['parameters']:,} parameters, {summary['n_train']} train / {summary['n_test']} test clips, "
          f"{summary['seconds']:.0f} s; model saved to {summary['out_dir']}")
    print(format_confusion(summary["confusion_matrix"], summary["labels"]))
    print(f"test accuracy: {summary['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
