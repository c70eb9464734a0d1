"""Classify scikit-learn's handwritten digits from raw pixels with a small bidirectional SSM encoder (CPU, minutes).

    python examples/classify_digits.py [--epochs 20] [--threads 1] [--out runs/digits]

Each 8x8 image (pixel values 0..16, scaled to 0..255) is a sequence of 64 symbols; 20% of every class is held out.
The last line printed is ``test accuracy: <fraction>``.
"""

from __future__ import annotations

import argparse

from rawseq.train.classify import ClassifyConfig, format_confusion, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this small model)")
    args = parser.parse_args()
    cfg = ClassifyConfig(
        data="sklearn-digits", out_dir=args.out, epochs=args.epochs, batch_size=32, lr=3e-3, warmup_steps=50,
        eval_every=5, seed=args.seed, threads=args.threads,
        model={"d_model": 64, "n_layers": 2, "ssm": "mamba2", "headdim": 32, "d_state": 16, "chunk_size": 64,
               "n_positions": 64, "dropout": 0.1},
    )

    def log(r):
        test = f"  test acc {r['test_accuracy']:.4f}" if "test_accuracy" in r else ""
        print(f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  train acc {r['train_accuracy']:.4f}{test}",
              flush=True)

    summary = train_classifier(cfg, log_fn=log)
    print(f"{summary['parameters']:,} parameters, {summary['n_train']} train / {summary['n_test']} test images, "
          f"{summary['seconds']:.0f} s; model saved to {summary['out_dir']}")
    print(format_confusion(summary["confusion_matrix"], summary["labels"]))
    print(f"test accuracy: {summary['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
