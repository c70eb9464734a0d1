"""Train on images as raster bytes, then draw new images and complete half-seen ones.

    python examples/pixels.py                        # scikit-learn's 8x8 handwritten digits, as PNG files
    python examples/pixels.py --data=my_pngs/ --image_size=16 --image_mode=RGB --steps=3000

Each image is its pixels row by row, the channels of each pixel together (grayscale "L": one symbol a pixel, "RGB":
three). The model folder records the pixel mode and size it was trained on, and sampling reads them from there.
Every other ``--key=value`` is a training setting (``rawseq train --help``). Writes samples.png and completions.png
under --out; ``python benchmarks/pixels_quality.py OUT/model`` scores how recognisable the drawn digits are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from rawseq.generation import generate_images
from rawseq.modalities import image
from rawseq.models import from_pretrained
from rawseq.train import load_config, train

# Sized for a few minutes on two CPU cores. The attention layers know each pixel's place in its image (rotary
# positions restart with every image), which the recurrent layers would otherwise have to count; stateful training
# carries each image's state across window boundaries, so no image is ever seen from its middle as if it began there.
SETTINGS = ["--steps=800", "--batch_size=16", "--seq_len=256", "--lr=3e-3", "--warmup_steps=30", "--eval_every=200",
            "--stateful=true", "--image_size=8", "--image_mode=L", "--model.d_model=96",
            "--model.layers=mamba2,attention,mamba2,attention", "--model.headdim=32", "--model.d_state=32",
            "--model.attn_heads=4"]
# A little below temperature 1, and no symbol under 5% of the most likely one: fewer stray pixels, the same variety
# of digits (benchmarks/pixels_quality.py measures both).
TEMPERATURE, MIN_P = 0.8, 0.05


def write_digits(train_dir: Path, test_dir: Path, n_test: int) -> int:
    """Write scikit-learn's digits as 8x8 grayscale PNG files, the last ``n_test`` into ``test_dir``."""
    digits = torch.from_numpy(load_digits().images * (255 / 16)).round().to(torch.uint8)  # levels 0..16 -> bytes
    for i, digit in enumerate(digits):
        folder = train_dir if i < len(digits) - n_test else test_dir
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"digit_{i:04d}.png", digit[None])  # (8, 8) -> (1, 8, 8)
    return len(digits) - n_test


def save_grid(path: Path, images: list[torch.Tensor], nrow: int) -> None:
    """Tile the images, each enlarged 4x (nearest neighbour) so that small ones stay visible."""
    image.save_grid(path, [im.repeat_interleave(4, 1).repeat_interleave(4, 2) for im in images], nrow=nrow)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--data", help="folder of images (default: the digits, written under --out)")
    parser.add_argument("--out", default="runs/examples/pixels", help="output folder")
    parser.add_argument("--n", type=int, default=16, help="images to draw, and to complete")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--min_p", type=float, default=MIN_P, help="0 turns the filter off")
    args, overrides = parser.parse_known_args()
    out = Path(args.out).expanduser()
    data, test_dir = (Path(args.data).expanduser(), None) if args.data else (out / "digits", out / "digits_test")
    cfg = load_config(preset="tiny-pixels", overrides=[*SETTINGS, f"--data={data}", f"--out_dir={out}", *overrides])
    if cfg.image_size is None:
        parser.error("drawing needs one image size: give --image_size=N")
    if test_dir is not None:
        print(f"wrote {write_digits(data, test_dir, args.n)} digits as PNG files in {data}, {args.n} in {test_dir}")

    print(f"training {cfg.steps} steps on {data}")
    summary = train(cfg)
    print(f"bits per pixel value: {summary['first_bpb']:.2f} at the first step, {summary['bpb']:.2f} at the last, "
          f"{summary['val_bpb']:.2f} on held-out images")

    model = from_pretrained(summary["model_dir"]).eval()
    kw = {"temperature": args.temperature, "min_p": args.min_p or None, "seed": cfg.seed, "progress": cfg.progress}
    # New images start from a black top-left pixel, the background of most images here.
    save_grid(out / "samples.png", generate_images(model, args.n, **kw), nrow=8)
    if test_dir is not None:
        # The model sees the top half of unseen digits; each completion sits below its original.
        originals = [image.load(f, model.config.image_mode) for f in sorted(test_dir.glob("*.png"))[:8]]
        save_grid(out / "completions.png", originals + generate_images(model, prompts=originals, **kw),
                  nrow=len(originals))


if __name__ == "__main__":
    main()
