"""Mamba-1, Mamba-2 and Mamba-3 byte models learning the same held-out text with the same loop, on CPU.

Every model trains with ``rawseq.train.train`` (the package's one loop) on the same windows for the same steps;
widths are chosen so the parameter counts match the first model's to within a few percent. Validation bits per
byte are measured every ``--eval-every`` steps on the same held-out documents. Corpora, all real text found on any
machine with Python:

- ``stdlib``: the Python standard library's ``.py`` sources (the default corpus of ``rawseq train``);
- ``docs``: the standard library's ``.txt``/``.rst``/``.html`` files and the site-packages ``METADATA``/``LICENSE``
  files (English prose and licences rather than code).

    python benchmarks/ssm_learning.py --corpus stdlib --steps 600
    python benchmarks/ssm_learning.py --corpus docs --steps 600 --plot docs.png

Prints a table (parameters, final train and validation bits per byte, seconds) and writes the curves as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from rawseq.modalities import ByteCorpus
from rawseq.models import ByteLM, ByteLMConfig
from rawseq.train import load_config, train
from rawseq.train.metrics import read_metrics

# name: (ssm, d_state, extra model keys)
MODELS = {
    "mamba1-n16": ("mamba", 16, {}),
    "mamba2-n64": ("mamba2", 64, {"headdim": 32}),
    "mamba2-n64-noconv": ("mamba2", 64, {"headdim": 32, "d_conv": 1}),  # a width-1 convolution: no local mixing
    "mamba3-n32": ("mamba3", 32, {"headdim": 32}),
    "mamba3-n64": ("mamba3", 64, {"headdim": 32}),
    "mamba3-n32-mimo2": ("mamba3", 32, {"headdim": 32, "mimo_rank": 2}),
    "mamba3-n32-mimo4": ("mamba3", 32, {"headdim": 32, "mimo_rank": 4}),
    "mamba3-n32-conv": ("mamba3", 32, {"headdim": 32, "mamba3_conv": True}),  # not in the paper's layer
    "mamba3-n32-outnorm": ("mamba3", 32, {"headdim": 32, "outproj_norm": True}),
    "mamba3-n32-Abias": ("mamba3", 32, {"headdim": 32, "A_bias": True}),
    "mamba3-n32-norope": ("mamba3", 32, {"headdim": 32, "rope_fraction": 0.0}),  # no rotation: a real state
    "mamba3-n32-h64": ("mamba3", 32, {"headdim": 64}),
    "mamba3-n32-h16": ("mamba3", 32, {"headdim": 16}),
    "mamba3-n32-rope1": ("mamba3", 32, {"headdim": 32, "rope_fraction": 1.0}),  # every pair of the state rotated
    "mamba3-n32-outnorm-Abias": ("mamba3", 32, {"headdim": 32, "outproj_norm": True, "A_bias": True}),
}


def corpus_files(name: str, limit: int) -> list[str]:
    """Up to ``limit`` bytes of files of the named corpus, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if name == "stdlib":
        files = [p for p in sorted(stdlib.rglob("*.py")) if not {"site-packages", "test", "tests"} & set(p.parts)]
    elif name == "docs":
        site = Path(sysconfig.get_paths()["purelib"])
        files = sorted(p for ext in ("*.txt", "*.rst", "*.html") for p in stdlib.rglob(ext)
                       if "site-packages" not in p.parts)
        files += sorted(p for pat in ("*.dist-info/METADATA", "*.dist-info/LICENSE*") for p in site.glob(pat))
    else:
        raise SystemExit(f"unknown corpus {name!r}: stdlib or docs")
    out, total = [], 0
    for p in files:
        if p.is_file() and p.stat().st_size > 0:
            out.append(str(p))
            total += p.stat().st_size
            if total >= limit:
                break
    if not out:
        raise SystemExit(f"no files for corpus {name!r}")
    return out


def mlp_width(d_model: int, ratio: float) -> int:
    """Hidden width of each layer's gated MLP: ``ratio`` times the model width, a multiple of 8 (0: no MLP)."""
    return 8 * round(ratio * d_model / 8)


