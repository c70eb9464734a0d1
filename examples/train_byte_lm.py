"""Train a byte-level language model on raw text, then continue a few prompts with it.

    python examples/train_byte_lm.py                              # the Python standard library's source
    python examples/train_byte_lm.py --data=notes/ --steps=1000 --model.d_model=128

Every other ``--key=value`` is a training setting (``rawseq train --help``; ``--model.key=value`` for the model).
Writes the model, metrics.jsonl and samples.txt under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rawseq import ByteLM
from rawseq.generation import generate
from rawseq.train import load_config, train

# Small enough to train in a few minutes on two CPU cores; the tiny-text preset fills in the rest.
SETTINGS = ["--steps=200", "--batch_size=8", "--seq_len=256", "--eval_every=100", "--model.d_model=64",
            "--model.n_layers=3", "--model.headdim=32", "--model.d_state=16"]
PROMPTS = ["def ", "import ", "class ", "    for i in range(", "# "]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", default="runs/examples/byte_lm", help="output folder")
    parser.add_argument("--length", type=int, default=200, help="bytes generated per prompt")
    parser.add_argument("--temperature", type=float, default=0.8)
    args, overrides = parser.parse_known_args()
    out = Path(args.out).expanduser()
    cfg = load_config(preset="tiny-text", overrides=[*SETTINGS, f"--out_dir={out}", *overrides])

    print(f"training {cfg.steps} steps on {cfg.data or 'the Python standard library source'}")
    summary = train(cfg)
    print(f"bits per byte: {summary['first_bpb']:.2f} at the first step, {summary['bpb']:.2f} at the last, "
          f"{summary['val_bpb']:.2f} on held-out files; model in {summary['model_dir']}")

    model = ByteLM.from_pretrained(summary["model_dir"]).eval()
    prompts = [p.encode() for p in PROMPTS]
    outputs = generate(model, prompts, max_new_tokens=args.length, temperature=args.temperature, top_k=40,
                       seed=cfg.seed)
    samples = [(p + o).decode("utf-8", errors="replace") for p, o in zip(prompts, outputs)]
    (out / "samples.txt").write_text("\n\n".join(samples) + "\n")
    for sample in samples:
        print("-" * 60 + "\n" + sample)
    print(f"wrote {out / 'samples.txt'}")


if __name__ == "__main__":
    main()
