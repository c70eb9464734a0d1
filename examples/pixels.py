"""Train on images as raster bytes, then sample new images and complete half-seen ones.

    python examples/pixels.py                        # scikit-learn's 8x8 handwritten digits, as PNG files
    python examples/pixels.py --data=my_pngs/ --image_size=16 --steps=1000

Each image is its pixels row by row, the channels of each pixel together (RGB: 3 symbols a pixel). Every other
``--key=value`` is a training setting (rawseq/train/config.py). Writes samples.png and completions.png under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from rawseq import ByteLM
from rawseq.generation import generate
from rawseq.modalities import image
from rawseq.train import load_config, train

SETTINGS = ["--steps=200", "--batch_size=8", "--seq_len=192", "--image_size=8", "--eval_every=100",
            "--model.d_model=64", "--model.n_layers=3", "--model.headdim=32", "--model.d_state=16"]
CHANNELS = 3  # the trainer reads images as RGB


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
    parser.add_argument("--n", type=int, default=16, help="images to sample, and to complete")
    parser.add_argument("--temperature", type=float, default=1.0)
    args, overrides = parser.parse_known_args()
    out = Path(args.out)
    data, test_dir = (Path(args.data), None) if args.data else (out / "digits", out / "digits_test")
    cfg = load_config(preset="tiny-pixels", overrides=[*SETTINGS, f"--data={data}", f"--out_dir={out}", *overrides])
    if cfg.image_size is None:
        parser.error("sampling needs one image size: give --image_size=N")
    if test_dir is not None:
        print(f"wrote {write_digits(data, test_dir, args.n)} digits as PNG files in {data}, {args.n} in {test_dir}")

    print(f"training {cfg.steps} steps on {data}")
    summary = train(cfg)
    print(f"bits per subpixel: {summary['first_bpb']:.2f} at the first step, {summary['bpb']:.2f} at the last, "
          f"{summary['val_bpb']:.2f} on held-out images")

    model = ByteLM.from_pretrained(summary["model_dir"]).eval()
    side = cfg.image_size
    length = side * side * CHANNELS

    def sample(prompts: list[list[int]]) -> list[torch.Tensor]:
        outputs = generate(model, prompts, length - len(prompts[0]), temperature=args.temperature, seed=cfg.seed)
        return [image.from_bytes(torch.tensor(p + list(o), dtype=torch.uint8), side, side, CHANNELS)
                for p, o in zip(prompts, outputs)]

    # A new image starts from its top-left pixel: black, the background of most images here.
    save_grid(out / "samples.png", sample([[0] * CHANNELS] * args.n), nrow=8)
    if test_dir is not None:
        # Give the model the top half of unseen digits; each completion sits below its original.
        originals = [image.load(f, "RGB", side) for f in sorted(test_dir.glob("*.png"))[:8]]
        tops = [image.to_bytes(im)[: side // 2 * side * CHANNELS].tolist() for im in originals]
        save_grid(out / "completions.png", originals + sample(tops), nrow=len(originals))


if __name__ == "__main__":
    main()
