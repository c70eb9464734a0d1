"""How recognisable the digits drawn by a pixel model are: a scikit-learn SVC trained on real digits scores them.

    python benchmarks/pixels_quality.py runs/examples/pixels/model [--n 200] [--temperature 1.0]
    python benchmarks/pixels_quality.py --reference          # the scorer on real held-out digits and on noise

Two numbers per set of images: the classifier's mean confidence (its largest class probability) and an
Inception-style score, exp(E_x KL(p(y|x) || p(y))): 1 when every image looks alike to the classifier or like
nothing, up to 10 when each image is a confident, different digit and all ten digits are drawn equally often. The
classifier (an RBF SVC with its Platt-scaled probabilities) is trained on the first 1,397 of scikit-learn's 1,797
digits; the reference rows score the other 400 real digits and uniform noise, so a model's row reads against both.
Samples are drawn with :func:`rawseq.generation.generate_images`, in the pixel mode and size the model folder
records (a model must be an 8x8 grayscale digit model, as ``examples/pixels.py`` trains by default).
"""

from __future__ import annotations

import argparse
import datetime
import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, table  # noqa: E402

N_TRAIN = 1397


def classifier():
    """An SVC on the first N_TRAIN digits (levels 0..16); returns (classifier, held-out images as 0..255 uint8)."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    with warnings.catch_warnings():
        # SVC's own probabilities (one-vs-one Platt scaling, pairwise coupled) are the score's definition; scikit-learn
        # 1.9 deprecates the flag for CalibratedClassifierCV, whose one-vs-rest calibration scores noise as digits.
        warnings.simplefilter("ignore", FutureWarning)
        clf = SVC(probability=True, random_state=0).fit(digits.data[:N_TRAIN], digits.target[:N_TRAIN])
    held_out = np.rint(digits.images[N_TRAIN:] * (255 / 16)).astype(np.uint8)
    return clf, held_out


def scores(clf, images: np.ndarray) -> tuple[float, float]:
    """(mean confidence, Inception-style score) of uint8 images (n, 8, 8) with values 0..255."""
    probs = clf.predict_proba(images.reshape(len(images), -1).astype(np.float64) * (16 / 255))
    marginal = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12))).sum(1)
    return float(probs.max(1).mean()), float(np.exp(kl.mean()))


def sample_digits(folder: str, n: int, seed: int, **sampling) -> np.ndarray:
    from rawseq.generation import generate_images
    from rawseq.models import from_pretrained

    model = from_pretrained(folder).eval()
    spec = model.config
    if spec.image_mode != "L" or spec.image_size != [8, 8]:
        raise SystemExit(f"{folder} draws {spec.image_mode} images of size {spec.image_size}; the scorer needs 8x8 L")
    pictures = generate_images(model, n, seed=seed, progress=True, **sampling)
    return torch.stack(pictures)[:, 0].numpy()  # (n, 1, 8, 8) -> (n, 8, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="*", help="model folders of 8x8 grayscale digit models")
    parser.add_argument("--n", type=int, default=200, help="images drawn per model")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int)
    parser.add_argument("--min_p", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", action="store_true", help="also score real held-out digits and noise")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.model and not args.reference:
        parser.error("give a model folder, or --reference")
    torch.set_num_threads(args.threads)
    clf, held_out = classifier()
    rows = []
    if args.reference or not args.model:
        rows.append(["real held-out digits", len(held_out), *scores(clf, held_out)])
        noise = np.random.default_rng(args.seed).integers(0, 256, (args.n, 8, 8)).astype(np.uint8)
        rows.append(["uniform noise", args.n, *scores(clf, noise)])
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "min_p": args.min_p}
    how = ", ".join(f"{k} {v:g}" for k, v in sampling.items() if v is not None)
    for folder in args.model:
        rows.append([f"{folder} ({how})", args.n, *scores(clf, sample_digits(folder, args.n, args.seed, **sampling))])
    print(f"# pixels_quality, {datetime.date.today()}, {machine()}")
    print(table(["images", "n", "mean confidence", "Inception-style score"],
                [[name, n, f"{c:.2f}", f"{s:.2f}"] for name, n, c, s in rows]))


if __name__ == "__main__":
    main()
