"""CPU benchmark of the scan primitives, forward + backward, beside their peers on identical inputs.

Peers: mambapy's parallel scan (``MambaBlock.selective_scan``) for Mamba-1 and transformers' torch SSD path
(``mamba2_chunk_scan``) for Mamba-2. Before timing, every backend is checked against the float64 naive backend on a
small problem; a backend that fails the check is reported as FAILED and gets no speedup.

    python benchmarks/kernels_cpu.py            # the full table (a few minutes on 2 cores)
    python benchmarks/kernels_cpu.py --quick    # smaller shapes, for a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import textwrap

import torch

from rawseq.kernels import selective_scan, ssd

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, median_time, table  # noqa: E402


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
    rows, base = [], None
    for label, fn in candidates:
        ok = check(fn, small_inputs, reference)
        t = median_time(fwd_bwd(fn, make_inputs()), repeats=repeats) if ok else float("nan")
        rows.append([name, shape, label, "ok" if ok else "FAILED", t * 1e3])
        if label.startswith("rawseq torch"):
            ours = t if ok else None
        else:
            base = t if ok else None
    for row in rows:
        row.append("" if (ours is None or base is None) else f"{base / ours:.2f}x")
    for row in rows:
        row[4] = f"{row[4]:.1f}"
    return rows


def memory_probe(l, d, n):
    """Forward + backward at length ``l`` in a fresh process: peak RSS above the RSS once the inputs exist (GB),
    total peak RSS (GB), and the median of 3 timed runs per (position x channel x state) in ns."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, "benchmarks")
        from kernels_cpu import mamba1_inputs, rawseq_mamba1, fwd_bwd
        from _common import current_rss_gb, peak_rss_gb
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the rows as JSON to this path")
    args = ap.parse_args()

    b, l, d, n = (2, 256, 128, 16) if args.quick else (2, 1024, 512, 16)
    h, p, n2 = (4, 32, 32) if args.quick else (8, 64, 64)
    print(f"# rawseq kernels_cpu  {datetime.date.today()}  {machine()}\n")

    small1 = lambda dtype: mamba1_inputs(2, 37, 16, 4, dtype=dtype)
    ref1 = lambda *a: selective_scan(*a[:6], dt_bias=a[6], backend="naive")
    rows = timing_rows(
        "selective_scan", f"b{b} l{l} d{d} n{n}",
        [("mambapy pscan", mambapy_mamba1()), ("rawseq torch", rawseq_mamba1("torch"))],
        lambda: mamba1_inputs(b, l, d, n), small1, ref1, args.repeats,
    )
    small2 = lambda dtype: mamba2_inputs(2, 37, 4, 8, 8, dtype=dtype)
    ref2 = lambda *a: ssd(*a[:6], dt_bias=a[6], backend="naive")
    rows += timing_rows(
        "ssd", f"b{b} l{l} h{h} p{p} n{n2} chunk256",
        [("transformers torch", transformers_mamba2()), ("rawseq torch", rawseq_mamba2("torch"))],
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


if __name__ == "__main__":
    main()