def params_of(ssm: str, d_state: int, d_model: int, layers: int, extra: dict, mlp_ratio: float = 0.0) -> int:
    cfg = ByteLMConfig(d_model=d_model, n_layers=layers, ssm=ssm, d_state=d_state, n_special=0,
                       d_mlp=mlp_width(d_model, mlp_ratio), **extra)
    return ByteLM(cfg, device="meta").num_parameters()


def matched_width(ssm: str, d_state: int, target: int, layers: int, extra: dict, mlp_ratio: float = 0.0,
                  step: int = 8) -> int:
    """The width (a multiple of ``step``) whose parameter count is closest to ``target``."""
    best = None
    for d in range(step, 2048, step):
        try:
            n = params_of(ssm, d_state, d, layers, extra, mlp_ratio)
        except ValueError:
            continue
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (d, n)
    return best[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="stdlib", choices=("stdlib", "docs"))
    p.add_argument("--models", default="mamba1-n16,mamba2-n64,mamba3-n32", help=f"comma-separated: {list(MODELS)}")
    p.add_argument("--width", type=int, default=128, help="width of the --match model; the others match its size")
    p.add_argument("--match", default=None, help="the model whose size at --width the others match (default: the "
                   "first of --models; it need not be trained)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=0.0, help="add a gated MLP of this many times the width to "
                   "every layer (0: mixers only)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--corpus-bytes", type=int, default=8 << 20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="PNG of the validation curves (default: ssm_learning_<corpus>.png)")
    args = p.parse_args(argv)
    names = args.models.split(",")
    work = Path(tempfile.mkdtemp(prefix="ssm_learning_"))
    corpus = ByteCorpus.build(corpus_files(args.corpus, args.corpus_bytes), work / "cache")
    print(f"corpus {args.corpus}: {corpus.num_docs} documents, {corpus.num_symbols:,} bytes; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    match = args.match or names[0]
    ssm0, n0, extra0 = MODELS[match]
    target = params_of(ssm0, n0, args.width, args.layers, extra0, args.mlp_ratio)
    rows, curves = [], {}
    for name in names:
        ssm, d_state, extra = MODELS[name]
        width = args.width if name == match else matched_width(ssm, d_state, target, args.layers, extra,
                                                                 args.mlp_ratio)
        overrides = [f"--out_dir={work / name}", f"--steps={args.steps}", f"--batch_size={args.batch_size}",
                     f"--seq_len={args.seq_len}", f"--lr={args.lr}", f"--eval_every={args.eval_every}",
                     "--eval_batches=0", "--checkpoint_every=100000", f"--seed={args.seed}", "--progress=false",
                     "--sample_bytes=0", f"--model.ssm={ssm}", f"--model.d_model={width}",
                     f"--model.n_layers={args.layers}", f"--model.d_state={d_state}", "--model.n_special=0",
                     f"--model.d_mlp={mlp_width(width, args.mlp_ratio)}",
                     *(f"--model.{k}={v}" for k, v in extra.items())]
        cfg = load_config(None, overrides)
        start = time.perf_counter()
        summary = train(cfg, corpus=corpus)
        seconds = time.perf_counter() - start
        metrics = read_metrics(work / name / "metrics.jsonl")
        curves[name] = [(r["step"], r["val_bpb"]) for r in metrics if "val_bpb" in r]
        rows.append((name, width, summary["parameters"], summary["bpb"], summary["val_bpb"], seconds))
        print(json.dumps({"model": name, "width": width, "parameters": summary["parameters"],
                          "val_curve": curves[name], "seconds": round(seconds, 1)}), flush=True)
    print("\n| model | width | parameters | train bpb (last step) | validation bpb | seconds |")
    print("|---|---|---|---|---|---|")
    for name, width, n, bpb, val, seconds in rows:
        print(f"| {name} | {width} | {n:,} | {bpb:.3f} | {val:.3f} | {seconds:.0f} |")
    out = Path(args.plot or f"ssm_learning_{args.corpus}.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(*zip(*curve), "o-", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(f"{args.corpus}: {args.layers} layers, ~{target:,} parameters, {args.steps} steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"curves in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
