"""Classify scikit-learn's handwritten digits from raw pixels with a small bidirectional SSM encoder (CPU, minutes).

    python examples/classify_digits.py [--epochs 20] [--threads 1] [--out runs/digits]

Each 8x8 image (pixel values 0..16, scaled to 0..255) is a sequence of 64 symbols; 20% of every class is held out.
The last line printed is ``test accuracy: <fraction>``; the model folder is ``<out>/model``.
"""

from __future__ import annotations

import argparse

from rawseq.train.classify import ClassifyConfig, format_confusion, train_classifier

ENCODER = {"d_model": 64, "n_layers": 2, "ssm": "mamba2", "headdim": 32, "d_state": 16, "chunk_size": 64}


def arguments(description: str, epochs: int, out: str) -> argparse.ArgumentParser:
    """The flags both classification examples take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--out", default=out)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    return parser


def run(cfg: ClassifyConfig) -> None:
    """Train, then print the size, the confusion matrix and (last) the test accuracy."""
    summary = train_classifier(cfg)
    print(f"{summary['parameters']:,} parameters, {summary['n_train']} train / {summary['n_test']} test items, "
          f"{summary['seconds']:.0f} s; model saved to {summary['model_dir']}")
    print(format_confusion(summary["confusion_matrix"], summary["labels"]))
    print(f"test accuracy: {summary['test_accuracy']:.4f}")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], epochs=20, out="runs/digits").parse_args()
    run(ClassifyConfig(
        data="sklearn-digits", out_dir=args.out, epochs=args.epochs, batch_size=32, lr=3e-3, warmup_steps=50,
        eval_every=5, seed=args.seed, threads=args.threads,
        model={**ENCODER, "n_positions": 64, "dropout": 0.1},
    ))


if __name__ == "__main__":
    main()
