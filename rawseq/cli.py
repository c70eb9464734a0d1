"""The ``rawseq`` command: train, eval, generate, info, bench.

    rawseq train [CONFIG.toml] [--preset=NAME] [--key=value ...] [--model.key=value ...] [--resume]
    rawseq train --task=classify [CONFIG.toml] [--data=sklearn-digits] [--epochs=N] [--model.key=value ...]
    rawseq eval MODEL_DIR --data=PATH [--seq_len=N] [--modality=text]
    rawseq generate text|audio|image MODEL_DIR [--prompt=...] [--n=..] [--out=PATH] ...
    rawseq info MODEL_DIR
    rawseq bench [--quick]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch


def _split_overrides(rest: list[str]) -> list[str]:
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"expected --key=value, got {item!r}")
    return rest


def _config_and_overrides(rest: list[str]) -> tuple[str | None, list[str]]:
    """The optional CONFIG.toml among the train arguments, and the --key=value overrides.

    argparse sees a value holding a space (``--sample_prompt="def f"``) as a positional argument, so the config
    file is picked out here rather than declared to argparse.
    """
    paths = [a for a in rest if not a.startswith("--")]
    if len(paths) > 1:
        raise ValueError(f"expected at most one config file, got {paths}")
    return (paths[0] if paths else None), _split_overrides([a for a in rest if a.startswith("--")])


def _cmd_classify(args, rest) -> int:
    import tomllib

    from rawseq.models.encoders import EncoderConfig
    from rawseq.train.classify import ClassifyConfig, format_confusion, train_classifier
    from rawseq.train.config import parse_overrides

    config, overrides = _config_and_overrides(rest)
    data: dict = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist or is not a file")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
    cli = parse_overrides(overrides, ClassifyConfig, EncoderConfig)
    data = {**data, **{k: v for k, v in cli.items() if k != "model"},
            "model": {**data.get("model", {}), **cli.get("model", {})}}
    summary = train_classifier(data)
    print(format_confusion(summary["confusion_matrix"], summary["labels"]))
    print(f"model and metrics.json saved to {summary['out_dir']}")
    print(f"test accuracy: {summary['test_accuracy']:.4f}")
    return 0


def _cmd_train(args, rest) -> int:
    from rawseq.generation import generate
    from rawseq.models import ByteLM
    from rawseq.train import load_config, train

    if args.task == "classify":
        return _cmd_classify(args, rest)
    config, overrides = _config_and_overrides(rest)
    cfg = load_config(config, overrides, args.preset)
    summary = train(cfg, resume=args.resume)
    if "model_dir" not in summary:
        return 0
    first, final = summary.get("first_bpb"), summary.get("bpb")
    if first is None:
        print(f"no step of {summary['steps']} completed (skipped: {summary['skipped']})")
        return 1
    print(f"\ntrained {summary['steps']} steps: train bits/symbol {first:.3f} -> {final:.3f}"
          + (f", validation {summary['val_bpb']:.3f}" if "val_bpb" in summary else ""))
    print(f"model saved to {summary['model_dir']}" + (f", loss curves in {summary['plot']}" if "plot" in summary
                                                      else ""))
    if cfg.modality == "text" and cfg.sample_bytes:
        model = ByteLM.from_pretrained(summary["model_dir"])
        sample = generate(model, cfg.sample_prompt, cfg.sample_bytes, temperature=0.8, top_k=40, seed=cfg.seed)
        print("sample:\n" + (cfg.sample_prompt.encode() + sample).decode("utf-8", errors="replace"))
    return 0


def _cmd_eval(args, rest) -> int:
    from rawseq.models import ByteLM
    from rawseq.train import evaluate, load_config
    from rawseq.train.data import build_corpus

    cfg = load_config(None, _split_overrides(rest) + [f"--data={args.data}", f"--out_dir={args.model}/eval"])
    model = ByteLM.from_pretrained(args.model)
    from rawseq.modalities import SequentialWindows

    corpus = build_corpus(cfg)
    bits = evaluate(model, SequentialWindows(corpus, cfg.seq_len), cfg, torch.device("cpu"), None)
    print(f"{args.data}: {bits:.4f} bits per symbol over {corpus.num_symbols} symbols")
    return 0


def _cmd_info(args, rest) -> int:
    from rawseq.models import ByteLM

    model = ByteLM.from_pretrained(args.model)
    cfg = model.config
    print(model)
    print(f"layers: {', '.join(cfg.layer_kinds())}")
    print(f"parameters: {model.num_parameters():,}")
    kinds = cfg.layer_kinds()
    if not cfg.bidirectional:
        states = model.allocate_inference_state(1, torch.float32)
        total = sum(v.numel() * v.element_size() for layer in states for v in layer.values()
                    if isinstance(v, torch.Tensor))
        growing = " (+ a KV cache that grows with the context in the attention layers)" if "attention" in kinds \
            else " (fixed: it does not grow with the context)"
        print(f"decoding state per stream: {total / 1024:.1f} KiB{growing}")
    return 0


def _cmd_generate(args, rest) -> int:
    from rawseq.generation import generate
    from rawseq.models import ByteLM

    model = ByteLM.from_pretrained(args.model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.kind == "text":
        prompt = args.prompt.encode()
        texts = generate(model, [prompt] * args.n, args.length, **kw)
        out.write_bytes(b"\n\n".join(prompt + t for t in texts))
        print(out.read_bytes().decode("utf-8", errors="replace"))
    elif args.kind == "audio":
        from rawseq.modalities import audio

        n_samples = int(args.seconds * args.sample_rate)
        start = list(audio.encode(torch.zeros(1), codec=args.codec).tolist())
        clips = generate(model, [start] * args.n, n_samples, **kw)
        for i, clip in enumerate(clips):
            wave = audio.decode(torch.tensor(list(clip), dtype=torch.uint8), codec=args.codec)
            path = out.with_name(f"{out.stem}_{i}{out.suffix or '.wav'}")
            audio.save(path, wave, args.sample_rate)
            _spectrogram(wave, args.sample_rate, path.with_suffix(".png"))
            print(f"wrote {path} ({len(wave) / args.sample_rate:.2f} s) and its spectrogram")
    else:
        from rawseq.modalities import image

        h, w, c = args.height, args.width, args.channels
        # The first pixel is given (black), the model draws the rest in raster order.
        start = list(args.prompt.encode()) if args.prompt else [0] * c
        pics = generate(model, [start] * args.n, h * w * c - len(start), **kw)
        imgs = [image.from_bytes(torch.tensor(start + list(p), dtype=torch.uint8), h, w, c) for p in pics]
        image.save_grid(out, imgs)
        print(f"wrote a grid of {len(imgs)} images to {out}")
    return 0


def _spectrogram(wave: torch.Tensor, sample_rate: int, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.specgram(wave.numpy(), Fs=sample_rate, NFFT=512, noverlap=384)
    ax.set_xlabel("s")
    ax.set_ylabel("Hz")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cmd_bench(args, rest) -> int:
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels_cpu.py"
    if not script.is_file():
        raise SystemExit("rawseq bench needs a source checkout (benchmarks/kernels_cpu.py)")
    sys.argv = [str(script)] + (["--quick"] if args.quick else [])
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rawseq", description="Tokenizer-free byte/sample-level models.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", usage="rawseq train [CONFIG.toml] [--preset NAME] [--task lm|classify] [--resume] "
                       "[--key=value ...] [--model.key=value ...]",
                       help="train a ByteLM (an optional CONFIG.toml, then --key=value overrides)")
    t.add_argument("--preset", help="tiny-text (default), tiny-audio or tiny-pixels")
    t.add_argument("--resume", action="store_true", help="continue from the last good checkpoint in out_dir")
    t.add_argument("--task", choices=["lm", "classify"], default="lm",
                   help="lm: a ByteLM (default); classify: an encoder classifier (see docs/encoders.md)")
    e = sub.add_parser("eval", help="bits per symbol of a model on data")
    e.add_argument("model")
    e.add_argument("--data", required=True)
    i = sub.add_parser("info", help="model summary, parameter count, state size")
    i.add_argument("model")
    g = sub.add_parser("generate", help="sample text, audio or images from a model")
    g.add_argument("kind", choices=["text", "audio", "image"])
    g.add_argument("model")
    g.add_argument("--prompt", default="")
    g.add_argument("--n", type=int, default=1)
    g.add_argument("--length", type=int, default=256, help="bytes per text sample")
    g.add_argument("--seconds", type=float, default=1.0)
    g.add_argument("--sample_rate", type=int, default=16000)
    g.add_argument("--codec", default="mulaw8")
    g.add_argument("--height", type=int, default=8)
    g.add_argument("--width", type=int, default=8)
    g.add_argument("--channels", type=int, default=3, help="1 for models trained with image_mode=L")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top_k", type=int)
    g.add_argument("--top_p", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="samples/sample.txt")
    b = sub.add_parser("bench", help="the CPU kernel benchmark")
    b.add_argument("--quick", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, rest = build_parser().parse_known_args(argv)
    handler = {"train": _cmd_train, "eval": _cmd_eval, "info": _cmd_info, "generate": _cmd_generate,
               "bench": _cmd_bench}[args.command]
    try:
        return handler(args, rest)
    except ValueError as exc:  # configuration and data errors: a message, not a traceback
        print(f"rawseq {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

