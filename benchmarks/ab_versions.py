"""One scan op of two commits of rawseq timed in one process, their calls alternating in random order.

Separate processes of the same code differ by tens of percent on a shared machine; calls of two versions taking
turns in one process see the same machine. Each commit is exported with ``git archive`` and imported under its own
package name (``rawseq_a``, ``rawseq_b``: ``rawseq`` rewritten in its sources, so the registered ops get their own
namespace). Both versions first run the same inputs, and their outputs and gradients must agree.

    python benchmarks/ab_versions.py 25e756e HEAD --op selective_scan --runs 3
    python benchmarks/ab_versions.py 25e756e HEAD --op ssd

Prints, per run, each version's median forward+backward time and the ratio b / a of the medians.
"""

from __future__ import annotations

import argparse
import importlib
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rawseq.kernels.bench import mamba1_inputs, mamba2_inputs

ROOT = Path(__file__).resolve().parent.parent
OPS = {  # op: (inputs, call)
    "selective_scan": (lambda: mamba1_inputs(2, 1024, 512, 16),
                       lambda k, a: k.selective_scan(*a[:6], dt_bias=a[6], backend="torch")),
    "ssd": (lambda: mamba2_inputs(2, 1024, 8, 64, 64),
            lambda k, a: k.ssd(*a[:6], dt_bias=a[6], chunk_size=256, backend="torch")),
}


def stage(commit: str, name: str, into: Path):
    """The package at ``commit`` importable as ``name`` from ``into``; returns its ``kernels`` module."""
    src = into / f"src-{name}"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"cannot export commit {commit!r}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    pkg = into / name
    shutil.copytree(src / "rawseq", pkg)
    shutil.copytree(src / "kernels", pkg / "kernels")
    shutil.copytree(src / "modalities", pkg / "modalities")
    word = re.compile(r"\brawseq\b")
    for path in pkg.rglob("*.py"):
        path.write_text(word.sub(name, path.read_text()))
    return importlib.import_module(f"{name}.kernels")


def run(kernels, call, args) -> list[torch.Tensor]:
    for a in args:
        a.grad = None
    y = call(kernels, args)
    y.sum().backward()
    return [y.detach(), *(a.grad for a in args)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="the first commit (the baseline)")
    ap.add_argument("b", nargs="?", default="HEAD", help="the second commit")
    ap.add_argument("--op", choices=sorted(OPS), default="selective_scan")
    ap.add_argument("--rounds", type=int, default=50, help="calls of each version per run")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    make_inputs, call = OPS[args.op]
    with tempfile.TemporaryDirectory(prefix="ab_versions_") as tmp:
        sys.path.insert(0, tmp)
        versions = {"a": stage(args.a, "rawseq_a", Path(tmp)), "b": stage(args.b, "rawseq_b", Path(tmp))}
        inputs = make_inputs()
        want, got = (run(versions[v], call, inputs) for v in "ab")
        for i, (x, y) in enumerate(zip(want, got, strict=True)):
            if not torch.allclose(x, y, rtol=1e-5, atol=1e-6):
                raise SystemExit(f"{args.op}: output {i} differs between {args.a} and {args.b} "
                                 f"(max abs difference {(x - y).abs().max():.3g})")
        print(f"{args.op}: {args.a} (a) and {args.b} (b) agree; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        order = list(versions.items())
        for r in range(args.runs):
            times = {v: [] for v in versions}
            for _ in range(args.rounds + 1):
                random.shuffle(order)
                for v, kernels in order:
                    t0 = time.perf_counter()
                    run(kernels, call, inputs)
                    times[v].append(time.perf_counter() - t0)
            med = {v: 1e3 * statistics.median(t[1:]) for v, t in times.items()}
            print(f"run {r + 1}: a {med['a']:.1f} ms, b {med['b']:.1f} ms, b / a {med['b'] / med['a']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
