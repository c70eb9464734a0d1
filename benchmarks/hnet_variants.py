"""Variants of the H-Net text benchmark's models, each trained for a fixed number of steps: held-out curves to compare
settings (learning-rate multipliers, layouts, learning rates) before a full ``hnet_cpu.py`` comparison.

Each argument names a model of ``hnet_cpu.py`` (``flat`` or ``hnet``) followed by ``:key=value`` settings: ``steps``
and ``lr`` go to training, anything else replaces a field of the model's config (values read as JSON where they
parse, else as strings). The training settings, corpus and evaluation are ``hnet_cpu.py``'s, on one corpus and seed.

    python benchmarks/hnet_variants.py flat:steps=90 hnet:steps=190 'hnet:steps=190:lr_multiplier=[3,1]'
    python benchmarks/hnet_variants.py --corpus usr-share-doc 'hnet:steps=190:layout=["m2",["m5"],"m2"]'

Prints one JSON line per variant: its argument, parameters, the curve [[training seconds, held-out bpb], ...] and, for
an H-Net, bytes per chunk and the share of boundary probabilities in [0.4, 0.6] on held-out text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hnet_cpu  # noqa: E402

from rawseq.models import from_pretrained  # noqa: E402
from rawseq.models.config import ModelConfig  # noqa: E402


def parse_variant(text: str) -> tuple[dict, dict]:
    """``"hnet:steps=190:lr_multiplier=[2,1]"`` -> (model config, training settings {steps, lr})."""
    name, *pairs = text.split(":")
    if name not in hnet_cpu.TEXT_MODELS:
        raise SystemExit(f"variant {text!r}: the model must be one of {sorted(hnet_cpu.TEXT_MODELS)}, got {name!r}")
    model, train = dict(hnet_cpu.TEXT_MODELS[name]), {"steps": 100, "lr": hnet_cpu.TRAIN["lr"]}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"variant {text!r}: {pair!r} is not key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        (train if key in train else model)[key] = value
    if not isinstance(train["steps"], int) or train["steps"] < 1:
        raise SystemExit(f"variant {text!r}: steps must be a positive whole number")
    try:
        ModelConfig.from_dict(model)
    except ValueError as exc:
        raise SystemExit(f"variant {text!r}: {exc}") from None
    return model, train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", help="model[:key=value...], e.g. hnet:steps=190:lr_multiplier=[2,1]")
    ap.add_argument("--corpus", default="stdlib", help="stdlib, usr-share-doc or site-packages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-corpus-mb", type=float, default=16.0)
    ap.add_argument("--out", default="runs/bench-hnet-variants")
    ap.add_argument("--smoke", action="store_true", help="short windows, small batches and corpora: checks it runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.max_corpus_mb = 0.5
        hnet_cpu.TRAIN.update(seq_len=128, batch_size=2, eval_batches=2)
    variants = [(text, *parse_variant(text)) for text in args.variants]
    out = Path(args.out)
    corpora = hnet_cpu.text_corpora(out / "corpora", int(args.max_corpus_mb * (1 << 20)))
    if args.corpus not in corpora:
        raise SystemExit(f"--corpus {args.corpus!r}: this machine has {sorted(corpora)}")
    corpus = corpora[args.corpus]
    print(f"{hnet_cpu.machine()}; corpus {args.corpus}", flush=True)
    for i, (text, model, train) in enumerate(variants):
        hnet_cpu.TRAIN["lr"] = train["lr"]
        run, cfg = hnet_cpu.run_one(f"variant-{i}", model, corpus, args.seed, train["steps"], out, "text",
                                    eval_every=max(1, train["steps"] // 6))
        rows, evals = hnet_cpu._rows(run)
        times = hnet_cpu.training_time(rows)
        trained = from_pretrained(run / "model")
        entry = {"variant": text, "parameters": trained.num_parameters(),
                 "curve": [[round(times[e["step"]], 1), round(e["val_bpb"], 4)] for e in evals]}
        if model["model_type"] == "hnet":
            entry.update(hnet_cpu.held_out_routing(trained, corpus, cfg))
        print(json.dumps(entry), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
