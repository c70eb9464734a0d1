"""CPU benchmark of the scan primitives, forward + backward, beside their peers on identical inputs.

Peers, each used only when installed: mambapy's parallel scan (``MambaBlock.selective_scan``) for Mamba-1 and
transformers' torch SSD path (``mamba2_chunk_scan``) for Mamba-2. Before timing, every backend is checked against the
float64 naive backend on a small problem; a backend that fails the check is reported as FAILED and gets no speedup.

    rawseq bench [--quick]                 # from an installed wheel
    python -m rawseq.kernels.bench --quick
    python benchmarks/kernels_cpu.py       # the same, from a checkout

The helpers for timing, memory and tables are shared with the other CPU benchmarks in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import textwrap
import time

import torch

from rawseq.kernels import selective_scan, ssd

__all__ = ["current_rss_gb", "machine", "main", "median_time", "peak_rss_gb", "table"]


def median_time(fn, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def current_rss_gb() -> float:
    """Resident memory of this process now, in GB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 1e9


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mamba1_inputs(b, l, d, n, requires_grad=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, l, d, generator=g, dtype=dtype)
    dt = torch.randn(b, l, d, generator=g, dtype=dtype) * 0.5 - 3.0
    A = -torch.exp(torch.randn(d, n, generator=g, dtype=dtype) * 0.5)
    B = torch.randn(b, l, 1, n, generator=g, dtype=dtype)
    C = torch.randn(b, l, 1, n, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    bias = torch.randn(d, generator=g, dtype=dtype) * 0.1
    return [t.requires_grad_(requires_grad) for t in (x, dt, A, B, C, D, bias)]


def mamba2_inputs(b, l, h, p, n, requires_grad=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, l, h, p, generator=g, dtype=dtype)
    dt = torch.randn(b, l, h, generator=g, dtype=dtype) * 0.5 - 3.0
    A = -torch.exp(torch.randn(h, generator=g, dtype=dtype) * 0.5)
    B = torch.randn(b, l, 1, n, generator=g, dtype=dtype)
    C = torch.randn(b, l, 1, n, generator=g, dtype=dtype)
    D = torch.randn(h, generator=g, dtype=dtype)
    bias = torch.randn(h, generator=g, dtype=dtype) * 0.1
    return [t.requires_grad_(requires_grad) for t in (x, dt, A, B, C, D, bias)]


def rawseq_mamba1(backend):
    def run(x, dt, A, B, C, D, bias):
        return selective_scan(x, dt, A, B, C, D, dt_bias=bias, backend=backend)

    return run


def mambapy_mamba1():
    from mambapy.mamba import MambaBlock, MambaConfig

    block = MambaBlock(MambaConfig(d_model=8, n_layers=1))  # only its selective_scan method is used

    def run(x, dt, A, B, C, D, bias):
        delta = torch.nn.functional.softplus(dt + bias)
        return block.selective_scan(x, delta, A, B[:, :, 0], C[:, :, 0], D)

    return run


def rawseq_mamba2(backend, chunk=256):
    def run(x, dt, A, B, C, D, bias):
        return ssd(x, dt, A, B, C, D, dt_bias=bias, chunk_size=chunk, backend=backend)

    return run


def transformers_mamba2(chunk=256):
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    def run(x, dt, A, B, C, D, bias):
        return mamba2_chunk_scan(x, dt, A, B, C, chunk, D=D, dt_bias=bias, dt_softplus=True)

    return run


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check(fn, make_inputs, reference) -> bool:
    """fn's output and input gradients agree with the float64 reference on a small problem."""
    ins32 = make_inputs(torch.float32)
    ins64 = [t.detach().double().requires_grad_() for t in ins32]
    y = fn(*ins32)
    y_ref = reference(*ins64)
    w = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.autograd.grad((y * w.float()).sum(), ins32)
    g_ref = torch.autograd.grad((y_ref * w).sum(), ins64)
    ok = torch.allclose(y.double(), y_ref, rtol=1e-3, atol=1e-3 * y_ref.abs().max().item())
    for a, b in zip(g, g_ref):
        ok = ok and torch.allclose(a.double(), b, rtol=1e-3, atol=1e-3 * b.abs().max().item() + 1e-6)
    return ok


def fwd_bwd(fn, ins):
    def step():
        y = fn(*ins)
        y.sum().backward()
        for t in ins:
            t.grad = None

    return step


def timing_rows(name, shape, candidates, make_inputs, small_inputs, reference, repeats):
    """One row per candidate ``(label, factory or None)``: check, then time. A peer whose factory is None is not
    installed; the speedup column compares rawseq with the peer only when both passed their checks."""
    rows, ours, base = [], None, None
    for label, factory in candidates:
        if factory is None:
            rows.append([name, shape, label, "not installed", float("nan")])
            continue
        fn = factory()
        ok = check(fn, small_inputs, reference)
        t = median_time(fwd_bwd(fn, make_inputs()), repeats=repeats) if ok else float("nan")
        rows.append([name, shape, label, "ok" if ok else "FAILED", t * 1e3])
        if label.startswith("rawseq"):
            ours = t if ok else None
        else:
            base = t if ok else None
    for row in rows:
        row.append("" if (ours is None or base is None) else f"{base / ours:.2f}x")
        row[4] = f"{row[4]:.1f}"
    return rows


def memory_probe(l, d, n):
    """Forward + backward at length ``l`` in a fresh process: peak RSS above the RSS once the inputs exist (GB),
    total peak RSS (GB), and the median of 3 timed runs per (position x channel x state) in ns."""
    code = textwrap.dedent(f"""
        import time
        from rawseq.kernels.bench import current_rss_gb, fwd_bwd, mamba1_inputs, peak_rss_gb, rawseq_mamba1
        ins = mamba1_inputs(1, {l}, {d}, {n})
        base = current_rss_gb()
        step = fwd_bwd(rawseq_mamba1("torch"), ins)
        step()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(peak_rss_gb() - base, peak_rss_gb(), sorted(times)[1] / ({l} * {d} * {n}) * 1e9)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def main(argv: list[str] | None = None) -> int:
    """Print the timing and memory tables; returns 1 if a rawseq backend failed its correctness check, else 0."""
    ap = argparse.ArgumentParser(prog="rawseq bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the rows as JSON to this path")
    args = ap.parse_args(argv)

    b, l, d, n = (2, 256, 128, 16) if args.quick else (2, 1024, 512, 16)
    h, p, n2 = (4, 32, 32) if args.quick else (8, 64, 64)
    print(f"# rawseq kernels_cpu  {datetime.date.today()}  {machine()}\n")

    small1 = lambda dtype: mamba1_inputs(2, 37, 16, 4, dtype=dtype)  # noqa: E731
    ref1 = lambda *a: selective_scan(*a[:6], dt_bias=a[6], backend="naive")  # noqa: E731
    rows = timing_rows(
        "selective_scan", f"b{b} l{l} d{d} n{n}",
        [("mambapy pscan", mambapy_mamba1 if _installed("mambapy") else None),
         ("rawseq torch", lambda: rawseq_mamba1("torch"))],
        lambda: mamba1_inputs(b, l, d, n), small1, ref1, args.repeats,
    )
    small2 = lambda dtype: mamba2_inputs(2, 37, 4, 8, 8, dtype=dtype)  # noqa: E731
    ref2 = lambda *a: ssd(*a[:6], dt_bias=a[6], backend="naive")  # noqa: E731
    rows += timing_rows(
        "ssd", f"b{b} l{l} h{h} p{p} n{n2} chunk256",
        [("transformers torch", transformers_mamba2 if _installed("transformers") else None),
         ("rawseq torch", lambda: rawseq_mamba2("torch"))],
        lambda: mamba2_inputs(b, l, h, p, n2), small2, ref2, args.repeats,
    )
    print(table(["op", "shape", "backend", "check", "fwd+bwd ms (median)", "speedup vs peer"], rows))

    lengths = (1024, 8192) if args.quick else (1024, 65536)
    mem_rows = []
    for length in lengths:
        extra, peak, ns = memory_probe(length, 512, 16)
        mem_rows.append([f"b1 l{length} d512 n16", f"{extra:.2f}", f"{peak:.2f}", f"{ns:.2f}"])
    print("\nselective_scan torch backend, forward + backward, one fresh process per length:\n")
    print(table(["shape", "peak RSS above inputs (GB)", "peak RSS total (GB)", "ns per (position x channel x state)"],
                mem_rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"timing": rows, "memory": mem_rows}, fh, indent=1)
    return 1 if any(row[2].startswith("rawseq") and row[3] != "ok" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
