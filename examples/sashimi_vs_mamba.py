"""Bits per sample of a SaShiMi multi-scale backbone and a flat Mamba-2 backbone of the same parameter count,
trained for the same budget (steps x batch x window) on the espeak-ng spoken digits (8-bit mu-law, 16 kHz).

    apt-get install espeak-ng
    python examples/sashimi_vs_mamba.py [--steps 300] [--batch 4] [--window 1024] [--data data/spoken_digits]

Both models see the same random windows of the training clips; bits per sample is measured on whole held-out
clips (every sample predicted from the ones before it in its clip). The last lines are a table of both models.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from rawseq.modalities import audio, spoken_digits
from rawseq.models import ByteLM, ByteLMConfig
from rawseq.models.sashimi import SashimiConfig, SashimiLM
from rawseq.train.classify import stratified_split


def flat_config(d_model: int, n_layers: int) -> ByteLMConfig:
    return ByteLMConfig(d_model=d_model, n_layers=n_layers, ssm="mamba2", headdim=16, d_state=16, chunk_size=128,
                        n_special=0)


def matched_flat(target: int, n_layers: int) -> ByteLMConfig:
    """The flat config (width a multiple of 8) whose parameter count is closest to ``target``."""
    best = min(range(16, 513, 8), key=lambda d: abs(ByteLM(flat_config(d, n_layers)).num_parameters() - target))
    return flat_config(best, n_layers)


def train_and_eval(model, train, test, args, name):
    gen = torch.Generator().manual_seed(args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 10)
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        clips = torch.randint(0, len(train), (args.batch,), generator=gen).tolist()
        offsets = torch.randint(0, len(train[0]) - args.window, (args.batch,), generator=gen).tolist()
        rows = torch.stack([train[c][o : o + args.window + 1] for c, o in zip(clips, offsets)]).long()
        out = model(rows[:, :-1], targets=rows[:, 1:])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"{name:8s} step {step:4d}  train bits/sample {out.bits_per_byte.item():.3f}", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    nats = count = 0
    with torch.no_grad():
        for i in range(0, len(test), 8):
            rows = torch.stack(test[i : i + 8]).long()
            logits = model(rows[:, :-1]).logits
            nats += F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
            count += rows[:, 1:].numel()
    return nats / count / math.log(2), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/spoken_digits")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--test_clips", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        clips = spoken_digits.build(args.data)
    except spoken_digits.EspeakNotFoundError as e:
        sys.exit(str(e))
    symbols = [audio.encode(c.waveform, "mulaw8") for c in clips]
    train_idx, test_idx = stratified_split([c.digit for c in clips], 0.2, args.seed)
    train = [symbols[i] for i in train_idx]
    test = [symbols[i] for i in test_idx][:: max(1, len(test_idx) // args.test_clips)][: args.test_clips]

    torch.manual_seed(args.seed)
    sashimi = SashimiLM(SashimiConfig(pools=[4, 4], width_expand=2, d_model=32, n_layers=1, ssm="mamba2",
                                       headdim=16, d_state=16, chunk_size=128, n_special=0))
    torch.manual_seed(args.seed)
    flat = ByteLM(matched_flat(sashimi.num_parameters(), n_layers=4))
    results = []
    for name, model in (("sashimi", sashimi), ("mamba2", flat)):
        bits, seconds = train_and_eval(model, train, test, args, name)
        results.append((name, model.num_parameters(), bits, seconds))
    samples = args.steps * args.batch * args.window
    print(f"budget: {args.steps} steps x {args.batch} x {args.window} = {samples:,} training samples; "
          f"held-out: {len(test)} clips x {len(test[0]) - 1} predicted samples")
    print(f"{'model':10s}{'parameters':>12s}{'bits/sample':>14s}{'train s':>10s}")
    for name, params, bits, seconds in results:
        print(f"{name:10s}{params:>12,}{bits:>14.3f}{seconds:>10.0f}")


if __name__ == "__main__":
    main()
