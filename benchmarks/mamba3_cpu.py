"""CPU time of the Mamba-3 SISO layer against the Mamba-2 layer at the same width and state size.

Times forward+backward over a batch of sequences and the batch-1 decoding step, the two layers alternately so that
both see the same load, and prints median times and the median of the per-round Mamba-3 / Mamba-2 ratios (targets:
at most 1.5 for forward+backward, 1.3 for the step). The Mamba-3 step is timed twice: as the layer runs it (the C
step of ``rawseq.kernels.mamba3.native`` where it builds) and with the PyTorch step only. Before timing, the Mamba-3
layer's forward and step are checked against the float64 naive loop; a failed check is reported instead of the
timings.

    python benchmarks/mamba3_cpu.py [--d-model 256] [--d-state 64] [--batch 2] [--length 1024] [--repeats 7]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from unittest import mock

import torch

from rawseq.kernels.mamba3 import native
from rawseq.layers import Mamba2
from rawseq.layers.mamba3 import Mamba3

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, options, table  # noqa: E402


def check(layer: Mamba3) -> float:
    """Largest relative error of the torch backend (forward) and of the step against the naive loop in float64."""
    ref_layer = Mamba3(layer.d_model, d_state=layer.d_state, headdim=layer.headdim).double()
    ref_layer.load_state_dict(layer.state_dict())
    hidden = torch.randn(2, 77, layer.d_model, dtype=torch.float64)
    with torch.no_grad():
        ref_layer.backend = "naive"
        ref = ref_layer(hidden)
        ref_layer.backend = "auto"
        got = ref_layer(hidden)
        state = {k: v.double() for k, v in ref_layer.allocate_inference_state(2).items()}
        stepped = torch.stack([ref_layer.step(hidden[:, t], state) for t in range(hidden.shape[1])], dim=1)
    scale = ref.abs().max()
    return float(max((got - ref).abs().max(), (stepped - ref).abs().max()) / scale)


def fwd_bwd(layer, batch: int, length: int):
    """A function running one forward+backward of ``layer`` over (batch, length)."""
    hidden = torch.randn(batch, length, layer.d_model, requires_grad=True)

    def run():
        layer.zero_grad(set_to_none=True)
        layer(hidden).square().mean().backward()

    return run


def steps(layer, count: int):
    """A function running ``count`` batch-1 decoding steps of ``layer``."""
    state = layer.allocate_inference_state(1)
    hidden = torch.randn(1, layer.d_model)

    def run():
        with torch.inference_mode():
            for _ in range(count):
                layer.step(hidden, state)

    return run


def interleaved(fn2, fn3, rounds: int) -> tuple[float, float, float]:
    """Median times of ``fn2`` and ``fn3`` run alternately (so that both see the same machine load), and the median
    of the per-round ratios."""
    fn2(), fn3()  # warm up
    t2, t3 = [], []
    for _ in range(rounds):
        for fn, times in ((fn2, t2), (fn3, t3)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(t2), statistics.median(t3), statistics.median(b / a for a, b in zip(t2, t3))


def main(argv=None) -> int:
    parser = options(__doc__.split("\n\n")[0], d_model=256, d_state=64, headdim=64, batch=2, length=1024,
                     repeats=(7, "forward+backward rounds"), steps=(200, "decoding steps per round"),
                     rounds=(15, "decoding rounds"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    shape = dict(d_state=args.d_state, headdim=args.headdim)
    m2, m3 = Mamba2(args.d_model, **shape), Mamba3(args.d_model, **shape)
    err = check(m3)
    print(f"machine: {machine()}")
    print(f"d_model {args.d_model}, d_state {args.d_state}, headdim {args.headdim}, batch {args.batch}, "
          f"length {args.length}; parameters: Mamba-2 {sum(p.numel() for p in m2.parameters())}, "
          f"Mamba-3 {sum(p.numel() for p in m3.parameters())}")
    print(f"Mamba-3 step: {'C step' if native.available() else 'PyTorch step (the C step did not build)'}")
    with mock.patch.object(native, "_function", lambda dtype: None):
        err_torch = check(m3)
    print(f"Mamba-3 check (torch forward and step vs float64 naive): max relative error {err:.1e}, "
          f"with the PyTorch step {err_torch:.1e}")
    if not max(err, err_torch) < 1e-6:
        print("CHECK FAILED: no timings reported")
        return 1
    rows = []
    for what, make, per, rounds, target in (
        ("forward+backward", lambda layer: fwd_bwd(layer, args.batch, args.length), 1, args.repeats, 1.5),
        ("decoding step (batch 1)", lambda layer: steps(layer, args.steps), args.steps, args.rounds, 1.3),
        ("decoding step (batch 1), PyTorch step only", lambda layer: steps(layer, args.steps), args.steps,
         args.rounds, None),
    ):
        only_torch = what.endswith("only")
        with mock.patch.object(native, "_function", lambda dtype: None) if only_torch else contextlib.nullcontext():
            t2, t3, ratio = interleaved(make(m2), make(m3), rounds)
        rows.append([what, f"{t2 / per * 1e3:.3f}", f"{t3 / per * 1e3:.3f}", f"{ratio:.2f}",
                     "-" if target is None else f"<= {target}"])
    print(table(["", "Mamba-2 ms", "Mamba-3 SISO ms", "ratio", "target"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
