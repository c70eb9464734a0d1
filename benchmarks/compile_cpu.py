"""Eager against ``torch.compile`` on CPU: one training step and one batch-1 decoding step of small ByteLMs.

The scans and the convolution are registered custom ops (``rawseq.kernels.library``), so ``torch.compile`` captures
a whole model (``fullgraph=True`` for training) and fuses the projections, norms and gates around them. Before
timing, the compiled model's loss, logits and gradients are checked against eager; a speedup is reported only
for a model that passes. Decoding steps are compiled without ``fullgraph``: a step updates its state in place and
an attention step reads its cache length.

    python benchmarks/compile_cpu.py [--width 128] [--layers 2] [--length 256] [--rounds 5] [--backend inductor]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from rawseq import ByteLM, ByteLMConfig

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, options, table  # noqa: E402

KINDS = {"Mamba": {"ssm": "mamba"}, "Mamba-2": {"ssm": "mamba2"},
         "Mamba-2 + attention": {"layers": ["mamba2", "attention"]}}


def _train_step(model, ids, targets):
    model.zero_grad(set_to_none=True)
    out = model(ids, targets=targets)
    out.loss.backward()
    return out


def _check(model, compiled, ids, targets) -> float:
    """Largest relative difference between compiled and eager logits and gradients."""
    out = _train_step(model, ids, targets)
    ref = {"logits": out.logits.detach()} | {k: p.grad.clone() for k, p in model.named_parameters()}
    out = compiled(ids, targets=targets)
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    got = {"logits": out.logits.detach()} | {k: p.grad.clone() for k, p in model.named_parameters()}
    return max(float((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12)) for k in ref)


def _time(fn, rounds: int, inner: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def main() -> None:
    parser = options(__doc__, width=128, layers=2, batch=2, length=(256, "training sequence length"),
                     rounds=(5, "timed rounds (the table gives their median)"), steps=(50, "decoding steps per round"),
                     backend=("inductor", "torch.compile backend"))
    args = parser.parse_args()
    if min(args.width, args.layers, args.batch, args.length, args.rounds, args.steps) < 1:
        parser.error("sizes, --rounds and --steps must be positive")
    print(f"{machine()}; width {args.width}, {args.layers} layers, training batch {args.batch} x {args.length}, "
          f"decoding batch 1; torch.compile backend {args.backend}")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (args.batch, args.length), generator=gen)
    targets = torch.randint(0, 256, (args.batch, args.length), generator=gen)
    rows = []
    for name, kw in KINDS.items():
        torch.manual_seed(0)
        model = ByteLM(ByteLMConfig(d_model=args.width, n_layers=args.layers, d_state=16, headdim=32, **kw))
        t0 = time.perf_counter()
        compiled = torch.compile(model, fullgraph=True, backend=args.backend)
        err = _check(model, compiled, ids, targets)
        compile_s = time.perf_counter() - t0
        ok = err < 1e-3
        train_eager = _time(lambda m=model: _train_step(m, ids, targets), args.rounds, 1)
        train_compiled = _time(lambda c=compiled, m=model: _train_step_compiled(c, m, ids, targets), args.rounds, 1)

        dec_eager, dec_compiled = _decode_times(model.eval(), args)
        rows.append([name, "ok" if ok else f"FAILED ({err:.1e})", f"{compile_s:.0f}",
                     f"{train_eager * 1e3:.1f}", f"{train_compiled * 1e3:.1f}",
                     f"{train_eager / train_compiled:.2f}x" if ok else "-",
                     f"{dec_eager * 1e3:.3f}", f"{dec_compiled * 1e3:.3f}", f"{dec_eager / dec_compiled:.2f}x"])
    print(table(["model", "compiled vs eager", "compile s", "train ms eager", "train ms compiled", "train speedup",
                 "step ms eager", "step ms compiled", "step speedup"], rows))


def _decode_times(model, args) -> tuple[float, float]:
    """Seconds per batch-1 decoding step, eager and compiled."""
    step = torch.compile(model.step, backend=args.backend)
    token = torch.tensor([66])
    with torch.inference_mode():
        states = model.allocate_inference_state(1)
        for _ in range(3):
            step(token, states)
        compiled = _time(lambda: step(token, states), args.rounds, args.steps)
        eager = _time(lambda: model.step(token, states), args.rounds, args.steps)
    return eager, compiled


def _train_step_compiled(compiled, model, ids, targets):
    model.zero_grad(set_to_none=True)
    out = compiled(ids, targets=targets)
    out.loss.backward()
    return out


if __name__ == "__main__":
    main()
